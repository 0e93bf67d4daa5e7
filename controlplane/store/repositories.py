"""Repositories: take a session, never commit, return domain records."""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

from packaging.version import Version
from sqlalchemy import (
    Row,
    Table,
    Update,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..domain import models as m
from ..domain.states import JobState
from .models import (
    AgentRow,
    AttemptRow,
    EntryPointRow,
    ExperimentRow,
    JobDependencyRow,
    JobRow,
    LogLineRow,
    PluginRow,
    PluginVersionRow,
    ReplicaRow,
    RevisionRow,
    SettingRow,
    utcnow,
)

# Hot paths (submit, dispatch, attempt reports, logs) use Core statements built once, run on
# the session's connection: the ORM's per-statement overhead was most of the control plane's
# CPU per job. Core rows have the same attribute names as the ORM rows, so one converter
# serves both.
J = cast(Table, JobRow.__table__)
A = cast(Table, AttemptRow.__table__)
L = cast(Table, LogLineRow.__table__)
AG = cast(Table, AgentRow.__table__)
E = cast(Table, ExperimentRow.__table__)
EP = cast(Table, EntryPointRow.__table__)
R = cast(Table, RevisionRow.__table__)
D = cast(Table, JobDependencyRow.__table__)

_EXPERIMENT = select(E).where(E.c.id == bindparam("id"))
_ENTRY_POINT = select(EP).where(EP.c.id == bindparam("id"))
_REVISION = select(R).where(R.c.entry_point_id == bindparam("ep"), R.c.digest == bindparam("d"))
_JOB = select(J).where(J.c.id == bindparam("id"))
_JOB_BY_REQUEST = select(J, J.c.request_hash).where(J.c.request_id == bindparam("rid"))
_JOB_CAS = (
    update(J)
    .where(J.c.id == bindparam("w_id"), J.c.state.in_(bindparam("w_states", expanding=True)))
    .values(version=J.c.version + 1)
    .returning(*J.c)
)

_HEAD = (J.c.id, J.c.state, J.c.attempt, J.c.agent_id, J.c.mlflow_run_id)


@functools.cache
def _job_cas(guards: tuple[str, ...], head: bool = False) -> Update:
    """The compare-and-set with extra equality guards on these columns, built once each;
    ``head`` returns only the columns that follow-up work needs (no JSON, no datetimes)."""
    stmt = _JOB_CAS
    if head:
        stmt = (
            update(J)
            .where(
                J.c.id == bindparam("w_id"), J.c.state.in_(bindparam("w_states", expanding=True))
            )
            .values(version=J.c.version + 1)
            .returning(*_HEAD)
        )
    for column in guards:
        stmt = stmt.where(J.c[column] == bindparam(f"w_{column}"))
    return stmt


_QUEUED = (
    select(J.c.id, J.c.queue, J.c.selector, J.c.attempt, J.c.resources, J.c.agent_id)
    .where(
        J.c.state == JobState.QUEUED.value,
        J.c.queue.in_(bindparam("queues", expanding=True)),
        # A retry waits out its backoff.
        or_(J.c.not_before.is_(None), J.c.not_before <= bindparam("now")),
    )
    .order_by(J.c.priority.desc(), J.c.seq)
    .limit(bindparam("limit"))
)
_WAITING = select(J.c.id, J.c.queue, J.c.selector, J.c.state_reason, J.c.resources).where(
    J.c.state == JobState.QUEUED.value
)
_SET_WAITING_REASON = (
    update(J)
    .where(J.c.state == JobState.QUEUED.value, J.c.id.in_(bindparam("w_ids", expanding=True)))
    .values(
        state_reason=bindparam("w_reason"),
        update_time=bindparam("w_now"),
        version=J.c.version + 1,  # watchers send a job again when its version moves
    )
    .returning(J.c.id)
)
_ATTEMPT_SET = update(A).where(A.c.job_id == bindparam("w_job"), A.c.number == bindparam("w_n"))
_AGENT_BEAT = (
    update(AG)
    .where(AG.c.id == bindparam("w_id"), AG.c.replica == bindparam("w_replica"))
    .values(last_heartbeat_time=bindparam("w_time"), running=bindparam("w_n"))
)
_RENEW = (
    update(A)
    .where(
        A.c.active.is_(True),
        A.c.agent_id == bindparam("w_agent"),
        A.c.job_id == bindparam("w_job"),
        A.c.number == bindparam("w_n"),
    )
    .values(lease_expires=bindparam("w_until"))
)
_LOG_SEEN = select(L.c.sequence).where(
    L.c.job_id == bindparam("job"),
    L.c.attempt == bindparam("attempt"),
    L.c.sequence.in_(bindparam("seqs", expanding=True)),
)
# Fenced like attempt updates: the lines of an attempt the job has moved past (requeued
# while its agent was frozen or cut off) match no row and are not stored — also while the
# requeued job waits in the queue, when `jobs.attempt` still names the lost attempt.
_LOG_COUNT = (
    update(J)
    .where(
        J.c.id == bindparam("w_id"),
        J.c.attempt == bindparam("w_attempt"),
        ~select(A.c.number)
        .where(A.c.job_id == J.c.id, A.c.number == J.c.attempt, A.c.state == "LOST")
        .exists(),
    )
    .values(log_count=J.c.log_count + bindparam("n"))
    .returning(J.c.log_count)
)
_LOG_COLUMNS = ("job_id", "offset", "attempt", "sequence", "stream", "text", "time")


@functools.cache
def _log_insert(dialect: Any) -> tuple[str, bool]:
    """The INSERT of log lines as the driver takes it, and whether its parameters are
    positional (in ``_LOG_COLUMNS`` order) rather than named."""
    statement = insert(L).values({c: bindparam(c) for c in _LOG_COLUMNS})
    compiled = statement.compile(dialect=dialect)
    positional = bool(compiled.positional)
    if positional:
        assert tuple(compiled.positiontup or ()) == _LOG_COLUMNS, compiled.positiontup
    return str(compiled), positional


def _sqlite_time(t: datetime) -> str:
    """What SQLAlchemy's SQLite DateTime stores for a UTC time (naive, microseconds)."""
    if t.tzinfo is not None:
        t = t.astimezone(UTC).replace(tzinfo=None)
    return t.isoformat(" ", "microseconds")


_LOG_READ = (
    select(L)
    .where(L.c.job_id == bindparam("job"), L.c.offset >= bindparam("start"))
    .order_by(L.c.offset)
    .limit(bindparam("limit"))
)
_LOG_READ_ATTEMPT = _LOG_READ.where(L.c.attempt == bindparam("attempt"))


def _experiment(r: Row[Any] | ExperimentRow) -> m.Experiment:
    return m.Experiment(
        r.id,
        r.description,
        dict(r.labels),
        r.mlflow_experiment_id,
        r.create_time,
        r.update_time,
        r.creator,
        r.group_id,
    )


def _revision(r: Row[Any] | RevisionRow) -> m.Revision:
    return m.Revision(
        r.entry_point_id,
        r.digest,
        r.size_bytes,
        r.project_name,
        dict(r.spec),
        r.create_time,
        r.creator,
    )


def _job(r: Row[Any] | JobRow) -> m.Job:
    return m.Job(
        id=r.id,
        experiment_id=r.experiment_id,
        entry_point_id=r.entry_point_id,
        digest=r.digest,
        entry=r.entry,
        parameters=dict(r.parameters),
        queue=r.queue,
        selector=dict(r.selector),
        state=JobState(r.state),
        state_reason=r.state_reason,
        timeout_s=r.timeout_s,
        max_attempts=r.max_attempts,
        attempt=r.attempt,
        agent_id=r.agent_id,
        mlflow_run_id=r.mlflow_run_id,
        exit_code=r.exit_code,
        cancel_requested=r.cancel_requested,
        version=r.version,
        create_time=r.create_time,
        start_time=r.start_time,
        end_time=r.end_time,
        update_time=r.update_time,
        request_id=r.request_id or "",
        plugins=tuple(
            m.PluginPin(p["plugin"], p["version"], p["digest"], p["package"]) for p in r.plugins
        ),
        creator=r.creator,
        resources=m.Resources.from_dict(r.resources),
        image=r.image,
        image_digest=r.image_digest,
        gpu_uuids=tuple(r.gpu_uuids),
        priority=r.priority,
        queue_timeout_s=r.queue_timeout_s,
        retry=m.RetryPolicy.from_dict(r.retry),
        retries=r.retries,
        depends_on=dict(r.depends_on),
        not_before=r.not_before,
        queued_time=r.queued_time,
    )


class Experiments:
    @staticmethod
    def add(s: Session, exp: m.Experiment) -> None:
        s.add(
            ExperimentRow(
                id=exp.id,
                description=exp.description,
                labels=exp.labels,
                mlflow_experiment_id=exp.mlflow_experiment_id,
                creator=exp.creator,
                group_id=exp.group,
                create_time=exp.create_time,
                update_time=exp.update_time,
            )
        )
        s.flush()

    @staticmethod
    def get(s: Session, exp_id: str) -> m.Experiment | None:
        row = s.connection().execute(_EXPERIMENT, {"id": exp_id}).first()
        return _experiment(row) if row else None

    @staticmethod
    def exists(s: Session, exp_id: str) -> bool:
        return s.scalar(select(ExperimentRow.seq).where(ExperimentRow.id == exp_id)) is not None

    @staticmethod
    def group_of(s: Session, exp_id: str) -> str:
        return str(s.scalar(select(ExperimentRow.group_id).where(ExperimentRow.id == exp_id)))

    @staticmethod
    def page(
        s: Session,
        after_seq: int,
        limit: int,
        labels: dict[str, str],
        groups: frozenset[str] | None = None,
    ) -> list[tuple[int, m.Experiment]]:
        """In creation order; only those of ``groups`` when given."""
        # Label filters run in Python: JSON operators differ between SQLite and PostgreSQL,
        # and experiments are few. Scan in chunks until the page is full.
        out: list[tuple[int, m.Experiment]] = []
        cursor = after_seq
        while len(out) < limit:
            q = select(ExperimentRow).where(ExperimentRow.seq > cursor)
            if groups is not None:
                q = q.where(ExperimentRow.group_id.in_(sorted(groups)))
            rows = s.scalars(q.order_by(ExperimentRow.seq).limit(500)).all()
            if not rows:
                break
            for r in rows:
                cursor = r.seq
                if all(r.labels.get(k) == v for k, v in labels.items()):
                    out.append((r.seq, _experiment(r)))
                    if len(out) == limit:
                        break
        return out

    @staticmethod
    def update(
        s: Session, exp_id: str, description: str | None, labels: dict[str, str] | None
    ) -> m.Experiment | None:
        row = s.scalar(select(ExperimentRow).where(ExperimentRow.id == exp_id))
        if row is None:
            return None
        if description is not None:
            row.description = description
        if labels is not None:
            row.labels = labels
        row.update_time = utcnow()
        s.flush()
        return _experiment(row)

    @staticmethod
    def delete(s: Session, exp_id: str) -> None:
        row = s.scalar(select(ExperimentRow).where(ExperimentRow.id == exp_id))
        if row is not None:
            s.delete(row)
            s.flush()


class EntryPoints:
    @staticmethod
    def get(s: Session, ep_id: str, with_latest: bool = True) -> m.EntryPoint | None:
        row = s.connection().execute(_ENTRY_POINT, {"id": ep_id}).first()
        if row is None:
            return None
        latest = EntryPoints.revision(s, ep_id, row.latest_digest) if with_latest else None
        return EntryPoints._ep(row, latest)

    @staticmethod
    def _ep(row: Row[Any] | EntryPointRow, latest: m.Revision | None) -> m.EntryPoint:
        return m.EntryPoint(
            row.id,
            row.description,
            row.latest_digest,
            row.revision_count,
            row.create_time,
            row.update_time,
            latest,
            row.creator,
        )

    @staticmethod
    def revision(s: Session, ep_id: str, digest: str) -> m.Revision | None:
        row = s.connection().execute(_REVISION, {"ep": ep_id, "d": digest}).first()
        return _revision(row) if row else None

    @staticmethod
    def any_revision(s: Session, digest: str) -> m.Revision | None:
        """A revision of these bytes, of any entry point (they parse the same everywhere)."""
        row = s.scalar(select(RevisionRow).where(RevisionRow.digest == digest).limit(1))
        return _revision(row) if row else None

    @staticmethod
    def add_revision(
        s: Session, ep_id: str, description: str, rev: m.Revision
    ) -> tuple[m.EntryPoint, m.Revision, bool]:
        """Adds a revision (or finds the same bytes already there) and makes it the latest."""
        now = utcnow()
        row = s.scalar(select(EntryPointRow).where(EntryPointRow.id == ep_id).with_for_update())
        if row is None:
            row = EntryPointRow(
                id=ep_id,
                description=description,
                latest_digest=rev.digest,
                revision_count=0,
                creator=rev.creator,
                create_time=now,
                update_time=now,
            )
            s.add(row)
            s.flush()
        existing = EntryPoints.revision(s, ep_id, rev.digest)
        created = existing is None
        if created:
            s.add(
                RevisionRow(
                    entry_point_id=ep_id,
                    digest=rev.digest,
                    size_bytes=rev.size_bytes,
                    project_name=rev.project_name,
                    spec=rev.spec,
                    creator=rev.creator,
                    create_time=now,
                )
            )
            row.revision_count += 1
        if description:
            row.description = description
        row.latest_digest = rev.digest
        row.update_time = now
        s.flush()
        latest = EntryPoints.revision(s, ep_id, rev.digest)
        assert latest is not None
        return EntryPoints._ep(row, latest), latest, created

    @staticmethod
    def page(s: Session, after_seq: int, limit: int) -> list[tuple[int, m.EntryPoint]]:
        rows = s.scalars(
            select(EntryPointRow)
            .where(EntryPointRow.seq > after_seq)
            .order_by(EntryPointRow.seq)
            .limit(limit)
        ).all()
        return [
            (r.seq, EntryPoints._ep(r, EntryPoints.revision(s, r.id, r.latest_digest)))
            for r in rows
        ]

    @staticmethod
    def revisions(
        s: Session, ep_id: str, before_seq: int | None, limit: int
    ) -> list[tuple[int, m.Revision]]:
        q = select(RevisionRow).where(RevisionRow.entry_point_id == ep_id)
        if before_seq is not None:
            q = q.where(RevisionRow.seq < before_seq)
        rows = s.scalars(q.order_by(RevisionRow.seq.desc()).limit(limit)).all()
        return [(r.seq, _revision(r)) for r in rows]


# Up to this many experiments, a member's ListJobs reads each one's newest jobs and merges
# them; beyond, one query filters the jobs of all of them.
_MERGED_EXPERIMENTS = 64


class Jobs:
    @staticmethod
    def add(s: Session, job: m.Job, request_hash: str) -> None:
        s.connection().execute(
            insert(J),
            dict(
                id=job.id,
                experiment_id=job.experiment_id,
                entry_point_id=job.entry_point_id,
                digest=job.digest,
                entry=job.entry,
                parameters=job.parameters,
                queue=job.queue,
                selector=job.selector,
                state=job.state.value,
                state_reason=job.state_reason,
                timeout_s=job.timeout_s,
                max_attempts=job.max_attempts,
                attempt=0,
                agent_id="",
                mlflow_run_id=job.mlflow_run_id,
                exit_code=None,
                cancel_requested=False,
                request_id=job.request_id or None,
                request_hash=request_hash,
                log_count=0,
                version=1,
                creator=job.creator,
                plugins=[
                    {
                        "plugin": p.plugin_id,
                        "version": p.version,
                        "digest": p.digest,
                        "package": p.package,
                    }
                    for p in job.plugins
                ],
                resources=job.resources.to_dict(),
                image=job.image,
                priority=job.priority,
                queue_timeout_s=job.queue_timeout_s,
                image_digest="",
                gpu_uuids=[],
                retry=job.retry.to_dict(),
                retries=0,
                depends_on=job.depends_on,
                not_before=None,
                queued_time=None,
                create_time=job.create_time,
                start_time=None,
                end_time=None,
                update_time=job.update_time,
            ),
        )
        if job.depends_on:
            s.connection().execute(
                insert(D),
                [
                    {"job_id": job.id, "alias": alias, "dependency_id": dep}
                    for alias, dep in job.depends_on.items()
                ],
            )

    @staticmethod
    def many(s: Session, job_ids: Iterable[str]) -> dict[str, m.Job]:
        ids = list(set(job_ids))
        out: dict[str, m.Job] = {}
        for i in range(0, len(ids), 500):
            for r in s.connection().execute(select(J).where(J.c.id.in_(ids[i : i + 500]))):
                out[r.id] = _job(r)
        return out

    @staticmethod
    def dependents(s: Session, dependency_ids: Iterable[str]) -> list[m.Job]:
        """The PENDING jobs that wait on any of these jobs."""
        ids = list(dependency_ids)
        if not ids:
            return []
        waiting = select(D.c.job_id).where(D.c.dependency_id.in_(ids))
        q = select(J).where(J.c.id.in_(waiting), J.c.state == JobState.PENDING.value)
        return [_job(r) for r in s.connection().execute(q.order_by(J.c.seq))]

    @staticmethod
    def pending(s: Session, limit: int = 1000) -> list[m.Job]:
        q = select(J).where(J.c.state == JobState.PENDING.value).order_by(J.c.seq).limit(limit)
        return [_job(r) for r in s.connection().execute(q)]

    @staticmethod
    def get(s: Session, job_id: str) -> m.Job | None:
        row = s.connection().execute(_JOB, {"id": job_id}).first()
        return _job(row) if row else None

    @staticmethod
    def by_request_id(s: Session, request_id: str) -> tuple[m.Job, str] | None:
        row = s.connection().execute(_JOB_BY_REQUEST, {"rid": request_id}).first()
        return (_job(row), row.request_hash) if row else None

    @staticmethod
    def count_for_experiment(s: Session, exp_id: str) -> int:
        return s.scalar(select(func.count()).where(JobRow.experiment_id == exp_id)) or 0

    @staticmethod
    def page(
        s: Session,
        f: m.JobFilter,
        before_seq: int | None,
        limit: int,
        groups: frozenset[str] | None = None,
    ) -> list[tuple[int, m.Job]]:
        """Newest first; only jobs of ``groups``' experiments when given.

        Each filter has an index that ends in ``seq``, so a page reads about ``limit`` rows
        however many jobs there are; several states are read one index range each and merged
        (an IN over the index would sort every match)."""
        parts: list[m.JobFilter] = []
        if len(f.states) > 1:
            parts = [replace(f, states=[st]) for st in dict.fromkeys(f.states)]
        elif groups is not None and not f.experiment_id:
            # A member sees the jobs of a few experiments: one index range each, merged.
            seen = s.scalars(
                select(ExperimentRow.id)
                .where(ExperimentRow.group_id.in_(sorted(groups)))
                .limit(_MERGED_EXPERIMENTS + 1)
            ).all()
            if len(seen) <= _MERGED_EXPERIMENTS:
                parts, groups = [replace(f, experiment_id=exp) for exp in seen], None
        if parts:
            pages = (Jobs.page(s, part, before_seq, limit, groups) for part in parts)
            return heapq.nlargest(limit, itertools.chain.from_iterable(pages), key=lambda r: r[0])
        q = select(JobRow)
        if groups is not None:
            q = q.where(
                JobRow.experiment_id.in_(
                    select(ExperimentRow.id).where(ExperimentRow.group_id.in_(sorted(groups)))
                )
            )
        if f.states:
            q = q.where(JobRow.state == f.states[0].value)
        if f.experiment_id:
            q = q.where(JobRow.experiment_id == f.experiment_id)
        if f.entry_point_id:
            q = q.where(JobRow.entry_point_id == f.entry_point_id)
        if f.queue:
            q = q.where(JobRow.queue == f.queue)
        if f.agent_id:
            q = q.where(JobRow.agent_id == f.agent_id)
        if before_seq is not None:
            q = q.where(JobRow.seq < before_seq)
        rows = s.scalars(q.order_by(JobRow.seq.desc()).limit(limit)).all()
        return [(r.seq, _job(r)) for r in rows]

    @staticmethod
    def waiting(s: Session) -> list[tuple[m.QueuedJob, str]]:
        """Every queued job with its current reason (for saying why it waits)."""
        rows = s.connection().execute(_WAITING)
        return [
            (
                m.QueuedJob(r.id, r.queue, r.selector, 0, m.Resources.from_dict(r.resources)),
                r.state_reason,
            )
            for r in rows
        ]

    @staticmethod
    def set_waiting_reason(s: Session, job_ids: Sequence[str], reason: str) -> list[str]:
        """Sets the reason of those jobs that are still queued; returns their ids."""
        changed: list[str] = []
        now = utcnow()
        for i in range(0, len(job_ids), 500):
            params = {"w_ids": list(job_ids[i : i + 500]), "w_reason": reason, "w_now": now}
            changed += [r.id for r in s.connection().execute(_SET_WAITING_REASON, params)]
        return changed

    @staticmethod
    def running_past(s: Session, now: datetime, slack: float) -> list[tuple[str, int]]:
        """(id, attempt) of running jobs whose run-time limit, plus ``slack`` seconds, has
        passed. Running jobs are bounded by the agents' slots, so the filter is in Python
        (date arithmetic differs between SQLite and PostgreSQL)."""
        rows = s.execute(
            select(JobRow.id, JobRow.attempt, JobRow.start_time, JobRow.timeout_s).where(
                JobRow.state == JobState.RUNNING.value, JobRow.timeout_s > 0
            )
        ).all()
        found = []
        for job_id, attempt, started, timeout_s in rows:
            if started is None:
                continue
            if started.tzinfo is None:  # SQLite hands back naive UTC
                started = started.replace(tzinfo=now.tzinfo)
            if (now - started).total_seconds() > timeout_s + slack:
                found.append((job_id, attempt))
        return found

    @staticmethod
    def queued_past(s: Session, now: datetime) -> list[str]:
        """Ids of queued jobs that have waited longer than their queue-time limit."""
        rows = s.execute(
            select(
                JobRow.id,
                func.coalesce(JobRow.queued_time, JobRow.create_time),
                JobRow.queue_timeout_s,
            ).where(JobRow.state == JobState.QUEUED.value, JobRow.queue_timeout_s > 0)
        ).all()
        found = []
        for job_id, created, limit in rows:
            if created.tzinfo is None:  # SQLite hands back naive UTC
                created = created.replace(tzinfo=now.tzinfo)
            if (now - created).total_seconds() > limit:
                found.append(job_id)
        return found

    @staticmethod
    def queued(s: Session, queues: Iterable[str], limit: int) -> list[m.QueuedJob]:
        """The oldest queued jobs: only what placement needs (the claim returns the rest)."""
        params = {"queues": list(queues), "limit": limit, "now": utcnow()}
        rows = s.connection().execute(_QUEUED, params)
        return [
            m.QueuedJob(
                r.id,
                r.queue,
                r.selector,
                r.attempt,
                m.Resources.from_dict(r.resources),
                r.agent_id or "",
            )
            for r in rows
        ]

    @staticmethod
    def compare_and_set(
        s: Session,
        job_id: str,
        expected: Iterable[JobState],
        values: dict[str, Any],
        attempt: int | None = None,
        **guards: Any,
    ) -> m.Job | None:
        """``UPDATE jobs SET … WHERE id=? AND state IN expected [AND attempt=? AND …]``.

        The state (and attempt, agent…) condition is what keeps two writers, or a stale agent
        report, from both winning. Returns the updated job, or None when a guard failed.
        """
        row = Jobs._cas(s, job_id, expected, values, attempt, guards, head=False)
        return _job(row) if row else None

    @staticmethod
    def transition(
        s: Session,
        job_id: str,
        expected: Iterable[JobState],
        values: dict[str, Any],
        **guards: Any,
    ) -> m.JobHead | None:
        """``compare_and_set`` returning only the job's head: the agents' hot path."""
        row = Jobs._cas(s, job_id, expected, values, None, guards, head=True)
        if row is None:
            return None
        return m.JobHead(row.id, JobState(row.state), row.attempt, row.agent_id, row.mlflow_run_id)

    @staticmethod
    def _cas(
        s: Session,
        job_id: str,
        expected: Iterable[JobState],
        values: dict[str, Any],
        attempt: int | None,
        guards: dict[str, Any],
        head: bool,
    ) -> Row[Any] | None:
        if attempt is not None:
            guards["attempt"] = attempt
        params = {
            **values,
            "update_time": utcnow(),
            "w_id": job_id,
            "w_states": [e.value for e in expected],
            **{f"w_{k}": v for k, v in guards.items()},
        }
        return s.connection().execute(_job_cas(tuple(sorted(guards)), head), params).first()


class Attempts:
    @staticmethod
    def add(
        s: Session,
        job_id: str,
        number: int,
        agent_id: str,
        lease_expires: datetime,
        gpu_uuids: Sequence[str] = (),
    ) -> None:
        s.connection().execute(
            insert(A),
            dict(
                job_id=job_id,
                number=number,
                agent_id=agent_id,
                state=JobState.ASSIGNED.value,
                active=True,
                lease_expires=lease_expires,
                exit_code=None,
                message="",
                gpu_uuids=list(gpu_uuids),
                image_digest="",
                create_time=utcnow(),
                start_time=None,
                end_time=None,
            ),
        )

    @staticmethod
    def set(s: Session, job_id: str, number: int, **values: Any) -> None:
        s.connection().execute(_ATTEMPT_SET, {**values, "w_job": job_id, "w_n": number})

    @staticmethod
    def renew(s: Session, agent_id: str, refs: Sequence[m.AttemptRef], until: datetime) -> None:
        if not refs:
            return
        s.execute(
            update(AttemptRow)
            .where(
                AttemptRow.active.is_(True),
                AttemptRow.agent_id == agent_id,
                tuple_(AttemptRow.job_id, AttemptRow.number).in_(
                    [(r.job_id, r.attempt) for r in refs]
                ),
            )
            .values(lease_expires=until)
        )

    @staticmethod
    def renew_many(s: Session, leases: Sequence[tuple[str, m.AttemptRef, datetime]]) -> None:
        """Renews (agent, attempt, until) leases of active attempts: one statement, run for
        each (executemany)."""
        if leases:
            s.connection().execute(
                _RENEW,
                [
                    {"w_agent": a, "w_job": r.job_id, "w_n": r.attempt, "w_until": until}
                    for a, r, until in leases
                ],
            )

    @staticmethod
    def extend_all(s: Session, until: datetime, except_agents: Iterable[str] = ()) -> None:
        """Extends every active lease (but those of these agents) to ``until``."""
        q = update(AttemptRow).where(AttemptRow.active.is_(True))
        if skip := list(except_agents):
            q = q.where(AttemptRow.agent_id.not_in(skip))
        s.execute(q.values(lease_expires=until))

    @staticmethod
    def expired(s: Session, now: datetime, limit: int = 100) -> list[tuple[str, int, str]]:
        rows = s.execute(
            select(AttemptRow.job_id, AttemptRow.number, AttemptRow.agent_id)
            .where(AttemptRow.active.is_(True), AttemptRow.lease_expires < now)
            .limit(limit)
        ).all()
        return [(r[0], r[1], r[2]) for r in rows]

    @staticmethod
    def gpus(s: Session, refs: Sequence[m.AttemptRef]) -> dict[tuple[str, int], tuple[str, ...]]:
        """The GPUs each of these attempts holds."""
        if not refs:
            return {}
        rows = s.execute(
            select(AttemptRow.job_id, AttemptRow.number, AttemptRow.gpu_uuids).where(
                tuple_(AttemptRow.job_id, AttemptRow.number).in_(
                    [(r.job_id, r.attempt) for r in refs]
                )
            )
        ).all()
        return {(r[0], r[1]): tuple(r[2] or ()) for r in rows}

    @staticmethod
    def active_for_agent(s: Session, agent_id: str) -> list[m.AttemptRef]:
        rows = s.execute(
            select(AttemptRow.job_id, AttemptRow.number).where(
                AttemptRow.active.is_(True), AttemptRow.agent_id == agent_id
            )
        ).all()
        return [m.AttemptRef(r[0], r[1]) for r in rows]


class Logs:
    @staticmethod
    def append(
        s: Session, job_id: str, attempt: int, lines: Sequence[tuple[int, int, str, datetime]]
    ) -> int:
        """Stores (sequence, stream, text, time) lines not seen before; returns how many.

        Agents replay unacknowledged lines after a reconnect, so duplicates are expected and
        dropped by (job, attempt, sequence). Lines of a superseded attempt are dropped too.
        """
        if not lines:
            return 0
        conn = s.connection()
        seqs = [ln[0] for ln in lines]
        seen = set(
            conn.execute(_LOG_SEEN, {"job": job_id, "attempt": attempt, "seqs": seqs})
            .scalars()
            .all()
        )
        fresh = []
        for ln in lines:
            if ln[0] not in seen:
                seen.add(ln[0])
                fresh.append(ln)
        if not fresh:
            return 0
        base = conn.execute(
            _LOG_COUNT, {"w_id": job_id, "w_attempt": attempt, "n": len(fresh)}
        ).scalar()
        if base is None:
            return 0
        start = base - len(fresh)
        # Straight to the driver's executemany: SQLAlchemy's per-row parameter processing
        # was most of the control plane's CPU per log line.
        sql, positional = _log_insert(conn.dialect)
        if positional:  # SQLite: naive UTC text, as its DateTime type stores it
            rows: list[Any] = [
                (job_id, start + i, attempt, seq, stream, text, _sqlite_time(t))
                for i, (seq, stream, text, t) in enumerate(fresh)
            ]
        else:
            rows = [
                {
                    "job_id": job_id,
                    "offset": start + i,
                    "attempt": attempt,
                    "sequence": seq,
                    "stream": stream,
                    "text": text,
                    "time": t,
                }
                for i, (seq, stream, text, t) in enumerate(fresh)
            ]
        conn.exec_driver_sql(sql, rows)
        return len(fresh)

    @staticmethod
    def cursor(s: Session, job_id: str, attempt: int) -> tuple[int, int, int]:
        """(highest sequence, stdout lines, stderr lines) stored for an attempt."""
        row = s.execute(
            select(
                func.coalesce(func.max(LogLineRow.sequence), 0),
                func.count().filter(LogLineRow.stream == m.STREAM_STDOUT),
                func.count().filter(LogLineRow.stream == m.STREAM_STDERR),
            ).where(LogLineRow.job_id == job_id, LogLineRow.attempt == attempt)
        ).one()
        return int(row[0]), int(row[1]), int(row[2])

    @staticmethod
    def read(s: Session, job_id: str, start: int, limit: int, attempt: int = 0) -> list[m.LogLine]:
        """Lines from offset ``start`` on; with ``attempt``, only that attempt's."""
        params = {"job": job_id, "start": start, "limit": limit, "attempt": attempt}
        rows = s.connection().execute(_LOG_READ_ATTEMPT if attempt else _LOG_READ, params)
        return [m.LogLine(r.offset, r.attempt, r.sequence, r.stream, r.text, r.time) for r in rows]


_PV = cast(Table, PluginVersionRow.__table__)
_P = cast(Table, PluginRow.__table__)
# Every submit pins every plugin's latest version: built once, run as Core.
_LATEST_PINS = select(_PV.c.plugin_id, _PV.c.version, _PV.c.digest, _PV.c.package).join(
    _P, (_P.c.id == _PV.c.plugin_id) & (_P.c.latest_version == _PV.c.version)
)


def _plugin_version(r: Row[Any] | PluginVersionRow) -> m.PluginVersion:
    return m.PluginVersion(
        r.plugin_id,
        r.version,
        r.digest,
        r.size_bytes,
        r.description,
        list(r.requirements),
        r.package,
        list(r.tasks),
        r.create_time,
        r.creator,
        bool(r.yanked),
        r.yank_reason,
    )


class Plugins:
    @staticmethod
    def _plugin(row: PluginRow, latest: m.PluginVersion | None) -> m.Plugin:
        return m.Plugin(
            row.id,
            row.description,
            row.latest_version,
            row.version_count,
            row.create_time,
            row.update_time,
            latest,
        )

    @staticmethod
    def get(s: Session, plugin_id: str, with_latest: bool = True) -> m.Plugin | None:
        row = s.scalar(select(PluginRow).where(PluginRow.id == plugin_id))
        if row is None:
            return None
        latest = Plugins.version(s, plugin_id, row.latest_version) if with_latest else None
        return Plugins._plugin(row, latest)

    @staticmethod
    def version(s: Session, plugin_id: str, version: str) -> m.PluginVersion | None:
        row = s.scalar(
            select(PluginVersionRow).where(
                PluginVersionRow.plugin_id == plugin_id, PluginVersionRow.version == version
            )
        )
        return _plugin_version(row) if row else None

    @staticmethod
    def versions(s: Session, plugin_id: str) -> list[m.PluginVersion]:
        rows = s.scalars(
            select(PluginVersionRow).where(PluginVersionRow.plugin_id == plugin_id)
        ).all()
        return [_plugin_version(r) for r in rows]

    @staticmethod
    def page(s: Session, after_seq: int, limit: int) -> list[tuple[int, m.Plugin]]:
        rows = s.scalars(
            select(PluginRow).where(PluginRow.seq > after_seq).order_by(PluginRow.seq).limit(limit)
        ).all()
        return [
            (r.seq, Plugins._plugin(r, Plugins.version(s, r.id, r.latest_version))) for r in rows
        ]

    @staticmethod
    def by_digest(s: Session, digest: str) -> m.PluginVersion | None:
        row = s.scalar(select(PluginVersionRow).where(PluginVersionRow.digest == digest).limit(1))
        return _plugin_version(row) if row else None

    @staticmethod
    def latest_pins(s: Session) -> dict[str, m.PluginPin]:
        """Every plugin's latest version: what a job pins when it names none."""
        rows = s.connection().execute(_LATEST_PINS).all()
        return {r[0]: m.PluginPin(r[0], r[1], r[2], r[3]) for r in rows}

    @staticmethod
    def add_version(s: Session, pv: m.PluginVersion, is_latest: bool) -> m.Plugin:
        now = utcnow()
        row = s.scalar(select(PluginRow).where(PluginRow.id == pv.plugin_id).with_for_update())
        if row is None:
            row = PluginRow(
                id=pv.plugin_id,
                description=pv.description,
                latest_version=pv.version,
                version_count=0,
                create_time=now,
                update_time=now,
            )
            s.add(row)
            s.flush()
        s.add(
            PluginVersionRow(
                plugin_id=pv.plugin_id,
                version=pv.version,
                digest=pv.digest,
                size_bytes=pv.size_bytes,
                description=pv.description,
                requirements=pv.requirements,
                package=pv.package,
                tasks=pv.tasks,
                creator=pv.creator,
                create_time=now,
            )
        )
        row.version_count += 1
        if is_latest:
            row.latest_version = pv.version
            row.description = pv.description or row.description
        row.update_time = now
        s.flush()
        return Plugins._plugin(row, Plugins.version(s, pv.plugin_id, row.latest_version))

    @staticmethod
    def _version_row(s: Session, plugin_id: str, version: str) -> PluginVersionRow | None:
        return s.scalar(
            select(PluginVersionRow).where(
                PluginVersionRow.plugin_id == plugin_id, PluginVersionRow.version == version
            )
        )

    @staticmethod
    def _relatest(s: Session, plugin_id: str) -> PluginRow | None:
        """Points the plugin at its highest version that is not yanked ("" when none is);
        deletes the plugin when it has no versions left (None)."""
        row = s.scalar(select(PluginRow).where(PluginRow.id == plugin_id).with_for_update())
        assert row is not None
        versions = Plugins.versions(s, plugin_id)
        if not versions:
            s.delete(row)
            s.flush()
            return None
        usable = [v for v in versions if not v.yanked]
        row.latest_version = max(usable, key=lambda v: Version(v.version)).version if usable else ""
        row.version_count = len(versions)
        row.update_time = utcnow()
        s.flush()
        return row

    @staticmethod
    def set_yanked(
        s: Session, plugin_id: str, version: str, yanked: bool, reason: str
    ) -> m.PluginVersion | None:
        row = Plugins._version_row(s, plugin_id, version)
        if row is None:
            return None
        row.yanked, row.yank_reason = yanked, reason if yanked else ""
        s.flush()
        Plugins._relatest(s, plugin_id)
        return _plugin_version(row)

    @staticmethod
    def delete_version(s: Session, plugin_id: str, version: str) -> bool:
        row = Plugins._version_row(s, plugin_id, version)
        if row is None:
            return False
        s.delete(row)
        s.flush()
        Plugins._relatest(s, plugin_id)
        return True


def _agent(r: AgentRow, running: int = 0) -> m.AgentInfo:
    cap = r.capacity
    return m.AgentInfo(
        id=r.id,
        hostname=r.hostname,
        labels=dict(r.labels),
        queues=list(r.queues),
        capacity=m.Capacity(
            cap.get("cpus", 0),
            cap.get("memory_bytes", 0),
            cap.get("slots", 1),
            tuple(m.Gpu(**g) for g in cap.get("gpus", [])),
        ),
        state=r.state,
        version=r.version,
        executor=r.executor,
        running=running or r.running,
        connect_time=r.connect_time,
        last_heartbeat_time=r.last_heartbeat_time,
        replica=r.replica,
    )


class Agents:
    @staticmethod
    def upsert(s: Session, a: m.AgentInfo) -> None:
        row = s.get(AgentRow, a.id)
        if row is None:
            row = AgentRow(id=a.id)
            s.add(row)
        row.hostname = a.hostname
        row.labels = a.labels
        row.queues = a.queues
        row.capacity = {
            "cpus": a.capacity.cpus,
            "memory_bytes": a.capacity.memory_bytes,
            "slots": a.capacity.slots,
            "gpus": [vars(g) for g in a.capacity.gpus],
        }
        row.state = a.state
        row.version = a.version
        row.executor = a.executor
        row.connect_time = a.connect_time
        row.last_heartbeat_time = a.last_heartbeat_time
        row.replica = a.replica
        row.running = a.running
        s.flush()

    @staticmethod
    def set(s: Session, agent_id: str, replica: str | None = None, **values: Any) -> None:
        """Updates the agent's row; with ``replica``, only while that replica holds it (an
        agent that moved to another replica is that one's to describe)."""
        q = update(AgentRow).where(AgentRow.id == agent_id)
        if replica is not None:
            q = q.where(AgentRow.replica == replica)
        s.execute(q.values(**values))

    @staticmethod
    def beat_many(s: Session, replica: str, beats: Sequence[tuple[str, datetime, int]]) -> None:
        """(agent, last heartbeat, running) for the agents this replica holds: one statement,
        run for each (executemany)."""
        if beats:
            s.connection().execute(
                _AGENT_BEAT,
                [{"w_id": a, "w_replica": replica, "w_time": t, "w_n": n} for a, t, n in beats],
            )

    @staticmethod
    def held_by_others(s: Session, me: str, live: Iterable[str]) -> list[str]:
        """The connected agents whose stream a live replica other than ``me`` holds."""
        others = [r for r in live if r != me]
        if not others:
            return []
        q = select(AgentRow.id).where(
            AgentRow.state != "DISCONNECTED", AgentRow.replica.in_(others)
        )
        return list(s.scalars(q).all())

    @staticmethod
    def connected_elsewhere(s: Session, me: str, live: Iterable[str]) -> list[m.AgentInfo]:
        others = [r for r in live if r != me]
        if not others:
            return []
        q = select(AgentRow).where(AgentRow.state != "DISCONNECTED", AgentRow.replica.in_(others))
        return [_agent(r) for r in s.scalars(q).all()]

    @staticmethod
    def get(s: Session, agent_id: str) -> m.AgentInfo | None:
        row = s.get(AgentRow, agent_id)
        return _agent(row) if row else None

    @staticmethod
    def page(s: Session, after_id: str, limit: int, state: str | None) -> list[m.AgentInfo]:
        q = select(AgentRow).where(AgentRow.id > after_id)
        if state:
            q = q.where(AgentRow.state == state)
        return [_agent(r) for r in s.scalars(q.order_by(AgentRow.id).limit(limit)).all()]

    @staticmethod
    def mark_disconnected(s: Session, keep_replicas: Iterable[str] = ()) -> None:
        """Every agent is disconnected but those that these (live) replicas hold."""
        q = update(AgentRow).where(AgentRow.state != "DISCONNECTED")
        if keep := list(keep_replicas):
            q = q.where(AgentRow.replica.not_in(keep))
        s.execute(q.values(state="DISCONNECTED", running=0))


class Replicas:
    """Control-plane processes sharing the database; alive while they beat."""

    @staticmethod
    def beat(s: Session, replica: str, address: str, now: datetime) -> None:
        found = s.get(ReplicaRow, replica)
        if found is None:
            s.add(ReplicaRow(id=replica, address=address, started=now, last_seen=now))
        else:
            found.last_seen = now
            found.address = address

    @staticmethod
    def live(s: Session, since: datetime) -> set[str]:
        return set(s.scalars(select(ReplicaRow.id).where(ReplicaRow.last_seen >= since)).all())

    @staticmethod
    def forget(s: Session, replica: str, before: datetime) -> None:
        """Removes this replica's row and those of replicas silent since ``before``."""
        s.execute(
            delete(ReplicaRow).where((ReplicaRow.id == replica) | (ReplicaRow.last_seen < before))
        )


class Settings:
    @staticmethod
    def get(s: Session, name: str) -> str | None:
        row = s.get(SettingRow, name)
        return row.value if row else None

    @staticmethod
    def get_or_add(s: Session, name: str, value: str) -> str:
        """The stored value, or ``value`` once stored (another replica's, if it won)."""
        found = Settings.get(s, name)
        if found is not None:
            return found
        try:
            with s.begin_nested():
                s.add(SettingRow(name=name, value=value))
        except IntegrityError:
            s.expire_all()
            found = Settings.get(s, name)
            assert found is not None
            return found
        return value


__all__ = [
    "Agents",
    "Attempts",
    "EntryPoints",
    "Experiments",
    "Jobs",
    "Logs",
    "Plugins",
    "Replicas",
    "Settings",
]


class Blobs:
    """Who may read a stored blob (its digest is referenced by ...)."""

    @staticmethod
    def assigned_to(s: Session, agent_id: str, digest: str) -> bool:
        rows = s.connection().execute(
            select(J.c.digest, J.c.plugins).where(
                J.c.agent_id == agent_id,
                J.c.state.in_([JobState.ASSIGNED.value, JobState.RUNNING.value]),
            )
        )
        return any(
            d == digest or any(p.get("digest") == digest for p in plugins) for d, plugins in rows
        )

    @staticmethod
    def published(s: Session, digest: str) -> bool:
        revision = s.scalar(select(RevisionRow.seq).where(RevisionRow.digest == digest).limit(1))
        if revision is not None:
            return True
        version = s.scalar(
            select(PluginVersionRow.seq).where(PluginVersionRow.digest == digest).limit(1)
        )
        return version is not None
