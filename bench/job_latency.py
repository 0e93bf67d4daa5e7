"""How long a real job takes, submit to SUCCEEDED: the warm runtime against a cold start.

Starts a real control plane (SQLite, its embedded MLflow store), one Prefect server, and two
process-executor agents on it: one with the warm runtime (the default) and one with
``--no-warm-runtime``. Then, interleaved for ``--rounds`` rounds, it runs examples/hello-world
(a three-task Prefect flow that logs to an MLflow run):

- through the warm agent: submit -> SUCCEEDED, as a client sees it;
- through the cold agent: the same;
- as a fresh ``python main.py`` in the example's folder, with the same Prefect server and an
  MLflow store of its own: what the job costs without Brinell at all.

One job of each kind runs first and is not counted (the warm parent imports once when its
agent starts). Prints medians, minimum and maximum.

Usage: python bench/job_latency.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brinell import Client, JobState  # noqa: E402
from brinell.agent.prefect_server import PrefectServer  # noqa: E402
from tests.conftest import start_server  # noqa: E402
from tests.e2e.conftest import start_agent, wait_connected  # noqa: E402

HELLO = ROOT / "examples" / "hello-world"


def prefect_server(work: Path) -> tuple[str, PrefectServer, asyncio.AbstractEventLoop]:
    server = PrefectServer(work)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    url = asyncio.run_coroutine_threadsafe(server.start(), loop).result(180)
    return url, server, loop


def through(c: Client, ep: str, runtime: str) -> float:
    started = time.perf_counter()
    job = c.jobs.submit("latency", ep, {"name": "bench"}, selector={"runtime": runtime})
    final = c.jobs.wait(job, timeout=300)
    took = time.perf_counter() - started
    if final.state != JobState.SUCCEEDED:
        raise SystemExit(f"{runtime} job {job.name} ended {final.state}: {final.state_reason}")
    return took


def fresh(prefect: str, store: Path) -> float:
    env = dict(os.environ, PREFECT_API_URL=prefect, MLFLOW_TRACKING_URI=f"sqlite:///{store}")
    env.pop("MLFLOW_RUN_ID", None)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "main.py", "--name", "bench"],
        cwd=HELLO,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="brinell-latency-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("HOME", str(work))
        url, prefect, loop = prefect_server(work / "prefect")
        server, target = start_server(work / "server")
        agents = [
            start_agent(
                target, work / kind, url, f"{kind}-agent", 1, "--label", f"runtime={kind}", *extra
            )
            for kind, extra in [("warm", []), ("cold", ["--no-warm-runtime"])]
        ]
        try:
            c = Client(target)
            for kind in ("warm", "cold"):
                wait_connected(c, f"{kind}-agent", timeout=120)
            c.experiments.create("latency")
            ep = c.entry_points.push(HELLO)[0].name
            store = work / "fresh-mlflow.db"
            through(c, ep, "warm"), through(c, ep, "cold"), fresh(url, store)  # not counted
            times: dict[str, list[float]] = {"warm": [], "cold": [], "fresh": []}
            for _ in range(args.rounds):
                times["warm"].append(through(c, ep, "warm"))
                times["cold"].append(through(c, ep, "cold"))
                times["fresh"].append(fresh(url, store))
        finally:
            for agent in agents:
                agent.stop()
            server.stop()
            asyncio.run_coroutine_threadsafe(prefect.stop(), loop).result(60)
    cold = statistics.median(times["cold"])
    print(
        f"\nhello-world (3-task Prefect flow + MLflow run), {args.rounds} rounds, interleaved; "
        f"{os.cpu_count()} CPUs\n"
    )
    print("| how it ran | median | min | max | vs cold |")
    print("|---|---:|---:|---:|---:|")
    rows = [
        ("warm runtime, submit → SUCCEEDED", "warm"),
        ("cold (`--no-warm-runtime`), submit → SUCCEEDED", "cold"),
        ("a fresh `python main.py`, no Brinell", "fresh"),
    ]
    for label, key in rows:
        ts = times[key]
        med = statistics.median(ts)
        print(f"| {label} | {med:.2f} s | {min(ts):.2f} s | {max(ts):.2f} s | {cold / med:.1f}× |")


if __name__ == "__main__":
    main()
