"""Faults the control plane must handle without losing or duplicating work (issue 10)."""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brinell.v1 import (
    agent_service_pb2_grpc,
    entry_point_service_pb2_grpc,
    experiment_service_pb2_grpc,
    job_pb2,
    job_service_pb2_grpc,
)
from brinell.v1 import job_service_pb2 as job_pb
from tests.conftest import ServerThread, admin_channel, make_server, wait_until
from tests.integration.test_api import setup_job_world, submit
from tests.simagent import SimAgent

S = job_pb2


@pytest.fixture
def long_lease(tmp_path: Path, database_url: str) -> Iterator[ServerThread]:
    """A control plane whose leases outlast every test here: whatever requeues a job in
    these tests, it is not the lease."""
    srv = make_server(tmp_path, database_url=database_url, lease_duration=120.0)
    yield srv
    srv.stop()


@contextlib.contextmanager
def _stubs(target: str) -> Iterator[Any]:
    with admin_channel(target) as channel:

        class Stubs:
            exp = experiment_service_pb2_grpc.ExperimentServiceStub(channel)
            ep = entry_point_service_pb2_grpc.EntryPointServiceStub(channel)
            job = job_service_pb2_grpc.JobServiceStub(channel)
            agent = agent_service_pb2_grpc.AgentServiceStub(channel)

        yield Stubs


@pytest.fixture
def stubs(long_lease: ServerThread) -> Iterator[Any]:
    with _stubs(long_lease.target) as found:
        yield found


def _job(stubs: Any, name: str) -> job_pb2.Job:
    return stubs.job.GetJob(job_pb.GetJobRequest(name=name)).job


def test_an_agent_back_without_its_attempt_has_it_requeued_at_once(
    stubs: Any, long_lease: ServerThread
) -> None:
    """Fix 4: a restarted agent that reports it runs nothing does not make its old attempt
    wait out the lease (9-30 s measured) before it is requeued."""
    setup_job_world(stubs)
    job = submit(stubs, max_attempts=3)
    first = SimAgent(long_lease.target, "restarts")
    assert first.next("assignment").attempt == 1
    first.update(job.name, 1, S.JOB_STATE_RUNNING)
    wait_until(lambda: _job(stubs, job.name).state == S.JOB_STATE_RUNNING)
    first.close()
    started = time.monotonic()
    # The agent's new incarnation: same id, nothing running.
    again = SimAgent(long_lease.target, "restarts", running=[])
    try:
        second = again.next("assignment", timeout=10)
        assert second.attempt == 2 and second.job.name == job.name
        assert time.monotonic() - started < 10  # the lease is 120 s
        requeued = _job(stubs, job.name)
        assert requeued.attempt == 2
        attempts = stubs.job.GetJob(job_pb.GetJobRequest(name=job.name)).job
        assert attempts.state == S.JOB_STATE_ASSIGNED
    finally:
        again.close()


def test_an_agent_back_with_its_attempt_keeps_it(stubs: Any, long_lease: ServerThread) -> None:
    setup_job_world(stubs)
    job = submit(stubs)
    first = SimAgent(long_lease.target, "reconnects")
    assert first.next("assignment").attempt == 1
    first.update(job.name, 1, S.JOB_STATE_RUNNING)
    wait_until(lambda: _job(stubs, job.name).state == S.JOB_STATE_RUNNING)
    first.close()
    again = SimAgent(long_lease.target, "reconnects", running=[(job.name, 1)])
    try:
        time.sleep(1.0)
        kept = _job(stubs, job.name)
        assert kept.state == S.JOB_STATE_RUNNING and kept.attempt == 1
        again.update(job.name, 1, S.JOB_STATE_SUCCEEDED, exit_code=0)
        done = wait_until(lambda: (j := _job(stubs, job.name)).state == S.JOB_STATE_SUCCEEDED and j)
        assert done.attempt == 1
    finally:
        again.close()


def _lines(stubs: Any, name: str) -> list[tuple[int, str]]:
    request = job_pb.StreamJobLogsRequest(name=name)
    return [(ln.attempt, ln.text) for r in stubs.job.StreamJobLogs(request) for ln in r.lines]


