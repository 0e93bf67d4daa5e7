"""A deep queue: what submitting costs, how fast it drains and how fast ListJobs answers with
1,000, 10,000 and 50,000 jobs queued.

For each depth, against a fresh control plane process (SQLite, no MLflow) with no agent
connected: submits that many no-op jobs (64 in flight) and measures submits/s and server CPU
per submit; then ListJobs (a page of 50, p50 of 20 calls) filtered by state (QUEUED), by
experiment, and unfiltered, while the jobs wait; then connects 10 simulated agents (8 slots
each, the real AgentService protocol) and measures how fast the queue drains to SUCCEEDED.
The depths side by side are the comparison: every figure should stay about flat.

Usage: python bench/queue_depth.py [--depths 1000,10000,50000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dispatch  # noqa: E402  (bench/dispatch.py: the server, the token, simulated agents)

from brinell.v1 import job_service_pb2, job_service_pb2_grpc  # noqa: E402


async def list_p50(jobs: job_service_pb2_grpc.JobServiceStub, filter_: str) -> float:
    times = []
    for _ in range(20):
        started = time.perf_counter()
        await jobs.ListJobs(
            job_service_pb2.ListJobsRequest(page_size=50, filter=filter_), metadata=dispatch.AUTH
        )
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


async def measure(depth: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="brinell-queue-") as tmp:
        proc, target = dispatch.start_server(Path(tmp) / "server", None, mlflow=False)
        try:
            await dispatch.prepare(target)
            channel = grpc.aio.insecure_channel(target)
            jobs = job_service_pb2_grpc.JobServiceStub(channel)
            sem = asyncio.Semaphore(64)

            async def submit(i: int) -> None:
                async with sem:
                    await jobs.SubmitJob(
                        job_service_pb2.SubmitJobRequest(
                            experiment="experiments/bench",
                            entry_point="entryPoints/noop",
                            parameters={"label": str(i)},
                            request_id=f"q-{i}",
                        ),
                        metadata=dispatch.AUTH,
                    )

            cpu0, t0 = dispatch.cpu_seconds(proc.pid), time.perf_counter()
            await asyncio.gather(*(submit(i) for i in range(depth)))
            submit_s = time.perf_counter() - t0
            submit_cpu = dispatch.cpu_seconds(proc.pid) - cpu0
            by_state = await list_p50(jobs, "state=QUEUED")
            by_experiment = await list_p50(jobs, "experiment=experiments/bench")
            unfiltered = await list_p50(jobs, "")

            state, stop = dispatch.Agents(), asyncio.Event()
            state.expected = depth
            readies = [asyncio.Event() for _ in range(10)]
            t0 = time.perf_counter()
            agents = [
                asyncio.create_task(dispatch.sim_agent(target, f"q-{i}", state, readies[i], stop))
                for i in range(10)
            ]
            await asyncio.wait_for(state.all_done.wait(), 1800)
            while await dispatch.unfinished(jobs):
                await asyncio.sleep(0.05)
            drain_s = time.perf_counter() - t0
            stop.set()
            for task in agents:
                task.cancel()
            await asyncio.gather(*agents, return_exceptions=True)
            await channel.close()
            return {
                "submits": depth / submit_s,
                "cpu": 1000 * submit_cpu / depth,
                "state": by_state,
                "experiment": by_experiment,
                "all": unfiltered,
                "drain": depth / drain_s,
            }
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="1000,10000,50000")
    args = parser.parse_args()
    rows = [(d, asyncio.run(measure(d))) for d in (int(x) for x in args.depths.split(","))]
    print("\nno-op jobs queued with no agent, then drained by 10 simulated agents; SQLite\n")
    print(
        "| jobs queued | submits/s | server CPU per submit | ListJobs by state p50 "
        "| by experiment | unfiltered | drain, jobs/s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for depth, r in rows:
        print(
            f"| {depth:,} | {r['submits']:.0f} | {r['cpu']:.2f} ms | {r['state']:.1f} ms "
            f"| {r['experiment']:.1f} ms | {r['all']:.1f} ms | {r['drain']:.0f} |"
        )


if __name__ == "__main__":
    main()
