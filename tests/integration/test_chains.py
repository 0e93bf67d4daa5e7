"""Job chains (depends_on, PENDING, placeholders) and retry policies (issue 10), against a
real control plane on SQLite and PostgreSQL, with a simulated agent."""

from __future__ import annotations

import time
from typing import Any

import grpc

from brinell.v1 import job_pb2
from brinell.v1 import job_service_pb2 as js
from tests.conftest import ServerThread, wait_until
from tests.integration.test_api import code_of, setup_job_world, stubs, submit
from tests.simagent import SimAgent

__all__ = ["stubs"]  # the fixture, shared with test_api

OK = job_pb2.JOB_STATE_SUCCEEDED
FAILED = job_pb2.JOB_STATE_FAILED


def _get(stubs: Any, job: Any) -> Any:
    return stubs.job.GetJob(js.GetJobRequest(name=job.name)).job


def _ends(stubs: Any, job: Any, state: int, timeout: float = 20) -> Any:
    return wait_until(lambda: (j := _get(stubs, job)).state == state and j, timeout=timeout)


def test_a_chain_waits_pending_then_runs_with_its_dependency_filled_in(
    stubs: Any, server: ServerThread
) -> None:
    setup_job_world(stubs)
    first = submit(stubs, parameters={"label": "first"})
    second = submit(
        stubs, parameters={"label": "after {deps.train.job}"}, depends_on={"train": first.name}
    )
    assert second.state == job_pb2.JOB_STATE_PENDING
    assert second.depends_on == {"train": first.name}
    assert f"train ({first.name})" in second.state_reason
    agent = SimAgent(server.target, "chain-agent", slots=2)
    try:
        a = agent.next("assignment")
        assert a.job.name == first.name  # the dependent is not offered while PENDING
        time.sleep(0.5)
        assert _get(stubs, second).state == job_pb2.JOB_STATE_PENDING
        agent.update(a.job.name, a.attempt, OK, exit_code=0)
        b = agent.next("assignment")
        assert b.job.name == second.name
        assert b.job.parameters["label"] == f"after {first.name}"
        agent.update(b.job.name, b.attempt, OK, exit_code=0)
        assert _ends(stubs, second, OK).parameters["label"] == f"after {first.name}"
    finally:
        agent.close()
    # A dependency that already succeeded: queued at once.
    third = submit(stubs, depends_on={"done": first.name})
    assert third.state == job_pb2.JOB_STATE_QUEUED


def test_failure_and_cancellation_propagate_down_a_chain(stubs: Any, server: ServerThread) -> None:
    setup_job_world(stubs)
    a = submit(stubs)
    b = submit(stubs, depends_on={"a": a.name})
    c = submit(stubs, depends_on={"b": b.name, "a": a.name})
    agent = SimAgent(server.target, "fail-agent")
    try:
        got = agent.next("assignment")
        agent.update(got.job.name, got.attempt, FAILED, exit_code=3, message="boom")
        failed_b = _ends(stubs, b, FAILED)
        assert failed_b.state_reason.startswith(f"dependency a ({a.name}) ended FAILED")
        failed_c = _ends(stubs, c, FAILED)
        assert "dependency" in failed_c.state_reason
    finally:
        agent.close()

    # Cancelled: a queued job (no agent now) and what waits on it, two levels down.
    x = submit(stubs)
    y = submit(stubs, depends_on={"x": x.name})
    z = submit(stubs, depends_on={"y": y.name})
    stubs.job.CancelJob(js.CancelJobRequest(name=x.name, reason="not needed"))
    cancelled = job_pb2.JOB_STATE_CANCELLED
    assert (
        _ends(stubs, y, cancelled).state_reason
        == f"dependency x ({x.name}) ended CANCELLED: not needed"
    )
    assert _ends(stubs, z, cancelled).state_reason.startswith(f"dependency y ({y.name})")
    # Cancelling a PENDING job itself works too, and its dependents follow.
    p = submit(stubs, selector={"nobody": "here"})
    q = submit(stubs, depends_on={"p": p.name})
    r = submit(stubs, depends_on={"q": q.name})
    stubs.job.CancelJob(js.CancelJobRequest(name=q.name))
    assert _ends(stubs, r, cancelled)
    assert _get(stubs, p).state == job_pb2.JOB_STATE_QUEUED