def test_a_superseded_attempt_writes_no_more_lines(tmp_path: Path, database_url: str) -> None:
    """Fix 3: 152 lines of a superseded attempt 1 were stored after attempt 2's began (an
    agent frozen past its lease keeps its stream and writes on when it thaws)."""
    srv = make_server(tmp_path, database_url=database_url)  # a 3 s lease
    frozen = healthy = None
    try:
        with _stubs(srv.target) as stubs:
            setup_job_world(stubs)
            job = submit(stubs, max_attempts=3)
            frozen = SimAgent(srv.target, "frozen")
            assert frozen.next("assignment").attempt == 1
            frozen.logs(job.name, 1, [(1, "one: before the requeue")])
            frozen.next("log_ack")
            # No heartbeats: the lease expires and the job moves on to attempt 2.
            healthy = SimAgent(srv.target, "healthy", queues=["default"])
            wait_until(lambda: _job(stubs, job.name).attempt == 2, timeout=30)
            # The frozen agent thaws and writes on for attempt 1, on the same stream.
            frozen.logs(job.name, 1, [(2, "one: late"), (3, "one: later")])
            time.sleep(1.0)
            assert [t for a, t in _lines(stubs, job.name) if a == 1] == ["one: before the requeue"]
    finally:
        for agent in (frozen, healthy):
            if agent is not None:
                agent.close()
        srv.stop()


def test_a_frozen_agent_gets_no_work_until_it_beats_again(
    tmp_path: Path, database_url: str
) -> None:
    """Fix 1: an agent stopped with SIGSTOP keeps its TCP connection; its requeued job went
    back to it, twice, until the job FAILED while a healthy agent sat idle."""
    srv = make_server(tmp_path, database_url=database_url)  # a 3 s lease
    frozen = healthy = None
    try:
        with _stubs(srv.target) as stubs:
            setup_job_world(stubs)
            job = submit(stubs, max_attempts=3)
            frozen = SimAgent(srv.target, "frozen")
            assert frozen.next("assignment").attempt == 1
            healthy = SimAgent(srv.target, "healthy")
            # The frozen agent says nothing; its lease expires.
            second = healthy.next("assignment", timeout=30)
            assert (second.job.name, second.attempt) == (job.name, 2)
            assert _job(stubs, job.name).agent == "agents/healthy"
            # More work while the frozen agent is silent: it waits for the busy healthy one.
            other = submit(stubs)
            with pytest.raises(queue.Empty):
                frozen.next("assignment", timeout=2)
            assert _job(stubs, other.name).state == S.JOB_STATE_QUEUED
            # A heartbeat after the expiry: alive again, and its stale attempt is cancelled.
            frozen.heartbeat([(job.name, 1)])
            cancel = frozen.next("cancel", timeout=10)
            assert (cancel.job, cancel.attempt) == (job.name, 1)
            third = frozen.next("assignment", timeout=10)
            assert third.job.name == other.name
    finally:
        for agent in (frozen, healthy):
            if agent is not None:
                agent.close()
        srv.stop()


def test_the_control_plane_ends_a_job_past_its_limit_that_its_agent_never_reports(
    tmp_path: Path, database_url: str
) -> None:
    """Run-time limits are enforced by the control plane as well: an agent that heartbeats
    but never reports the end (a stuck process, an agent bug) does not hold the job forever."""
    srv = make_server(tmp_path, database_url=database_url)  # grace 2 s, heartbeat 0.5 s
    agent = None
    try:
        with _stubs(srv.target) as stubs:
            setup_job_world(stubs)
            request = {"timeout": {"seconds": 1}}
            job = submit(stubs, **request)
            agent = SimAgent(srv.target, "stuck")
            a = agent.next("assignment")
            agent.update(job.name, a.attempt, S.JOB_STATE_RUNNING)
            deadline = time.monotonic() + 30
            while _job(stubs, job.name).state != S.JOB_STATE_TIMED_OUT:
                assert time.monotonic() < deadline, _job(stubs, job.name)
                agent.heartbeat([(job.name, a.attempt)])  # alive: the lease is not the cause
                time.sleep(0.5)
            ended = _job(stubs, job.name)
            assert "ended by the control plane" in ended.state_reason
            cancel = agent.next("cancel", timeout=10)
            assert (cancel.job, cancel.attempt) == (job.name, a.attempt)
    finally:
        if agent is not None:
            agent.close()
        srv.stop()
