"""Dispatch benchmark: SubmitJob returning -> the agent holding the assignment.

Starts a real control plane process, connects 1, 10 and 100 simulated agents that speak the
real AgentService protocol (an agent process per simulated agent would measure process
start-up, not dispatch), and measures:

- latency: one job at a time on an idle system, from the SubmitJob call to the assignment
  arriving at an agent (same process, same clock), p50/p99; and from SubmitJob's response
  arriving to the assignment (negative: the agent had it before the client had the answer);
- throughput: many no-op jobs submitted concurrently, completed (agent reports RUNNING then
  SUCCEEDED, the control plane persists both) per second.

Configurations side by side: SQLite without MLflow (the dispatch path alone), SQLite with
the embedded MLflow store (one MLflow run created per submit), and PostgreSQL when one can
be started. Usage: python bench/dispatch.py [--latency-jobs N] [--throughput-jobs N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from brinell.v1 import (  # noqa: E402
    agent_pb2,
    agent_service_pb2,
    agent_service_pb2_grpc,
    experiment_service_pb2,
    experiment_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)
from tests.conftest import SLEEPY_MLPROJECT, tar_gz  # noqa: E402

NOOP_MLPROJECT = SLEEPY_MLPROJECT
# The first admin's token, given to the server it starts (every RPC needs a credential; one
# admin token stands in for the users and the agents here).
TOKEN = "brn_bench_" + secrets.token_urlsafe(32)
AUTH = (("authorization", f"Bearer {TOKEN}"),)
# Concurrent jobs per simulated agent (an agent's `--slots`).
SLOTS = 8


@dataclass
class Agents:
    received: dict[str, float] = field(default_factory=dict)
    completed: int = 0
    waiters: dict[str, asyncio.Future[float]] = field(default_factory=dict)
    all_done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0


def register(agent_id: str, slots: int) -> agent_service_pb2.ConnectRequest:
    """A simulated agent's Register."""
    return agent_service_pb2.ConnectRequest(
        register=agent_service_pb2.Register(
            agent_id=agent_id,
            hostname="bench",
            queues=["default"],
            capacity=agent_pb2.Capacity(cpus=1, slots=slots),
            version="bench",
            executor="sim",
        )
    )


def ran(a: agent_service_pb2.Assignment) -> list[agent_service_pb2.ConnectRequest]:
    """What a simulated agent reports for an assignment: RUNNING, then SUCCEEDED."""
    return [
        agent_service_pb2.ConnectRequest(
            attempt_update=agent_service_pb2.AttemptUpdate(
                job=a.job.name,
                attempt=a.attempt,
                state=st,
                has_exit_code=st == job_pb2.JOB_STATE_SUCCEEDED,
            )
        )
        for st in (job_pb2.JOB_STATE_RUNNING, job_pb2.JOB_STATE_SUCCEEDED)
    ]


async def sim_agent(
    target: str, agent_id: str, state: Agents, ready: asyncio.Event, stop: asyncio.Event
) -> None:
    channel = grpc.aio.insecure_channel(target)
    stub = agent_service_pb2_grpc.AgentServiceStub(channel)
    outbox: asyncio.Queue[agent_service_pb2.ConnectRequest | None] = asyncio.Queue()
    outbox.put_nowait(register(agent_id, SLOTS))

    async def requests():  # type: ignore[no-untyped-def]
        while (msg := await outbox.get()) is not None:
            yield msg

    call = stub.Connect(requests(), metadata=AUTH)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        async for msg in call:
            kind = msg.WhichOneof("message")
            if kind == "registered":
                ready.set()
            elif kind == "assignment":
                now = time.perf_counter()
                a = msg.assignment
                name = a.job.name
                state.received[name] = now
                fut = state.waiters.pop(name, None)
                if fut is not None and not fut.done():
                    fut.set_result(now)
                for update in ran(a):
                    outbox.put_nowait(update)
                state.completed += 1
                if state.expected and state.completed >= state.expected:
                    state.all_done.set()
            if stop.is_set():
                break
    except grpc.aio.AioRpcError:
        pass
    finally:
        stopper.cancel()
        outbox.put_nowait(None)
        call.cancel()
        await channel.close()


