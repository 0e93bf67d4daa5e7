"""Agents, push dispatch, attempt reports and leases.

Dispatch is push and event-driven: a submit, a freed slot or a new agent wakes one
dispatcher task, which claims queued jobs with a compare-and-set in SQL
(``UPDATE jobs … WHERE state='QUEUED' AND attempt=?``) and puts assignments on the agents'
streams. Several replicas on one PostgreSQL therefore never assign a job twice. An attempt
holds a lease that the agent's heartbeats renew; the reaper requeues or fails the job of an
attempt whose lease expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from ..store.bus import LocalBus
from ..store.db import Database
from ..store.models import utcnow
from ..store.repositories import Agents, Attempts, Jobs, Logs, Replicas
from ..tracking import Tracking
from . import chains
from .errors import FailedPrecondition
from .models import AgentInfo, AttemptRef, Gpu, Job, JobHead, QueuedJob, Resources
from .notify import Notifier
from .states import JobState, predecessors

log = logging.getLogger("brinell.controlplane.scheduler")

T = TypeVar("T")
U = TypeVar("U")

ACTIVE = (JobState.ASSIGNED, JobState.RUNNING)
# Agents that connect or leave together (a control-plane restart) are explained in one pass,
# and a stream of them costs at most one pass over the queued jobs a second.
EXPLAIN_DEBOUNCE = 1.0


def _then(future: asyncio.Future[T], fn: Callable[[T], U]) -> asyncio.Future[U]:
    """A future of ``fn(result)``, chained by callback: no task per message on hot paths."""
    out: asyncio.Future[U] = asyncio.get_running_loop().create_future()

    def done(f: asyncio.Future[T]) -> None:
        if out.cancelled():
            return
        if f.cancelled():
            out.cancel()
        elif (exc := f.exception()) is not None:
            out.set_exception(exc)
        else:
            try:
                out.set_result(fn(f.result()))
            except Exception as err:
                out.set_exception(err)

    future.add_done_callback(done)
    return out


def _current(s: Session, rep: AttemptReport, session: AgentSession | None) -> Job | None:
    """The job, while the report's attempt is its current, active, uncancelled attempt (on
    the reporting agent); None otherwise."""
    job = Jobs.get(s, rep.job_id)
    if (
        job is None
        or job.attempt != rep.attempt
        or not job.state.is_active
        or job.cancel_requested
        or (session is not None and job.agent_id != session.id)
    ):
        return None
    return job


def _attempt_ended(s: Session, rep: AttemptReport, now: datetime) -> None:
    Attempts.set(
        s,
        rep.job_id,
        rep.attempt,
        state=rep.state.value,
        active=False,
        end_time=now,
        exit_code=rep.exit_code,
        message=rep.message,
    )


def _with_refs(pending: Sequence[Job], job: Job) -> set[str]:
    """The parameters of ``job`` (as it was while PENDING) that held placeholders."""
    before = next((j for j in pending if j.id == job.id), job)
    return {k for k, v in before.parameters.items() if chains.refs(v)}


def _head(job: Job | None) -> JobHead | None:
    if job is None:
        return None
    return JobHead(job.id, job.state, job.attempt, job.agent_id, job.mlflow_run_id)


@dataclass(frozen=True)
class Assign:
    job: Job
    attempt: int
    env: dict[str, str]
    grace_period: float


@dataclass(frozen=True)
class LogCursor:
    """What is stored of an attempt's log: where an agent that re-attaches resumes."""

    job_id: str
    attempt: int
    last_sequence: int
    stdout_lines: int
    stderr_lines: int


@dataclass(frozen=True)
class Cancel:
    job_id: str
    attempt: int
    reason: str
    grace_period: float


@dataclass(frozen=True)
class LogAck:
    job_id: str
    attempt: int
    sequence: int


@dataclass(frozen=True)
class Beat:
    """A heartbeat waiting to be stored."""

    agent_id: str
    time: datetime
    # The attempts it reported that its session holds: their leases are renewed.
    running: tuple[AttemptRef, ...]
    # How many attempts its session holds.
    count: int


@dataclass(frozen=True)
class UpdateAck:
    """An attempt update was applied (or refused for good): the agent may forget it."""

    job_id: str
    attempt: int
    state: JobState


@dataclass(frozen=True)
class Close:
    """Ends the stream: a newer connection took over this agent id."""

    reason: str


@dataclass(frozen=True)
class Drain:
    """Asks the agent to drain: finish what runs (until ``deadline`` seconds; 0: its own
    drain timeout), cancel the rest, exit."""

    reason: str
    deadline: float


Outbound = Assign | Cancel | LogAck | UpdateAck | Close | Drain
HELD_LIMIT = 4096
# Heartbeats are stored together at most this many seconds after they came.
BEAT_FLUSH = 1.0
# Seconds agents have to come back after a control-plane restart (at least one lease).
RECONNECT_WINDOW = 30.0
# A replica says it is alive every REPLICA_BEAT seconds; one silent for REPLICA_LIVE is gone
# (the agents it held count as disconnected).
REPLICA_BEAT = 2.0
REPLICA_LIVE = 10.0
# How often each replica looks for PENDING jobs that nobody moved on (a replica died between
# a dependency's end and settling its dependents).
SETTLE_SWEEP = 60.0


class SessionConflict(FailedPrecondition):
    """Another credential already holds a live session for this agent id."""


def gpu_matches(gpu: Gpu, model: str) -> bool:
    return not model or model.casefold() in gpu.model.casefold()


