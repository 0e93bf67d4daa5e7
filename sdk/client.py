"""The synchronous Brinell client.

One ``grpc`` channel per ``Client``; every unary call carries a deadline so a hung control
plane turns into a ``DeadlineExceededError`` instead of a hung program. Reads (Get*/List*,
watch, logs), ``SubmitJob`` (idempotent through its ``request_id``) and ``CancelJob``
(cancelling twice is harmless) are retried on ``UNAVAILABLE`` by gRPC itself, through the
channel's service config. Streams that drop mid-way are resumed by the SDK (logs from the last
offset, watch from the job's current state).

Names: every method takes an id (``"abc"``) or a full resource name (``"jobs/abc"``), and
where it makes sense the object returned by an earlier call.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, TypeVar

import grpc
from google.protobuf import field_mask_pb2

from brinell.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    entry_point_service_pb2,
    entry_point_service_pb2_grpc,
    experiment_pb2,
    experiment_service_pb2,
    experiment_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
)

from .credentials import TLS, open_channel, resolve_token, tls_from
from .errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    from_rpc_error,
)
from .pack import default_id, is_archive, pack_directory, sha256_hex
from .types import (
    Agent,
    EntryPoint,
    EntryPointRevision,
    Experiment,
    Job,
    LogLine,
    Resources,
    RetryPolicy,
)

if TYPE_CHECKING:
    from .accounts import WhoAmI

__all__ = ["DEFAULT_TARGET", "Client"]

DEFAULT_TARGET = "127.0.0.1:7070"
CHUNK_SIZE = 1 << 20
#: An upload's deadline grows with its size: at least this many bytes per second.
_UPLOAD_MIN_RATE = 1 << 20
#: Reconnects of a dropped watch/logs stream before giving up (each after a growing pause).
# A watch or follow reopens its stream on these, however long the outage: the control plane
# restarting (UNAVAILABLE), or a connection it dropped mid-stream on shutdown.
_RESUMABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}

_T = TypeVar("_T")
_Req = TypeVar("_Req", contravariant=True)
_Resp = TypeVar("_Resp", covariant=True)


class _Callable(Protocol[_Req, _Resp]):
    """A unary-unary or stream-unary method of a generated stub."""

    def __call__(self, request: _Req, /, timeout: float | None = ...) -> _Resp: ...


# Methods gRPC may transparently retry on UNAVAILABLE: reads, plus calls that are idempotent
# by contract. Creates without a request id, deletes, uploads and the agent stream are not.
_RETRIED_METHODS = {
    "brinell.v1.ExperimentService": ("GetExperiment", "ListExperiments"),
    "brinell.v1.EntryPointService": (
        "GetEntryPoint",
        "ListEntryPoints",
        "GetEntryPointRevision",
        "ListEntryPointRevisions",
    ),
    "brinell.v1.JobService": (
        "SubmitJob",
        "GetJob",
        "ListJobs",
        "WatchJob",
        "StreamJobLogs",
        "CancelJob",
    ),
    "brinell.v1.AgentService": ("GetAgent", "ListAgents", "DownloadBlob"),
    "brinell.v1.PluginService": (
        "GetPlugin",
        "ListPlugins",
        "GetPluginVersion",
        "ListPluginVersions",
        "ListPluginTasks",
    ),
    "brinell.v1.ModelService": (
        "GetModel",
        "ListModels",
        "GetModelVersion",
        "ListModelVersions",
        "ResolveModel",
        "DownloadModelVersion",
    ),
    "brinell.v1.ArtifactService": ("ListJobArtifacts", "DownloadJobArtifact"),
}

SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": service, "method": method}
                    for service, methods in _RETRIED_METHODS.items()
                    for method in methods
                ],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def _name(value: object, collection: str, kind: str) -> str:
    """``"x"``, ``"<collection>/x"`` or an object with ``.name`` -> ``"<collection>/x"``."""
    name = getattr(value, "name", value)
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"a {kind} id or name is required")
    if name.startswith(collection + "/"):
        if name.count("/") != 1 or name.endswith("/"):
            raise InvalidArgumentError(f"{name!r} is not a {kind} name ({collection}/ID)")
        return name
    if "/" in name:
        raise InvalidArgumentError(f"{name!r} is not a {kind} id or name ({collection}/ID)")
    return f"{collection}/{name}"


def _id(value: object, collection: str, kind: str) -> str:
    return _name(value, collection, kind).split("/", 1)[1]


def _digest(value: str) -> str:
    """Accepts ``sha256:<hex>`` or bare hex."""
    return value if ":" in value else f"sha256:{value}"


def _param(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _pages(fetch: Callable[[str], tuple[list[_T], str]]) -> Iterator[_T]:
    token = ""
    while True:
        items, token = fetch(token)
        yield from items
        if not token:
            return


_IDEMPOTENT = {
    f"/{service}/{method}" for service, methods in _RETRIED_METHODS.items() for method in methods
}


def _path(method: object) -> str:
    """The full method name of a stub's callable (`/pkg.Service/Method`)."""
    raw = getattr(method, "_method", b"")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