def start_server(
    data: Path, database_url: str | None, mlflow: bool
) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "brinell.controlplane", "--port", "0", "--data-dir", str(data)]
    if database_url:
        cmd += ["--database-url", database_url]
    if not mlflow:
        cmd += ["--mlflow-tracking-uri", "none"]
    env = dict(os.environ, BRINELL_LOG_LEVEL="WARNING", BRINELL_BOOTSTRAP_TOKEN=TOKEN)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on ([\d.]+):(\d+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, f"{match.group(1)}:{match.group(2)}"


async def unfinished(jobs: job_service_pb2_grpc.JobServiceStub) -> bool:
    """Whether any job is not yet final (one cheap query, not a listing of them all)."""
    resp = await jobs.ListJobs(
        job_service_pb2.ListJobsRequest(page_size=1, filter="state=QUEUED,ASSIGNED,RUNNING"),
        metadata=AUTH,
    )
    return bool(resp.jobs)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc), to report server CPU per job."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_config(
    target: str,
    n_agents: int,
    latency_jobs: int,
    throughput_jobs: int,
    prefix: str,
    server_pid: int,
) -> dict[str, float]:
    channel = grpc.aio.insecure_channel(target)
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    state = Agents()
    stop = asyncio.Event()
    readies = [asyncio.Event() for _ in range(n_agents)]
    tasks = [
        asyncio.create_task(sim_agent(target, f"{prefix}-{i}", state, readies[i], stop))
        for i in range(n_agents)
    ]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)

    def request(i: int) -> job_service_pb2.SubmitJobRequest:
        return job_service_pb2.SubmitJobRequest(
            experiment="experiments/bench",
            entry_point="entryPoints/noop",
            parameters={"label": str(i)},
            request_id=f"{prefix}-{i}",
        )

    loop = asyncio.get_running_loop()
    for i in range(20):  # warm-up
        fut: asyncio.Future[float] = loop.create_future()
        resp = await jobs.SubmitJob(request(-1 - i), metadata=AUTH)
        if resp.job.name not in state.received:
            state.waiters[resp.job.name] = fut
            await asyncio.wait_for(fut, 10)
    await asyncio.sleep(0.3)
    latencies, after_response = [], []
    for i in range(latency_jobs):
        called = time.perf_counter()
        resp_future = jobs.SubmitJob(request(i), metadata=AUTH)
        resp = await resp_future
        returned = time.perf_counter()
        name = resp.job.name
        if name in state.received:
            got = state.received[name]
        else:
            fut = loop.create_future()
            state.waiters[name] = fut
            got = await asyncio.wait_for(fut, 10)
        latencies.append((got - called) * 1000)
        after_response.append((got - returned) * 1000)
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.5)

    sem = asyncio.Semaphore(64)

    async def submit(i: int) -> None:
        async with sem:
            await jobs.SubmitJob(request(100_000 + i), metadata=AUTH)

    state.expected = state.completed + throughput_jobs
    cpu_before = cpu_seconds(server_pid)
    own_before = cpu_seconds(os.getpid())
    start = time.perf_counter()
    await asyncio.gather(*(submit(i) for i in range(throughput_jobs)))
    submitted = time.perf_counter()
    # Every job assigned and its reports sent; then wait for the control plane to have
    # persisted them (checked rarely: listing thousands of jobs is itself work).
    await asyncio.wait_for(state.all_done.wait(), 600)
    while await unfinished(jobs):
        await asyncio.sleep(0.02)
    finished = time.perf_counter()
    cpu_used = cpu_seconds(server_pid) - cpu_before
    own_used = cpu_seconds(os.getpid()) - own_before
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await channel.close()
    latencies.sort()
    return {
        "p50": statistics.median(latencies),
        "p50_response": statistics.median(after_response),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "submit_rate": throughput_jobs / (submitted - start),
        "jobs_per_s": throughput_jobs / (finished - start),
        "cpu_ms_per_job": cpu_used * 1000 / throughput_jobs,
        "client_cpu_ms_per_job": own_used * 1000 / throughput_jobs,
    }