@dataclass
class AgentSession:
    info: AgentInfo
    outbox: asyncio.Queue[Outbound] = field(default_factory=asyncio.Queue)
    # The attempts it runs, each with the UUIDs of the GPUs it holds.
    running: dict[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)
    draining: bool = False
    # Its lease expired while its stream stayed open (the agent froze, or the network did):
    # it gets no work until a heartbeat proves it alive again.
    suspect: bool = False
    # The token the session authenticated with ("" for a certificate): a reconnect with the
    # same credential replaces this session, any other credential is refused.
    credential: str = ""
    # Every attempt this session was given (newest HELD_LIMIT): the only ones its updates and
    # log lines may name. Ended ones stay, so lines that trail the final update still land.
    held: dict[tuple[str, int], None] = field(default_factory=dict)
    # For the attempts it reported running at registration: what is stored of their logs.
    cursors: list[LogCursor] = field(default_factory=list)
    # Attempts running on it as another replica last stored (for a session that stands for
    # an agent connected elsewhere, in waiting reasons).
    elsewhere: int = 0

    def hold(self, key: tuple[str, int], gpus: Sequence[str] = ()) -> None:
        self.running[key] = tuple(gpus)
        self.held[key] = None
        if len(self.held) > HELD_LIMIT:
            del self.held[next(iter(self.held))]

    def holds(self, job_id: str, attempt: int) -> bool:
        return (job_id, attempt) in self.held

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def free(self) -> int:
        if self.draining or self.suspect:
            return 0
        return self.info.capacity.slots - len(self.running) - self.elsewhere

    def accepts(self, job: Job | QueuedJob) -> bool:
        return job.queue in self.info.queues and all(
            self.info.labels.get(k) == v for k, v in job.selector.items()
        )

    def free_gpus(self, model: str = "") -> list[str]:
        """UUIDs of its GPUs of that model that no attempt holds, in the host's order."""
        busy = {u for gpus in self.running.values() for u in gpus}
        return [
            g.uuid for g in self.info.capacity.gpus if g.uuid not in busy and gpu_matches(g, model)
        ]

    def too_small(self, want: Resources) -> str:
        """Why this agent can never run a job that needs ``want`` ("" when it can)."""
        cap = self.info.capacity
        if want.cpus and cap.cpus and want.cpus > cap.cpus:
            return f"{want.cpus:g} CPUs"
        if want.memory_bytes and cap.memory_bytes and want.memory_bytes > cap.memory_bytes:
            return f"{want.memory_bytes} bytes of memory"
        if want.gpus and sum(gpu_matches(g, want.gpu_model) for g in cap.gpus) < want.gpus:
            return _gpus(want)
        return ""

    def place(
        self, want: Resources, taken: AbstractSet[str] = frozenset()
    ) -> tuple[str, ...] | None:
        """The GPUs a job needing ``want`` would get now (leaving out ``taken``, given away
        in this dispatch pass), or None when it does not fit."""
        if self.too_small(want):
            return None
        if not want.gpus:
            return ()
        free = [u for u in self.free_gpus(want.gpu_model) if u not in taken]
        return tuple(free[: want.gpus]) if len(free) >= want.gpus else None


def _gpus(want: Resources) -> str:
    kind = f" {want.gpu_model}" if want.gpu_model else ""
    return f"{want.gpus}{kind} GPU{'s' if want.gpus > 1 else ''}"


@dataclass(frozen=True)
class SchedulerConfig:
    heartbeat_interval: float = 5.0
    lease_duration: float = 30.0
    reaper_interval: float = 1.0
    grace_period: float = 10.0


@dataclass(frozen=True)
class AttemptReport:
    job_id: str
    attempt: int
    state: JobState
    exit_code: int | None = None
    message: str = ""
    # With RUNNING from a docker executor.
    image_digest: str = ""


