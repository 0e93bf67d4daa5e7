"""Servicers: validate, convert, delegate. No logic lives here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

import grpc

from brinell.mlproject import shown
from brinell.v1 import (
    agent_service_pb2 as agent_pb,
)
from brinell.v1 import (
    agent_service_pb2_grpc as agent_grpc,
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

from ..domain import models as m
from ..domain import names
from ..domain.agents import AgentDirectory
from ..domain.entry_points import EntryPointManager
from ..domain.errors import DomainError, InvalidArgument, NotFound
from ..domain.experiments import ExperimentManager
from ..domain.identity import PermissionDenied
from ..domain.jobs import JobManager, SubmitSpec
from ..domain.scheduler import (
    AgentSession,
    Assign,
    AttemptReport,
    Cancel,
    Close,
    Drain,
    LogAck,
    Outbound,
    Scheduler,
    UpdateAck,
)
from ..store.blobs import BlobStore
from . import convert
from .auth import current
from .errors import Ctx, streaming, unary
from .paging import fitted

log = logging.getLogger("brinell.controlplane.api")


class ExperimentServicer(exp_grpc.ExperimentServiceServicer):
    def __init__(self, experiments: ExperimentManager) -> None:
        self.experiments = experiments

    @unary
    async def CreateExperiment(
        self, request: exp_pb.CreateExperimentRequest, context: Ctx
    ) -> exp_pb.CreateExperimentResponse:
        e = request.experiment
        exp = await self.experiments.create(
            request.experiment_id, e.description, dict(e.labels), current(), e.group
        )
        return exp_pb.CreateExperimentResponse(experiment=convert.experiment(exp))

    @unary
    async def GetExperiment(
        self, request: exp_pb.GetExperimentRequest, context: Ctx
    ) -> exp_pb.GetExperimentResponse:
        exp = await self.experiments.get(request.name, current())
        return exp_pb.GetExperimentResponse(experiment=convert.experiment(exp))

    @unary
    async def ListExperiments(
        self, request: exp_pb.ListExperimentsRequest, context: Ctx
    ) -> exp_pb.ListExperimentsResponse:
        who = current()
        return await fitted(
            lambda n: self.experiments.page(n, request.page_token, request.filter, who),
            request.page_size,
            lambda exps, token: exp_pb.ListExperimentsResponse(
                experiments=[convert.experiment(e) for e in exps], next_page_token=token
            ),
        )

    @unary
    async def UpdateExperiment(
        self, request: exp_pb.UpdateExperimentRequest, context: Ctx
    ) -> exp_pb.UpdateExperimentResponse:
        paths = set(request.update_mask.paths) or {"description", "labels"}
        unknown = paths - {"description", "labels"}
        if unknown:
            raise InvalidArgument(
                [
                    f"update_mask path {shown(p)} cannot be updated (description, labels)"
                    for p in sorted(unknown)
                ],
                field="update_mask",
            )
        e = request.experiment
        exp = await self.experiments.update(
            e.name,
            e.description if "description" in paths else None,
            dict(e.labels) if "labels" in paths else None,
            current(),
        )
        return exp_pb.UpdateExperimentResponse(experiment=convert.experiment(exp))

    @unary
    async def DeleteExperiment(
        self, request: exp_pb.DeleteExperimentRequest, context: Ctx
    ) -> exp_pb.DeleteExperimentResponse:
        await self.experiments.delete(request.name, current())
        return exp_pb.DeleteExperimentResponse()


class EntryPointServicer(ep_grpc.EntryPointServiceServicer):
    def __init__(self, entry_points: EntryPointManager) -> None:
        self.entry_points = entry_points

    @unary
    async def UploadEntryPoint(
        self, request_iterator: AsyncIterator[ep_pb.UploadEntryPointRequest], context: Ctx
    ) -> ep_pb.UploadEntryPointResponse:
        meta, chunks = await convert.split_upload(request_iterator)
        ep, rev, created = await self.entry_points.upload(
            meta.entry_point_id, meta.description, meta.sha256, chunks, current()
        )
        return ep_pb.UploadEntryPointResponse(
            entry_point=convert.entry_point(ep), revision=convert.revision(rev), created=created
        )

    @unary
    async def GetEntryPoint(
        self, request: ep_pb.GetEntryPointRequest, context: Ctx
    ) -> ep_pb.GetEntryPointResponse:
        ep = await self.entry_points.get(request.name)
        return ep_pb.GetEntryPointResponse(entry_point=convert.entry_point(ep))

    @unary
    async def ListEntryPoints(
        self, request: ep_pb.ListEntryPointsRequest, context: Ctx
    ) -> ep_pb.ListEntryPointsResponse:
        return await fitted(
            lambda n: self.entry_points.page(n, request.page_token),
            request.page_size,
            lambda eps, token: ep_pb.ListEntryPointsResponse(
                entry_points=[convert.entry_point(e) for e in eps], next_page_token=token
            ),
        )

    @unary
    async def GetEntryPointRevision(
        self, request: ep_pb.GetEntryPointRevisionRequest, context: Ctx
    ) -> ep_pb.GetEntryPointRevisionResponse:
        rev = await self.entry_points.revision(request.name)
        return ep_pb.GetEntryPointRevisionResponse(revision=convert.revision(rev))

    @unary
    async def ListEntryPointRevisions(
        self, request: ep_pb.ListEntryPointRevisionsRequest, context: Ctx
    ) -> ep_pb.ListEntryPointRevisionsResponse:
        return await fitted(
            lambda n: self.entry_points.revisions(request.parent, n, request.page_token),
            request.page_size,
            lambda revs, token: ep_pb.ListEntryPointRevisionsResponse(
                revisions=[convert.revision(r) for r in revs], next_page_token=token
            ),
        )


class JobServicer(job_grpc.JobServiceServicer):
    def __init__(self, jobs: JobManager) -> None:
        self.jobs = jobs

    @unary
    async def SubmitJob(
        self, request: job_pb.SubmitJobRequest, context: Ctx
    ) -> job_pb.SubmitJobResponse:
        job = await self.jobs.submit(
            SubmitSpec(
                experiment=request.experiment,
                entry_point=request.entry_point,
                digest=request.entry_point_digest,
                entry=request.entry,
                parameters=dict(request.parameters),
                queue=request.queue,
                selector=dict(request.selector),
                timeout_s=request.timeout.ToNanoseconds() / 1e9,
                max_attempts=request.max_attempts,
                request_id=request.request_id,
                plugin_versions=dict(request.plugin_versions),
                creator=current().name,
                resources=convert.resources_from(request.resources),
                image=request.image,
                priority=request.priority,
                queue_timeout_s=request.queue_timeout.ToNanoseconds() / 1e9,
                retry=convert.retry_from(request),
                depends_on=dict(request.depends_on),
            ),
            current(),
        )
        return job_pb.SubmitJobResponse(job=convert.job(job))

    @unary
    async def GetJob(self, request: job_pb.GetJobRequest, context: Ctx) -> job_pb.GetJobResponse:
        return job_pb.GetJobResponse(job=convert.job(await self.jobs.get(request.name, current())))

    @unary
    async def ListJobs(
        self, request: job_pb.ListJobsRequest, context: Ctx
    ) -> job_pb.ListJobsResponse:
        who = current()
        return await fitted(
            lambda n: self.jobs.page(n, request.page_token, request.filter, who),
            request.page_size,
            lambda jobs, token: job_pb.ListJobsResponse(
                jobs=[convert.job(j) for j in jobs], next_page_token=token
            ),
        )

    @streaming
    async def WatchJob(
        self, request: job_pb.WatchJobRequest, context: Ctx
    ) -> AsyncIterator[job_pb.WatchJobResponse]:
        async for job in self.jobs.watch(request.name, current()):
            yield job_pb.WatchJobResponse(job=convert.job(job))

    @streaming
    async def StreamJobLogs(
        self, request: job_pb.StreamJobLogsRequest, context: Ctx
    ) -> AsyncIterator[job_pb.StreamJobLogsResponse]:
        async for lines in self.jobs.logs(
            request.name, request.start_offset, request.follow, current(), request.attempt
        ):
            yield job_pb.StreamJobLogsResponse(lines=[convert.log_line(ln) for ln in lines])

    @unary
    async def CancelJob(
        self, request: job_pb.CancelJobRequest, context: Ctx
    ) -> job_pb.CancelJobResponse:
        job = await self.jobs.cancel(request.name, request.reason, current())
        return job_pb.CancelJobResponse(job=convert.job(job))


def _outbound(msg: Outbound) -> agent_pb.ConnectResponse:
    if isinstance(msg, Assign):
        return agent_pb.ConnectResponse(
            assignment=agent_pb.Assignment(
                job=convert.job(msg.job),
                attempt=msg.attempt,
                env=msg.env,
                grace_period=convert.duration(msg.grace_period),
                gpu_uuids=msg.job.gpu_uuids,
            )
        )
    if isinstance(msg, Cancel):
        return agent_pb.ConnectResponse(
            cancel=agent_pb.Cancel(
                job=f"jobs/{msg.job_id}",
                attempt=msg.attempt,
                reason=msg.reason,
                grace_period=convert.duration(msg.grace_period),
            )
        )
    if isinstance(msg, Drain):
        return agent_pb.ConnectResponse(
            drain=agent_pb.Drain(reason=msg.reason, deadline=convert.duration(msg.deadline))
        )
    if isinstance(msg, UpdateAck):
        return agent_pb.ConnectResponse(
            update_ack=agent_pb.UpdateAck(
                job=f"jobs/{msg.job_id}",
                attempt=msg.attempt,
                state=convert.job_state(msg.state),
            )
        )
    assert isinstance(msg, LogAck)
    return agent_pb.ConnectResponse(
        log_ack=agent_pb.LogAck(
            job=f"jobs/{msg.job_id}", attempt=msg.attempt, sequence=msg.sequence
        )
    )


def _refs(running: Iterable[agent_pb.RunningAttempt]) -> list[m.AttemptRef]:
    return [m.AttemptRef(names.job_id(r.job), r.attempt) for r in running]


class AgentServicer(agent_grpc.AgentServiceServicer):
    def __init__(self, scheduler: Scheduler, directory: AgentDirectory, blobs: BlobStore) -> None:
        self.scheduler = scheduler
        self.directory = directory
        self.blobs = blobs

    @streaming
    async def Connect(
        self, request_iterator: AsyncIterator[agent_pb.ConnectRequest], context: Ctx
    ) -> AsyncIterator[agent_pb.ConnectResponse]:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or not first.HasField("register"):
            raise InvalidArgument("the first message on Connect must be Register", field="register")
        reg = first.register
        agent_id = names.check_id(
            reg.agent_id, "agent", names.AGENT_ID_RE, field="register.agent_id"
        )
        info = m.AgentInfo(
            id=agent_id,
            hostname=reg.hostname,
            labels=dict(reg.labels),
            queues=list(reg.queues) or ["default"],
            capacity=convert.capacity_from(reg.capacity),
            state="CONNECTED",
            version=reg.version,
            executor=reg.executor,
        )
        session = await self.directory.connect(current(), info, _refs(reg.running))
        cfg = self.scheduler.config
        yield agent_pb.ConnectResponse(
            registered=agent_pb.Registered(
                agent=f"agents/{agent_id}",
                heartbeat_interval=convert.duration(cfg.heartbeat_interval),
                lease_duration=convert.duration(cfg.lease_duration),
                cursors=[
                    agent_pb.AttemptCursor(
                        job=f"jobs/{c.job_id}",
                        attempt=c.attempt,
                        last_sequence=c.last_sequence,
                        stdout_lines=c.stdout_lines,
                        stderr_lines=c.stderr_lines,
                    )
                    for c in session.cursors
                ],
            )
        )
        reader = asyncio.create_task(self._read(session, requests))
        # The reader puts a Close in the outbox when the agent's side ends (or fails).
        reader.add_done_callback(
            lambda _: session.outbox.put_nowait(Close("the agent closed the stream"))
        )
        try:
            while not isinstance(msg := await session.outbox.get(), Close):
                yield _outbound(msg)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            await self.scheduler.disconnect(session)

    async def _read(
        self, session: AgentSession, requests: AsyncIterator[agent_pb.ConnectRequest]
    ) -> None:
        # Updates and log batches are pipelined: each is enqueued in arrival order (so the
        # store applies them in that order) and the reader moves on without waiting for the
        # commit. The semaphore bounds how much one agent may have in flight.
        in_flight = asyncio.Semaphore(256)
        pending: set[asyncio.Future[Any]] = set()

        def track(fut: asyncio.Future[Any], on_done: Any = None) -> None:
            pending.add(fut)

            def done(f: asyncio.Future[Any]) -> None:
                pending.discard(f)
                in_flight.release()
                if f.cancelled():
                    return
                if f.exception() is not None:
                    log.error(
                        "agent %s: applying a message failed", session.id, exc_info=f.exception()
                    )
                elif on_done is not None:
                    on_done(f.result())

            fut.add_done_callback(done)

        try:
            async for req in requests:
                kind = req.WhichOneof("message")
                try:
                    if kind == "heartbeat":
                        refs = _refs(req.heartbeat.running)
                        await self.scheduler.heartbeat(session, refs)
                    elif kind in ("attempt_update", "log_batch"):
                        await self._apply(session, req, in_flight, track)
                    elif kind == "draining":
                        self.scheduler.draining(session, req.draining.reason[:500])
                    else:
                        log.warning("agent %s sent an unexpected %s", session.id, kind)
                except DomainError as exc:  # one bad message is dropped, not the stream
                    log.warning("agent %s: %s refused: %s", session.id, kind, exc.message)
            if pending:  # the agent closed its side: let what it sent land first
                await asyncio.wait(pending)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("agent %s stream failed", session.id)
            raise

    async def _apply(
        self,
        session: AgentSession,
        req: agent_pb.ConnectRequest,
        in_flight: asyncio.Semaphore,
        track: Any,
    ) -> None:
        """An AttemptUpdate or LogBatch, only for an attempt this session was given."""
        if req.HasField("attempt_update"):
            u = req.attempt_update
            job_id = names.job_id(u.job, field="attempt_update.job")
            state = convert.job_state_from(u.state)
            if state is None:
                raise InvalidArgument("an update needs a state", field="attempt_update.state")
            ack = UpdateAck(job_id, u.attempt, state)
            if not session.holds(job_id, u.attempt):
                session.outbox.put_nowait(ack)  # nobody will apply it: the agent lets go
                raise PermissionDenied(
                    f"attempt {u.attempt} of jobs/{job_id} is not this session's"
                )
            await in_flight.acquire()
            track(
                self.scheduler.report_nowait(
                    session,
                    AttemptReport(
                        job_id,
                        u.attempt,
                        state,
                        u.exit_code if u.has_exit_code else None,
                        u.message,
                        u.image_digest[:600],
                    ),
                ),
                lambda _result, ack=ack: session.outbox.put_nowait(ack),
            )
        else:
            b = req.log_batch
            job_id = names.job_id(b.job, field="log_batch.job")
            if not session.holds(job_id, b.attempt):
                # Acked, so the agent lets go of lines nobody will store.
                top = max((ln.sequence for ln in b.lines), default=0)
                session.outbox.put_nowait(LogAck(job_id, b.attempt, top))
                raise PermissionDenied(
                    f"attempt {b.attempt} of jobs/{job_id} is not this session's"
                )
            lines = [
                (
                    ln.sequence,
                    int(ln.stream),
                    ln.text,
                    ln.time.ToDatetime(UTC) if ln.HasField("time") else datetime.now(UTC),
                )
                for ln in b.lines
            ]
            await in_flight.acquire()
            track(
                self.scheduler.logs_nowait(job_id, b.attempt, lines),
                lambda seq, j=job_id, a=b.attempt: session.outbox.put_nowait(LogAck(j, a, seq)),
            )

    @streaming
    async def DownloadBlob(
        self, request: agent_pb.DownloadBlobRequest, context: Ctx
    ) -> AsyncIterator[agent_pb.DownloadBlobResponse]:
        digest = names.check_digest(request.digest)
        await self.directory.may_download(current(), digest)
        found = await asyncio.to_thread(self.blobs.open, digest)
        if found is None:
            raise NotFound(f"blob {digest} not found")
        size, chunks = found
        first = True
        while True:
            chunk = await asyncio.to_thread(next, chunks, None)
            if chunk is None:
                break
            yield agent_pb.DownloadBlobResponse(chunk=chunk, size_bytes=size if first else 0)
            first = False
        if first:
            yield agent_pb.DownloadBlobResponse(size_bytes=0)

    @unary
    async def GetAgent(
        self, request: agent_pb.GetAgentRequest, context: Ctx
    ) -> agent_pb.GetAgentResponse:
        agent = await self.directory.get(request.name)
        return agent_pb.GetAgentResponse(agent=convert.agent(agent))

    @unary
    async def DrainAgent(
        self, request: agent_pb.DrainAgentRequest, context: Ctx
    ) -> agent_pb.DrainAgentResponse:
        deadline = request.deadline.ToNanoseconds() / 1e9 if request.HasField("deadline") else 0
        agent = await self.directory.drain(request.name, deadline, request.reason)
        return agent_pb.DrainAgentResponse(agent=convert.agent(agent))

    @unary
    async def ListAgents(
        self, request: agent_pb.ListAgentsRequest, context: Ctx
    ) -> agent_pb.ListAgentsResponse:
        agents, token = await self.directory.page(
            request.page_size, request.page_token, request.filter
        )
        return agent_pb.ListAgentsResponse(
            agents=[convert.agent(a) for a in agents], next_page_token=token
        )