async def prepare(target: str) -> None:
    from brinell.v1 import entry_point_service_pb2 as ep_pb
    from brinell.v1 import entry_point_service_pb2_grpc as ep_grpc

    channel = grpc.aio.insecure_channel(target)
    await experiment_service_pb2_grpc.ExperimentServiceStub(channel).CreateExperiment(
        experiment_service_pb2.CreateExperimentRequest(experiment_id="bench"),
        timeout=120,
        metadata=AUTH,
    )
    data = tar_gz({"MLproject": NOOP_MLPROJECT})

    async def msgs():  # type: ignore[no-untyped-def]
        yield ep_pb.UploadEntryPointRequest(
            metadata=ep_pb.UploadEntryPointMetadata(entry_point_id="noop")
        )
        yield ep_pb.UploadEntryPointRequest(chunk=data)

    await ep_grpc.EntryPointServiceStub(channel).UploadEntryPoint(msgs(), metadata=AUTH)
    await channel.close()


def postgres() -> tuple[str, object] | None:
    try:
        import pytest  # noqa: F401

        from tests import conftest
    except ImportError:
        return None
    gen = conftest.postgres_url.__wrapped__()  # type: ignore[attr-defined]
    try:
        url = next(gen)
    except BaseException:
        return None
    return conftest.fresh_pg_database(url), gen


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--latency-jobs", type=int, default=300)
    p.add_argument("--throughput-jobs", type=int, default=3000)
    p.add_argument("--agents", default="1,10,100")
    p.add_argument("--quick", action="store_true", help="fewer jobs (a smoke run)")
    args = p.parse_args()
    if args.quick:
        args.latency_jobs, args.throughput_jobs = 50, 300
    agent_counts = [int(x) for x in args.agents.split(",")]
    configs: list[tuple[str, str | None, bool]] = [
        ("sqlite, no MLflow", None, False),
        ("sqlite + MLflow run per job", None, True),
    ]
    pg = postgres()
    if pg:
        configs.append(("postgresql, no MLflow", pg[0], False))
    else:
        print("(PostgreSQL unavailable: skipping that configuration)")
    rows = []
    for label, db_url, mlflow in configs:
        data = Path(tempfile.mkdtemp(prefix="brinell-bench-"))
        proc, target = start_server(data, db_url, mlflow)
        try:
            asyncio.run(prepare(target))
            for n in agent_counts:
                tp = args.throughput_jobs if not mlflow else max(args.throughput_jobs // 10, 100)
                r = asyncio.run(
                    run_config(
                        target,
                        n,
                        args.latency_jobs,
                        tp,
                        f"{label[:2]}{n}".replace(" ", ""),
                        proc.pid,
                    )
                )
                rows.append((label, n, r))
                print(
                    f"{label:30s} agents={n:<4d} p50={r['p50']:.2f} ms p99={r['p99']:.2f} ms "
                    f"{r['jobs_per_s']:.0f} jobs/s, server CPU {r['cpu_ms_per_job']:.2f} ms/job, "
                    f"bench client+agents CPU {r['client_cpu_ms_per_job']:.2f} ms/job",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(30)
            shutil.rmtree(data, ignore_errors=True)
    if pg:
        with contextlib.suppress(StopIteration):
            next(pg[1])  # type: ignore[call-overload]
    print()
    print(
        "| configuration | agents | p50 submit->assignment | p99 | p50 response->assignment "
        "| submits/s | jobs completed/s | server CPU/job |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, n, r in rows:
        print(
            f"| {label} | {n} | {r['p50']:.2f} ms | {r['p99']:.2f} ms | "
            f"{r['p50_response']:.2f} ms | "
            f"{r['submit_rate']:.0f} | {r['jobs_per_s']:.0f} | {r['cpu_ms_per_job']:.2f} ms |"
        )
    print("\ntargets: p50 <= 3 ms, p99 <= 15 ms, >= 1000 jobs/s on SQLite (2 cores)")


if __name__ == "__main__":
    main()
