"""SDK types built from protobuf messages (``brinell.types``) and error translation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from brinell import Agent, AgentState, Job, JobState, LogLine, LogStream
from brinell.errors import BrinellError, NotFoundError, UnavailableError, error_for_code
from brinell.v1 import agent_pb2, job_pb2


def test_enums_cover_the_api() -> None:
    for number, name in ((v.number, v.name) for v in job_pb2.JobState.DESCRIPTOR.values):
        assert JobState.from_proto(number).value == name.removeprefix("JOB_STATE_")
    for v in job_pb2.LogStream.DESCRIPTOR.values:
        assert LogStream.from_proto(v.number).value == v.name.removeprefix("LOG_STREAM_")
    for v in agent_pb2.AgentState.DESCRIPTOR.values:
        assert AgentState.from_proto(v.number).value == v.name.removeprefix("AGENT_STATE_")
    assert JobState.from_proto(99) is JobState.UNSPECIFIED  # a state from a newer server


def test_final_states() -> None:
    final = {s for s in JobState if s.is_final}
    assert final == {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
    assert JobState.RUNNING == "RUNNING"  # a str enum: compares with and prints as the name


def test_job_from_proto() -> None:
    msg = job_pb2.Job(name="jobs/abc", state=job_pb2.JOB_STATE_SUCCEEDED, parameters={"a": "1"})
    msg.start_time.FromSeconds(1_700_000_000)
    msg.end_time.FromSeconds(1_700_000_090)
    msg.timeout.FromSeconds(0)
    job = Job.from_proto(msg)
    assert job.id == "abc" and job.is_final and job.succeeded
    assert job.start_time == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert job.duration == timedelta(seconds=90)
    assert job.create_time is None  # unset
    assert job.timeout is None  # zero means "no limit"
    assert job.parameters == {"a": "1"}
    with pytest.raises(AttributeError):
        job.state = JobState.FAILED  # type: ignore[misc]


def test_log_line_and_agent_from_proto() -> None:
    line = LogLine.from_proto(job_pb2.LogLine(offset=4, text="x", stream=job_pb2.LOG_STREAM_STDERR))
    assert (line.offset, line.stream, line.time) == (4, LogStream.STDERR, None)
    msg = agent_pb2.Agent(
        name="agents/gpu-1",
        state=agent_pb2.AGENT_STATE_DRAINING,
        queues=["a", "b"],
        capacity=agent_pb2.Capacity(slots=2, gpus=[agent_pb2.Gpu(uuid="GPU-1", model="H100")]),
    )
    agent = Agent.from_proto(msg)
    assert agent.id == "gpu-1" and agent.state is AgentState.DRAINING
    assert agent.queues == ("a", "b") and agent.capacity.gpus[0].model == "H100"


def test_error_classes() -> None:
    err = error_for_code("NOT_FOUND", "no such job")
    assert isinstance(err, NotFoundError) and str(err) == "NOT_FOUND: no such job"
    assert isinstance(error_for_code("UNAVAILABLE", "x"), UnavailableError)
    other = error_for_code("RESOURCE_EXHAUSTED", "too big")
    assert type(other) is BrinellError and other.code == "RESOURCE_EXHAUSTED"
