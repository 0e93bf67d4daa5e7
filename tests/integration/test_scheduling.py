"""Dispatch order: priorities (issue 10)."""

from __future__ import annotations

import time
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


def test_drain_agent_rpc(stubs: Any, server: ServerThread) -> None:
    from brinell.v1 import agent_service_pb2 as agent_pb

    setup_job_world(stubs)
    agent = SimAgent(server.target, "to-drain", slots=2)
    try:
        reply = stubs.agent.DrainAgent(
            agent_pb.DrainAgentRequest(name="agents/to-drain", reason="maintenance")
        )
        assert reply.agent.state == 3  # AGENT_STATE_DRAINING
        drain = agent.next("drain")
        assert drain.reason == "maintenance"
        job = submit(stubs)
        time.sleep(1.0)
        state = stubs.job.GetJob(job_pb2_service.GetJobRequest(name=job.name)).job.state
        assert state == job_pb2.JOB_STATE_QUEUED  # nothing for a draining agent
        code, _ = code_of(stubs.agent.DrainAgent, agent_pb.DrainAgentRequest(name="agents/nope"))
        assert code == grpc.StatusCode.NOT_FOUND
        bad = agent_pb.DrainAgentRequest(name="agents/to-drain")
        bad.deadline.seconds = -1
        assert code_of(stubs.agent.DrainAgent, bad)[0] == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        agent.close()
    gone = agent_pb.DrainAgentRequest(name="agents/to-drain")

    def drain_code() -> grpc.StatusCode:
        try:
            stubs.agent.DrainAgent(gone)
        except grpc.RpcError as err:
            return err.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK  # the closed session is not gone yet

    code = wait_until(lambda: (c := drain_code()) != grpc.StatusCode.OK and c)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
