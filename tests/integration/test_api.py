"""Every RPC through a real server on port 0 and the generated stubs, on SQLite and
PostgreSQL, including the error codes."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from brinell.v1 import (
    agent_service_pb2 as agent_pb,
)
from brinell.v1 import (
    agent_service_pb2_grpc as agent_grpc,
)
from brinell.v1 import (
    entry_point_pb2,
    experiment_pb2,
    job_pb2,
)
from brinell.v1 import (
    entry_point_service_pb2 as ep_pb,
)
from brinell.v1 import (
    entry_point_service_pb2_grpc as ep_grpc,
)
from brinell.v1 import (
    experiment_service_pb2 as exp_pb,
)
from brinell.v1 import (
    experiment_service_pb2_grpc as exp_grpc,
)
from brinell.v1 import (
    job_service_pb2 as job_pb,
)
from brinell.v1 import (
    job_service_pb2_grpc as job_grpc,
)
from tests.conftest import SLEEPY_MLPROJECT, ServerThread, run_cli, tar_gz, wait_until
from tests.simagent import SimAgent

S = job_pb2


def code_of(fn: Any, *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = fn(*args, **kwargs)
        if hasattr(result, "__iter__") and not hasattr(result, "ByteSize"):
            list(result)
    err = info.value
    return err.code(), err.details()


@pytest.fixture
def stubs(channel: grpc.Channel) -> Any:
    class Stubs:
        exp = exp_grpc.ExperimentServiceStub(channel)
        ep = ep_grpc.EntryPointServiceStub(channel)
        job = job_grpc.JobServiceStub(channel)
        agent = agent_grpc.AgentServiceStub(channel)

    return Stubs


def upload(
    stubs: Any, ep_id: str, data: bytes, chunk: int = 100, sha: str = ""
) -> ep_pb.UploadEntryPointResponse:
    def messages() -> Iterator[ep_pb.UploadEntryPointRequest]:
        yield ep_pb.UploadEntryPointRequest(
            metadata=ep_pb.UploadEntryPointMetadata(
                entry_point_id=ep_id, description="d", sha256=sha
            )
        )
        for i in range(0, len(data), chunk):
            yield ep_pb.UploadEntryPointRequest(chunk=data[i : i + chunk])

    return stubs.ep.UploadEntryPoint(messages())


def setup_job_world(stubs: Any, exp_id: str = "exp") -> str:
    stubs.exp.CreateExperiment(exp_pb.CreateExperimentRequest(experiment_id=exp_id))
    rev = upload(stubs, "sleepy", tar_gz({"MLproject": SLEEPY_MLPROJECT})).revision
    return rev.digest


def submit(stubs: Any, **kwargs: Any) -> job_pb2.Job:
    req = {
        "experiment": "experiments/exp",
        "entry_point": "entryPoints/sleepy",
        "parameters": {"label": "hi"},
    }
    req.update(kwargs)
    return stubs.job.SubmitJob(job_pb.SubmitJobRequest(**req)).job


# -- experiments -------------------------------------------------------------------------


def test_experiments_crud_and_errors(stubs: Any) -> None:
    created = stubs.exp.CreateExperiment(
        exp_pb.CreateExperimentRequest(
            experiment_id="alpha",
            experiment=experiment_pb2.Experiment(description="first", labels={"team": "red"}),
        )
    ).experiment
    assert created.name == "experiments/alpha"
    assert created.labels["team"] == "red"
    assert created.create_time.seconds > 0

    generated = stubs.exp.CreateExperiment(exp_pb.CreateExperimentRequest()).experiment
    assert generated.name.startswith("experiments/exp-")

    code, msg = code_of(
        stubs.exp.CreateExperiment, exp_pb.CreateExperimentRequest(experiment_id="alpha")
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS and "alpha" in msg
    code, msg = code_of(
        stubs.exp.CreateExperiment, exp_pb.CreateExperimentRequest(experiment_id="Bad_Id")
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Bad_Id" in msg

    got = stubs.exp.GetExperiment(exp_pb.GetExperimentRequest(name="experiments/alpha"))
    assert got.experiment.description == "first"
    code, _ = code_of(stubs.exp.GetExperiment, exp_pb.GetExperimentRequest(name="experiments/zz"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = code_of(stubs.exp.GetExperiment, exp_pb.GetExperimentRequest(name="jobs/../x"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT

    updated = stubs.exp.UpdateExperiment(
        exp_pb.UpdateExperimentRequest(
            experiment=experiment_pb2.Experiment(
                name="experiments/alpha", description="changed", labels={"ignored": "yes"}
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        )
    ).experiment
    assert updated.description == "changed" and dict(updated.labels) == {"team": "red"}
    code, msg = code_of(
        stubs.exp.UpdateExperiment,
        exp_pb.UpdateExperimentRequest(
            experiment=experiment_pb2.Experiment(name="experiments/alpha"),
            update_mask=field_mask_pb2.FieldMask(paths=["mlflow_experiment_id"]),
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "mlflow_experiment_id" in msg
    code, _ = code_of(
        stubs.exp.UpdateExperiment,
        exp_pb.UpdateExperimentRequest(
            experiment=experiment_pb2.Experiment(name="experiments/nope")
        ),
    )
    assert code == grpc.StatusCode.NOT_FOUND

    stubs.exp.DeleteExperiment(exp_pb.DeleteExperimentRequest(name=generated.name))
    code, _ = code_of(
        stubs.exp.DeleteExperiment, exp_pb.DeleteExperimentRequest(name=generated.name)
    )
    assert code == grpc.StatusCode.NOT_FOUND


def test_list_experiments_pages_filters_and_tampered_tokens(stubs: Any) -> None:
    for i in range(5):
        stubs.exp.CreateExperiment(
            exp_pb.CreateExperimentRequest(
                experiment_id=f"e{i}",
                experiment=experiment_pb2.Experiment(
                    labels={"parity": "even" if i % 2 == 0 else "odd"}
                ),
            )
        )
    seen, token, pages = [], "", 0
    while True:
        resp = stubs.exp.ListExperiments(
            exp_pb.ListExperimentsRequest(page_size=2, page_token=token)
        )
        seen += [e.name for e in resp.experiments]
        pages += 1
        token = resp.next_page_token
        if not token:
            break
        first_token = first_token if pages > 1 else token  # noqa: F821
    assert seen == [f"experiments/e{i}" for i in range(5)] and pages == 3

    even = stubs.exp.ListExperiments(exp_pb.ListExperimentsRequest(filter="labels.parity=even"))
    assert [e.name for e in even.experiments] == [
        "experiments/e0",
        "experiments/e2",
        "experiments/e4",
    ]

    raw = bytearray(base64.urlsafe_b64decode(first_token + "=" * (-len(first_token) % 4)))
    raw[-2] ^= 1
    tampered = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    for bad in (tampered, "garbage", first_token[:-3]):
        code, msg = code_of(
            stubs.exp.ListExperiments, exp_pb.ListExperimentsRequest(page_size=2, page_token=bad)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert "page_token" in msg
    code, msg = code_of(
        stubs.exp.ListExperiments,
        exp_pb.ListExperimentsRequest(
            page_size=2, page_token=first_token, filter="labels.parity=odd"
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "different query" in msg
    code, _ = code_of(stubs.exp.ListExperiments, exp_pb.ListExperimentsRequest(page_size=-1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, msg = code_of(stubs.exp.ListExperiments, exp_pb.ListExperimentsRequest(filter="color"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "color" in msg


# -- entry points ------------------------------------------------------------------------


def test_upload_entry_point_revisions_and_errors(stubs: Any) -> None:
    data = tar_gz({"MLproject": SLEEPY_MLPROJECT, "main.py": "print(1)\n"}, top="sleepy")
    sha = hashlib.sha256(data).hexdigest()
    first = upload(stubs, "sleepy", data, chunk=37, sha=sha)
    assert first.created
    assert first.revision.digest == f"sha256:{sha}"
    assert first.revision.size_bytes == len(data)
    assert first.revision.project_name == "sleepy"
    (entry,) = first.revision.entries
    params = {p.name: p for p in entry.parameters}
    assert params["seconds"].type == entry_point_pb2.PARAMETER_TYPE_FLOAT
    assert params["rounds"].type == entry_point_pb2.PARAMETER_TYPE_INT
    assert params["rounds"].has_default and params["rounds"].default_value == "1"
    assert not params["label"].has_default
    assert params["data"].type == entry_point_pb2.PARAMETER_TYPE_PATH

    again = upload(stubs, "sleepy", data, chunk=1000)
    assert not again.created and again.revision.digest == first.revision.digest
    assert again.entry_point.revision_count == 1

    second = upload(stubs, "sleepy", tar_gz({"MLproject": SLEEPY_MLPROJECT, "x": "2"}))
    assert second.created and second.entry_point.revision_count == 2
    assert second.entry_point.latest_revision.digest == second.revision.digest

    got = stubs.ep.GetEntryPoint(ep_pb.GetEntryPointRequest(name="entryPoints/sleepy"))
    assert got.entry_point.latest_revision.digest == second.revision.digest
    revs = stubs.ep.ListEntryPointRevisions(
        ep_pb.ListEntryPointRevisionsRequest(parent="entryPoints/sleepy", page_size=1)
    )
    assert [r.digest for r in revs.revisions] == [second.revision.digest]
    more = stubs.ep.ListEntryPointRevisions(
        ep_pb.ListEntryPointRevisionsRequest(
            parent="entryPoints/sleepy", page_size=1, page_token=revs.next_page_token
        )
    )
    assert [r.digest for r in more.revisions] == [first.revision.digest]
    assert more.next_page_token == ""
    one = stubs.ep.GetEntryPointRevision(
        ep_pb.GetEntryPointRevisionRequest(name=first.revision.name)
    )
    assert one.revision.digest == first.revision.digest
    listed = stubs.ep.ListEntryPoints(ep_pb.ListEntryPointsRequest())
    assert [e.name for e in listed.entry_points] == ["entryPoints/sleepy"]

    code, _ = code_of(stubs.ep.GetEntryPoint, ep_pb.GetEntryPointRequest(name="entryPoints/no"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = code_of(
        stubs.ep.GetEntryPointRevision,
        ep_pb.GetEntryPointRevisionRequest(name="entryPoints/sleepy/revisions/sha256:" + "0" * 64),
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = code_of(
        stubs.ep.GetEntryPointRevision,
        ep_pb.GetEntryPointRevisionRequest(name="entryPoints/sleepy/revisions/md5:1"),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_of(
        stubs.ep.ListEntryPointRevisions,
        ep_pb.ListEntryPointRevisionsRequest(parent="entryPoints/none"),
    )
    assert code == grpc.StatusCode.NOT_FOUND

    bad_cases = {
        "not an archive": (b"hello world, not a tarball", "archive"),
        "no MLproject": (tar_gz({"main.py": "x"}), "no MLproject"),
        "bad yaml": (tar_gz({"MLproject": "entry_points: [unclosed"}), "YAML"),
        "bad type": (
            tar_gz(
                {
                    "MLproject": "entry_points:\n  main:\n    parameters:\n"
                    "      x: {type: complex}\n      y: {type: int, default: abc}\n"
                    "    command: python {z}\n"
                }
            ),
            "complex",
        ),
    }
    for case, (payload, needle) in bad_cases.items():
        code, msg = code_of(upload, stubs, "broken", payload)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, case
        assert needle in msg, (case, msg)
    code, msg = code_of(upload, stubs, "broken", bad_cases["bad type"][0])
    assert "'y'" in msg and "{z}" in msg  # every problem listed at once
    code, msg = code_of(upload, stubs, "sleepy", data, sha="0" * 64)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "sha256 mismatch" in msg
    code, msg = code_of(upload, stubs, "Bad Id", data)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, msg = code_of(upload, stubs, "empty", b"")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no archive bytes" in msg
    code, msg = code_of(
        stubs.ep.UploadEntryPoint, iter([ep_pb.UploadEntryPointRequest(chunk=data)])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "metadata" in msg
    # Nothing of the failed uploads was kept.
    listed = stubs.ep.ListEntryPoints(ep_pb.ListEntryPointsRequest())
    assert [e.name for e in listed.entry_points] == ["entryPoints/sleepy"]


def test_blob_download(stubs: Any) -> None:
    data = tar_gz({"MLproject": SLEEPY_MLPROJECT, "big": b"x" * (3 << 20)})
    digest = upload(stubs, "sleepy", data, chunk=1 << 20).revision.digest
    parts = list(stubs.agent.DownloadBlob(agent_pb.DownloadBlobRequest(digest=digest)))
    assert parts[0].size_bytes == len(data)
    assert b"".join(p.chunk for p in parts) == data
    code, _ = code_of(
        stubs.agent.DownloadBlob, agent_pb.DownloadBlobRequest(digest="sha256:" + "1" * 64)
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = code_of(stubs.agent.DownloadBlob, agent_pb.DownloadBlobRequest(digest="../etc"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# -- jobs --------------------------------------------------------------------------------


def test_submit_validates_every_parameter_problem_at_once(stubs: Any) -> None:
    setup_job_world(stubs)
    with pytest.raises(grpc.RpcError) as info:
        stubs.job.SubmitJob(
            job_pb.SubmitJobRequest(
                experiment="experiments/exp",
                entry_point="entryPoints/sleepy",
                parameters={"seconds": "fast", "rounds": "1.5", "lables": "typo"},
            )
        )
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    msg = err.details()
    for needle in (
        "'seconds'",
        "'rounds'",
        "missing required parameter 'label'",
        "unknown parameter 'lables' (did you mean 'label'?)",
    ):
        assert needle in msg, msg
    status = rpc_status.from_call(err)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert len(bad.field_violations) == 4

    cases = [
        ({"experiment": "experiments/none"}, grpc.StatusCode.NOT_FOUND),
        ({"entry_point": "entryPoints/none"}, grpc.StatusCode.NOT_FOUND),
        ({"entry_point_digest": "sha256:" + "a" * 64}, grpc.StatusCode.NOT_FOUND),
        ({"entry_point_digest": "sha1:x"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"experiment": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"entry": "nope"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"queue": "bad queue!"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"max_attempts": 1000}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"timeout": duration_pb2.Duration(seconds=-5)}, grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for override, expected in cases:
        code, _ = code_of(submit, stubs, **override)
        assert code == expected, override

    job = submit(stubs, parameters={"label": "x", "seconds": "0.5"})
    assert job.state == S.JOB_STATE_QUEUED
    assert dict(job.parameters) == {
        "label": "x",
        "seconds": "0.5",
        "rounds": "1",
        "data": "data.csv",
    }
    assert job.max_attempts == 3 and job.queue == "default" and job.entry == "main"


def _violations(call: Any) -> list[tuple[str, str]]:
    """The (field, description) pairs of the INVALID_ARGUMENT a call ends with."""
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ByteSize"):
            list(result)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    status = rpc_status.from_call(err)
    assert status is not None, err.details()
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return [(v.field, v.description) for v in bad.field_violations]


def test_every_violation_names_its_field(stubs: Any) -> None:
    setup_job_world(stubs)
    garbage = iter([
        ep_pb.UploadEntryPointRequest(metadata=ep_pb.UploadEntryPointMetadata(entry_point_id="g")),
        ep_pb.UploadEntryPointRequest(chunk=b"not an archive"),
    ])  # fmt: skip
    cases: list[tuple[Any, set[str]]] = [
        (lambda: stubs.exp.CreateExperiment(
            exp_pb.CreateExperimentRequest(experiment_id="Bad Name!")), {"experiment_id"}),
        (lambda: stubs.exp.GetExperiment(exp_pb.GetExperimentRequest(name="x/Bad!")), {"name"}),
        (lambda: stubs.exp.ListExperiments(exp_pb.ListExperimentsRequest(page_size=-1)),
         {"page_size"}),
        (lambda: stubs.job.ListJobs(job_pb.ListJobsRequest(page_token="forged")), {"page_token"}),
        (lambda: stubs.job.SubmitJob(job_pb.SubmitJobRequest(
            experiment="Bad!", entry_point="", queue="a queue", max_attempts=1000)),
         {"experiment", "entry_point", "queue", "max_attempts"}),
        (lambda: stubs.job.SubmitJob(job_pb.SubmitJobRequest(
            experiment="experiments/exp", entry_point="entryPoints/sleepy",
            parameters={"lables": "x"})), {"parameters"}),
        (lambda: stubs.job.SubmitJob(job_pb.SubmitJobRequest(
            experiment="experiments/exp", entry_point="entryPoints/sleepy",
            parameters={"label": "a\x00b", "seconds": "inf"})), {"parameters"}),
        (lambda: stubs.job.StreamJobLogs(
            job_pb.StreamJobLogsRequest(name="jobs/0123456789abcdef", attempt=-1)), {"attempt"}),
        (lambda: stubs.ep.UploadEntryPoint(iter([ep_pb.UploadEntryPointRequest(chunk=b"x")])),
         {"metadata"}),
        (lambda: stubs.ep.UploadEntryPoint(garbage), {"chunk"}),
        (lambda: stubs.agent.DownloadBlob(agent_pb.DownloadBlobRequest(digest="nope")),
         {"digest"}),
    ]  # fmt: skip
    for call, fields in cases:
        violations = _violations(call)
        assert violations and all(field for field, _ in violations), violations
        assert {field for field, _ in violations} == fields, violations
    # Values a process could not be given are refused at submit, not at run time.
    refused = _violations(cases[6][0])
    assert ("parameters", "parameter 'label': a NUL character is not allowed") in refused
    assert ("parameters", "parameter 'seconds': infinity is not allowed") in refused


def test_submit_is_idempotent_by_request_id(stubs: Any) -> None:
    setup_job_world(stubs)
    a = submit(stubs, request_id="req-1")
    b = submit(stubs, request_id="req-1")
    assert a.name == b.name
    code, msg = code_of(submit, stubs, request_id="req-1", parameters={"label": "other"})
    assert code == grpc.StatusCode.ALREADY_EXISTS and a.name in msg
    listed = stubs.job.ListJobs(job_pb.ListJobsRequest())
    assert [j.name for j in listed.jobs] == [a.name]


def test_list_jobs_filters_pages_and_tokens(stubs: Any) -> None:
    setup_job_world(stubs)
    jobs = [submit(stubs, queue="q1" if i % 2 else "q2") for i in range(5)]
    stubs.job.CancelJob(job_pb.CancelJobRequest(name=jobs[0].name))
    names, token = [], ""
    while True:
        resp = stubs.job.ListJobs(job_pb.ListJobsRequest(page_size=2, page_token=token))
        names += [j.name for j in resp.jobs]
        token = resp.next_page_token
        if not token:
            break
    assert names == [j.name for j in reversed(jobs)]
    q1 = stubs.job.ListJobs(job_pb.ListJobsRequest(filter="queue=q1"))
    assert {j.name for j in q1.jobs} == {jobs[1].name, jobs[3].name}
    cancelled = stubs.job.ListJobs(job_pb.ListJobsRequest(filter="state=CANCELLED"))
    assert [j.name for j in cancelled.jobs] == [jobs[0].name]
    both = stubs.job.ListJobs(
        job_pb.ListJobsRequest(filter="state=queued,cancelled experiment=experiments/exp")
    )
    assert len(both.jobs) == 5
    first = stubs.job.ListJobs(job_pb.ListJobsRequest(page_size=1, filter="queue=q2"))
    code, _ = code_of(
        stubs.job.ListJobs,
        job_pb.ListJobsRequest(page_size=1, filter="queue=q1", page_token=first.next_page_token),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, msg = code_of(stubs.job.ListJobs, job_pb.ListJobsRequest(filter="state=DONE owner=me"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "DONE" in msg and "owner" in msg
    code, _ = code_of(stubs.job.ListJobs, job_pb.ListJobsRequest(page_token="AAAA"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_get_cancel_watch_logs_errors_and_queued_cancel(stubs: Any) -> None:
    setup_job_world(stubs)
    for call, req in [
        (stubs.job.GetJob, job_pb.GetJobRequest(name="jobs/0123456789abcdef")),
        (stubs.job.CancelJob, job_pb.CancelJobRequest(name="jobs/0123456789abcdef")),
        (stubs.job.WatchJob, job_pb.WatchJobRequest(name="jobs/0123456789abcdef")),
        (stubs.job.StreamJobLogs, job_pb.StreamJobLogsRequest(name="jobs/0123456789abcdef")),
    ]:
        assert code_of(call, req)[0] == grpc.StatusCode.NOT_FOUND
        bad = type(req)(name="jobs/nope")
        assert code_of(call, bad)[0] == grpc.StatusCode.INVALID_ARGUMENT
    job = submit(stubs)
    code, _ = code_of(
        stubs.job.StreamJobLogs, job_pb.StreamJobLogsRequest(name=job.name, start_offset=-1)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    done = stubs.job.CancelJob(job_pb.CancelJobRequest(name=job.name, reason="changed my mind"))
    assert done.job.state == S.JOB_STATE_CANCELLED
    assert done.job.state_reason == "changed my mind"
    again = stubs.job.CancelJob(job_pb.CancelJobRequest(name=job.name))
    assert again.job.state == S.JOB_STATE_CANCELLED
    assert again.job.update_time == done.job.update_time
    states = [r.job.state for r in stubs.job.WatchJob(job_pb.WatchJobRequest(name=job.name))]
    assert states == [S.JOB_STATE_CANCELLED]
    assert (
        list(stubs.job.StreamJobLogs(job_pb.StreamJobLogsRequest(name=job.name, follow=True))) == []
    )


# -- the agent protocol ------------------------------------------------------------------


def test_dispatch_run_logs_and_watch(stubs: Any, server: ServerThread) -> None:
    setup_job_world(stubs)
    job = submit(stubs, timeout=duration_pb2.Duration(seconds=60))
    agent = SimAgent(server.target, "sim-1")
    try:
        assert agent.registered.agent == "agents/sim-1"
        assert agent.registered.heartbeat_interval.ToMilliseconds() == 500
        states: list[int] = []
        watcher = threading.Thread(
            target=lambda: states.extend(
                r.job.state for r in stubs.job.WatchJob(job_pb.WatchJobRequest(name=job.name))
            )
        )
        follower_lines: list[str] = []
        follower = threading.Thread(
            target=lambda: follower_lines.extend(
                ln.text
                for r in stubs.job.StreamJobLogs(
                    job_pb.StreamJobLogsRequest(name=job.name, follow=True)
                )
                for ln in r.lines
            )
        )
        watcher.start()
        follower.start()

        assignment = agent.next("assignment")
        assert assignment.job.name == job.name and assignment.attempt == 1
        assert assignment.job.parameters["label"] == "hi"
        assert assignment.job.timeout.seconds == 60
        assert assignment.grace_period.seconds == 2
        wait_until(lambda: states)  # the watcher has seen the job before it runs
        agent.update(job.name, 1, S.JOB_STATE_RUNNING)
        agent.logs(job.name, 1, [(1, "one"), (2, "two")])
        assert agent.next("log_ack").sequence == 2
        agent.logs(job.name, 1, [(2, "two"), (3, "three")])  # a replay after a reconnect
        assert agent.next("log_ack").sequence == 3
        agent.update(job.name, 1, S.JOB_STATE_SUCCEEDED, exit_code=0)
        watcher.join(10)
        follower.join(10)
        # Watch sends the job now and after every change; changes that land together
        # may arrive as one, but never out of order.
        assert states[0] in (S.JOB_STATE_QUEUED, S.JOB_STATE_ASSIGNED)
        assert states == sorted(states) and states[-1] == S.JOB_STATE_SUCCEEDED
        assert follower_lines == ["one", "two", "three"]
        final = stubs.job.GetJob(job_pb.GetJobRequest(name=job.name)).job
        assert final.agent == "agents/sim-1" and final.exit_code == 0 and final.attempt == 1
        assert final.start_time.seconds and final.end_time.seconds
        lines = [
            ln
            for r in stubs.job.StreamJobLogs(
                job_pb.StreamJobLogsRequest(name=job.name, start_offset=1)
            )
            for ln in r.lines
        ]
        assert [(ln.offset, ln.sequence, ln.text) for ln in lines] == [
            (1, 2, "two"),
            (2, 3, "three"),
        ]
        # A late report for the finished attempt is fenced off.
        agent.update(job.name, 1, S.JOB_STATE_FAILED, exit_code=1)
        time.sleep(0.3)
        assert (
            stubs.job.GetJob(job_pb.GetJobRequest(name=job.name)).job.state == S.JOB_STATE_SUCCEEDED
        )

        listed = stubs.agent.ListAgents(agent_pb.ListAgentsRequest(filter="state=CONNECTED"))
        assert [a.name for a in listed.agents] == ["agents/sim-1"]
        got = stubs.agent.GetAgent(agent_pb.GetAgentRequest(name="agents/sim-1")).agent
        assert got.capacity.slots == 1 and list(got.queues) == ["default"]
    finally:
        agent.close()
    assert (
        code_of(stubs.agent.GetAgent, agent_pb.GetAgentRequest(name="agents/ghost"))[0]
        == grpc.StatusCode.NOT_FOUND
    )
    wait_until(
        lambda: stubs.agent.GetAgent(agent_pb.GetAgentRequest(name="agents/sim-1")).agent.state == 2
    )


def test_queue_selector_and_slots(stubs: Any, server: ServerThread) -> None:
    setup_job_world(stubs)
    gpu_job = submit(stubs, queue="gpu", selector={"gpu": "h100"})
    cpu_jobs = [submit(stubs) for _ in range(3)]
    cpu = SimAgent(server.target, "cpu", slots=2)
    gpu = SimAgent(server.target, "gpu", queues=["gpu"], labels={"gpu": "h100"})
    try:
        first = {cpu.next("assignment").job.name, cpu.next("assignment").job.name}
        assert first == {cpu_jobs[0].name, cpu_jobs[1].name}  # oldest first, two slots
        assert gpu.next("assignment").job.name == gpu_job.name
        with pytest.raises(queue.Empty):
            cpu.next("assignment", timeout=0.5)  # no free slot
        cpu.update(cpu_jobs[0].name, 1, S.JOB_STATE_FAILED, exit_code=3, message="exit code 3")
        assert cpu.next("assignment").job.name == cpu_jobs[2].name
        failed = stubs.job.GetJob(job_pb.GetJobRequest(name=cpu_jobs[0].name)).job
        assert failed.state == S.JOB_STATE_FAILED and failed.exit_code == 3
    finally:
        cpu.close()
        gpu.close()


def test_a_queued_job_says_what_it_waits_for(stubs: Any, server: ServerThread) -> None:
    setup_job_world(stubs)

    def reason(job: job_pb2.Job) -> str:
        return stubs.job.GetJob(job_pb.GetJobRequest(name=job.name)).job.state_reason

    def reason_becomes(job: job_pb2.Job, want: str) -> None:
        wait_until(lambda: reason(job) == want, timeout=10)

    plain = submit(stubs)
    assert plain.state_reason == "no connected agent serves queue 'default'"
    gpu_job = submit(stubs, queue="gpu", selector={"gpu": "h100"})
    assert gpu_job.state_reason == "no connected agent serves queue 'gpu'"

    watch = stubs.job.WatchJob(job_pb.WatchJobRequest(name=gpu_job.name), timeout=30)
    seen: queue.Queue[str] = queue.Queue()

    def read_watch() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end of the test
            for response in watch:
                seen.put(response.job.state_reason)

    threading.Thread(target=read_watch, daemon=True).start()
    a100 = SimAgent(server.target, "a100", queues=["gpu"], labels={"gpu": "a100"})
    cpu = SimAgent(server.target, "cpu", queues=["gpu"])
    try:
        want = "2 agents serve queue 'gpu' but none has label gpu=h100"
        reason_becomes(gpu_job, want)
        # The watch is told, as the reason changes: a `--watch` does not go silent.
        deadline = time.monotonic() + 10
        while seen.get(timeout=max(0.1, deadline - time.monotonic())) != want:
            pass
        assert reason(plain) == "no connected agent serves queue 'default'"

        a100.close()
        reason_becomes(gpu_job, "1 agent serves queue 'gpu' but none has label gpu=h100")

        # A matching agent without a free slot: the job waits for a slot, and says so.
        h100 = SimAgent(server.target, "h100", queues=["gpu"], labels={"gpu": "h100"})
        try:
            assert h100.next("assignment").job.name == gpu_job.name
            got = stubs.job.GetJob(job_pb.GetJobRequest(name=gpu_job.name)).job
            assert got.state == S.JOB_STATE_ASSIGNED and got.state_reason == ""
            second = submit(stubs, queue="gpu", selector={"gpu": "h100"})
            assert second.state_reason == (
                "waiting for a free slot: 1 matching agent, all slots busy or draining"
            )
        finally:
            h100.close()
    finally:
        cpu.close()
        watch.cancel()


def test_lease_expiry_requeues_then_fails(stubs: Any, server: ServerThread) -> None:
    setup_job_world(stubs)
    job = submit(stubs, max_attempts=2)
    lost = SimAgent(server.target, "lost")
    assert lost.next("assignment").attempt == 1
    lost.update(job.name, 1, S.JOB_STATE_RUNNING)
    lost.close()  # gone without a word: only the lease notices
    requeued = wait_until(
        lambda: (
            (j := stubs.job.GetJob(job_pb.GetJobRequest(name=job.name)).job).state
            == S.JOB_STATE_QUEUED
            and j
        )
    )
    assert "lost" in requeued.state_reason and requeued.attempt == 1
    second = SimAgent(server.target, "second")
    try:
        a = second.next("assignment")
        assert a.attempt == 2
        # Heartbeats keep the lease alive well past its duration (3 s).
        for _ in range(10):
            second.heartbeat([(job.name, 2)])
            time.sleep(0.5)
        assert (
            stubs.job.GetJob(job_pb.GetJobRequest(name=job.name)).job.state == S.JOB_STATE_ASSIGNED
        )
    finally:
        second.close()
    failed = wait_until(
        lambda: (
            (j := stubs.job.GetJob(job_pb.GetJobRequest(name=job.name)).job).state
            == S.JOB_STATE_FAILED
            and j
        )
    )
    assert "no attempts left" in failed.state_reason


def test_logs_mark_and_select_attempts(stubs: Any, server: ServerThread) -> None:
    setup_job_world(stubs)
    job = submit(stubs, max_attempts=2)

    def logs(**kwargs: Any) -> list[tuple[int, str]]:
        request = job_pb.StreamJobLogsRequest(name=job.name, **kwargs)
        return [(ln.attempt, ln.text) for r in stubs.job.StreamJobLogs(request) for ln in r.lines]

    lost = SimAgent(server.target, "lost")
    assert lost.next("assignment").attempt == 1
    lost.update(job.name, 1, S.JOB_STATE_RUNNING)
    lost.logs(job.name, 1, [(1, "first try"), (2, "still first")])
    wait_until(lambda: len(logs()) == 2)
    lost.close()  # lost: the lease requeues the job
    second = SimAgent(server.target, "second")
    try:
        assert second.next("assignment").attempt == 2
        second.update(job.name, 2, S.JOB_STATE_RUNNING)
        second.logs(job.name, 2, [(1, "second try")])
        second.update(job.name, 2, S.JOB_STATE_SUCCEEDED, exit_code=0)
        wait_until(lambda: len(logs()) == 3)
    finally:
        second.close()

    assert logs() == [(1, "first try"), (1, "still first"), (2, "second try")]
    assert logs(attempt=2) == [(2, "second try")]
    assert logs(attempt=1, start_offset=1) == [(1, "still first")]
    code, msg = code_of(
        stubs.job.StreamJobLogs, job_pb.StreamJobLogsRequest(name=job.name, attempt=-1)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "attempt" in msg

    plain = run_cli(server.target, "job", "logs", job.name).stdout.splitlines()
    assert plain == [
        "--- attempt 1 ---",
        "first try",
        "still first",
        "--- attempt 2 ---",
        "second try",
    ]
    only = run_cli(server.target, "job", "logs", job.name, "--attempt", "2").stdout
    assert only.splitlines() == ["--- attempt 2 ---", "second try"]


def test_cancel_running_job_reaches_the_agent(stubs: Any, server: ServerThread) -> None:
    setup_job_world(stubs)
    job = submit(stubs)
    agent = SimAgent(server.target, "canceller")
    try:
        agent.next("assignment")
        agent.update(job.name, 1, S.JOB_STATE_RUNNING)
        wait_until(
            lambda: (
                stubs.job.GetJob(job_pb.GetJobRequest(name=job.name)).job.state
                == S.JOB_STATE_RUNNING
            )
        )
        resp = stubs.job.CancelJob(job_pb.CancelJobRequest(name=job.name, reason="stop it"))
        assert resp.job.state == S.JOB_STATE_RUNNING and resp.job.cancel_requested
        cancel = agent.next("cancel")
        assert cancel.job == job.name and cancel.attempt == 1 and cancel.reason == "stop it"
        agent.update(job.name, 1, S.JOB_STATE_CANCELLED, exit_code=-15)
        final = wait_until(
            lambda: (
                (j := stubs.job.GetJob(job_pb.GetJobRequest(name=job.name)).job).state
                == S.JOB_STATE_CANCELLED
                and j
            )
        )
        assert final.state_reason == "stop it"
    finally:
        agent.close()


def test_reconnect_keeps_attempt_and_cancels_stale_ones(stubs: Any, server: ServerThread) -> None:
    setup_job_world(stubs)
    job = submit(stubs)
    first = SimAgent(server.target, "flaky")
    first.next("assignment")
    first.update(job.name, 1, S.JOB_STATE_RUNNING)
    wait_until(
        lambda: (
            stubs.job.GetJob(job_pb.GetJobRequest(name=job.name)).job.state == S.JOB_STATE_RUNNING
        )
    )
    first.close()
    again = SimAgent(server.target, "flaky", running=[(job.name, 1), ("jobs/0123456789abcdef", 4)])
    try:
        stale = again.next("cancel")
        assert stale.job == "jobs/0123456789abcdef"
        for _ in range(8):  # past the 3 s lease
            again.heartbeat([(job.name, 1)])
            time.sleep(0.5)
        assert (
            stubs.job.GetJob(job_pb.GetJobRequest(name=job.name)).job.state == S.JOB_STATE_RUNNING
        )
        again.update(job.name, 1, S.JOB_STATE_SUCCEEDED, exit_code=0)
        wait_until(
            lambda: (
                stubs.job.GetJob(job_pb.GetJobRequest(name=job.name)).job.state
                == S.JOB_STATE_SUCCEEDED
            )
        )
    finally:
        again.close()


def test_connect_must_start_with_register(stubs: Any) -> None:
    code, msg = code_of(
        stubs.agent.Connect, iter([agent_pb.ConnectRequest(heartbeat=agent_pb.Heartbeat())])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Register" in msg
    code, _ = code_of(
        stubs.agent.Connect,
        iter([agent_pb.ConnectRequest(register=agent_pb.Register(agent_id="BAD ID"))]),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_health_and_reflection_services(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "brinell.v1.JobService", "brinell.v1.AgentService"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {
        "brinell.v1.ExperimentService",
        "brinell.v1.EntryPointService",
        "brinell.v1.JobService",
        "brinell.v1.AgentService",
        "grpc.health.v1.Health",
    } <= services
