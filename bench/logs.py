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


class Timed:
    """What arrived and when: the printer's timed lines give the follower's lag."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.count = 0
        self.t0 = self.last = self.end_lag = 0.0

    def saw(self, text: str) -> None:
        now = time.time()
        self.count += 1
        head, _, tail = text.partition(" ")
        if head == "t0":
            self.t0 = float(tail)
        elif head == "end":
            self.end_lag = now - float(tail)
        elif tail:
            self.lags.append(now - float(tail))
        self.last = now

    def result(self, complete: bool) -> dict[str, float]:
        return {
            "rate": self.count / (self.last - self.t0),
            "lag50": statistics.median(self.lags),
            "lag_max": max(self.lags),
            "end_lag": self.end_lag,
            "ok": float(complete),
        }


def through_brinell(c: Client, ep: str, n: int) -> dict[str, float]:
    job = c.jobs.submit("logs", ep, {"n": n})
    timed, seqs = Timed(), []
    for line in c.jobs.logs(job, follow=True):
        if line.stream == LogStream.STDOUT:
            timed.saw(line.text)
            seqs.append(line.sequence)
    contiguous = seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    return timed.result(contiguous and len(seqs) == n + 2)


def into_a_pipe(script: Path, n: int) -> dict[str, float]:
    proc = subprocess.Popen(
        [sys.executable, str(script), str(n)], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert proc.stdout is not None
    timed = Timed()
    for text in proc.stdout:
        timed.saw(text.rstrip("\n"))
    proc.wait()
    return timed.result(timed.count == n + 2)


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