class Scheduler:
    def __init__(
        self,
        db: Database,
        notifier: Notifier,
        tracking: Tracking,
        config: SchedulerConfig,
        job_env: Callable[[Job], dict[str, str]],
        replica: str = "local",
    ) -> None:
        self.db = db
        self.notifier = notifier
        self.bus: LocalBus = notifier.bus
        self.tracking = tracking
        self.config = config
        self._job_env = job_env
        self.replica = replica
        self.address = ""
        # The replicas on this database that beat lately, this one included.
        self.live: set[str] = {replica}
        self._beat_at = 0.0
        # Heartbeats not yet stored (agent id -> beat): stored together every BEAT_FLUSH s.
        self._beats: dict[str, Beat] = {}
        self._beats_due: asyncio.TimerHandle | None = None
        self._settled_at = 0.0
        self._ended: set[str] = set()
        # Agents whose stream another live replica holds (for waiting reasons).
        self.remote: list[AgentSession] = []
        self.sessions: dict[str, AgentSession] = {}
        self._wake = asyncio.Event()
        self._explain = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        # How long past a job's run-time limit the control plane waits for its agent to
        # report the end before ending it itself: the agent's grace period and a couple of
        # heartbeats for the report to arrive.
        self._timeout_slack = config.grace_period + 2 * config.heartbeat_interval + 5.0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, address: str = "") -> None:
        # After a restart, agents get a lease, and at least RECONNECT_WINDOW, to reconnect
        # before their attempts count as lost: the leases may have run out while we were
        # down, and an agent that retried all along waits up to its backoff's cap (10 s by
        # default) before it tries again. Agents that another live replica holds keep their
        # state and leases.
        lease = timedelta(seconds=max(self.config.lease_duration, RECONNECT_WINDOW))
        self.address = address

        def recover(s: Session) -> set[str]:
            now = utcnow()
            Replicas.beat(s, self.replica, address, now)
            live = Replicas.live(s, now - timedelta(seconds=REPLICA_LIVE))
            Agents.mark_disconnected(s, keep_replicas=live - {self.replica})
            elsewhere = Agents.held_by_others(s, self.replica, live)
            Attempts.extend_all(s, now + lease, except_agents=elsewhere)
            return live

        self.live = await self.db.run(recover)
        self.bus.peers = self.live - {self.replica}
        await self.bus.start(self._heard, self._resync)
        self._settled_at = asyncio.get_running_loop().time()
        self.spawn(self.settle_all())
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="dispatcher"),
            asyncio.create_task(self._reaper_loop(), name="lease-reaper"),
            asyncio.create_task(self._explain_loop(), name="queued-reasons"),
        ]
        self._wake.set()
        self._explain.set()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.bus.stop()
        before = utcnow() - timedelta(seconds=REPLICA_LIVE * 10)
        with contextlib.suppress(Exception):  # the database may be the thing that failed
            await self.db.run(lambda s: Replicas.forget(s, self.replica, before))

    def wake(self, everywhere: bool = False) -> None:
        """Runs a dispatch pass (on every replica: a job was queued that any may take)."""
        self._wake.set()
        if everywhere:
            self.bus.publish("wake")

    # -- other replicas --------------------------------------------------------------

    def _heard(self, messages: list[list[Any]]) -> None:
        """Acts on what other replicas published (store/bus.py)."""
        for kind, *args in messages:
            if kind == "job" and args:
                self.notifier.notify_here(str(args[0]))
            elif kind == "wake":
                self._wake.set()
            elif kind == "cancel" and len(args) == 4:
                agent_id, job_id, attempt, reason = args
                session = self.sessions.get(str(agent_id))
                if session is not None:
                    session.outbox.put_nowait(
                        Cancel(str(job_id), int(attempt), str(reason), self.config.grace_period)
                    )
            elif kind == "drain" and len(args) == 3:
                if (session := self.sessions.get(str(args[0]))) is not None:
                    self.draining(session, str(args[2]))
                    session.outbox.put_nowait(Drain(str(args[2]), float(args[1])))
            elif kind == "close" and len(args) == 2:
                self.close_sessions(str(args[0]), str(args[1]), here=True)
            elif kind == "agent" and args:
                # It connected to another replica: a session here is a half-dead leftover.
                if (session := self.sessions.get(str(args[0]))) is not None:
                    session.outbox.put_nowait(Close("the agent connected to another replica"))
                self._explain.set()
            elif kind == "agents":
                self._explain.set()

    def _resync(self) -> None:
        """The bus may have lost messages: wake every waiter and the dispatcher once."""
        self.notifier.notify_all()
        self._wake.set()
        self._explain.set()

    async def _beat(self) -> None:
        """Says this replica is alive and learns which others are."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._beat_at < REPLICA_BEAT:
            return
        self._beat_at = loop.time()

        def beat(s: Session) -> set[str]:
            now = utcnow()
            Replicas.beat(s, self.replica, self.address, now)
            return Replicas.live(s, now - timedelta(seconds=REPLICA_LIVE))

        live = await self.db.run(beat)
        if loop.time() - self._settled_at >= SETTLE_SWEEP:
            self._settled_at = loop.time()
            self.spawn(self.settle_all())
        if live != self.live:
            log.info("replicas on this database: %s", ", ".join(sorted(live)))
            self.live = live
            self.bus.peers = live - {self.replica}
            self._explain.set()

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Runs follow-up work (MLflow run ends) without holding up the caller."""

        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("background task failed")

        task = asyncio.create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- agents ----------------------------------------------------------------------

    async def register(
        self, info: AgentInfo, running: Sequence[AttemptRef], credential: str = ""
    ) -> AgentSession:
        """Opens a session. A newer connection for the same id with the same credential
        replaces the old one (the agent restarted, or its old stream is half-dead); one with
        another credential is refused while the old session lives."""
        old = self.sessions.get(info.id)
        if old is not None and old.credential != credential:
            raise SessionConflict(
                f"agent {info.id!r} is connected with another credential; stop that agent or "
                "revoke its token first"
            )
        if old is not None:
            old.outbox.put_nowait(Close("a newer connection of this agent took over"))
        now = utcnow()
        info = replace(
            info,
            state="CONNECTED",
            connect_time=now,
            last_heartbeat_time=now,
            replica=self.replica,
            running=len(running),
        )
        session = AgentSession(info, credential=credential)
        until = now + timedelta(seconds=self.config.lease_duration)

        lost: list[Job] = []

        def reconcile(
            s: Session,
        ) -> tuple[list[AttemptRef], list[tuple[AttemptRef, str]], dict[Any, tuple[str, ...]]]:
            Agents.upsert(s, info)
            keep: list[AttemptRef] = []
            stale: list[tuple[AttemptRef, str]] = []
            # What this agent held and no longer reports is gone (it restarted, or the
            # assignment never reached it): requeued now instead of when the lease expires.
            reported = {(r.job_id, r.attempt) for r in running}
            for held in Attempts.active_for_agent(s, info.id):
                if (held.job_id, held.attempt) in reported:
                    continue
                job = Jobs.get(s, held.job_id)
                if job is None or job.attempt != held.attempt or not job.state.is_active:
                    Attempts.set(s, held.job_id, held.attempt, active=False)
                    continue
                why = f"agent {info.id} came back without this attempt (it restarted)"
                updated = self._requeue_or_fail(s, job, why)
                if updated is not None:
                    lost.append(updated)
            for ref in running:
                job = Jobs.get(s, ref.job_id)
                if (
                    job is None
                    or job.attempt != ref.attempt
                    or job.agent_id != info.id
                    or not job.state.is_active
                ):
                    stale.append((ref, "this attempt was superseded while the agent was away"))
                    continue
                keep.append(ref)
                if job.cancel_requested:
                    stale.append((ref, job.state_reason or "cancelled"))
            Attempts.renew(s, info.id, keep, until)
            # A container outlives its agent: one that restarts re-attaches to it and
            # resumes the log where the stored part ends.
            if info.executor == "docker":
                session.cursors = [
                    LogCursor(r.job_id, r.attempt, *Logs.cursor(s, r.job_id, r.attempt))
                    for r in keep
                ]
            return keep, stale, Attempts.gpus(s, keep)

        keep, stale, gpus = await self.db.run(reconcile)
        for job in lost:
            log.warning("job %s: %s", job.id, job.state_reason)
            self._release(job.id, job.attempt, lost=True)
            self._after_change(job)
        for r in keep:
            session.hold((r.job_id, r.attempt), gpus.get((r.job_id, r.attempt), ()))
        for ref, reason in stale:
            session.outbox.put_nowait(
                Cancel(ref.job_id, ref.attempt, reason, self.config.grace_period)
            )
        self.sessions[info.id] = session
        self._explain.set()
        self.bus.publish("agent", info.id)
        log.info(
            "agent %s connected (queues=%s, slots=%d, running=%d)",
            info.id,
            info.queues,
            info.capacity.slots,
            len(keep),
        )
        self.wake()
        return session

    def drain(self, agent: AgentInfo, deadline: float, reason: str) -> None:
        """Stops assigning to the agent and asks it to drain, through the replica that holds
        its stream (FailedPrecondition when none does)."""
        session = self.sessions.get(agent.id)
        if session is not None:
            self.draining(session, reason)
            session.outbox.put_nowait(Drain(reason, deadline))
        elif agent.state != "DISCONNECTED" and agent.replica in self.live:
            self.bus.publish("drain", agent.id, deadline, reason)
        else:
            raise FailedPrecondition(f"agent {agent.id!r} is not connected: nothing to drain")

    def draining(self, session: AgentSession, reason: str) -> None:
        """The agent drains (it said so, or was told to): no new work for it."""
        if not session.draining:
            log.info("agent %s drains: %s", session.id, reason or "no reason given")
            self.spawn(
                self.db.run(
                    lambda s: Agents.set(s, session.id, replica=self.replica, state="DRAINING")
                )
            )
        session.draining = True
        self._explain.set()

    def close_sessions(self, credential: str, reason: str, here: bool = False) -> None:
        """Ends the live sessions opened with this credential (it was revoked), on every
        replica (``here``: on this one only)."""
        for session in list(self.sessions.values()):
            if credential and session.credential == credential:
                session.outbox.put_nowait(Close(reason))
        if not here:
            self.bus.publish("close", credential, reason)

    async def disconnect(self, session: AgentSession) -> None:
        if self.sessions.get(session.id) is not session:
            return
        del self.sessions[session.id]
        self._beats.pop(session.id, None)  # its row now says DISCONNECTED, running 0
        self._explain.set()
        log.info(
            "agent %s disconnected; its %d attempts keep their leases",
            session.id,
            len(session.running),
        )
        await self.db.run(
            lambda s: Agents.set(
                s, session.id, replica=self.replica, state="DISCONNECTED", running=0
            )
        )
        self.bus.publish("agents")

    async def heartbeat(self, session: AgentSession, running: Sequence[AttemptRef]) -> None:
        now = utcnow()
        if session.suspect:
            log.info("agent %s is alive again (a heartbeat after its lease expired)", session.id)
            session.suspect = False
            self.wake()
        known = [r for r in running if (r.job_id, r.attempt) in session.running]
        for r in running:
            if (r.job_id, r.attempt) not in session.running:
                session.outbox.put_nowait(
                    Cancel(
                        r.job_id,
                        r.attempt,
                        "this attempt is no longer assigned to the agent",
                        self.config.grace_period,
                    )
                )

        # Liveness is kept here and stored for every agent at once, every BEAT_FLUSH seconds
        # (and before each lease check): a thousand agents cost one transaction a second,
        # not one each.
        self._beats[session.id] = Beat(session.id, now, tuple(known), len(session.running))
        if self._beats_due is None:
            self._beats_due = asyncio.get_running_loop().call_later(
                min(BEAT_FLUSH, self.config.heartbeat_interval), self._store_beats_soon
            )

    def _store_beats_soon(self) -> None:
        self._beats_due = None
        self.spawn(self.store_beats())

    async def store_beats(self) -> None:
        """Stores the heartbeats that came since the last time: leases renewed from each
        beat's own time, agents' last heartbeat and running count."""
        beats, self._beats = list(self._beats.values()), {}
        if not beats:
            return
        lease = timedelta(seconds=self.config.lease_duration)

        def store(s: Session) -> None:
            Attempts.renew_many(
                s, [(b.agent_id, r, b.time + lease) for b in beats for r in b.running]
            )
            Agents.beat_many(s, self.replica, [(b.agent_id, b.time, b.count) for b in beats])

        await self.db.batch(store)

    # -- why queued jobs wait ----------------------------------------------------------

    def waiting_reason(self, job: QueuedJob) -> str:
        """Why no connected agent takes the job now, or "" when one has a free slot."""
        # The common case first, and cheaply (it runs on every submit): someone can take it.
        want = job.resources
        agents = [*self.sessions.values(), *self.remote]
        if any(x.free > 0 and x.accepts(job) and x.place(want) is not None for x in agents):
            return ""
        serving = [x for x in agents if job.queue in x.info.queues]
        if not serving:
            return f"no connected agent serves queue {job.queue!r}"
        matching = [x for x in serving if x.accepts(job)]
        if not matching:
            n = len(serving)
            who = f"{n} agent serves" if n == 1 else f"{n} agents serve"
            missing = [
                f"{k}={v}"
                for k, v in sorted(job.selector.items())
                if not any(x.info.labels.get(k) == v for x in serving)
            ]
            if missing:
                return f"{who} queue {job.queue!r} but none has label {', '.join(missing)}"
            wanted = ", ".join(f"{k}={v}" for k, v in sorted(job.selector.items()))
            return f"{who} queue {job.queue!r} but none has all the labels {wanted}"
        big = [x for x in matching if not x.too_small(want)]
        if not big:
            n = len(matching)
            who = f"{n} matching agent has" if n == 1 else f"{n} matching agents have"
            return f"{who} fewer than {matching[0].too_small(want)}"
        n = len(big)
        if want.gpus and all(x.free > 0 for x in big):
            return (
                f"waiting for {_gpus(want)} to be free on {n} matching agent{'s' if n > 1 else ''}"
            )
        return (
            f"waiting for a free slot: {n} matching agent{'s' if n > 1 else ''}, "
            "all slots busy or draining"
        )

    async def _explain_loop(self) -> None:
        while True:
            await self._explain.wait()
            await asyncio.sleep(EXPLAIN_DEBOUNCE)
            self._explain.clear()
            try:
                await self._explain_once()
            except Exception:
                log.exception("explaining queued jobs failed")

    async def _explain_once(self) -> None:
        """Gives every queued job that no agent can take the reason why (agents came or went).

        A job that an agent can take keeps its reason: the dispatcher assigns it and clears it.
        """

        def read(s: Session) -> tuple[list[tuple[QueuedJob, str]], list[AgentInfo]]:
            return Jobs.waiting(s), Agents.connected_elsewhere(s, self.replica, self.live)

        waiting, elsewhere = await self.db.run(read)
        self.remote = [
            AgentSession(a, draining=a.state == "DRAINING", elsewhere=a.running)
            for a in elsewhere
            if a.id not in self.sessions
        ]
        by_reason: dict[str, list[str]] = {}
        for job, old in waiting:
            reason = self.waiting_reason(job)
            if reason and reason != old:
                by_reason.setdefault(reason, []).append(job.id)
        if not by_reason:
            return

        def apply(s: Session) -> list[str]:
            return [i for r, ids in by_reason.items() for i in Jobs.set_waiting_reason(s, ids, r)]

        for job_id in await self.db.run(apply):
            self.notifier.notify(job_id)

    # -- dispatch --------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if await self._dispatch_once():
                    self._wake.set()  # more may fit: go round again before sleeping
            except Exception:
                log.exception("dispatch pass failed; retrying")
                await asyncio.sleep(0.5)
                self._wake.set()

    async def _dispatch_once(self) -> bool:
        sessions = [s for s in self.sessions.values() if s.free > 0]
        if not sessions:
            return False
        free = sum(s.free for s in sessions)
        queues = sorted({q for s in sessions for q in s.info.queues})
        # A few more than the free slots, so jobs whose selector fits no free agent do not
        # hide the ones behind them; reading many more costs CPU on every pass.
        limit = free + 16
        grace = self.config.grace_period
        lease = timedelta(seconds=self.config.lease_duration)

        def claim(s: Session) -> tuple[list[tuple[AgentSession, Job]], int]:
            candidates = Jobs.queued(s, queues, limit)
            slots = {sess.id: sess.free for sess in sessions}
            # Per queue, agents with the most free slots first: a job usually takes the
            # first one (no scan over every agent per job), which spreads the load.
            by_queue: dict[str, list[AgentSession]] = {}
            for sess in sorted(sessions, key=lambda x: -slots[x.id]):
                for q in sess.info.queues:
                    by_queue.setdefault(q, []).append(sess)
            claimed: list[tuple[AgentSession, Job]] = []
            until = utcnow() + lease
            # GPUs taken in this pass, per agent (held only once the claim commits).
            taken: dict[str, set[str]] = {}
            for job in candidates:
                target: AgentSession | None = None
                gpus: tuple[str, ...] = ()
                agents = by_queue.get(job.queue, ())
                if job.last_agent:
                    # Requeued: its last agent only when no other can take it.
                    agents = [x for x in agents if x.id != job.last_agent] + [
                        x for x in agents if x.id == job.last_agent
                    ]
                for x in agents:
                    if slots[x.id] <= 0 or not x.accepts(job):
                        continue
                    placed = x.place(job.resources, taken.get(x.id, frozenset()))
                    if placed is not None:
                        target, gpus = x, placed
                        break
                if target is None:
                    continue
                number = job.attempt + 1
                updated = Jobs.compare_and_set(
                    s,
                    job.id,
                    predecessors(JobState.ASSIGNED),
                    {
                        "state": JobState.ASSIGNED.value,
                        "attempt": number,
                        "agent_id": target.id,
                        "state_reason": "",
                        "gpu_uuids": list(gpus),
                        "image_digest": "",
                    },
                    attempt=job.attempt,
                )
                if updated is None:
                    continue  # another replica took it
                Attempts.add(s, job.id, number, target.id, until, gpus)
                taken.setdefault(target.id, set()).update(gpus)
                slots[target.id] -= 1
                claimed.append((target, updated))
            return claimed, len(candidates)

        claimed, seen = await self.db.batch(claim)
        for target, job in claimed:
            target.hold((job.id, job.attempt), job.gpu_uuids)
            if self.sessions.get(target.id) is target:
                target.outbox.put_nowait(Assign(job, job.attempt, self._job_env(job), grace))
            self.notifier.notify(job.id)
        if claimed:
            log.debug("assigned %d jobs", len(claimed))
        return bool(claimed) and seen >= limit

    # -- reports from agents ---------------------------------------------------------

    async def report(self, session: AgentSession | None, rep: AttemptReport) -> JobHead | None:
        """Applies an agent's attempt update; stale attempts are ignored (fenced)."""
        return await self.report_nowait(session, rep)

    def report_nowait(
        self, session: AgentSession | None, rep: AttemptReport
    ) -> asyncio.Future[JobHead | None]:
        """Enqueues the update now (keeping the stream's order) and applies it in the next
        group commit; the returned future settles after the follow-up work is done."""
        now = utcnow()

        # The compare-and-set's guards do the fencing: the job must still be on this
        # attempt, held by this agent, in a state the report may follow.
        fence: dict[str, Any] = {"attempt": rep.attempt}
        if session is not None:
            fence["agent_id"] = session.id
        if not (rep.state == JobState.RUNNING or rep.state.is_final):
            log.warning(
                "agent %s reported state %s for %s: ignored",
                session.id if session else "?",
                rep.state,
                rep.job_id,
            )
            ignored: asyncio.Future[JobHead | None] = asyncio.get_running_loop().create_future()
            ignored.set_result(None)
            return ignored

        backoff: list[float] = []

        def apply(s: Session) -> JobHead | None:
            if rep.state == JobState.RUNNING:
                running: dict[str, Any] = {"state": JobState.RUNNING.value, "start_time": now}
                if rep.image_digest:
                    running["image_digest"] = rep.image_digest
                job = Jobs.transition(s, rep.job_id, [JobState.ASSIGNED], running, **fence)
                if job is not None:
                    Attempts.set(
                        s,
                        job.id,
                        rep.attempt,
                        state="RUNNING",
                        start_time=now,
                        **({"image_digest": rep.image_digest} if rep.image_digest else {}),
                    )
                return job
            if rep.state == JobState.FAILED and rep.exit_code is not None:
                retried = self._retry(s, rep, session, now)
                if retried is not None:
                    head, delay = retried
                    backoff.append(delay)
                    return head
            values: dict[str, Any] = {
                "state": rep.state.value,
                "end_time": now,
                "exit_code": rep.exit_code,
            }
            if rep.state == JobState.CANCELLED:
                # The user's cancel reason stays the job's reason.
                job = Jobs.transition(s, rep.job_id, ACTIVE, values, cancel_requested=True, **fence)
                if job is None:
                    current = _current(s, rep, session)
                    if current is None:
                        return None
                    # The agent stopped it on its own (shutting down): not the user's cancel.
                    why = f"agent {current.agent_id} stopped the attempt: {rep.message}"
                    return _head(self._requeue_or_fail(s, current, why.rstrip(": ")))
            else:
                job = Jobs.transition(
                    s, rep.job_id, ACTIVE, {**values, "state_reason": rep.message}, **fence
                )
            if job is not None:
                _attempt_ended(s, rep, now)
            return job

        def follow_up(job: JobHead | None) -> JobHead | None:
            if backoff:  # a retry: every replica's dispatcher looks again after the backoff
                asyncio.get_running_loop().call_later(backoff[0], self.wake, True)
            if job is None:
                log.info(
                    "ignored stale report %s attempt %d -> %s", rep.job_id, rep.attempt, rep.state
                )
                return None
            if job.state != JobState.RUNNING:
                if session is not None and (rep.job_id, rep.attempt) in session.running:
                    del session.running[(rep.job_id, rep.attempt)]
                    self.wake()
                else:
                    self._release(rep.job_id, rep.attempt)
            self._after_change(job)
            return job

        return _then(self.db.enqueue(apply), follow_up)

    def _retry(
        self, s: Session, rep: AttemptReport, session: AgentSession | None, now: datetime
    ) -> tuple[JobHead, float] | None:
        """Queues the job again, after its backoff, when its attempt failed with an exit code
        its retry policy names and retries are left: its head and the backoff; else None."""
        job = _current(s, rep, session)
        if job is None:
            return None
        policy = job.retry
        if rep.exit_code not in policy.exit_codes or job.retries >= policy.max_retries:
            return None
        n = job.retries + 1
        delay = policy.delay(n)
        why = (
            f"attempt {rep.attempt} exited with {rep.exit_code}, which its retry policy calls "
            f"retryable: retry {n} of {policy.max_retries} after {delay:g} s"
        )
        values = {
            "state": JobState.QUEUED.value,
            "retries": n,
            "not_before": now + timedelta(seconds=delay),
            "exit_code": rep.exit_code,
            "state_reason": why,
        }
        done = Jobs.compare_and_set(s, job.id, ACTIVE, values, attempt=job.attempt)
        if done is None:
            return None
        _attempt_ended(s, rep, now)
        return JobHead(done.id, done.state, done.attempt, done.agent_id, done.mlflow_run_id), delay

    def _requeue_or_fail(self, s: Session, job: Job, why: str) -> Job | None:
        Attempts.set(
            s, job.id, job.attempt, state="LOST", active=False, end_time=utcnow(), message=why
        )
        if job.cancel_requested:
            values: dict[str, Any] = {
                "state": JobState.CANCELLED.value,
                "end_time": utcnow(),
                "state_reason": job.state_reason or "cancelled",
            }
        elif job.lost_attempts < job.max_attempts:
            values = {
                "state": JobState.QUEUED.value,
                "state_reason": f"{why}; requeued (attempt {job.lost_attempts} of "
                f"{job.max_attempts} used)",
            }
        else:
            values = {
                "state": JobState.FAILED.value,
                "end_time": utcnow(),
                "state_reason": f"{why}; no attempts left ({job.max_attempts} used)",
            }
        return Jobs.compare_and_set(s, job.id, ACTIVE, values, attempt=job.attempt)

    def _release(self, job_id: str, attempt: int, lost: bool = False) -> None:
        """The attempt ended; a ``lost`` one (requeued, or failed for want of attempts) is no
        longer its session's either: what its agent still sends for it is refused."""
        for session in self.sessions.values():
            if lost:
                session.held.pop((job_id, attempt), None)
            if session.running.pop((job_id, attempt), None) is not None:
                self.wake()

    def _after_change(self, job: Job | JobHead) -> None:
        self.notifier.notify(job.id)
        if job.state is JobState.QUEUED:  # requeued: it may wait for a reason now
            self._explain.set()
            self.bus.publish("wake")
        if job.state.is_final:
            if job.mlflow_run_id:
                self.spawn(self.tracking.end_run(job.mlflow_run_id, job.state.value))
            self._settle_soon(job.id)

    # -- chains ----------------------------------------------------------------------

    def _settle_soon(self, job_id: str) -> None:
        """Settles the dependents of jobs that ended, those of one loop turn together (one
        indexed lookup for many ends under load)."""
        if not self._ended:
            asyncio.get_running_loop().call_soon(self._settle_ended)
        self._ended.add(job_id)

    def _settle_ended(self) -> None:
        ended, self._ended = self._ended, set()
        self.spawn(self.settle(dependencies=sorted(ended)))

    async def settle_all(self) -> None:
        """Moves on every PENDING job whose dependencies have ended (after a restart)."""
        pending = await self.db.run(Jobs.pending)
        if pending:
            await self.settle(jobs=[j.id for j in pending])

    async def settle(self, dependencies: Sequence[str] = (), jobs: Sequence[str] = ()) -> list[Job]:
        """PENDING jobs waiting on ``dependencies`` (or these ``jobs``) whose dependencies
        all succeeded are queued with their placeholders filled in; those with one that did
        not succeed end FAILED or CANCELLED, which in turn settles their own dependents."""

        def read(s: Session) -> tuple[list[Job], dict[str, Job]]:
            pending = Jobs.dependents(s, dependencies)
            if jobs:
                found = Jobs.many(s, jobs).values()
                pending += [j for j in found if j.state == JobState.PENDING]
            return pending, Jobs.many(s, {d for j in pending for d in j.depends_on.values()})

        pending, deps = await self.db.batch(read)
        if not pending:
            return []
        decided: list[tuple[Job, JobState, str, dict[str, str] | None]] = []
        for job in pending:
            verdict = chains.verdict(job, deps)
            if verdict is None:
                why = chains.waiting_for(job, deps)
                if why != job.state_reason:
                    decided.append((job, JobState.PENDING, why, None))
                continue
            state, why = verdict
            params: dict[str, str] | None = None
            if state == JobState.QUEUED:
                models: dict[str, list[tuple[str, str]]] = {}
                try:
                    for alias in chains.wants_models(job.parameters):
                        run = deps[job.depends_on[alias]].mlflow_run_id
                        if run and run not in models:
                            models[run] = await self.tracking.run_model_versions(run)
                except Exception as exc:
                    log.warning("job %s: looking up its dependencies' models failed", job.id)
                    state, why = JobState.FAILED, f"could not look up a dependency's model: {exc}"
                else:
                    params, why = chains.fill(job.parameters, job.depends_on, deps, models)
                    if why:
                        state, params = JobState.FAILED, None
            decided.append((job, state, why, params))

        def apply(s: Session) -> list[Job]:
            now = utcnow()
            changed = []
            for job, state, why, params in decided:
                values: dict[str, Any] = {"state_reason": why}
                if state == JobState.QUEUED:
                    values["state"] = state.value
                    values["parameters"] = params
                    values["queued_time"] = now
                    values["state_reason"] = self.waiting_reason(
                        QueuedJob(job.id, job.queue, job.selector, 0, job.resources)
                    )
                elif state != JobState.PENDING:
                    values.update(state=state.value, end_time=now)
                    if state == JobState.CANCELLED:
                        values["cancel_requested"] = True
                done = Jobs.compare_and_set(s, job.id, [JobState.PENDING], values)
                if done is not None:
                    changed.append(done)
            return changed

        changed = await self.db.run(apply)
        for job in changed:
            if job.state == JobState.QUEUED:
                log.info("job %s: its dependencies succeeded; queued", job.id)
                filled = {k: v for k, v in job.parameters.items() if k in _with_refs(pending, job)}
                if filled and job.mlflow_run_id:
                    self.spawn(self.tracking.log_params(job.mlflow_run_id, filled))
                self.wake()
            elif job.state.is_final:
                log.info("job %s: %s", job.id, job.state_reason)
            self._after_change(job)
        return changed

    async def logs(
        self, job_id: str, attempt: int, lines: Sequence[tuple[int, int, str, datetime]]
    ) -> int:
        """Persists a batch; returns the highest sequence now safely stored (for the ack)."""
        return await self.logs_nowait(job_id, attempt, lines)

    def logs_nowait(
        self, job_id: str, attempt: int, lines: Sequence[tuple[int, int, str, datetime]]
    ) -> asyncio.Future[int]:
        """``logs``, enqueued now so it keeps its place among the stream's other messages."""

        def follow_up(added: int) -> int:
            if added:
                self.notifier.notify(job_id)
            return max((ln[0] for ln in lines), default=0)

        return _then(self.db.enqueue(lambda s: Logs.append(s, job_id, attempt, lines)), follow_up)

    # -- cancel ----------------------------------------------------------------------

    async def cancel(self, job_id: str, reason: str) -> Job | None:
        reason = reason or "cancelled by user"

        def apply(s: Session) -> Job | None:
            job = Jobs.get(s, job_id)
            if job is None or job.state.is_final:
                return job
            if job.state in (JobState.QUEUED, JobState.PENDING):
                done = Jobs.compare_and_set(
                    s,
                    job_id,
                    [job.state],
                    {
                        "state": JobState.CANCELLED.value,
                        "cancel_requested": True,
                        "end_time": utcnow(),
                        "state_reason": reason,
                    },
                )
                return done or Jobs.get(s, job_id)
            if job.cancel_requested:
                return job
            done = Jobs.compare_and_set(
                s,
                job_id,
                ACTIVE,
                {"cancel_requested": True, "state_reason": reason},
                attempt=job.attempt,
            )
            return done or Jobs.get(s, job_id)

        job = await self.db.run(apply)
        if job is None:
            return None
        if job.state.is_active:
            self._cancel_attempt(job, reason)
        self._after_change(job)
        return job

    def _cancel_attempt(self, job: Job, reason: str) -> None:
        """Tells the job's agent to stop its attempt, through whichever replica holds it."""
        session = self.sessions.get(job.agent_id)
        if session is not None:
            session.outbox.put_nowait(Cancel(job.id, job.attempt, reason, self.config.grace_period))
        else:
            self.bus.publish("cancel", job.agent_id, job.id, job.attempt, reason[:2000])

    # -- leases ----------------------------------------------------------------------

    async def _reaper_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reaper_interval)
            try:
                await self._beat()
                await self.reap()
            except Exception:
                log.exception("lease reaper pass failed")

    async def reap(self) -> list[Job]:
        """Requeues (or fails) the jobs whose attempt's lease has expired."""
        await self.store_beats()  # the heartbeats that came count

        def apply(s: Session) -> list[Job]:
            changed = []
            for job_id, number, agent_id in Attempts.expired(s, utcnow()):
                job = Jobs.get(s, job_id)
                if job is None or job.attempt != number or not job.state.is_active:
                    Attempts.set(s, job_id, number, active=False)
                    continue
                why = f"agent {agent_id} lost (no heartbeat for {self.config.lease_duration:g} s)"
                updated = self._requeue_or_fail(s, job, why)
                if updated is not None:
                    changed.append(updated)
                    silent.add(agent_id)
            return changed

        silent: set[str] = set()

        def overdue(s: Session) -> list[Job]:
            # The agent enforces a job's run-time limit; this catches an agent that beats
            # but never reports the end (a process stuck in the kernel, an agent bug).
            now = utcnow()
            ended = []
            for job_id, number in Jobs.running_past(s, now, self._timeout_slack):
                job = Jobs.get(s, job_id)
                if job is None:
                    continue
                why = (
                    f"timed out after {job.timeout_s:g}s (ended by the control plane: agent "
                    f"{job.agent_id} did not report the end within "
                    f"{self._timeout_slack:g} s more)"
                )
                done = Jobs.compare_and_set(
                    s,
                    job_id,
                    [JobState.RUNNING],
                    {"state": JobState.TIMED_OUT.value, "end_time": now, "state_reason": why},
                    attempt=number,
                )
                if done is not None:
                    ends = {"state": "TIMED_OUT", "active": False, "end_time": now}
                    Attempts.set(s, job_id, number, message=why, **ends)
                    ended.append(done)
            return ended

        def waited_too_long(s: Session) -> list[Job]:
            now = utcnow()
            ended = []
            for job_id in Jobs.queued_past(s, now):
                job = Jobs.get(s, job_id)
                if job is None:
                    continue
                limit = job.queue_timeout_s
                why = f"waited in the queue longer than its queue_timeout of {limit:g}s"
                if job.state_reason:
                    why += f" ({job.state_reason})"
                values = {"state": JobState.TIMED_OUT.value, "end_time": now, "state_reason": why}
                done = Jobs.compare_and_set(s, job_id, [JobState.QUEUED], values)
                if done is not None:
                    ended.append(done)
            return ended

        changed = await self.db.run(apply)
        for job in await self.db.run(waited_too_long):
            log.info("job %s: %s", job.id, job.state_reason)
            self._after_change(job)
            changed.append(job)
        for job in await self.db.run(overdue):
            log.warning("job %s: %s", job.id, job.state_reason)
            self._cancel_attempt(job, job.state_reason)
            self._release(job.id, job.attempt)
            self._after_change(job)
            changed.append(job)
        for agent_id in silent:
            session = self.sessions.get(agent_id)
            if session is not None and not session.suspect:
                log.warning(
                    "agent %s: lease expired on a live stream; no work until it beats", agent_id
                )
                session.suspect = True
        for job in changed:
            log.warning("job %s: %s", job.id, job.state_reason)
            self._release(job.id, job.attempt, lost=True)
            self._after_change(job)
        if changed:
            self.wake()
        return changed
