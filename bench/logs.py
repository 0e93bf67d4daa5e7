"""Log lines from a job to a follower: lines per second and how far the follower lags.

A real control plane process (SQLite, no MLflow) and a real agent (process executor, no
Prefect) run a job that prints ``--lines`` lines as fast as Python prints them (every
1,000th carries the time it was printed); a follower (the SDK's ``logs(follow=True)``)
reads them as they arrive. Reported: the lines per second the follower received (from the
job's first line printed to its last received), how far behind the follower was (median and
worst over the timed lines, and for the last line), and whether every line arrived once and
in order (sequence numbers contiguous). The alternative in the same run: the same script
printing into a pipe that this process reads.

Usage: python bench/logs.py [--lines 200000] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brinell import Client, LogStream  # noqa: E402
from tests.conftest import start_server  # noqa: E402
from tests.e2e.conftest import start_agent, wait_connected  # noqa: E402

PRINTER = """\
import sys, time
n = int(sys.argv[1])
print(f"t0 {time.time()}", flush=True)
for i in range(n):
    if i % 1000 == 0:
        print(f"{i} {time.time()}")
    else:
        print(i)
print(f"end {time.time()}", flush=True)
"""
MLPROJECT = """\
name: printer
entry_points:
  main:
    parameters:
      n: {type: int, default: 200000}
    command: "python printer.py {n}"
"""


def through_brinell(c: Client, ep: str, n: int) -> dict[str, float]:
    job = c.jobs.submit("logs", ep, {"n": n})
    lags, seqs, t0, last_arrival, end_lag = [], [], 0.0, 0.0, 0.0
    for line in c.jobs.logs(job, follow=True):
        now = time.time()
        if line.stream != LogStream.STDOUT:
            continue
        seqs.append(line.sequence)
        head, _, tail = line.text.partition(" ")
        if head == "t0":
            t0 = float(tail)
        elif head == "end":
            end_lag = now - float(tail)
        elif tail:
            lags.append(now - float(tail))
        last_arrival = now
    contiguous = seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    return {
        "rate": len(seqs) / (last_arrival - t0),
        "lag50": statistics.median(lags),
        "lag_max": max(lags),
        "end_lag": end_lag,
        "ok": float(contiguous and len(seqs) == n + 2),
    }


def into_a_pipe(script: Path, n: int) -> dict[str, float]:
    proc = subprocess.Popen(
        [sys.executable, str(script), str(n)], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert proc.stdout is not None
    lags, count, t0, last = [], 0, 0.0, 0.0
    end_lag = 0.0
    for text in proc.stdout:
        now = time.time()
        count += 1
        head, _, tail = text.rstrip("\n").partition(" ")
        if head == "t0":
            t0 = float(tail)
        elif head == "end":
            end_lag = now - float(tail)
        elif tail:
            lags.append(now - float(tail))
        last = now
    proc.wait()
    return {
        "rate": count / (last - t0),
        "lag50": statistics.median(lags),
        "lag_max": max(lags),
        "end_lag": end_lag,
        "ok": float(count == n + 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    rows: dict[str, list[dict[str, float]]] = {"brinell": [], "pipe": []}
    with tempfile.TemporaryDirectory(prefix="brinell-logs-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("HOME", str(work))
        project = work / "printer"
        project.mkdir()
        (project / "MLproject").write_text(MLPROJECT)
        (project / "printer.py").write_text(PRINTER)
        server, target = start_server(work / "server", 0, "--mlflow-tracking-uri", "none")
        agent = start_agent(target, work / "agent", "none", "logs-agent", 1, "--no-warm-runtime")
        try:
            c = Client(target)
            wait_connected(c, "logs-agent", timeout=120)
            c.experiments.create("logs")
            ep = c.entry_points.push(project)[0].name
            for _ in range(args.runs):
                rows["brinell"].append(through_brinell(c, ep, args.lines))
                rows["pipe"].append(into_a_pipe(project / "printer.py", args.lines))
        finally:
            agent.stop()
            server.stop()
    print(
        f"\n{args.lines:,} lines printed as fast as Python prints them, {args.runs} runs "
        f"(medians); {os.cpu_count()} CPUs\n"
    )
    print("| path | lines/s | follower lag p50 | worst | last line | every line once, in order |")
    print("|---|---:|---:|---:|---:|---|")
    labels = {
        "brinell": "job → agent → control plane → follower",
        "pipe": "the same script into a pipe",
    }
    for key, label in labels.items():
        rs = rows[key]

        def med(k: str, rs: list[dict[str, float]] = rs) -> float:
            return statistics.median(r[k] for r in rs)

        ok = "yes" if all(r["ok"] for r in rs) else "NO"
        print(
            f"| {label} | {med('rate'):,.0f} | {med('lag50'):.2f} s | {med('lag_max'):.2f} s "
            f"| {med('end_lag'):.2f} s | {ok} |"
        )


if __name__ == "__main__":
    main()
