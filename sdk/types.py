"""What the SDK returns: plain frozen dataclasses built from the API's protobuf messages.

Users get Python values (timezone-aware datetimes, timedeltas, enums) rather than protobuf
messages, so their code does not depend on generated code. Times that the server has not set
are ``None``. Dict fields make instances unhashable; compare them with ``==``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from google.protobuf.duration_pb2 import Duration
    from google.protobuf.message import Message
    from google.protobuf.timestamp_pb2 import Timestamp

    from brinell.v1 import agent_pb2, entry_point_pb2, experiment_pb2, job_pb2, plugin_pb2

__all__ = [
    "Agent",
    "AgentState",
    "Capacity",
    "Entry",
    "EntryPoint",
    "EntryPointRevision",
    "Experiment",
    "Gpu",
    "Job",
    "JobState",
    "LogLine",
    "LogStream",
    "Parameter",
    "PluginPin",
]


def _time(msg: Message, field_name: str) -> datetime | None:
    if not msg.HasField(field_name):
        return None
    ts: Timestamp = getattr(msg, field_name)
    return datetime.fromtimestamp(int(ts.seconds), UTC) + timedelta(microseconds=ts.nanos // 1000)


def _duration(msg: Message, field_name: str) -> timedelta | None:
    """A Duration field; unset and zero both mean "none" in this API (no limit)."""
    if not msg.HasField(field_name):
        return None
    d: Duration = getattr(msg, field_name)
    value = timedelta(seconds=int(d.seconds), microseconds=int(d.nanos) // 1000)
    return value if value else None


def _after(name: str, prefix: str) -> str:
    return name[len(prefix) :] if name.startswith(prefix) else name


class JobState(StrEnum):
    """A job's lifecycle state; see ``brinell.v1.JobState``."""

    UNSPECIFIED = "UNSPECIFIED"
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_final(self) -> bool:
        """Whether the job will never change state again."""
        return self in _FINAL

    @classmethod
    def from_proto(cls, value: int) -> JobState:
        # Unknown numbers are states added to the API after this SDK was built.
        return _JOB_STATES.get(int(value), cls.UNSPECIFIED)


_JOB_STATES = {
    1: JobState.PENDING,
    2: JobState.QUEUED,
    3: JobState.ASSIGNED,
    4: JobState.RUNNING,
    5: JobState.SUCCEEDED,
    6: JobState.FAILED,
    7: JobState.CANCELLED,
    8: JobState.TIMED_OUT,
}
_FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT})


