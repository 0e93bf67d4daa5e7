"""Domain records <-> brinell.v1 messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2

from brinell.v1 import (
    agent_pb2,
    auth_pb2,
    entry_point_pb2,
    experiment_pb2,
    job_pb2,
    job_service_pb2,
    plugin_pb2,
)

from ..domain import models as m
from ..domain.errors import InvalidArgument
from ..domain.identity import Group, Role, Token, User
from ..domain.states import JobState

PARAM_TYPES = {
    "string": entry_point_pb2.PARAMETER_TYPE_STRING,
    "float": entry_point_pb2.PARAMETER_TYPE_FLOAT,
    "int": entry_point_pb2.PARAMETER_TYPE_INT,
    "path": entry_point_pb2.PARAMETER_TYPE_PATH,
    "uri": entry_point_pb2.PARAMETER_TYPE_URI,
}

AGENT_STATES = {
    "CONNECTED": agent_pb2.AGENT_STATE_CONNECTED,
    "DISCONNECTED": agent_pb2.AGENT_STATE_DISCONNECTED,
    "DRAINING": agent_pb2.AGENT_STATE_DRAINING,
}


def ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


def job_state(state: JobState) -> job_pb2.JobState.ValueType:
    return job_pb2.JobState.Value(f"JOB_STATE_{state.value}")


# The domain keeps a log line's stream as the enum's number; these are the numbers it may be.
LOG_STREAMS = {int(v): v for v in job_pb2.LogStream.values()}


def job_state_from(value: job_pb2.JobState.ValueType) -> JobState | None:
    name = job_pb2.JobState.Name(value).removeprefix("JOB_STATE_")
    return None if name == "UNSPECIFIED" else JobState(name)


def experiment(e: m.Experiment) -> experiment_pb2.Experiment:
    return experiment_pb2.Experiment(
        name=f"experiments/{e.id}",
        description=e.description,
        labels=e.labels,
        mlflow_experiment_id=e.mlflow_experiment_id,
        create_time=ts(e.create_time),
        update_time=ts(e.update_time),
        creator=e.creator,
        group=f"groups/{e.group}",
    )


def revision(r: m.Revision) -> entry_point_pb2.EntryPointRevision:
    return entry_point_pb2.EntryPointRevision(
        name=f"entryPoints/{r.entry_point_id}/revisions/{r.digest}",
        digest=r.digest,
        size_bytes=r.size_bytes,
        project_name=r.project_name,
        entries=[
            entry_point_pb2.Entry(
                name=e["name"],
                command=e["command"],
                plugins=e.get("plugins", []),
                graph=e.get("graph") or "",
                parameters=[
                    entry_point_pb2.Parameter(
                        name=p["name"],
                        type=PARAM_TYPES[p["type"]],
                        has_default=p["default"] is not None,
                        default_value=p["default"] or "",
                    )
                    for p in e["parameters"]
                ],
            )
            for e in r.spec["entries"]
        ],
        create_time=ts(r.create_time),
        creator=r.creator,
    )


def entry_point(ep: m.EntryPoint) -> entry_point_pb2.EntryPoint:
    return entry_point_pb2.EntryPoint(
        name=f"entryPoints/{ep.id}",
        description=ep.description,
        latest_revision=revision(ep.latest) if ep.latest else None,
        revision_count=ep.revision_count,
        create_time=ts(ep.create_time),
        update_time=ts(ep.update_time),
        creator=ep.creator,
    )


def job(j: m.Job) -> job_pb2.Job:
    return job_pb2.Job(
        name=f"jobs/{j.id}",
        experiment=f"experiments/{j.experiment_id}",
        entry_point=f"entryPoints/{j.entry_point_id}",
        entry_point_digest=j.digest,
        entry=j.entry,
        parameters=j.parameters,
        queue=j.queue,
        selector=j.selector,
        state=job_state(j.state),
        state_reason=j.state_reason,
        timeout=duration(j.timeout_s),
        max_attempts=j.max_attempts,
        attempt=j.attempt,
        agent=f"agents/{j.agent_id}" if j.agent_id else "",
        mlflow_run_id=j.mlflow_run_id,
        exit_code=j.exit_code or 0,
        cancel_requested=j.cancel_requested,
        create_time=ts(j.create_time),
        start_time=ts(j.start_time),
        end_time=ts(j.end_time),
        update_time=ts(j.update_time),
        plugins=[
            plugin_pb2.PluginPin(
                plugin=f"plugins/{p.plugin_id}",
                version=p.version,
                digest=p.digest,
                package=p.package,
            )
            for p in j.plugins
        ],
        creator=j.creator,
        resources=resources(j.resources),
        image=j.image,
        image_digest=j.image_digest,
        gpu_uuids=j.gpu_uuids,
        priority=j.priority,
        queue_timeout=duration(j.queue_timeout_s),
        retry=retry(j.retry) if j.retry.max_retries else None,
        retries=j.retries,
        depends_on={alias: f"jobs/{dep}" for alias, dep in j.depends_on.items()},
        not_before=ts(j.not_before) if j.state == JobState.QUEUED else None,
    )


def retry(r: m.RetryPolicy) -> job_pb2.RetryPolicy:
    return job_pb2.RetryPolicy(
        max_retries=r.max_retries, backoff=duration(r.backoff_s), exit_codes=list(r.exit_codes)
    )


def retry_from(request: job_service_pb2.SubmitJobRequest) -> m.RetryPolicy:
    if not request.HasField("retry"):
        return m.RetryPolicy()
    r = request.retry
    return m.RetryPolicy(
        max_retries=r.max_retries,
        backoff_s=r.backoff.ToNanoseconds() / 1e9 if r.HasField("backoff") else 10.0,
        exit_codes=tuple(r.exit_codes) or (75,),
    )


def resources(r: m.Resources) -> job_pb2.Resources:
    return job_pb2.Resources(
        cpus=r.cpus, memory_bytes=r.memory_bytes, gpus=r.gpus, gpu_model=r.gpu_model
    )


def resources_from(r: job_pb2.Resources) -> m.Resources:
    return m.Resources(r.cpus, r.memory_bytes, r.gpus, r.gpu_model)


def plugin_version(v: m.PluginVersion) -> plugin_pb2.PluginVersion:
    return plugin_pb2.PluginVersion(
        name=f"plugins/{v.plugin_id}/versions/{v.version}",
        version=v.version,
        digest=v.digest,
        size_bytes=v.size_bytes,
        description=v.description,
        requirements=v.requirements,
        package=v.package,
        tasks=[task(t) for t in v.tasks],
        create_time=ts(v.create_time),
        creator=v.creator,
        yanked=v.yanked,
        yank_reason=v.yank_reason,
    )


def task(t: dict[str, Any]) -> plugin_pb2.Task:
    return plugin_pb2.Task(
        name=t["name"],
        module=t["module"],
        description=t["doc"],
        inputs=[
            plugin_pb2.TaskInput(
                name=i["name"],
                type=i["type"],
                has_default=i["has_default"],
                default_value=i["default"],
            )
            for i in t["inputs"]
        ],
        output_type=t["output"],
    )


def plugin(p: m.Plugin) -> plugin_pb2.Plugin:
    return plugin_pb2.Plugin(
        name=f"plugins/{p.id}",
        description=p.description,
        latest_version=plugin_version(p.latest) if p.latest else None,
        version_count=p.version_count,
        create_time=ts(p.create_time),
        update_time=ts(p.update_time),
    )


def log_line(ln: m.LogLine) -> job_pb2.LogLine:
    return job_pb2.LogLine(
        offset=ln.offset,
        attempt=ln.attempt,
        sequence=ln.sequence,
        stream=LOG_STREAMS.get(ln.stream, job_pb2.LOG_STREAM_UNSPECIFIED),
        text=ln.text,
        time=ts(ln.time),
    )


def capacity(c: m.Capacity) -> agent_pb2.Capacity:
    return agent_pb2.Capacity(
        cpus=c.cpus,
        memory_bytes=c.memory_bytes,
        slots=c.slots,
        gpus=[
            agent_pb2.Gpu(uuid=g.uuid, model=g.model, memory_bytes=g.memory_bytes) for g in c.gpus
        ],
    )


def capacity_from(c: agent_pb2.Capacity) -> m.Capacity:
    return m.Capacity(
        cpus=c.cpus,
        memory_bytes=c.memory_bytes,
        slots=max(c.slots, 1),
        gpus=tuple(m.Gpu(g.uuid, g.model, g.memory_bytes) for g in c.gpus),
    )


def agent(a: m.AgentInfo) -> agent_pb2.Agent:
    return agent_pb2.Agent(
        name=f"agents/{a.id}",
        hostname=a.hostname,
        labels=a.labels,
        queues=a.queues,
        capacity=capacity(a.capacity),
        state=AGENT_STATES.get(a.state, agent_pb2.AGENT_STATE_UNSPECIFIED),
        running=a.running,
        version=a.version,
        executor=a.executor,
        connect_time=ts(a.connect_time),
        last_heartbeat_time=ts(a.last_heartbeat_time),
        replica=a.replica if a.state != "DISCONNECTED" else "",
    )


_Meta = TypeVar("_Meta", covariant=True)


class UploadRequest(Protocol[_Meta]):
    """A message of an upload stream: metadata first, then chunks."""

    @property
    def metadata(self) -> _Meta: ...
    @property
    def chunk(self) -> bytes: ...
    def HasField(self, field_name: Literal["metadata"]) -> bool: ...


async def split_upload(
    requests: AsyncIterator[UploadRequest[_Meta]],
) -> tuple[_Meta, AsyncIterator[bytes]]:
    """An upload stream's metadata (its first message) and then its bytes, chunk by chunk."""
    first = await anext(aiter(requests), None)
    if first is None or not first.HasField("metadata"):
        raise InvalidArgument(
            "the first message of an upload must carry metadata", field="metadata"
        )

    async def chunks() -> AsyncIterator[bytes]:
        async for msg in requests:
            if msg.HasField("metadata"):
                raise InvalidArgument("metadata may only be sent once, first", field="metadata")
            yield msg.chunk

    return first.metadata, chunks()


