"""The agent daemon: one ``AgentService.Connect`` stream, attempts run as asyncio tasks.

Delivery model. Everything the agent tells the control plane outlives the stream it was
meant for: log lines stay in a per-attempt replay buffer until a LogAck covers them, and
attempt updates stay pending until the stream has demonstrably stayed up after them (two
heartbeat ticks later). After a reconnect the agent re-registers, listing what still runs,
and replays both in their original order; the control plane deduplicates lines by
(attempt, sequence) and ignores repeated or stale updates. Running attempts never notice a
disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import grpc

from brinell.credentials import TLS, auth_metadata, resolve_token, tls_from
from brinell.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc, job_pb2

from .attempts import MAX_BUFFERED_LINES, AttemptKey, AttemptState, PendingUpdate
from .channel import Backoff, channel_options
from .config import AgentConfig
from .executor import (
    ExecutionResult,
    Executor,
    Outcome,
    ProcessExecutor,
    Recovered,
    Stream,
)
from .host import agent_version, discover_gpus, memory_bytes
from .prepare import AttemptPreparer, seconds
from .warm import WarmRuntime
from .workspace import WorkspaceError, prune_workspaces, workspace_dir

log = logging.getLogger("brinell.agent")

# Log batching: a line waits at most this long, and a batch goes out as soon as this many
# lines are queued for an attempt.
LOG_FLUSH_INTERVAL = 0.05
LOG_FLUSH_LINES = 100
# One LogBatch stays well below gRPC's 4 MiB default message limit.
MAX_BATCH_LINES = 1000
MAX_BATCH_CHARS = 256 * 1024
# A finished attempt whose updates were delivered but whose lines are never acknowledged
# (e.g. the control plane fenced it) is forgotten after this long.
UNACKED_LINES_TTL = 60.0
REGISTER_TIMEOUT = 30.0
DEFAULT_HEARTBEAT_INTERVAL = 10.0
# Shutdown: how long to try to deliver final updates and lines, then to let the stream close.
SHUTDOWN_DELIVERY_TIMEOUT = 10.0
SHUTDOWN_CLOSE_TIMEOUT = 5.0

_STATES = {
    Outcome.SUCCEEDED: job_pb2.JOB_STATE_SUCCEEDED,
    Outcome.FAILED: job_pb2.JOB_STATE_FAILED,
    Outcome.CANCELLED: job_pb2.JOB_STATE_CANCELLED,
    Outcome.TIMED_OUT: job_pb2.JOB_STATE_TIMED_OUT,
}
#: What goes on the stream after Register; None ends the request side.
Outbox: TypeAlias = asyncio.Queue[agent_service_pb2.ConnectRequest | None]
if TYPE_CHECKING:
    ConnectCall: TypeAlias = grpc.aio.StreamStreamCall[
        agent_service_pb2.ConnectRequest, agent_service_pb2.ConnectResponse
    ]


class _StreamEnded(Exception):
    """The control plane ended or refused the stream without a gRPC error."""


def make_executor(config: AgentConfig) -> Executor:
    """The executor the configuration names (the docker SDK is imported only for docker)."""
    if config.executor == "docker":
        from .docker_executor import DockerExecutor, DockerSettings

        return DockerExecutor(
            DockerSettings(
                agent_id=config.id,
                plugin_cache=config.work_dir / "cache" / "plugins",
                images=config.images,
                networks=config.networks,
                registry_auth=config.registry_auth,
                pull=config.pull,
                keep_failed=config.keep_failed_containers,
                host=config.docker_host,
                watchdog=config.container_watchdog,
                alive_file=config.work_dir / "alive",
                max_connections=4 * config.slots + 4,
            )
        )
    warm = WarmRuntime(modules=config.warm_imports) if config.warm_runtime else None
    return ProcessExecutor(warm=warm)


# --------------------------------------------------------------------------- the agent


class Agent:
    """Registers with the control plane, runs what it assigns, reports back.

    ``run()`` returns after ``stop()``: running attempts are cancelled with their grace
    period and their final updates delivered when the control plane is reachable.
    """

    def __init__(self, config: AgentConfig, executor: Executor | None = None) -> None:
        self.config = config
        self.executor = executor if executor is not None else make_executor(config)
        self._ctx = f"agent={config.id}"
        # Found once at start: a host's GPUs do not change under a running agent.
        self._gpus = discover_gpus()
        if self._gpus:
            log.info("GPUs: %s", ", ".join(f"{g.uuid} ({g.model})" for g in self._gpus))
        self._attempts: dict[AttemptKey, AttemptState] = {}
        self._recently_finished: OrderedDict[AttemptKey, None] = OrderedDict()
        # The credential and TLS settings, resolved once (brinell.credentials).
        self._metadata = auth_metadata(resolve_token(config.control_plane, config.token))
        self.preparer = AttemptPreparer(
            config, lambda: self._stub, self._metadata, self._gpus, self._ctx
        )
        self.prefect = self.preparer.prefect
        self._tls = (
            TLS.load(config.tls_ca, config.tls_cert, config.tls_key)
            if config.tls_ca or config.tls_cert
            else tls_from(None)
        )
        self._channel: grpc.aio.Channel | None = None
        self._stub: agent_service_pb2_grpc.AgentServiceAsyncStub | None = None
        self._old_channels: set[asyncio.Task[None]] = set()
        self._chores: set[asyncio.Task[None]] = set()  # background work kept referenced
        self._call: ConnectCall | None = None
        self._outbox: Outbox | None = None
        self._gen = 0
        self._heartbeats = 0
        # How many attempts the last Register reported (running, or with updates to replay).
        self._reported = 0
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._lines_pending = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._closing_event = asyncio.Event()
        self._stop_reason = "agent is shutting down"
        self._stopping = False
        self._draining = ""  # why it drains ("": it does not)
        self._drain_task: asyncio.Task[None] | None = None
        self._closing = False
        self._force = False  # a second stop(): no more waiting for anything
        self._backoff = Backoff(config.reconnect_min, config.reconnect_max)

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        """True while registered on a live stream."""
        return self._outbox is not None

    def stop(self, reason: str = "agent is shutting down") -> None:
        """First call: graceful shutdown. A second call kills running attempts at once."""
        if self._stop_requested.is_set():
            log.warning("%s: second stop request; killing running attempts now", self._ctx)
            self._force = True
            for st in self._attempts.values():
                if not st.finished:
                    st.cancel.cancel(self._stop_reason, grace_period=0.0)
            return
        self._stop_reason = reason
        self._stopping = True
        self._stop_requested.set()

    def drain(self, reason: str = "agent is draining", deadline: float | None = None) -> None:
        """Takes no new work, lets running attempts finish for up to ``deadline`` seconds
        (default: the configured drain timeout), stops what is left (the control plane
        requeues those jobs), then stops itself. While
        draining, a second call stops at once (as a second signal does)."""
        if self._stopping:
            return
        if self._draining:
            log.warning("%s: asked to drain again; stopping now", self._ctx)
            self.stop(self._draining)
            return
        limit = self.config.drain_timeout if deadline is None else deadline
        self._draining = reason
        log.info("%s: draining (%s): running attempts get %gs to finish", self._ctx, reason, limit)
        self._announce_drain()
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(limit))

    def _announce_drain(self) -> None:
        if self._draining and self._outbox is not None:
            draining = agent_service_pb2.Draining(reason=self._draining)
            draining.deadline.FromTimedelta(timedelta(seconds=self.config.drain_timeout))
            self._outbox.put_nowait(agent_service_pb2.ConnectRequest(draining=draining))

    async def _drain(self, limit: float) -> None:
        running = [st.task for st in self._attempts.values() if not st.finished and st.task]
        if running:
            _done, late = await asyncio.wait(running, timeout=limit)
            if late:
                log.warning(
                    "%s: drain deadline passed; cancelling %d attempt(s)", self._ctx, len(late)
                )
        if not self._stopping:
            self.stop(f"drained: {self._draining}")

    async def run(self) -> None:
        """Runs until stop(); then drains attempts, delivers, closes, stops Prefect."""
        cfg = self.config
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
        # What the previous run left running (containers) first: their workspaces are busy.
        await self._recover()
        self._prune_workspaces()  # what earlier runs of the agent left
        await self.executor.start()
        log.info(
            "%s: starting (control plane %s, queues %s, slots %d, work dir %s, executor %s)",
            self._ctx,
            cfg.control_plane,
            ",".join(cfg.queues),
            cfg.slots,
            cfg.work_dir,
            self.executor.name,
        )
        background: list[asyncio.Task[None]] = []
        if self.prefect is not None:
            background.append(asyncio.create_task(self.prefect.supervise()))
        background.append(asyncio.create_task(self._flush_loop()))
        connection = asyncio.create_task(self._connect_when_ready())
        try:
            await self._stop_requested.wait()
            log.info("%s: stopping: %s", self._ctx, self._stop_reason)
            await self._stop_attempts()
            await self._deliver_remaining(SHUTDOWN_DELIVERY_TIMEOUT)
            await self._close_stream(connection)
        finally:
            self._closing = True
            self._closing_event.set()
            for task in [*background, connection]:
                task.cancel()
            if self._drain_task is not None:
                self._drain_task.cancel()
            leftovers = [
                st.task
                for st in self._attempts.values()
                if st.task is not None and not st.task.done()
            ]
            for task in leftovers:
                task.cancel()  # the executor SIGKILLs the process group on cancellation
            await asyncio.gather(*background, connection, *leftovers, return_exceptions=True)
            await self.executor.close()
            if self.prefect is not None:
                await self.prefect.stop()
            if self._channel is not None:
                await self._channel.close(grace=None)
            for closing in list(self._old_channels):
                closing.cancel()
            log.info("%s: stopped", self._ctx)

    async def _recover(self) -> None:
        """Attempts the agent's previous run left running here (containers): reported as
        running at registration, re-attached or removed once the control plane answers."""
        for found in await self.executor.recover():
            key = (f"jobs/{found.job_id}", found.attempt)
            st = AttemptState(job=key[0], attempt=found.attempt, grace_period=found.grace_period)
            st.recovered = found
            self._attempts[key] = st
            log.info(
                "%s job=%s attempt=%d: found it %s from the agent's previous run",
                self._ctx,
                st.job,
                st.attempt,
                "running" if found.running else "exited",
            )

    async def _stop_attempts(self) -> None:
        tasks = []
        for st in self._attempts.values():
            if not st.finished:
                st.cancel.cancel(self._stop_reason)
                if st.task is not None:
                    tasks.append(st.task)
        if tasks:
            log.info("%s: cancelling %d running attempt(s)", self._ctx, len(tasks))
            # Executors kill after the grace period; the bound only guards against a process
            # the kernel cannot reap (uninterruptible sleep).
            longest = max(st.grace_period for st in self._attempts.values())
            _done, stuck = await asyncio.wait(tasks, timeout=longest + 30.0)
            if stuck:
                log.error("%s: %d attempt(s) did not stop; leaving them", self._ctx, len(stuck))

    def _undelivered(self) -> bool:
        for st in self._attempts.values():
            if st.lines or any(pu.sent_gen != self._gen for pu in st.updates):
                return True
        return False

    async def _deliver_remaining(self, timeout: float) -> None:
        """Gives the stream a bounded chance to carry the final updates and last lines."""
        self._flush_all()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._force:
            if self.connected:
                self._flush_all()
                if not self._undelivered():
                    return
            await asyncio.sleep(0.05)
        if self._undelivered():
            log.warning(
                "%s: stopping with undelivered updates or log lines (control plane %s)",
                self._ctx,
                "connected" if self.connected else "unreachable",
            )

    async def _connect_when_ready(self) -> None:
        """Registers only once the agent's own Prefect server answers: an agent that took jobs
        before its runtime was up made them wait (or run Prefect in ephemeral mode)."""
        if self.prefect is not None and not self.prefect.ready:
            started = time.monotonic()
            log.info("%s: starting the local Prefect server before taking jobs", self._ctx)
            ready = asyncio.create_task(self.prefect.wait_ready(self.prefect.startup_timeout))
            closing = asyncio.create_task(self._closing_event.wait())
            done, _ = await asyncio.wait({ready, closing}, return_when=asyncio.FIRST_COMPLETED)
            for task in (ready, closing):
                task.cancel()
            if closing in done:
                return
            if ready.result() is not None:
                log.info(
                    "%s: local Prefect server ready after %.1f s",
                    self._ctx,
                    time.monotonic() - started,
                )
            else:
                log.warning(
                    "%s: the local Prefect server is not ready (%s); taking jobs anyway, "
                    "their flows run Prefect in ephemeral mode",
                    self._ctx,
                    self.prefect.last_error or "no answer",
                )
        await self._connection_loop()

    async def _close_stream(self, connection: asyncio.Task[None]) -> None:
        """Half-closes the stream and waits for the control plane to end it."""
        self._closing = True
        self._closing_event.set()
        if self._outbox is not None:
            self._outbox.put_nowait(None)
        deadline = time.monotonic() + SHUTDOWN_CLOSE_TIMEOUT
        while not connection.done() and not self._force and time.monotonic() < deadline:
            await asyncio.wait({connection}, timeout=0.1)

    # ------------------------------------------------------------------ the stream

    def _new_channel(self) -> None:
        """Replaces the channel: a fresh one connects at once, where a channel that has been
        failing waits out gRPC's own reconnect backoff. The old one finishes its downloads."""
        old = self._channel
        if old is not None:
            task = asyncio.create_task(old.close(grace=30.0))
            self._old_channels.add(task)
            task.add_done_callback(self._old_channels.discard)
        tls = self._tls
        self._channel = (
            grpc.aio.secure_channel(
                self.config.control_plane, tls.channel_credentials(), channel_options(self.config)
            )
            if tls is not None
            else grpc.aio.insecure_channel(
                self.config.control_plane, options=channel_options(self.config)
            )
        )
        self._stub = agent_service_pb2_grpc.AgentServiceStub(self._channel)

    async def _connection_loop(self) -> None:
        while not self._closing:
            self._new_channel()
            try:
                await self._run_stream()
            except grpc.aio.AioRpcError as exc:
                self._log_rpc_error(exc)
            except (_StreamEnded, TimeoutError) as exc:
                if not self._closing:
                    reason = str(exc) or f"no Registered within {REGISTER_TIMEOUT:g}s"
                    log.warning("%s: stream ended: %s", self._ctx, reason)
            except asyncio.CancelledError:
                self._disconnect()
                raise
            except Exception:
                log.exception("%s: unexpected error on the stream", self._ctx)
            finally:
                self._disconnect()
            if self._closing:
                return
            delay = self._backoff.next()
            log.info("%s: reconnecting in %.2fs", self._ctx, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing_event.wait(), delay)

    def _log_rpc_error(self, exc: grpc.aio.AioRpcError) -> None:
        code, details = exc.code(), exc.details()
        if self._closing and code == grpc.StatusCode.CANCELLED:
            return
        if code == grpc.StatusCode.ALREADY_EXISTS:
            log.warning(
                "%s: control plane says another stream holds this agent id (%s); "
                "an old stream not yet noticed dead, or a second agent with the same id",
                self._ctx,
                details,
            )
        elif code == grpc.StatusCode.INVALID_ARGUMENT:
            log.error("%s: control plane refused registration: %s", self._ctx, details)
        else:
            log.warning(
                "%s: stream to %s lost: %s: %s",
                self._ctx,
                self.config.control_plane,
                code.name,
                details,
            )

    async def _run_stream(self) -> None:
        outbox: Outbox = asyncio.Queue()
        register = self._register_message()
        self._reported = len(register.running)
        assert self._stub is not None
        call = self._stub.Connect(self._requests(register, outbox), metadata=self._metadata)
        self._call = call
        try:
            first = await asyncio.wait_for(call.read(), REGISTER_TIMEOUT)
            # read() returns grpc.aio.EOF, not a response, when the stream has ended.
            if not isinstance(first, agent_service_pb2.ConnectResponse):
                raise _StreamEnded("control plane closed the stream before registering the agent")
            if first.WhichOneof("message") != "registered":
                raise _StreamEnded(f"expected Registered, got {first.WhichOneof('message')}")
            self._on_registered(first.registered, outbox)
            while True:
                response = await call.read()
                if not isinstance(response, agent_service_pb2.ConnectResponse):
                    if not self._closing:
                        raise _StreamEnded("control plane closed the stream")
                    return
                self._dispatch(response)
        finally:
            # grpc does not stop polling the request iterator of a call the server ended;
            # this ends the generator, so no task is left waiting on a dead outbox.
            outbox.put_nowait(None)

    async def _requests(
        self, register: agent_service_pb2.Register, outbox: Outbox
    ) -> AsyncIterator[agent_service_pb2.ConnectRequest]:
        """The request side of the stream: Register, then whatever goes through the outbox."""
        yield agent_service_pb2.ConnectRequest(register=register)
        while True:
            message = await outbox.get()
            if message is None:
                return
            yield message

    def _register_message(self) -> agent_service_pb2.Register:
        cfg = self.config
        capacity = agent_pb2.Capacity(
            cpus=os.cpu_count() or 1,
            memory_bytes=memory_bytes(),
            slots=cfg.slots,
            gpus=self._gpus,
        )
        # Attempts whose final update is not yet known to be delivered count as running, so
        # the control plane does not declare them lost before the replayed update arrives.
        running = [
            st.running_message()
            for st in self._attempts.values()
            if not st.finished or (st.updates and st.assigned)
        ]
        return agent_service_pb2.Register(
            agent_id=cfg.id,
            hostname=socket.gethostname(),
            labels=cfg.labels,
            queues=cfg.queues,
            capacity=capacity,
            running=running,
            version=agent_version(),
            executor=self.executor.name,
        )

    def _on_registered(self, registered: agent_service_pb2.Registered, outbox: Outbox) -> None:
        interval = seconds(registered.heartbeat_interval) or DEFAULT_HEARTBEAT_INTERVAL
        self._gen += 1
        self._heartbeats = 0
        self._outbox = outbox
        log.info(
            "%s: registered as %s (heartbeat %.1fs, lease %.1fs, %d attempt(s) reported)",
            self._ctx,
            registered.agent,
            interval,
            seconds(registered.lease_duration),
            self._reported,
        )
        self._reattach(registered)
        self._announce_drain()  # a new stream: the control plane must hear it again
        # Replay in the original order: each pending update after the lines written before it.
        for st in list(self._attempts.values()):
            st.replay_from_acked()
            for pending in st.updates:
                self._send_lines(st, upto=pending.after_seq)
                self._put_update(pending)
            self._send_lines(st)
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(outbox, interval))

    def _reattach(self, registered: agent_service_pb2.Registered) -> None:
        """Recovered attempts: the control plane sends a cursor for each it still assigns
        here (the log resumes after what it stored); the others are removed."""
        cursors = {(c.job, c.attempt): c for c in registered.cursors}
        for st in list(self._attempts.values()):
            found = st.recovered
            if found is None or st.task is not None:
                continue
            cursor = cursors.get(st.key)
            if cursor is None:
                del self._attempts[st.key]
                self._remember_finished(st.key)
                task = asyncio.create_task(self.executor.discard(found))
                self._chores.add(task)
                task.add_done_callback(self._chores.discard)
                continue
            st.next_seq = int(cursor.last_sequence) + 1
            st.acked = st.sent_upto = int(cursor.last_sequence)
            skip = {
                Stream.STDOUT: int(cursor.stdout_lines),
                Stream.STDERR: int(cursor.stderr_lines),
            }
            st.task = asyncio.create_task(self._resume_attempt(st, found, skip))

    async def _resume_attempt(
        self, st: AttemptState, found: Recovered, skip: dict[Stream, int]
    ) -> None:
        try:
            result = await self.executor.resume(
                found,
                skip,
                on_line=lambda stream, text: self._on_line(st, stream, text),
                on_start=lambda pid, digest: self._on_started(st, pid, digest),
                cancel=st.cancel,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s job=%s attempt=%d: agent error", self._ctx, st.job, st.attempt)
            message = f"agent error: {exc!r}"
            self._on_line(st, Stream.SYSTEM, message)
            result = ExecutionResult(Outcome.FAILED, None, message)
        self._finish(st, result)

    def _disconnect(self) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(None)
        self._outbox = None
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def _heartbeat_loop(self, outbox: Outbox, interval: float) -> None:
        while self._outbox is outbox:
            await asyncio.sleep(interval)
            if self._outbox is not outbox:
                return
            self._heartbeats += 1
            running = [st.running_message() for st in self._attempts.values() if not st.finished]
            outbox.put_nowait(
                agent_service_pb2.ConnectRequest(
                    heartbeat=agent_service_pb2.Heartbeat(running=running)
                )
            )
            if self._heartbeats == 1:
                # The stream has held for a full interval: a later break starts backoff anew.
                self._backoff.reset()
            self._confirm_updates()

    def _confirm_updates(self) -> None:
        """Drops the lines of finished attempts that stay unacknowledged for too long.

        (Updates are dropped only when the control plane acknowledges them: counting
        heartbeats sent proved nothing on a connection the network silently dropped, and a
        final update lost that way had a job that ended during a short cut run again.)"""
        now = time.monotonic()
        for st in list(self._attempts.values()):
            if st.finished and not st.updates and st.lines:
                if st.delivered_at is None:
                    st.delivered_at = now
                elif now - st.delivered_at > UNACKED_LINES_TTL:
                    log.warning(
                        "%s job=%s attempt=%d: %d log line(s) never acknowledged; dropping them",
                        self._ctx,
                        st.job,
                        st.attempt,
                        len(st.lines),
                    )
                    st.lines.clear()
            self._maybe_forget(st)

    def _maybe_forget(self, st: AttemptState) -> None:
        if st.finished and not st.updates and not st.lines:
            self._attempts.pop(st.key, None)

    # ------------------------------------------------------------------ outbound

    def _put_update(self, pending: PendingUpdate) -> None:
        assert self._outbox is not None
        pending.sent_gen = self._gen
        self._outbox.put_nowait(agent_service_pb2.ConnectRequest(attempt_update=pending.message))

    def _post_update(
        self,
        st: AttemptState,
        state: job_pb2.JobState.ValueType,
        exit_code: int | None = None,
        message: str = "",
        image_digest: str = "",
    ) -> None:
        update = agent_service_pb2.AttemptUpdate(
            job=st.job, attempt=st.attempt, state=state, message=message, image_digest=image_digest
        )
        if exit_code is not None:
            update.has_exit_code = True
            update.exit_code = exit_code
        pending = PendingUpdate(update, after_seq=st.next_seq - 1)
        st.updates.append(pending)
        if self._outbox is not None:
            self._send_lines(st, upto=pending.after_seq)
            self._put_update(pending)

    def _send_lines(self, st: AttemptState, upto: int | None = None) -> None:
        """Puts the attempt's unsent lines (up to ``upto``) on the stream, in batches."""
        outbox = self._outbox
        if outbox is None or not st.lines:
            return
        if st.dropped:
            dropped, st.dropped = st.dropped, 0
            st.add_line(
                Stream.SYSTEM,
                f"the agent dropped {dropped} log line(s): its buffer of {MAX_BUFFERED_LINES:,} "
                "lines was full while the control plane was unreachable or slow to acknowledge",
            )
        limit = st.next_seq - 1 if upto is None else upto
        if st.sent_upto >= limit:
            return
        start = max(0, st.sent_upto + 1 - st.lines[0].sequence)
        batch: list[job_pb2.LogLine] = []
        chars = 0
        for line in itertools.islice(st.lines, start, None):
            if line.sequence > limit:
                break
            full = len(batch) >= MAX_BATCH_LINES or chars + len(line.text) > MAX_BATCH_CHARS
            if batch and full:
                self._put_batch(outbox, st, batch)
                batch, chars = [], 0
            batch.append(line)
            chars += len(line.text)
            st.sent_upto = line.sequence
        if batch:
            self._put_batch(outbox, st, batch)

    @staticmethod
    def _put_batch(outbox: Outbox, st: AttemptState, batch: list[job_pb2.LogLine]) -> None:
        outbox.put_nowait(
            agent_service_pb2.ConnectRequest(
                log_batch=agent_service_pb2.LogBatch(job=st.job, attempt=st.attempt, lines=batch)
            )
        )

    def _flush_all(self) -> None:
        for st in list(self._attempts.values()):
            self._send_lines(st)

    async def _flush_loop(self) -> None:
        """Sends queued lines within LOG_FLUSH_INTERVAL, or at once when a batch is full."""
        while True:
            await self._lines_pending.wait()
            if not self._flush_now.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._flush_now.wait(), LOG_FLUSH_INTERVAL)
            self._lines_pending.clear()
            self._flush_now.clear()
            self._flush_all()

    def _on_line(self, st: AttemptState, stream: Stream, text: str) -> None:
        st.add_line(stream, text)
        self._lines_pending.set()
        if self._outbox is not None and st.next_seq - 1 - st.sent_upto >= LOG_FLUSH_LINES:
            self._flush_now.set()

    # ------------------------------------------------------------------ inbound

    def _dispatch(self, response: agent_service_pb2.ConnectResponse) -> None:
        kind = response.WhichOneof("message")
        if kind == "assignment":
            self._on_assignment(response.assignment)
        elif kind == "cancel":
            self._on_cancel(response.cancel)
        elif kind == "log_ack":
            self._on_log_ack(response.log_ack)
        elif kind == "update_ack":
            self._on_update_ack(response.update_ack)
        elif kind == "drain":
            d = response.drain
            self.drain(d.reason or "drained by the control plane", seconds(d.deadline) or None)
        elif kind == "registered":
            log.debug("%s: Registered again on a live stream; ignored", self._ctx)
        else:
            log.warning("%s: unknown message from the control plane: %s", self._ctx, kind)

    def _on_assignment(self, assignment: agent_service_pb2.Assignment) -> None:
        job, attempt = assignment.job.name, assignment.attempt
        key = (job, attempt)
        if self._stopping or self._draining:
            # Not started and not reported: the attempt is lost with this agent's stream and
            # the control plane requeues it elsewhere.
            log.warning(
                "%s job=%s attempt=%d: assignment ignored, agent is stopping",
                self._ctx,
                job,
                attempt,
            )
            return
        if key in self._attempts or key in self._recently_finished:
            log.info("%s job=%s attempt=%d: duplicate assignment ignored", self._ctx, job, attempt)
            return
        running = sum(1 for st in self._attempts.values() if not st.finished)
        if running >= self.config.slots:
            log.warning(
                "%s job=%s attempt=%d: assigned beyond capacity (%d of %d slots busy); running it",
                self._ctx,
                job,
                attempt,
                running,
                self.config.slots,
            )
        grace = seconds(assignment.grace_period) or self.config.grace_period
        st = AttemptState(job=job, attempt=attempt, grace_period=grace)
        self._attempts[key] = st
        log.info(
            "%s job=%s attempt=%d: assigned (entry %r, digest %s)",
            self._ctx,
            job,
            attempt,
            assignment.job.entry or "main",
            assignment.job.entry_point_digest,
        )
        st.task = asyncio.create_task(self._run_attempt(st, assignment))

    def _on_cancel(self, cancel: agent_service_pb2.Cancel) -> None:
        key = (cancel.job, cancel.attempt)
        st = self._attempts.get(key)
        # Zero or unset: the attempt's own grace period.
        grace = seconds(cancel.grace_period) or None
        if st is not None and not st.finished:
            log.info(
                "%s job=%s attempt=%d: cancel requested (%s)",
                self._ctx,
                cancel.job,
                cancel.attempt,
                cancel.reason or "no reason given",
            )
            st.cancel.cancel(cancel.reason or "cancelled by the control plane", grace)
            return
        if st is not None or key in self._recently_finished:
            return  # already over; its final update is or was on its way
        # Never heard of it (its assignment may have been lost): say it is not running here.
        log.info(
            "%s job=%s attempt=%d: cancel for an unknown attempt; reporting it cancelled",
            self._ctx,
            cancel.job,
            cancel.attempt,
        )
        st = AttemptState(
            job=cancel.job, attempt=cancel.attempt, grace_period=0.0, finished=True, assigned=False
        )
        self._attempts[key] = st
        self._remember_finished(key)
        self._post_update(
            st, job_pb2.JOB_STATE_CANCELLED, None, "cancelled: the attempt was not running"
        )

    def _on_log_ack(self, ack: agent_service_pb2.LogAck) -> None:
        st = self._attempts.get((ack.job, ack.attempt))
        if st is None:
            return
        while st.lines and st.lines[0].sequence <= ack.sequence:
            st.lines.popleft()
        st.acked = max(st.acked, ack.sequence)
        st.sent_upto = max(st.sent_upto, st.acked)
        self._maybe_forget(st)

    def _on_update_ack(self, ack: agent_service_pb2.UpdateAck) -> None:
        """The control plane applied (or refused for good) this update and those before it."""
        st = self._attempts.get((ack.job, ack.attempt))
        if st is None:
            return
        for i, pending in enumerate(st.updates):
            if pending.message.state == ack.state:
                del st.updates[: i + 1]
                break
        self._maybe_forget(st)

    def _remember_finished(self, key: AttemptKey) -> None:
        self._recently_finished[key] = None
        while len(self._recently_finished) > 1024:
            self._recently_finished.popitem(last=False)

    # ------------------------------------------------------------------ attempts

    async def _run_attempt(
        self, st: AttemptState, assignment: agent_service_pb2.Assignment
    ) -> None:
        def system(text: str) -> None:
            self._on_line(st, Stream.SYSTEM, text)

        try:
            prepare = asyncio.create_task(self.preparer.run_spec(st, assignment, system))
            cancelled = asyncio.create_task(st.cancel.wait())
            try:
                await asyncio.wait({prepare, cancelled}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                cancelled.cancel()
            if not prepare.done():
                prepare.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await prepare
                system("cancelled before the process started")
                reason = st.cancel.reason
                result = ExecutionResult(
                    Outcome.CANCELLED, None, f"cancelled: {reason}" if reason else "cancelled"
                )
            else:
                spec = prepare.result()
                result = await self.executor.run(
                    spec,
                    on_line=lambda stream, text: self._on_line(st, stream, text),
                    on_start=lambda pid, digest: self._on_started(st, pid, digest),
                    cancel=st.cancel,
                )
        except WorkspaceError as exc:
            system(str(exc))
            result = ExecutionResult(Outcome.FAILED, None, str(exc))
        except grpc.aio.AioRpcError as exc:
            message = (
                f"cannot fetch the entry point archive {assignment.job.entry_point_digest}: "
                f"{exc.code().name}: {exc.details()}"
            )
            system(message)
            result = ExecutionResult(Outcome.FAILED, None, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s job=%s attempt=%d: agent error", self._ctx, st.job, st.attempt)
            message = f"agent error: {exc!r}"
            system(message)
            result = ExecutionResult(Outcome.FAILED, None, message)
        self._finish(st, result)

    def _on_started(self, st: AttemptState, pid: int, image_digest: str = "") -> None:
        log.info(
            "%s job=%s attempt=%d: process %d started%s",
            self._ctx,
            st.job,
            st.attempt,
            pid,
            f" in a container of {image_digest}" if image_digest else "",
        )
        self._post_update(st, job_pb2.JOB_STATE_RUNNING, image_digest=image_digest)

    def _finish(self, st: AttemptState, result: ExecutionResult) -> None:
        st.finished = True
        self._remember_finished(st.key)
        log.info(
            "%s job=%s attempt=%d: %s%s%s",
            self._ctx,
            st.job,
            st.attempt,
            result.outcome.value,
            f" (exit code {result.exit_code})" if result.exit_code is not None else "",
            f": {result.message}" if result.message else "",
        )
        self._post_update(st, _STATES[result.outcome], result.exit_code, result.message)
        self._prune_workspaces(finished=st)

    def _prune_workspaces(self, finished: AttemptState | None = None) -> None:
        """Removes old finished workspaces (keep_workspaces, workspace_ttl_hours), off the loop;
        the attempt that just finished counts from now, and running ones are never touched."""
        cfg = self.config
        if finished is not None:
            with contextlib.suppress(OSError, WorkspaceError):
                os.utime(workspace_dir(cfg.work_dir, finished.job_id, finished.attempt))
        now = time.time()  # workspaces made after this (new attempts) are left alone
        busy: list[Path] = []
        for a in self._attempts.values():
            if not a.finished and a.assigned:
                with contextlib.suppress(WorkspaceError):  # a malformed id has no workspace
                    busy.append(workspace_dir(cfg.work_dir, a.job_id, a.attempt))

        def prune() -> None:
            try:
                removed = prune_workspaces(
                    cfg.work_dir, cfg.keep_workspaces, cfg.workspace_ttl_hours * 3600, busy, now
                )
            except Exception:
                log.exception("%s: removing old workspaces failed", self._ctx)
                return
            if removed:
                log.info("%s: removed %d old workspace(s)", self._ctx, len(removed))

        task = asyncio.create_task(asyncio.to_thread(prune))
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)


# --------------------------------------------------------------------------- entry point


def configure_logging(config: AgentConfig, level: int | str = logging.INFO) -> None:
    """Plain-text logs on stderr, unless the embedding program configured logging already."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


async def _serve(config: AgentConfig, executor: Executor | None = None) -> None:
    agent = Agent(config, executor)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    # SIGTERM drains (running attempts may finish, up to --drain-timeout); SIGINT, or a second
    # SIGTERM, stops at once.
    handlers = {signal.SIGINT: agent.stop, signal.SIGTERM: agent.drain}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, handlers[sig], f"received {sig.name}")
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or no signals here: the embedder calls stop()
    try:
        await agent.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def run_forever(config: AgentConfig) -> None:
    """Runs the agent until SIGINT/SIGTERM, then shuts down gracefully and returns; refuses
    to start (exit status 1) on a host that lacks what its jobs need."""
    if missing := config.missing_runtime():
        sys.exit(f"brinell agent: {missing}")
    configure_logging(config)
    executor = make_executor(config)
    if problem := executor.check():
        sys.exit(f"brinell agent: {problem}")
    asyncio.run(_serve(config, executor))
