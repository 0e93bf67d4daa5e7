"""Getting an attempt ready to run: its entry-point archive fetched and extracted into a
workspace, its pinned plugin bundles extracted (once per digest), the Prefect API it reports
to, and the RunSpec an executor runs."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import TypeAlias

import grpc
from google.protobuf import duration_pb2

from brinell.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc, job_pb2, plugin_pb2

from .attempts import AttemptState
from .config import AgentConfig
from .executor import PluginBundle, RunSpec
from .prefect_server import PrefectServer, serves_ui
from .workspace import (
    BlobCache,
    BlobError,
    PluginBundles,
    WorkspaceError,
    extract_archive,
    plugin_bundle_root,
    prepare_workspace,
)

log = logging.getLogger("brinell.agent")

DOWNLOAD_ATTEMPTS = 5
#: Download errors worth another try.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.CANCELLED,
}
#: Writes a SYSTEM line to the attempt's log.
SystemLog: TypeAlias = Callable[[str], None]


def seconds(duration: duration_pb2.Duration) -> float:
    return float(duration.seconds) + float(duration.nanos) / 1e9


class AttemptPreparer:
    """Turns an Assignment into a RunSpec; the blob and plugin caches are shared by attempts.

    ``stub`` returns the current channel's stub (the daemon replaces it on reconnect)."""

    def __init__(
        self,
        config: AgentConfig,
        stub: Callable[[], agent_service_pb2_grpc.AgentServiceAsyncStub | None],
        metadata: Sequence[tuple[str, str]],
        gpus: Sequence[agent_pb2.Gpu],
        ctx: str,
    ) -> None:
        self.config = config
        self.cache = BlobCache(config.work_dir / "cache" / "blobs")
        # Extracted once per digest and shared by jobs; never reloaded or replaced, so a new
        # plugin version changes nothing for jobs that pinned an older one.
        self.plugin_bundles = PluginBundles(config.work_dir / "cache" / "plugins")
        self.prefect: PrefectServer | None = None
        if config.prefect_mode == "auto":
            self.prefect = PrefectServer(config.work_dir / "prefect")
        self.gpus = gpus
        self._stub = stub
        self._metadata = metadata
        self._prefect_ui: dict[str, bool] = {}  # Prefect API URL -> serves its UI
        self._ctx = ctx

    async def run_spec(
        self, st: AttemptState, assignment: agent_service_pb2.Assignment, system: SystemLog
    ) -> RunSpec:
        """Fetches and extracts the archive and works out the environment."""
        cfg = self.config
        job = assignment.job
        if not st.job.startswith("jobs/"):
            raise WorkspaceError(f"malformed job name {st.job!r}")
        digest = job.entry_point_digest
        size = int(assignment.archive_size_bytes) or None
        if self.cache.lookup(digest) is not None:
            system(f"archive {digest} found in the cache")
        else:
            system(f"fetching archive {digest}" + (f" ({size} bytes)" if size else ""))
        archive = await self._fetch(digest, size)
        dest = await asyncio.to_thread(prepare_workspace, cfg.work_dir, st.job_id, st.attempt)
        system(f"extracting archive into {dest}")
        root = await asyncio.to_thread(
            extract_archive, archive, dest, cfg.max_archive_bytes, cfg.max_archive_files
        )
        plugins = await self._plugins(job, system)
        prefect_url = await self._prefect_url(system)
        timeout = seconds(job.timeout) if job.HasField("timeout") else 0.0
        return RunSpec(
            project_root=root,
            entry=job.entry or "main",
            parameters=dict(job.parameters),
            job_id=st.job_id,
            attempt=st.attempt,
            env=dict(assignment.env),
            timeout=timeout if timeout > 0 else None,
            grace_period=st.grace_period,
            prefect_api_url=prefect_url,
            prefect_ui_url=await self._prefect_ui_url(prefect_url),
            plugins=plugins,
            gpu_uuids=tuple(assignment.gpu_uuids),
            host_has_gpus=bool(self.gpus),
            workspace=dest,
            queue=job.queue or "default",
            image=job.image,
            cpus=job.resources.cpus,
            memory_bytes=int(job.resources.memory_bytes),
        )

    async def _plugins(self, job: job_pb2.Job, system: SystemLog) -> tuple[PluginBundle, ...]:
        """Fetches and extracts the job's pinned plugin bundles (each once per digest)."""
        bundles: list[PluginBundle] = []
        for pin in job.plugins:
            label = f"plugin {pin.plugin.removeprefix('plugins/')} {pin.version} ({pin.digest})"
            try:
                root = await self._plugin(pin, label, system)
            except grpc.aio.AioRpcError as exc:
                raise WorkspaceError(
                    f"cannot fetch {label}: {exc.code().name}: {exc.details()}"
                ) from exc
            except WorkspaceError as exc:
                raise WorkspaceError(f"cannot use {label}: {exc}") from exc
            bundles.append(
                PluginBundle(
                    plugin=pin.plugin,
                    version=pin.version,
                    digest=pin.digest,
                    package=pin.package,
                    path=root,
                )
            )
        if bundles:
            system(
                "using plugins: "
                + ", ".join(
                    f"{b.plugin.removeprefix('plugins/')} {b.version} "
                    f"(package {b.package or '-'}, {b.digest})"
                    for b in bundles
                )
            )
            log.info(
                "%s job=%s: plugins %s",
                self._ctx,
                job.name,
                ", ".join(f"{b.plugin}=={b.version}" for b in bundles),
            )
        return tuple(bundles)

    async def _plugin(self, pin: plugin_pb2.PluginPin, label: str, system: SystemLog) -> Path:
        """One pinned bundle: from the extracted cache, or fetched and extracted now."""
        cfg = self.config
        dest = self.plugin_bundles.lookup(pin.digest)
        if dest is not None:
            system(f"{label}: already extracted")
        else:
            if self.cache.lookup(pin.digest) is None:
                system(f"{label}: fetching bundle")
            archive = await self._fetch(pin.digest, None)
            dest, extracted = await self.plugin_bundles.extract(
                archive, pin.digest, cfg.max_archive_bytes, cfg.max_archive_files
            )
            system(f"{label}: " + ("extracted" if extracted else "already extracted"))
        root: Path = await asyncio.to_thread(plugin_bundle_root, dest, pin.package)
        return root

    async def _fetch(self, digest: str, size: int | None) -> Path:
        cfg = self.config
        # The largest archive whose content passes the extraction limits, with room for headers.
        limit = cfg.max_archive_bytes + 4096 * cfg.max_archive_files + 1024 * 1024
        delay = 0.5
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            chunks = self._download(digest)
            try:
                return await self.cache.fetch(digest, chunks, expected_size=size, max_bytes=limit)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or attempt == DOWNLOAD_ATTEMPTS:
                    raise
                log.warning(
                    "%s: download of %s failed (%s); retrying", self._ctx, digest, exc.code().name
                )
            except BlobError:
                if attempt >= 2:
                    raise
                log.warning("%s: download of %s was corrupt; retrying", self._ctx, digest)
            finally:
                await chunks.aclose()  # ends the RPC when the cache stopped reading early
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")

    async def _download(self, digest: str) -> AsyncGenerator[bytes, None]:
        stub = self._stub()
        assert stub is not None
        call = stub.DownloadBlob(
            agent_service_pb2.DownloadBlobRequest(digest=digest), metadata=self._metadata
        )
        try:
            async for response in call:
                yield response.chunk
        finally:
            call.cancel()

    async def _prefect_url(self, system: SystemLog) -> str | None:
        mode = self.config.prefect_mode
        if mode == "none":
            return None
        if mode == "url":
            return self.config.prefect_api_url
        assert self.prefect is not None
        if self.prefect.ready:
            return self.prefect.url
        if self.prefect.last_error is None:
            system("waiting for the agent's local Prefect server to start")
            url = await self.prefect.wait_ready(self.prefect.startup_timeout)
            if url is not None:
                return url
        system(
            "the agent's local Prefect server is not available "
            f"({self.prefect.last_error or 'not started'}); Prefect runs in ephemeral mode"
        )
        return None

    async def _prefect_ui_url(self, api_url: str | None) -> str | None:
        """ "" (no link) unless the Prefect server serves its UI; asked once per URL."""
        if api_url is None:
            return None
        if api_url not in self._prefect_ui:
            own = self.prefect is not None and api_url == self.prefect.url  # runs --no-ui
            served = False if own else await asyncio.to_thread(serves_ui, api_url)
            self._prefect_ui[api_url] = served
        return None if self._prefect_ui[api_url] else ""
