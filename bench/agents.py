"""Many connected agents: what their heartbeats cost the control plane, and whether dispatch
and ListAgents stay fast as their number grows.

For 100, 500 and 1,000 simulated agents (the real AgentService protocol, one stream each,
heartbeating at the interval the server gives: 5 s here), against a fresh control plane
process (SQLite, no MLflow): server CPU while they only heartbeat (percent of a core, and per
heartbeat), its memory, then submit -> assignment latency of jobs submitted one at a time, and
ListAgents latency (a page of 1,000). The same run, side by side, is the comparison: the cost
should not grow faster than the number of agents, and latencies should stay flat.

Usage: python bench/agents.py [--agents 100,500,1000] [--window 20]
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
import dispatch  # noqa: E402  (bench/dispatch.py: the server, the token, the entry point)

from brinell.v1 import (  # noqa: E402
    agent_service_pb2,
    agent_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
)

HEARTBEAT = 5.0
AGENTS_PER_CHANNEL = 100


class Fleet:
    def __init__(self) -> None:
        self.heartbeats = 0
        self.registered = 0
        self.waiters: dict[str, asyncio.Future[float]] = {}
        # Assignments that came before their submitter started waiting.
        self.received: dict[str, float] = {}


async def agent(
    channel: grpc.aio.Channel, agent_id: str, fleet: Fleet, stop: asyncio.Event
) -> None:
    stub = agent_service_pb2_grpc.AgentServiceStub(channel)
    outbox: asyncio.Queue[agent_service_pb2.ConnectRequest | None] = asyncio.Queue()
    outbox.put_nowait(dispatch.register(agent_id, 1))

    async def requests():  # type: ignore[no-untyped-def]
        while (msg := await outbox.get()) is not None:
            yield msg

    async def beat(interval: float) -> None:
        await asyncio.sleep(interval * (hash(agent_id) % 1000) / 1000)  # spread over a period
        while not stop.is_set():
            outbox.put_nowait(
                agent_service_pb2.ConnectRequest(heartbeat=agent_service_pb2.Heartbeat())
            )
            fleet.heartbeats += 1
            await asyncio.sleep(interval)

    beater: asyncio.Task[None] | None = None
    call = stub.Connect(requests(), metadata=dispatch.AUTH)
    try:
        async for msg in call:
            kind = msg.WhichOneof("message")
            if kind == "registered":
                fleet.registered += 1
                interval = msg.registered.heartbeat_interval.ToTimedelta().total_seconds()
                beater = asyncio.create_task(beat(interval or HEARTBEAT))
            elif kind == "assignment":
                a = msg.assignment
                fut = fleet.waiters.pop(a.job.name, None)
                if fut is not None and not fut.done():
                    fut.set_result(time.perf_counter())
                else:
                    fleet.received[a.job.name] = time.perf_counter()
                for update in dispatch.ran(a):
                    outbox.put_nowait(update)
    except grpc.aio.AioRpcError:
        pass
    finally:
        if beater is not None:
            beater.cancel()
        outbox.put_nowait(None)
        call.cancel()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(n: int, window: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="brinell-agents-") as tmp:
        proc, target = dispatch.start_server(Path(tmp) / "server", None, mlflow=False)
        try:
            await dispatch.prepare(target)
            fleet, stop = Fleet(), asyncio.Event()
            channels = [grpc.aio.insecure_channel(target) for _ in range(0, n, AGENTS_PER_CHANNEL)]
            tasks = [
                asyncio.create_task(
                    agent(channels[i // AGENTS_PER_CHANNEL], f"sim-{i}", fleet, stop)
                )
                for i in range(n)
            ]
            while fleet.registered < n:
                await asyncio.sleep(0.2)
            await asyncio.sleep(HEARTBEAT * 1.5)  # every agent's first beats are in
            cpu0, beats0, t0 = dispatch.cpu_seconds(proc.pid), fleet.heartbeats, time.monotonic()
            await asyncio.sleep(window)
            cpu = dispatch.cpu_seconds(proc.pid) - cpu0
            beats, elapsed = fleet.heartbeats - beats0, time.monotonic() - t0

            control = grpc.aio.insecure_channel(target)
            jobs = job_service_pb2_grpc.JobServiceStub(control)
            agents = agent_service_pb2_grpc.AgentServiceStub(control)
            latencies = []
            for _ in range(30):
                started = time.perf_counter()
                job = await jobs.SubmitJob(
                    job_service_pb2.SubmitJobRequest(
                        experiment="experiments/bench",
                        entry_point="entryPoints/noop",
                        parameters={"label": "x"},
                    ),
                    metadata=dispatch.AUTH,
                )
                name = job.job.name
                if name in fleet.received:
                    latencies.append(fleet.received.pop(name) - started)
                    continue
                fut = asyncio.get_running_loop().create_future()
                fleet.waiters[name] = fut
                latencies.append(await asyncio.wait_for(fut, 30) - started)
            listing = []
            for _ in range(10):
                started = time.perf_counter()
                await agents.ListAgents(
                    agent_service_pb2.ListAgentsRequest(page_size=1000), metadata=dispatch.AUTH
                )
                listing.append(time.perf_counter() - started)
            await control.close()
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for channel in channels:
                await channel.close()
            return {
                "core": 100 * cpu / elapsed,
                "per_beat": 1000 * cpu / max(1, beats),
                "rss": rss_mib(proc.pid),
                "p50": 1000 * statistics.median(latencies),
                "p90": 1000 * statistics.quantiles(latencies, n=10)[-1],
                "list50": 1000 * statistics.median(listing),
                "list90": 1000 * statistics.quantiles(listing, n=10)[-1],
            }
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="100,500,1000")
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    sizes = [int(x) for x in args.agents.split(",")]
    rows = [(n, asyncio.run(measure(n, args.window))) for n in sizes]
    print(f"\nsimulated agents heartbeating every {HEARTBEAT:g} s, SQLite, no MLflow\n")
    print(
        "| agents | server CPU (% of a core) | CPU per heartbeat | server RSS "
        "| submit→assignment p50 / p90 | ListAgents (1,000) p50 / p90 |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n, r in rows:
        print(
            f"| {n} | {r['core']:.1f} % | {r['per_beat']:.2f} ms | {r['rss']:.0f} MiB "
            f"| {r['p50']:.1f} / {r['p90']:.1f} ms | {r['list50']:.1f} / {r['list90']:.1f} ms |"
        )


if __name__ == "__main__":
    main()
