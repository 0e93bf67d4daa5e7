"""Domain records. The store returns these; ORM rows never leave it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .states import JobState


@dataclass(frozen=True)
class Experiment:
    id: str
    description: str
    labels: dict[str, str]
    mlflow_experiment_id: str
    create_time: datetime
    update_time: datetime
    creator: str = ""
    group: str = "default"


@dataclass(frozen=True)
class Revision:
    entry_point_id: str
    digest: str
    size_bytes: int
    project_name: str
    # Parsed MLproject: {"entries": [{"name", "command", "parameters": [{name,type,default}]}]}
    spec: dict[str, Any]
    create_time: datetime
    creator: str = ""


@dataclass(frozen=True)
class EntryPoint:
    id: str
    description: str
    latest_digest: str
    revision_count: int
    create_time: datetime
    update_time: datetime
    latest: Revision | None = None
    creator: str = ""


@dataclass(frozen=True)
class PluginPin:
    plugin_id: str
    version: str
    digest: str
    package: str


@dataclass(frozen=True)
class PluginVersion:
    plugin_id: str
    version: str
    digest: str
    size_bytes: int
    description: str
    requirements: list[str]
    package: str
    # [{"name", "module", "inputs": [{"name", "type", "has_default", "default"}], "output",
    #   "doc"}], read from the source.
    tasks: list[dict[str, Any]]
    create_time: datetime
    creator: str = ""
    # A yanked version is never pinned by default, and a submit that names it is refused
    # (PEP 592, made strict: a version is yanked because it must not run).
    yanked: bool = False
    yank_reason: str = ""

    @property
    def pin(self) -> PluginPin:
        return PluginPin(self.plugin_id, self.version, self.digest, self.package)


@dataclass(frozen=True)
class Plugin:
    id: str
    description: str
    latest_version: str
    version_count: int
    create_time: datetime
    update_time: datetime
    latest: PluginVersion | None = None


@dataclass(frozen=True)
class Resources:
    """What one attempt needs of its agent; zeros and "" ask for nothing in particular."""

    cpus: float = 0.0
    memory_bytes: int = 0
    gpus: int = 0
    gpu_model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Resources:
        d = d or {}
        return cls(
            float(d.get("cpus", 0.0)),
            int(d.get("memory_bytes", 0)),
            int(d.get("gpus", 0)),
            str(d.get("gpu_model", "")),
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for failures a job reports as retryable (its exit code)."""

    max_retries: int = 0
    backoff_s: float = 10.0
    exit_codes: tuple[int, ...] = (75,)  # EX_TEMPFAIL

    def to_dict(self) -> dict[str, Any]:
        if not self.max_retries:
            return {}
        return {
            "max_retries": self.max_retries,
            "backoff_s": self.backoff_s,
            "exit_codes": list(self.exit_codes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> RetryPolicy:
        if not d:
            return cls()
        return cls(
            int(d.get("max_retries", 0)),
            float(d.get("backoff_s", 10.0)),
            tuple(int(c) for c in d.get("exit_codes", (75,))),
        )

    def delay(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (1-based): doubling, at most an hour."""
        return float(min(self.backoff_s * 2 ** (retry - 1), 3600.0))


@dataclass(frozen=True)
class Job:
    id: str
    experiment_id: str
    entry_point_id: str
    digest: str
    entry: str
    parameters: dict[str, str]
    queue: str
    selector: dict[str, str]
    state: JobState
    state_reason: str
    timeout_s: float
    max_attempts: int
    attempt: int
    agent_id: str
    mlflow_run_id: str
    exit_code: int | None
    cancel_requested: bool
    version: int
    create_time: datetime
    start_time: datetime | None
    end_time: datetime | None
    update_time: datetime
    request_id: str = ""
    plugins: tuple[PluginPin, ...] = ()
    creator: str = ""
    resources: Resources = Resources()
    image: str = ""
    # Of the current or last attempt.
    image_digest: str = ""
    gpu_uuids: tuple[str, ...] = ()
    priority: int = 0
    queue_timeout_s: float = 0.0
    retry: RetryPolicy = RetryPolicy()
    retries: int = 0
    # alias -> job id of the jobs it waits on (PENDING until they all succeed).
    depends_on: dict[str, str] = field(default_factory=dict)
    not_before: datetime | None = None
    # When it last entered QUEUED from PENDING (its queue time counts from then).
    queued_time: datetime | None = None

    @property
    def lost_attempts(self) -> int:
        """Attempts that ended without the job's own verdict (agent lost, stopped): what
        max_attempts bounds. Retries of retryable failures are counted apart."""
        return self.attempt - self.retries


@dataclass(frozen=True)
class JobHead:
    """What follow-up work after a state change needs of a job."""

    id: str
    state: JobState
    attempt: int
    agent_id: str
    mlflow_run_id: str


@dataclass(frozen=True)
class QueuedJob:
    """A queued job as the dispatcher sees it before claiming it."""

    id: str
    queue: str
    selector: dict[str, str]
    attempt: int
    resources: Resources = Resources()
    # The agent of its last attempt ("" before the first): a requeued job prefers another.
    last_agent: str = ""


# LogStream values of brinell.v1 that the store counts by.
STREAM_STDOUT = 1
STREAM_STDERR = 2


@dataclass(frozen=True)
class LogLine:
    offset: int
    attempt: int
    sequence: int
    stream: int  # LogStream enum value of brinell.v1
    text: str
    time: datetime


@dataclass(frozen=True)
class Gpu:
    uuid: str
    model: str = ""
    memory_bytes: int = 0


@dataclass(frozen=True)
class Capacity:
    cpus: int = 0
    memory_bytes: int = 0
    slots: int = 1
    gpus: tuple[Gpu, ...] = ()


@dataclass(frozen=True)
class AgentInfo:
    id: str
    hostname: str
    labels: dict[str, str]
    queues: list[str]
    capacity: Capacity
    state: str  # CONNECTED | DISCONNECTED | DRAINING
    version: str = ""
    executor: str = ""
    running: int = 0
    connect_time: datetime | None = None
    last_heartbeat_time: datetime | None = None
    # The control-plane replica that holds its stream ("" before it first connected).
    replica: str = ""


@dataclass(frozen=True)
class AttemptRef:
    job_id: str
    attempt: int


@dataclass
class JobFilter:
    states: list[JobState] = field(default_factory=list)
    experiment_id: str | None = None
    entry_point_id: str | None = None
    queue: str | None = None
    agent_id: str | None = None


@dataclass(frozen=True)
class AuditEvent:
    seq: int  # 0 until stored
    time: datetime
    actor: str  # users/{id} | agents/{id}
    action: str  # job.submit, job.cancel, experiment.delete, plugin.push, ...
    resource: str
    detail: str = ""