def test_bad_chains_are_invalid_arguments(stubs: Any, server: ServerThread) -> None:
    setup_job_world(stubs)
    a = submit(stubs)
    bad = code_of  # every case: INVALID_ARGUMENT, saying what is wrong
    cases = [
        ({"depends_on": {"x": "jobs/0123456789abcdef"}}, "does not exist"),
        ({"depends_on": {"x": "not a name"}}, "malformed"),
        ({"depends_on": {"Bad-Alias": a.name}}, "alias"),
        ({"parameters": {"label": "{deps.nope.job}"}, "depends_on": {"x": a.name}}, "names no"),
        ({"parameters": {"label": "{deps.x.colour}"}, "depends_on": {"x": a.name}}, "is not one"),
        # A placeholder in a float parameter fails its type check.
        (
            {"parameters": {"label": "l", "seconds": "{deps.x.job}"}, "depends_on": {"x": a.name}},
            "seconds",
        ),
        ({"depends_on": {f"d{i}": a.name for i in range(33)}}, "at most 32"),
    ]
    for extra, needle in cases:
        req = {
            "experiment": "experiments/exp",
            "entry_point": "entryPoints/sleepy",
            "parameters": {"label": "hi"},
            **extra,
        }
        code, message = bad(stubs.job.SubmitJob, js.SubmitJobRequest(**req))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (extra, message)
        assert needle in message, (needle, message)
    # No MLflow on this server: a run id cannot be filled in, and the dependent says why.
    agent = SimAgent(server.target, "runid-agent")
    try:
        got = agent.next("assignment")
        agent.update(got.job.name, got.attempt, OK, exit_code=0)
        _ends(stubs, a, OK)
        dependent = submit(stubs, parameters={"label": "{deps.x.run_id}"}, depends_on={"x": a.name})
        assert "has no MLflow run" in _ends(stubs, dependent, FAILED).state_reason
    finally:
        agent.close()


# -- retries -------------------------------------------------------------------------------


def _retry(max_retries: int, backoff: float, codes: tuple[int, ...] = ()) -> job_pb2.RetryPolicy:
    policy = job_pb2.RetryPolicy(max_retries=max_retries, exit_codes=list(codes))
    policy.backoff.FromNanoseconds(int(backoff * 1e9))
    return policy


def test_retryable_failures_are_retried_after_a_growing_backoff(
    stubs: Any, server: ServerThread
) -> None:
    setup_job_world(stubs)
    job = submit(stubs, retry=_retry(2, 0.3))
    assert job.retry.max_retries == 2 and list(job.retry.exit_codes) == [75]
    agent = SimAgent(server.target, "retry-agent")
    try:
        gaps: list[float] = []
        for n in (1, 2, 3):
            got = agent.next("assignment")
            assert got.attempt == n
            ended = time.monotonic()
            agent.update(got.job.name, got.attempt, FAILED, exit_code=75, message="try later")
            if n < 3:
                queued = wait_until(lambda n=n: (j := _get(stubs, job)).retries == n and j)
                assert queued.state == job_pb2.JOB_STATE_QUEUED
                assert f"retry {n} of 2" in queued.state_reason
                assert queued.HasField("not_before")
            gaps.append(ended)
        final = _ends(stubs, job, FAILED)
        assert final.retries == 2 and final.exit_code == 75 and final.attempt == 3
    finally:
        agent.close()
    # The backoff doubles: 0.3 s before the second attempt, 0.6 s before the third.
    assert gaps[1] - gaps[0] >= 0.3 and gaps[2] - gaps[1] >= 0.6


def test_other_exit_codes_fail_at_once_and_retries_do_not_spend_lost_attempts(
    stubs: Any, server: ServerThread
) -> None:
    setup_job_world(stubs)
    plain = submit(stubs, retry=_retry(3, 0.1, (75, 42)))
    agent = SimAgent(server.target, "codes-agent")
    try:
        got = agent.next("assignment")
        agent.update(got.job.name, got.attempt, FAILED, exit_code=1)
        final = _ends(stubs, plain, FAILED)
        assert final.retries == 0 and final.attempt == 1
    finally:
        agent.close()

    # max_attempts=2 bounds agent losses only: a retry, then a lost agent, then success.
    job = submit(stubs, retry=_retry(1, 0.1), max_attempts=2)
    first = SimAgent(server.target, "flaky-agent")
    got = first.next("assignment")
    first.update(got.job.name, got.attempt, FAILED, exit_code=75)
    got = first.next("assignment")
    assert got.attempt == 2
    first.close()  # lost with attempt 2: its lease (3 s) expires, the job is requeued
    second = SimAgent(server.target, "steady-agent")
    try:
        got = second.next("assignment", timeout=20)
        assert got.attempt == 3
        second.update(got.job.name, got.attempt, OK, exit_code=0)
        done = _ends(stubs, job, OK)
        assert done.retries == 1 and done.attempt == 3
    finally:
        second.close()
