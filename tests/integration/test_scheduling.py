"""Dispatch order: priorities (issue 10)."""

from __future__ import annotations

from typing import Any

import grpc

from brinell.v1 import job_pb2
from brinell.v1 import job_service_pb2 as job_pb2_service
from tests.conftest import ServerThread, wait_until
from tests.integration.test_api import code_of, setup_job_world, stubs, submit
from tests.simagent import SimAgent

__all__ = ["stubs"]  # the fixture, shared with test_api


def test_higher_priority_first_fifo_within_one(stubs: Any, server: ServerThread) -> None:
    setup_job_world(stubs)
    order = [0, 5, 0, 10, -1, 5]
    jobs = [submit(stubs, priority=p, parameters={"label": f"j{i}"}) for i, p in enumerate(order)]
    assert [j.priority for j in jobs] == order
    agent = SimAgent(server.target, "one-slot", slots=1)
    try:
        taken = []
        for _ in jobs:
            a = agent.next("assignment")
            taken.append(a.job.name)
            agent.update(a.job.name, a.attempt, job_pb2.JOB_STATE_SUCCEEDED, exit_code=0)
        expected = [jobs[i].name for i in (3, 1, 5, 0, 2, 4)]  # 10, 5, 5, 0, 0, -1
        assert taken == expected
    finally:
        agent.close()


def test_priority_out_of_range_is_invalid(stubs: Any) -> None:
    setup_job_world(stubs)
    code, message = code_of(stubs.job.SubmitJob, _request(priority=5000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "priority" in message


def _request(**kwargs: Any) -> Any:
    from brinell.v1 import job_service_pb2

    return job_service_pb2.SubmitJobRequest(
        experiment="experiments/exp",
        entry_point="entryPoints/sleepy",
        parameters={"label": "x"},
        **kwargs,
    )


def test_a_queue_timeout_ends_a_job_nobody_takes(stubs: Any, server: ServerThread) -> None:
    setup_job_world(stubs)
    patient = submit(stubs)
    job = submit(stubs, queue_timeout={"seconds": 1}, selector={"gpu": "none-here"})
    assert job.queue_timeout.seconds == 1

    def state() -> Any:
        return stubs.job.GetJob(job_pb2_service.GetJobRequest(name=job.name)).job

    ended = wait_until(lambda: (j := state()).state == job_pb2.JOB_STATE_TIMED_OUT and j)
    assert "waited in the queue longer than its queue_timeout of 1s" in ended.state_reason
    still = stubs.job.GetJob(job_pb2_service.GetJobRequest(name=patient.name)).job
    assert still.state == job_pb2.JOB_STATE_QUEUED
