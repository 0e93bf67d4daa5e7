"""SQLAlchemy 2 typed tables. Alembic migrations (migrations/versions) create them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class ExperimentRow(Base):
    __tablename__ = "experiments"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    mlflow_experiment_id: Mapped[str] = mapped_column(String(64), default="")
    creator: Mapped[str] = mapped_column(String(80), default="")
    # The group whose members see it; fixed at creation.
    group_id: Mapped[str] = mapped_column(String(63), default="default", index=True)
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]


class EntryPointRow(Base):
    __tablename__ = "entry_points"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    latest_digest: Mapped[str] = mapped_column(String(71))
    revision_count: Mapped[int] = mapped_column(Integer, default=0)
    creator: Mapped[str] = mapped_column(String(80), default="")
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]


class RevisionRow(Base):
    __tablename__ = "entry_point_revisions"
    __table_args__ = (UniqueConstraint("entry_point_id", "digest"),)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entry_point_id: Mapped[str] = mapped_column(ForeignKey("entry_points.id"), index=True)
    digest: Mapped[str] = mapped_column(String(71))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    project_name: Mapped[str] = mapped_column(String(255), default="")
    spec: Mapped[dict[str, Any]]
    creator: Mapped[str] = mapped_column(String(80), default="")
    create_time: Mapped[datetime]


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_queue_seq", "state", "queue", "seq"),
        # The dispatcher's order: highest priority first, oldest first within one.
        Index("ix_jobs_state_queue_priority_seq", "state", "queue", "priority", "seq"),
        Index("ix_jobs_experiment_seq", "experiment_id", "seq"),
        # ListJobs, newest first, for each filter it takes (migration 0011).
        Index("ix_jobs_state_seq", "state", "seq"),
        Index("ix_jobs_queue_seq", "queue", "seq"),
        Index("ix_jobs_agent_seq", "agent_id", "seq"),
        Index("ix_jobs_entry_point_seq", "entry_point_id", "seq"),
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(16), unique=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"))
    entry_point_id: Mapped[str] = mapped_column(ForeignKey("entry_points.id"))
    digest: Mapped[str] = mapped_column(String(71))
    entry: Mapped[str] = mapped_column(String(255))
    parameters: Mapped[dict[str, Any]]
    queue: Mapped[str] = mapped_column(String(63))
    selector: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(16))
    state_reason: Mapped[str] = mapped_column(Text, default="")
    timeout_s: Mapped[float] = mapped_column(Float, default=0.0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    agent_id: Mapped[str] = mapped_column(String(63), default="")
    mlflow_run_id: Mapped[str] = mapped_column(String(64), default="")
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    request_id: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    request_hash: Mapped[str] = mapped_column(String(64), default="")
    log_count: Mapped[int] = mapped_column(BigInteger, default=0)
    # Pinned plugin versions: [{"plugin", "version", "digest", "package"}].
    plugins: Mapped[list[Any]] = mapped_column(default=list)
    version: Mapped[int] = mapped_column(Integer, default=1)
    creator: Mapped[str] = mapped_column(String(80), default="")
    # {"cpus", "memory_bytes", "gpus", "gpu_model"}; {} asks for nothing in particular.
    resources: Mapped[dict[str, Any]] = mapped_column(default=dict)
    image: Mapped[str] = mapped_column(String(512), default="")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    queue_timeout_s: Mapped[float] = mapped_column(Float, default=0.0)
    # Of the current or last attempt.
    image_digest: Mapped[str] = mapped_column(String(600), default="")
    gpu_uuids: Mapped[list[Any]] = mapped_column(default=list)
    # {"max_retries", "backoff_s", "exit_codes"}; {}: no retries.
    retry: Mapped[dict[str, Any]] = mapped_column(default=dict)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    # alias -> job id; job_dependencies holds the same for lookups by dependency.
    depends_on: Mapped[dict[str, Any]] = mapped_column(default=dict)
    not_before: Mapped[datetime | None] = mapped_column(nullable=True)
    queued_time: Mapped[datetime | None] = mapped_column(nullable=True)
    create_time: Mapped[datetime]
    start_time: Mapped[datetime | None] = mapped_column(nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(nullable=True)
    update_time: Mapped[datetime]


class JobDependencyRow(Base):
    __tablename__ = "job_dependencies"
    __table_args__ = (Index("ix_job_dependencies_dependency", "dependency_id"),)
    job_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    alias: Mapped[str] = mapped_column(String(32), primary_key=True)
    dependency_id: Mapped[str] = mapped_column(String(16))


class AttemptRow(Base):
    __tablename__ = "attempts"
    __table_args__ = (Index("ix_attempts_active_lease", "active", "lease_expires"),)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    lease_expires: Mapped[datetime]
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    # The GPUs the attempt holds while it is active.
    gpu_uuids: Mapped[list[Any]] = mapped_column(default=list)
    image_digest: Mapped[str] = mapped_column(String(600), default="")
    create_time: Mapped[datetime]
    start_time: Mapped[datetime | None] = mapped_column(nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(nullable=True)


class LogLineRow(Base):
    __tablename__ = "log_lines"
    __table_args__ = (
        UniqueConstraint("job_id", "attempt", "sequence"),
        UniqueConstraint("job_id", "offset"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(16))
    offset: Mapped[int] = mapped_column(BigInteger)
    attempt: Mapped[int] = mapped_column(Integer)
    sequence: Mapped[int] = mapped_column(BigInteger)
    stream: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    time: Mapped[datetime]


class PluginRow(Base):
    __tablename__ = "plugins"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    latest_version: Mapped[str] = mapped_column(String(64))
    version_count: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]


class PluginVersionRow(Base):
    __tablename__ = "plugin_versions"
    __table_args__ = (UniqueConstraint("plugin_id", "version"),)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    plugin_id: Mapped[str] = mapped_column(ForeignKey("plugins.id"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(71))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str] = mapped_column(Text, default="")
    requirements: Mapped[list[Any]]
    package: Mapped[str] = mapped_column(String(255))
    tasks: Mapped[list[Any]]
    creator: Mapped[str] = mapped_column(String(80), default="")
    create_time: Mapped[datetime]
    yanked: Mapped[bool] = mapped_column(Boolean, default=False)
    yank_reason: Mapped[str] = mapped_column(String(255), default="")


class AgentRow(Base):
    __tablename__ = "agents"
    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    labels: Mapped[dict[str, Any]]
    queues: Mapped[list[Any]]
    capacity: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(String(64), default="")
    executor: Mapped[str] = mapped_column(String(32), default="")
    connect_time: Mapped[datetime | None] = mapped_column(nullable=True)
    last_heartbeat_time: Mapped[datetime | None] = mapped_column(nullable=True)
    # The control-plane replica that holds its stream, and how many attempts it runs there.
    replica: Mapped[str] = mapped_column(String(64), default="")
    running: Mapped[int] = mapped_column(Integer, default=0)


class UserRow(Base):
    __tablename__ = "users"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(63), unique=True)
    role: Mapped[int] = mapped_column(Integer)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    creator: Mapped[str] = mapped_column(String(80), default="")
    create_time: Mapped[datetime]


class TokenRow(Base):
    __tablename__ = "tokens"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    # SHA-256 of the secret, hex; the secret itself is never stored.
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str] = mapped_column(String(63), default="", index=True)
    agent_id: Mapped[str] = mapped_column(String(63), default="")
    queues: Mapped[list[Any]] = mapped_column(default=list)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    description: Mapped[str] = mapped_column(String(255), default="")
    creator: Mapped[str] = mapped_column(String(80), default="")
    create_time: Mapped[datetime]
    expire_time: Mapped[datetime | None] = mapped_column(nullable=True)
    revoke_time: Mapped[datetime | None] = mapped_column(nullable=True)


class GroupRow(Base):
    __tablename__ = "groups"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    creator: Mapped[str] = mapped_column(String(80), default="")
    create_time: Mapped[datetime]


class GroupMemberRow(Base):
    __tablename__ = "group_members"
    group_id: Mapped[str] = mapped_column(String(63), ForeignKey("groups.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(63), primary_key=True, index=True)


class AuditEventRow(Base):
    __tablename__ = "audit_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(63))
    resource: Mapped[str] = mapped_column(String(255))
    detail: Mapped[str] = mapped_column(String(255), default="")


class SettingRow(Base):
    """Values every replica shares (the page-token secret)."""

    __tablename__ = "settings"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ReplicaRow(Base):
    """A control-plane process on this database, and when it last said it was alive."""

    __tablename__ = "replicas"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(255), default="")
    started: Mapped[datetime]
    last_seen: Mapped[datetime]


class BlobRow(Base):
    """A blob stored in the database (PostgreSQL: shared by the replicas); written last, in
    the transaction that writes its chunks, so a row means the whole blob is there."""

    __tablename__ = "blobs"
    digest: Mapped[str] = mapped_column(String(80), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)


class BlobChunkRow(Base):
    __tablename__ = "blob_chunks"
    digest: Mapped[str] = mapped_column(String(80), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