ROLES = {r: auth_pb2.Role.Value(f"ROLE_{r.name}") for r in Role}
TOKEN_KINDS = {"user": auth_pb2.TOKEN_KIND_USER, "agent": auth_pb2.TOKEN_KIND_AGENT}


def role_from(value: int) -> Role | None:
    return next((r for r, v in ROLES.items() if v == value), None)


def user(u: User) -> auth_pb2.User:
    return auth_pb2.User(
        name=u.name,
        role=ROLES[u.role],
        disabled=u.disabled,
        create_time=ts(u.create_time),
        creator=u.creator,
        groups=[f"groups/{g}" for g in u.groups],
    )


def group(g: Group) -> auth_pb2.Group:
    return auth_pb2.Group(
        name=g.name,
        description=g.description,
        members=[f"users/{u}" for u in g.members],
        create_time=ts(g.create_time),
        creator=g.creator,
    )


def token(t: Token) -> auth_pb2.Token:
    return auth_pb2.Token(
        name=t.name,
        kind=TOKEN_KINDS[t.kind],
        user=f"users/{t.user_id}" if t.user_id else "",
        agent_id=t.agent_id,
        queues=list(t.queues),
        labels=t.labels,
        description=t.description,
        create_time=ts(t.create_time),
        expire_time=ts(t.expire_time),
        revoke_time=ts(t.revoke_time),
        creator=t.creator,
    )


def audit_event(e: m.AuditEvent) -> auth_pb2.AuditEvent:
    return auth_pb2.AuditEvent(
        name=f"auditEvents/{e.seq}",
        time=ts(e.time),
        actor=e.actor,
        action=e.action,
        resource=e.resource,
        detail=e.detail,
    )