class LogStream(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    STDOUT = "STDOUT"
    STDERR = "STDERR"
    #: Lines written by the agent itself (fetching, starting, signals).
    SYSTEM = "SYSTEM"

    @classmethod
    def from_proto(cls, value: int) -> LogStream:
        return _LOG_STREAMS.get(int(value), cls.UNSPECIFIED)


_LOG_STREAMS = {1: LogStream.STDOUT, 2: LogStream.STDERR, 3: LogStream.SYSTEM}


class AgentState(StrEnum):
    UNSPECIFIED = "UNSPECIFIED"
    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"
    #: Connected, but takes no new jobs.
    DRAINING = "DRAINING"

    @classmethod
    def from_proto(cls, value: int) -> AgentState:
        return _AGENT_STATES.get(int(value), cls.UNSPECIFIED)


_AGENT_STATES = {1: AgentState.CONNECTED, 2: AgentState.DISCONNECTED, 3: AgentState.DRAINING}

_PARAMETER_TYPES = {1: "string", 2: "float", 3: "int", 4: "path", 5: "uri"}


@dataclass(frozen=True)
class Experiment:
    """A collection of related jobs; owns one MLflow experiment."""

    name: str
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    mlflow_experiment_id: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None
    #: Who created it (``users/{id}``; empty for what predates users).
    creator: str = ""
    #: ``groups/{id}``: its members (and admins) see it and submit to it.
    group: str = ""

    @property
    def id(self) -> str:
        return _after(self.name, "experiments/")

    @classmethod
    def from_proto(cls, msg: experiment_pb2.Experiment) -> Experiment:
        return cls(
            name=str(msg.name),
            description=str(msg.description),
            labels=dict(msg.labels),
            mlflow_experiment_id=str(msg.mlflow_experiment_id),
            create_time=_time(msg, "create_time"),
            update_time=_time(msg, "update_time"),
            creator=str(msg.creator),
            group=str(msg.group),
        )


@dataclass(frozen=True)
class Parameter:
    """A declared MLproject parameter; ``default`` is None when the parameter is required."""

    name: str
    type: str = "string"
    default: str | None = None

    @property
    def required(self) -> bool:
        return self.default is None

    @classmethod
    def from_proto(cls, msg: entry_point_pb2.Parameter) -> Parameter:
        return cls(
            name=str(msg.name),
            type=_PARAMETER_TYPES.get(int(msg.type), "string"),
            default=str(msg.default_value) if msg.has_default else None,
        )


@dataclass(frozen=True)
class Entry:
    """One ``entry_points:`` item of an MLproject."""

    name: str
    command: str = ""
    parameters: tuple[Parameter, ...] = ()

    @classmethod
    def from_proto(cls, msg: entry_point_pb2.Entry) -> Entry:
        return cls(
            name=str(msg.name),
            command=str(msg.command),
            parameters=tuple(Parameter.from_proto(p) for p in msg.parameters),
        )


@dataclass(frozen=True)
class EntryPointRevision:
    """An immutable uploaded archive of an entry point, identified by its sha256 digest."""

    name: str
    digest: str = ""
    size_bytes: int = 0
    project_name: str = ""
    entries: tuple[Entry, ...] = ()
    create_time: datetime | None = None
    #: Who created it (``users/{id}``; empty for what predates users).
    creator: str = ""

    @property
    def entry_point(self) -> str:
        """The owning entry point's resource name (``entryPoints/{id}``)."""
        return self.name.split("/revisions/", 1)[0]

    def entry(self, name: str = "main") -> Entry | None:
        return next((e for e in self.entries if e.name == name), None)

    @classmethod
    def from_proto(cls, msg: entry_point_pb2.EntryPointRevision) -> EntryPointRevision:
        return cls(
            name=str(msg.name),
            digest=str(msg.digest),
            size_bytes=int(msg.size_bytes),
            project_name=str(msg.project_name),
            entries=tuple(Entry.from_proto(e) for e in msg.entries),
            create_time=_time(msg, "create_time"),
            creator=str(msg.creator),
        )


@dataclass(frozen=True)
class EntryPoint:
    """A named series of revisions; jobs use ``latest_revision`` unless they pin a digest."""

    name: str
    description: str = ""
    latest_revision: EntryPointRevision | None = None
    revision_count: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None
    #: Who created it (``users/{id}``; empty for what predates users).
    creator: str = ""

    @property
    def id(self) -> str:
        return _after(self.name, "entryPoints/")

    @classmethod
    def from_proto(cls, msg: entry_point_pb2.EntryPoint) -> EntryPoint:
        return cls(
            name=str(msg.name),
            description=str(msg.description),
            latest_revision=(
                EntryPointRevision.from_proto(msg.latest_revision)
                if msg.HasField("latest_revision")
                else None
            ),
            revision_count=int(msg.revision_count),
            create_time=_time(msg, "create_time"),
            update_time=_time(msg, "update_time"),
            creator=str(msg.creator),
        )


@dataclass(frozen=True)
class PluginPin:
    """A plugin version a job runs with, pinned at submit (here, not in ``plugins.py``,
    because ``Job`` holds it and ``plugins.py`` builds on the client)."""

    plugin: str  # `plugins/{id}`
    version: str = ""
    digest: str = ""
    package: str = ""

    @property
    def plugin_id(self) -> str:
        return _after(self.plugin, "plugins/")

    @classmethod
    def from_proto(cls, msg: plugin_pb2.PluginPin) -> PluginPin:
        return cls(
            plugin=str(msg.plugin),
            version=str(msg.version),
            digest=str(msg.digest),
            package=str(msg.package),
        )


@dataclass(frozen=True)
class Job:
    """One submitted run of an entry point; ``attempt`` is the current attempt's number.

    ``exit_code`` is 0 until an attempt's process has exited (the API has no "unset").
    """

    name: str
    experiment: str = ""
    entry_point: str = ""
    entry_point_digest: str = ""
    entry: str = "main"
    parameters: dict[str, str] = field(default_factory=dict)
    queue: str = "default"
    selector: dict[str, str] = field(default_factory=dict)
    state: JobState = JobState.UNSPECIFIED
    state_reason: str = ""
    timeout: timedelta | None = None
    max_attempts: int = 0
    attempt: int = 0
    agent: str = ""
    mlflow_run_id: str = ""
    exit_code: int = 0
    cancel_requested: bool = False
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    update_time: datetime | None = None
    #: The plugin versions the job runs with, pinned at submit.
    plugins: tuple[PluginPin, ...] = ()
    #: Who created it (``users/{id}``; empty for what predates users).
    creator: str = ""
    #: What one attempt needs of its agent.
    resources: Resources = field(default_factory=lambda: Resources())
    #: The container image asked for (submit, else the MLproject's ``docker_env.image``).
    image: str = ""
    #: Higher runs first (FIFO within a priority).
    priority: int = 0
    #: How long it may wait in the queue before it ends TIMED_OUT (None: forever).
    queue_timeout: timedelta | None = None
    #: The image the current or last attempt ran in (``repository@sha256:…``).
    image_digest: str = ""
    #: UUIDs of the GPUs the current or last attempt holds.
    gpu_uuids: tuple[str, ...] = ()
    #: Retries for failures the job reports as retryable (None: no retries).
    retry: RetryPolicy | None = None
    #: Retries spent so far (agent-loss requeues not counted).
    retries: int = 0
    #: The jobs it waits on: alias -> ``jobs/{id}`` (PENDING until they all succeed).
    depends_on: dict[str, str] = field(default_factory=dict)
    #: A retry waits until then (its backoff).
    not_before: datetime | None = None

    @property
    def id(self) -> str:
        return _after(self.name, "jobs/")

    @property
    def is_final(self) -> bool:
        return self.state.is_final

    @property
    def succeeded(self) -> bool:
        return self.state is JobState.SUCCEEDED

    @property
    def duration(self) -> timedelta | None:
        """Run time so far (or in total, once ended); None before it started."""
        if self.start_time is None:
            return None
        end = self.end_time or datetime.now(UTC)
        return end - self.start_time

    @classmethod
    def from_proto(cls, msg: job_pb2.Job) -> Job:
        return cls(
            name=str(msg.name),
            experiment=str(msg.experiment),
            entry_point=str(msg.entry_point),
            entry_point_digest=str(msg.entry_point_digest),
            entry=str(msg.entry),
            parameters=dict(msg.parameters),
            queue=str(msg.queue),
            selector=dict(msg.selector),
            state=JobState.from_proto(int(msg.state)),
            state_reason=str(msg.state_reason),
            timeout=_duration(msg, "timeout"),
            max_attempts=int(msg.max_attempts),
            attempt=int(msg.attempt),
            agent=str(msg.agent),
            mlflow_run_id=str(msg.mlflow_run_id),
            exit_code=int(msg.exit_code),
            cancel_requested=bool(msg.cancel_requested),
            create_time=_time(msg, "create_time"),
            start_time=_time(msg, "start_time"),
            end_time=_time(msg, "end_time"),
            update_time=_time(msg, "update_time"),
            plugins=tuple(PluginPin.from_proto(p) for p in msg.plugins),
            creator=str(msg.creator),
            resources=Resources.from_proto(msg.resources),
            image=str(msg.image),
            image_digest=str(msg.image_digest),
            gpu_uuids=tuple(str(u) for u in msg.gpu_uuids),
            priority=int(msg.priority),
            queue_timeout=_duration(msg, "queue_timeout"),
            retry=RetryPolicy.from_proto(msg.retry) if msg.HasField("retry") else None,
            retries=int(msg.retries),
            depends_on=dict(msg.depends_on),
            not_before=_time(msg, "not_before"),
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for failures a job reports itself: an attempt that exits with one of
    ``exit_codes`` (default 75, EX_TEMPFAIL) runs again after ``backoff`` seconds (doubled for
    each next retry, at most an hour), up to ``max_retries`` times. Separate from the
    requeues after an agent was lost, which ``max_attempts`` bounds."""

    max_retries: int = 1
    backoff: float = 10.0
    exit_codes: tuple[int, ...] = (75,)

    @classmethod
    def from_proto(cls, msg: job_pb2.RetryPolicy) -> RetryPolicy:
        backoff = msg.backoff.ToNanoseconds() / 1e9 if msg.HasField("backoff") else 10.0
        return cls(int(msg.max_retries), backoff, tuple(int(c) for c in msg.exit_codes))

    def to_proto(self) -> job_pb2.RetryPolicy:
        out = job_pb2.RetryPolicy(max_retries=self.max_retries, exit_codes=list(self.exit_codes))
        out.backoff.FromTimedelta(timedelta(seconds=self.backoff))
        return out


@dataclass(frozen=True)
class Resources:
    """What one attempt of a job needs: CPUs and memory (limits under the docker executor;
    an agent with less does not take the job) and GPUs held alone, optionally of one model
    (``gpu_model="H100"`` matches any model name containing it). Zeros ask for nothing."""

    cpus: float = 0.0
    memory_bytes: int = 0
    gpus: int = 0
    gpu_model: str = ""

    @classmethod
    def from_proto(cls, msg: job_pb2.Resources) -> Resources:
        return cls(
            cpus=float(msg.cpus),
            memory_bytes=int(msg.memory_bytes),
            gpus=int(msg.gpus),
            gpu_model=str(msg.gpu_model),
        )


@dataclass(frozen=True)
class LogLine:
    """One line of a job's output; resume a stream with ``start_offset = offset + 1``."""

    offset: int
    text: str
    attempt: int = 0
    sequence: int = 0
    stream: LogStream = LogStream.STDOUT
    time: datetime | None = None

    @classmethod
    def from_proto(cls, msg: job_pb2.LogLine) -> LogLine:
        return cls(
            offset=int(msg.offset),
            text=str(msg.text),
            attempt=int(msg.attempt),
            sequence=int(msg.sequence),
            stream=LogStream.from_proto(int(msg.stream)),
            time=_time(msg, "time"),
        )


@dataclass(frozen=True)
class Gpu:
    uuid: str
    model: str = ""
    memory_bytes: int = 0

    @classmethod
    def from_proto(cls, msg: agent_pb2.Gpu) -> Gpu:
        return cls(uuid=str(msg.uuid), model=str(msg.model), memory_bytes=int(msg.memory_bytes))


@dataclass(frozen=True)
class Capacity:
    """What an agent's host offers; ``slots`` is how many jobs it runs at once."""

    cpus: int = 0
    memory_bytes: int = 0
    slots: int = 0
    gpus: tuple[Gpu, ...] = ()

    @classmethod
    def from_proto(cls, msg: agent_pb2.Capacity) -> Capacity:
        return cls(
            cpus=int(msg.cpus),
            memory_bytes=int(msg.memory_bytes),
            slots=int(msg.slots),
            gpus=tuple(Gpu.from_proto(g) for g in msg.gpus),
        )


@dataclass(frozen=True)
class Agent:
    """A compute host's daemon as the control plane last saw it."""

    name: str
    hostname: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    queues: tuple[str, ...] = ()
    capacity: Capacity = field(default_factory=Capacity)
    state: AgentState = AgentState.UNSPECIFIED
    running: int = 0
    version: str = ""
    executor: str = ""
    connect_time: datetime | None = None
    last_heartbeat_time: datetime | None = None
    # The control-plane replica that holds its stream ("" when disconnected).
    replica: str = ""

    @property
    def id(self) -> str:
        return _after(self.name, "agents/")

    @classmethod
    def from_proto(cls, msg: agent_pb2.Agent) -> Agent:
        return cls(
            name=str(msg.name),
            hostname=str(msg.hostname),
            labels=dict(msg.labels),
            queues=tuple(str(q) for q in msg.queues),
            capacity=Capacity.from_proto(msg.capacity),
            state=AgentState.from_proto(int(msg.state)),
            running=int(msg.running),
            version=str(msg.version),
            executor=str(msg.executor),
            connect_time=_time(msg, "connect_time"),
            last_heartbeat_time=_time(msg, "last_heartbeat_time"),
            replica=str(msg.replica),
        )
