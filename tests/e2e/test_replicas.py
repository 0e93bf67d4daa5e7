"""Two control-plane replicas on one PostgreSQL, an agent on each (issue 10, item 6).

Measured before: with separate data directories 17/20 jobs failed with "blob … NOT_FOUND",
page tokens from one replica were rejected by the other as tampered with; with a shared data
directory a watcher on A of a job run through B stayed at QUEUED, log followers saw 0 lines, a
job submitted through A whose only agent is on B stayed QUEUED, a cancel through B of a job on
A's agent was never delivered, and each replica listed the other's agents as DISCONNECTED.
Here every replica has its own data directory, as on separate hosts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brinell import Client, JobState, LogStream
from brinell.v1 import job_service_pb2, job_service_pb2_grpc
from tests.conftest import admin_channel, fresh_pg_database, start_server, wait_until
from tests.e2e.conftest import start_agent, wait_connected

TICKER = """\
name: ticker
entry_points:
  main:
    parameters:
      n: {type: int, default: 3}
      pause: {type: float, default: 0.05}
    command: "python ticker.py {n} {pause}"
"""
TICKER_PY = """\
import sys, time
for i in range(int(sys.argv[1])):
    print(f"tick {i}", flush=True)
    time.sleep(float(sys.argv[2]))
print("done", flush=True)
"""


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str, prefect_api_url: str) -> Iterator[dict[str, Any]]:
    url = fresh_pg_database(postgres_url)
    procs: list[Any] = []
    state: dict[str, Any] = {"tmp": tmp_path}
    try:
        for name in ("a", "b"):
            server, target = start_server(
                tmp_path / f"server-{name}",
                0,
                "--database-url",
                url,
                "--mlflow-tracking-uri",
                "none",
                "--replica-id",
                f"replica-{name}",
            )
            procs.append(server)
            state[name] = target
        for name in ("a", "b"):
            agent = start_agent(
                state[name],
                tmp_path / f"agent-{name}",
                prefect_api_url,
                f"agent-{name}",
                2,
                "--label",
                f"site={name}",
            )
            procs.append(agent)
        state["ca"] = Client(state["a"], timeout=30)
        state["cb"] = Client(state["b"], timeout=30)
        for c in (state["ca"], state["cb"]):
            wait_connected(c, "agent-a")
            wait_connected(c, "agent-b")
        project = tmp_path / "ticker"
        project.mkdir()
        (project / "MLproject").write_text(TICKER)
        (project / "ticker.py").write_text(TICKER_PY)
        state["ca"].experiments.create("replicas")
        state["ep"], _ = state["ca"].entry_points.push(project)  # its blob: in the database
        yield state
    finally:
        for key in ("ca", "cb"):
            if key in state:
                state[key].close()
        for proc in reversed(procs):
            proc.stop()


def _done(c: Client, job: Any) -> list[int]:
    return [ln.attempt for ln in c.jobs.logs(job) if ln.text == "done"]


def test_jobs_through_either_replica_run_exactly_once_on_either_agent(
    replicas: dict[str, Any],
) -> None:
    ca, cb, ep = replicas["ca"], replicas["cb"], replicas["ep"]
    jobs = []
    # Through each replica, jobs for the agent on the other one (nothing but the other
    # replica's dispatcher can assign them) and for its own.
    for i in range(20):
        via, site = (ca, "ab"[i % 2]) if i < 10 else (cb, "ab"[i % 2])
        jobs.append((via, site, via.jobs.submit("replicas", ep, {"n": 2}, selector={"site": site})))
    for via, site, job in jobs:
        other = cb if via is ca else ca
        final = other.jobs.wait(job, timeout=120)
        assert final.state == JobState.SUCCEEDED, final.state_reason
        assert final.attempt == 1
        assert final.agent == f"agents/agent-{site}"
        assert _done(other, job) == [1]
    listed = {j.id for j in ca.jobs.list("experiment=experiments/replicas")}
    assert listed == {job.id for _, _, job in jobs}


def test_watch_follow_and_cancel_cross_replicas(replicas: dict[str, Any]) -> None:
    ca, cb, ep = replicas["ca"], replicas["cb"], replicas["ep"]
    # Submitted through B, run by A's agent, watched and followed through A and B.
    n = 40
    job = cb.jobs.submit("replicas", ep, {"n": n, "pause": 0.1}, selector={"site": "a"})
    seen: dict[str, Any] = {}

    def watch() -> None:
        with Client(replicas["a"], timeout=30) as mine:
            seen["states"] = [j.state for j in mine.jobs.watch(job)]

    def follow(key: str, target: str) -> None:
        with Client(target, timeout=30) as mine:
            seen[key] = list(mine.jobs.logs(job, follow=True, timeout=120))

    threads = [
        threading.Thread(target=watch),
        threading.Thread(target=follow, args=("follow-a", replicas["a"])),
        threading.Thread(target=follow, args=("follow-b", replicas["b"])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert seen["states"][-1] == JobState.SUCCEEDED
    assert JobState.RUNNING in seen["states"]
    for key in ("follow-a", "follow-b"):
        ticks = [ln.text for ln in seen[key] if ln.stream == LogStream.STDOUT]
        assert ticks == [f"tick {i}" for i in range(n)] + ["done"], key

    # A cancel through B of a job on A's agent reaches that agent (through A).
    long = ca.jobs.submit("replicas", ep, {"n": 600, "pause": 0.1}, selector={"site": "a"})
    wait_until(lambda: any(ln.text == "tick 1" for ln in ca.jobs.logs(long)), timeout=60)
    started = time.monotonic()
    cb.jobs.cancel(long, "stop it from B")
    final = ca.jobs.wait(long, timeout=60)
    assert final.state == JobState.CANCELLED, final.state_reason
    assert final.state_reason == "stop it from B"
    assert time.monotonic() - started < 20  # the agent's grace period, not the 60 s job
    assert "done" not in [ln.text for ln in ca.jobs.logs(long)]


def test_agents_page_tokens_and_drain_across_replicas(replicas: dict[str, Any]) -> None:
    ca, cb, ep = replicas["ca"], replicas["cb"], replicas["ep"]
    for c in (ca, cb):
        agents = {a.id: a for a in c.agents.list()}
        assert agents["agent-a"].state.name == "CONNECTED"
        assert agents["agent-b"].state.name == "CONNECTED"
        assert agents["agent-a"].replica == "replica-a"
        assert agents["agent-b"].replica == "replica-b"

    # A page token from A continues the listing on B.
    for _ in range(3):
        ca.jobs.submit("replicas", ep, {"n": 1})
    first = job_service_pb2_grpc.JobServiceStub(admin_channel(replicas["a"])).ListJobs(
        job_service_pb2.ListJobsRequest(page_size=2)
    )
    assert first.next_page_token
    rest = job_service_pb2_grpc.JobServiceStub(admin_channel(replicas["b"])).ListJobs(
        job_service_pb2.ListJobsRequest(page_size=2, page_token=first.next_page_token)
    )
    assert len(rest.jobs) == 1
    assert {j.name for j in first.jobs}.isdisjoint({j.name for j in rest.jobs})

    # A drain through A of the agent on B: it drains, finishes, exits; B shows it DRAINING
    # meanwhile and A then DISCONNECTED.
    job = ca.jobs.submit("replicas", ep, {"n": 30, "pause": 0.1}, selector={"site": "b"})
    wait_until(lambda: ca.jobs.get(job).state == JobState.RUNNING, timeout=60)
    drained = ca.agents.drain("agent-b", deadline=60, reason="maintenance")
    assert drained.state.name == "DRAINING"
    wait_until(lambda: cb.agents.get("agent-b").state.name == "DRAINING", timeout=10)
    assert ca.jobs.wait(job, timeout=60).state == JobState.SUCCEEDED
    wait_until(lambda: ca.agents.get("agent-b").state.name == "DISCONNECTED", timeout=30)