# UNAVAILABLE that waiting does not cure: a wrong CA or certificate, a name that does not
# resolve. Reported at once instead of after the client's whole timeout.
_HOPELESS = ("ssl", "handshake", "certificate", "dns resolution failed")


def _misconfigured(err: grpc.RpcError) -> bool:
    details = getattr(err, "details", None)
    text = (details() if callable(details) else "") or ""
    return any(word in text.lower() for word in _HOPELESS)


def _pause(failures: int) -> float:
    """Backoff between attempts to reopen a stream: 0.5 s doubling to 5 s, jittered."""
    base: float = min(0.25 * 2.0**failures, 5.0)
    return base * random.uniform(0.8, 1.2)


def _code(err: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(err, "code", None)
    return code() if callable(code) else None


class _Service:
    def __init__(self, client: Client) -> None:
        self._client = client

    def _unary(
        self, method: _Callable[_Req, _Resp], request: _Req, timeout: float | None = None
    ) -> _Resp:
        """One call within the client's timeout. An idempotent one (see _RETRIED_METHODS)
        that finds the control plane UNAVAILABLE is tried again, with backoff, for as long as
        that timeout lasts: a restart of a few seconds goes unnoticed (gRPC's own retries
        stop after 5 attempts, about 1.5 s)."""
        budget = self._client.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        retry = _path(method) in _IDEMPOTENT
        pause = 0.25
        while True:
            try:
                return method(request, timeout=max(deadline - time.monotonic(), 0.001))
            except grpc.RpcError as err:
                unavailable = _code(err) == grpc.StatusCode.UNAVAILABLE and not _misconfigured(err)
                if not (retry and unavailable) or deadline - time.monotonic() < pause:
                    raise from_rpc_error(err) from err
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


class Experiments(_Service):
    """``client.experiments``: collections of related jobs."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._stub = experiment_service_pb2_grpc.ExperimentServiceStub(client._channel)

    def create(
        self,
        id: str | None = None,
        description: str = "",
        labels: Mapping[str, str] | None = None,
        group: str | None = None,
    ) -> Experiment:
        """Creates an experiment in ``group`` (default: your only group; an admin's:
        ``default``); the server picks an id when none is given."""
        request = experiment_service_pb2.CreateExperimentRequest(
            experiment=experiment_pb2.Experiment(
                description=description,
                labels=dict(labels or {}),
                group=_name(group, "groups", "group") if group else "",
            ),
            experiment_id=_id(id, "experiments", "experiment") if id else "",
        )
        return Experiment.from_proto(self._unary(self._stub.CreateExperiment, request).experiment)

    def get_or_create(
        self,
        id: str,
        description: str = "",
        labels: Mapping[str, str] | None = None,
        group: str | None = None,
    ) -> Experiment:
        """The experiment with this id, created first if there is none (``create`` stays
        strict). An existing experiment is returned as it is: ``description`` and ``labels``
        apply only when it is created; change them with ``update``."""
        try:
            return self.get(id)
        except NotFoundError:
            pass
        try:
            return self.create(id, description, labels, group)
        except AlreadyExistsError:  # created meanwhile, by another client
            return self.get(id)

    def get(self, id_or_name: str | Experiment) -> Experiment:
        request = experiment_service_pb2.GetExperimentRequest(
            name=_name(id_or_name, "experiments", "experiment")
        )
        return Experiment.from_proto(self._unary(self._stub.GetExperiment, request).experiment)

    def list(self, filter: str = "", page_size: int | None = None) -> Iterator[Experiment]:
        """Iterates over all experiments (fetching pages lazily); filter: ``labels.k=v ...``."""

        def fetch(token: str) -> tuple[list[Experiment], str]:
            request = experiment_service_pb2.ListExperimentsRequest(
                page_size=page_size or 0, page_token=token, filter=filter
            )
            response = self._unary(self._stub.ListExperiments, request)
            items = [Experiment.from_proto(e) for e in response.experiments]
            return items, str(response.next_page_token)

        return _pages(fetch)

    def update(
        self,
        id: str | Experiment,
        description: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Experiment:
        """Changes only what is given (``labels`` replaces all labels); nothing given: a get."""
        paths = [p for p, v in (("description", description), ("labels", labels)) if v is not None]
        if not paths:
            return self.get(id)
        request = experiment_service_pb2.UpdateExperimentRequest(
            experiment=experiment_pb2.Experiment(
                name=_name(id, "experiments", "experiment"),
                description=description or "",
                labels=dict(labels or {}),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )
        return Experiment.from_proto(self._unary(self._stub.UpdateExperiment, request).experiment)

    def delete(self, id: str | Experiment) -> None:
        """Deletes an experiment without jobs (``FailedPreconditionError`` otherwise)."""
        request = experiment_service_pb2.DeleteExperimentRequest(
            name=_name(id, "experiments", "experiment")
        )
        self._unary(self._stub.DeleteExperiment, request)


class EntryPoints(_Service):
    """``client.entry_points``: uploaded MLproject archives and their revisions."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._stub = entry_point_service_pb2_grpc.EntryPointServiceStub(client._channel)

    def push(
        self, path: str | Path, id: str | None = None, description: str = ""
    ) -> tuple[EntryPoint, EntryPointRevision]:
        """Uploads a directory (packed deterministically) or a .tar.gz/.tgz/.zip file as is.

        Pushing unchanged content returns the existing revision, so pushing before every
        submit is cheap and safe. The default id is the MLproject's `name:`, sanitized (else the
        directory or file name); see ``brinell.pack.default_id_source``.
        """
        p = Path(path)
        digest, size, chunks = _upload_source(p, "a directory")
        entry_point_id = _id(id, "entryPoints", "entry point") if id else default_id(p)

        def requests() -> Iterator[entry_point_service_pb2.UploadEntryPointRequest]:
            yield entry_point_service_pb2.UploadEntryPointRequest(
                metadata=entry_point_service_pb2.UploadEntryPointMetadata(
                    entry_point_id=entry_point_id, description=description, sha256=digest
                )
            )
            for chunk in chunks:
                yield entry_point_service_pb2.UploadEntryPointRequest(chunk=chunk)

        timeout = self._client.timeout + size / _UPLOAD_MIN_RATE
        response = self._unary(self._stub.UploadEntryPoint, requests(), timeout=timeout)
        return EntryPoint.from_proto(response.entry_point), EntryPointRevision.from_proto(
            response.revision
        )

    def get(self, id_or_name: str | EntryPoint) -> EntryPoint:
        request = entry_point_service_pb2.GetEntryPointRequest(
            name=_name(id_or_name, "entryPoints", "entry point")
        )
        return EntryPoint.from_proto(self._unary(self._stub.GetEntryPoint, request).entry_point)

    def list(self, page_size: int | None = None) -> Iterator[EntryPoint]:
        """Iterates over all entry points in creation order."""

        def fetch(token: str) -> tuple[list[EntryPoint], str]:
            request = entry_point_service_pb2.ListEntryPointsRequest(
                page_size=page_size or 0, page_token=token
            )
            response = self._unary(self._stub.ListEntryPoints, request)
            items = [EntryPoint.from_proto(e) for e in response.entry_points]
            return items, str(response.next_page_token)

        return _pages(fetch)

    def revision(self, id_or_name: str | EntryPoint, digest: str) -> EntryPointRevision:
        """One revision by digest (``sha256:<hex>`` or the bare hex)."""
        name = f"{_name(id_or_name, 'entryPoints', 'entry point')}/revisions/{_digest(digest)}"
        request = entry_point_service_pb2.GetEntryPointRevisionRequest(name=name)
        return EntryPointRevision.from_proto(
            self._unary(self._stub.GetEntryPointRevision, request).revision
        )

    def revisions(
        self, id_or_name: str | EntryPoint, page_size: int | None = None
    ) -> Iterator[EntryPointRevision]:
        """Iterates over an entry point's revisions, newest first."""
        parent = _name(id_or_name, "entryPoints", "entry point")

        def fetch(token: str) -> tuple[list[EntryPointRevision], str]:
            request = entry_point_service_pb2.ListEntryPointRevisionsRequest(
                parent=parent, page_size=page_size or 0, page_token=token
            )
            response = self._unary(self._stub.ListEntryPointRevisions, request)
            items = [EntryPointRevision.from_proto(r) for r in response.revisions]
            return items, str(response.next_page_token)

        return _pages(fetch)


def _upload_source(p: Path, folder: str) -> tuple[str, int, Iterator[bytes]]:
    """(sha256, size, chunks) of a folder packed deterministically, or of an archive as is."""
    if p.is_dir():
        data = pack_directory(p)
        size = len(data)
        chunks = (data[i : i + CHUNK_SIZE] for i in range(0, size, CHUNK_SIZE))
        return sha256_hex(data), size, chunks
    if p.is_file():
        if not is_archive(p):
            raise InvalidArgumentError(f"{p}: expected {folder} or a .tar.gz, .tgz or .zip archive")
        return _file_sha256(p), p.stat().st_size, _read_chunks(p)
    raise FileNotFoundError(f"{p}: no such file or directory")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    for chunk in _read_chunks(path):
        h.update(chunk)
    return h.hexdigest()


def _read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            yield chunk


class Jobs(_Service):
    """``client.jobs``: submit, observe and cancel jobs."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._stub = job_service_pb2_grpc.JobServiceStub(client._channel)

    def submit(
        self,
        experiment: str | Experiment,
        entry_point: str | EntryPoint,
        parameters: Mapping[str, object] | None = None,
        *,
        entry: str = "main",
        digest: str | None = None,
        queue: str = "default",
        selector: Mapping[str, str] | None = None,
        timeout: float | timedelta | None = None,
        max_attempts: int | None = None,
        request_id: str | None = None,
        plugin_versions: Mapping[str, str] | None = None,
        resources: Resources | None = None,
        image: str | None = None,
        priority: int = 0,
        queue_timeout: float | timedelta | None = None,
        retry: RetryPolicy | None = None,
        depends_on: Mapping[str, str | Job] | None = None,
    ) -> Job:
        """Submits a job; parameter values are sent as strings (bools as ``true``/``false``).

        ``request_id`` defaults to a fresh UUID, sent unchanged on every retry of this call,
        so a retry after a lost response returns the first job instead of a second one. Pass
        your own to make retries across calls (or processes) idempotent too.
        ``timeout`` bounds one attempt's run time (None: no limit); ``digest`` pins a revision.
        ``plugin_versions`` pins plugin versions (plugin id -> version); every registered
        plugin not named runs at its latest version as of this submit (see ``Job.plugins``).
        ``resources`` asks for CPUs, memory and GPUs (see ``Resources``); ``image`` overrides
        the MLproject's ``docker_env.image`` for agents with the docker executor.
        ``priority`` (-1000 to 1000): higher runs first, first come first served within one.
        ``queue_timeout`` ends the job TIMED_OUT if it waits longer than that in the queue.
        ``retry`` runs it again when it exits with a retryable exit code (see RetryPolicy).
        ``depends_on`` (alias -> job): the job stays PENDING until those jobs succeed (it
        fails or is cancelled with them otherwise), then its parameters' placeholders
        ``{deps.ALIAS.run_id}``, ``{deps.ALIAS.job}``, ``{deps.ALIAS.model}`` (the one
        ``models:/NAME/VERSION`` registered from that job) are filled in and it is queued.
        """
        request = job_service_pb2.SubmitJobRequest(
            experiment=_name(experiment, "experiments", "experiment"),
            entry_point=_name(entry_point, "entryPoints", "entry point"),
            entry_point_digest=_digest(digest) if digest else "",
            entry=entry,
            parameters={str(k): _param(v) for k, v in (parameters or {}).items()},
            queue=queue,
            selector=dict(selector or {}),
            max_attempts=max_attempts or 0,
            request_id=request_id or str(uuid.uuid4()),
            plugin_versions={
                _id(k, "plugins", "plugin"): str(v) for k, v in (plugin_versions or {}).items()
            },
            image=image or "",
            priority=priority,
            depends_on={
                str(alias): _name(dep, "jobs", "job") for alias, dep in (depends_on or {}).items()
            },
        )
        if retry is not None:
            request.retry.CopyFrom(retry.to_proto())
        if resources is not None:
            r = request.resources
            r.cpus, r.memory_bytes = resources.cpus, resources.memory_bytes
            r.gpus, r.gpu_model = resources.gpus, resources.gpu_model
        for field, value in (("timeout", timeout), ("queue_timeout", queue_timeout)):
            if value is not None:
                limit = value if isinstance(value, timedelta) else timedelta(seconds=value)
                getattr(request, field).FromTimedelta(limit)
        return Job.from_proto(self._unary(self._stub.SubmitJob, request).job)

    def get(self, job: str | Job) -> Job:
        request = job_service_pb2.GetJobRequest(name=_name(job, "jobs", "job"))
        return Job.from_proto(self._unary(self._stub.GetJob, request).job)

    def list(self, filter: str = "", page_size: int | None = None) -> Iterator[Job]:
        """Iterates over jobs, newest first.

        ``filter``: space-separated terms that must all hold, e.g.
        ``"state=RUNNING,QUEUED experiment=experiments/x queue=q agent=agents/a"``.
        """

        def fetch(token: str) -> tuple[list[Job], str]:
            request = job_service_pb2.ListJobsRequest(
                page_size=page_size or 0, page_token=token, filter=filter
            )
            response = self._unary(self._stub.ListJobs, request)
            return [Job.from_proto(j) for j in response.jobs], str(response.next_page_token)

        return _pages(fetch)

    def cancel(self, job: str | Job, reason: str = "") -> Job:
        """Requests cancellation; a running job stops after SIGTERM (and SIGKILL after grace)."""
        request = job_service_pb2.CancelJobRequest(name=_name(job, "jobs", "job"), reason=reason)
        return Job.from_proto(self._unary(self._stub.CancelJob, request).job)

    def watch(self, job: str | Job, *, timeout: float | None = None) -> Iterator[Job]:
        """Yields the job now and after every change; ends after a final state.

        A dropped stream is reopened, for as long as the control plane stays away (the
        server starts again with the current state, so nothing is missed; repeats are
        skipped). ``timeout`` (seconds) bounds the whole watch and raises
        ``DeadlineExceededError`` when it runs out.
        """
        name = _name(job, "jobs", "job")
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Job | None = None
        failures = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise _watch_timeout(name, timeout, last)
            call = self._stub.WatchJob(
                job_service_pb2.WatchJobRequest(name=name), timeout=remaining
            )
            try:
                for response in call:
                    current = Job.from_proto(response.job)
                    failures = 0
                    if current != last:
                        last = current
                        yield current
                if last is not None and last.is_final:
                    return
                # The server ended the stream before the job ended (it is shutting down).
            except grpc.RpcError as err:
                code = _code(err)
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None:
                    raise _watch_timeout(name, timeout, last) from err
                if code not in _RESUMABLE:
                    raise from_rpc_error(err) from err
            finally:
                call.cancel()  # type: ignore[no-untyped-call]  # unannotated in types-grpcio
            failures += 1
            pause = _pause(failures)
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            time.sleep(pause)

    def wait(self, job: str | Job, timeout: float | None = None) -> Job:
        """Blocks until the job ends and returns it; ``DeadlineExceededError`` on timeout.

        ``DeadlineExceededError`` is also a ``TimeoutError``. Waiting does not cancel anything.
        """
        last: Job | None = None
        for last in self.watch(job, timeout=timeout):  # noqa: B007 - the last one is the result
            if last.is_final:
                break
        return last if last is not None else self.get(job)

    def logs(
        self,
        job: str | Job,
        follow: bool = False,
        start_offset: int = 0,
        attempt: int = 0,
        timeout: float | None = None,
    ) -> Iterator[LogLine]:
        """Yields the job's log lines from ``start_offset``, one by one (with ``attempt``, only
        that attempt's lines; each line says its attempt).

        With ``follow``, keeps yielding new lines until the job has ended and every line was
        sent. A dropped stream is resumed after the last line received, so no line is lost or
        repeated, for as long as the control plane stays away; ``timeout`` (seconds) bounds
        the whole read and raises ``DeadlineExceededError`` when it runs out.
        """
        name = _name(job, "jobs", "job")
        deadline = None if timeout is None else time.monotonic() + timeout
        next_offset = start_offset
        failures = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceededError(f"{name}: its log did not end within {timeout:g} s")
            request = job_service_pb2.StreamJobLogsRequest(
                name=name, start_offset=next_offset, follow=follow, attempt=attempt
            )
            call = self._stub.StreamJobLogs(request, timeout=remaining)
            try:
                for response in call:
                    failures = 0
                    for raw in response.lines:
                        line = LogLine.from_proto(raw)
                        if line.offset < next_offset:
                            continue  # already yielded before a reconnect
                        next_offset = line.offset + 1
                        yield line
                return
            except grpc.RpcError as err:
                code = _code(err)
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None:
                    raise DeadlineExceededError(
                        f"{name}: its log did not end within {timeout:g} s"
                    ) from err
                if code not in _RESUMABLE:
                    raise from_rpc_error(err) from err
            finally:
                call.cancel()  # type: ignore[no-untyped-call]  # unannotated in types-grpcio
            failures += 1
            pause = _pause(failures)
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            time.sleep(pause)


def _watch_timeout(name: str, timeout: float | None, last: Job | None) -> DeadlineExceededError:
    state = f" (still {last.state})" if last is not None else ""
    return DeadlineExceededError(f"{name} did not end within {timeout:g} s{state}")


class Agents(_Service):
    """``client.agents``: the compute hosts' daemons, as the control plane sees them."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._stub = agent_service_pb2_grpc.AgentServiceStub(client._channel)

    def list(self, filter: str = "", page_size: int | None = None) -> Iterator[Agent]:
        """Iterates over agents; filter: ``state=CONNECTED queue=q labels.k=v`` terms."""

        def fetch(token: str) -> tuple[list[Agent], str]:
            request = agent_service_pb2.ListAgentsRequest(
                page_size=page_size or 0, page_token=token, filter=filter
            )
            response = self._unary(self._stub.ListAgents, request)
            return [Agent.from_proto(a) for a in response.agents], str(response.next_page_token)

        return _pages(fetch)

    def get(self, id_or_name: str | Agent) -> Agent:
        request = agent_service_pb2.GetAgentRequest(name=_name(id_or_name, "agents", "agent"))
        return Agent.from_proto(self._unary(self._stub.GetAgent, request).agent)

    def drain(
        self, id_or_name: str | Agent, deadline: float | None = None, reason: str = ""
    ) -> Agent:
        """Drains an agent (admins): no new work; its running jobs may finish for up to
        ``deadline`` seconds (default: the agent's --drain-timeout); what still runs then is
        stopped and requeued; then the agent exits. It shows DRAINING meanwhile."""
        request = agent_service_pb2.DrainAgentRequest(
            name=_name(id_or_name, "agents", "agent"), reason=reason
        )
        if deadline is not None:
            request.deadline.FromTimedelta(timedelta(seconds=deadline))
        return Agent.from_proto(self._unary(self._stub.DrainAgent, request).agent)


class Client:
    """A connection to a Brinell control plane.

    ``timeout`` is the deadline (seconds) of each unary call; streams (watch, logs) have none.
    Use as a context manager, or call ``close()``, to release the connection. Thread-safe.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: bool | str | Path | TLS | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.target = target
        self.timeout = timeout
        # The token: this argument, else BRINELL_TOKEN, ~/.brinell/credentials, or (for a
        # control plane on this host) its bootstrap admin token; see brinell.credentials.
        self.token = resolve_token(target, token)
        self.tls = tls_from(tls)
        self._channel = open_channel(
            target,
            self.token,
            self.tls,
            [
                # Detects a dead control plane on long, quiet streams (watch, logs --follow).
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.enable_retries", 1),
                ("grpc.service_config", SERVICE_CONFIG),
                ("grpc.primary_user_agent", "brinell-sdk"),
            ],
        )
        self.experiments = Experiments(self)
        self.entry_points = EntryPoints(self)
        self.jobs = Jobs(self)
        self.agents = Agents(self)
        from .plugins import Plugins  # here: plugins.py builds on this module

        self.plugins = Plugins(self)
        from .models import Artifacts, Models  # here too: models.py builds on this module

        self.models = Models(self)
        self.artifacts = Artifacts(self)
        from .accounts import Audit, Groups, Tokens, Users  # here too

        self.users = Users(self)
        self.groups = Groups(self)
        self.tokens = Tokens(self)
        self.audit = Audit(self)

    def whoami(self) -> WhoAmI:
        """Who this client's credential names: ``users/{id}`` (with its role) or an agent."""
        return self.audit.whoami()

    def close(self) -> None:
        """Closes the connection; calls in progress end with ``CancelledError``."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.target!r})"
