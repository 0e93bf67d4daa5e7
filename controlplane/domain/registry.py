"""The model registry and job artifacts: MLflow's registry and run artifacts behind Brinell
names.

A model is an MLflow registered model named by the Brinell model id; a version records the job
that produced it (version tags ``brinell.job`` and ``brinell.artifact_path``) and points at
``runs:/{run}/{path}``. Artifact paths are relative to the run's artifact root and may not leave
it (absolute paths, ``..`` and links out of a local store are refused). Downloads are copied by
MLflow into a temporary directory, streamed from disk in 1 MiB chunks, then removed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from ..tracking import CREATOR_TAG, JOB_TAG, MLFLOW_OFF, PATH_TAG, Tracking
from . import names
from .errors import FailedPrecondition, InvalidArgument, NotFound
from .identity import AuditFn, Principal
from .jobs import JobManager
from .models import Job
from .paging import PageTokens, page_size
from .registry_types import Artifact, ModelVersion, RegisteredModel

log = logging.getLogger("brinell.controlplane.registry")

CHUNK_SIZE = 1 << 20
DEFAULT_ARTIFACT_PATH = "model"
VERSION_RE = re.compile(r"^[1-9][0-9]{0,9}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
_RESERVED_ALIAS_RE = re.compile(r"^(latest|v[0-9]+)$", re.IGNORECASE)
_URI_FORMS = "`models:/NAME/VERSION`, `models:/NAME@ALIAS` or `models:/NAME/latest`"

#: What a download yields: the file (on its first chunk only, None after) and a chunk.
Chunk = tuple[Artifact | None, bytes]


def model_id(name: str) -> str:
    """`models/{id}` (or a bare id) -> id."""
    return names.parse(name, "models", "model")


def check_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias):
        raise InvalidArgument(
            f"alias {alias!r} is invalid: use 1-63 letters, digits, '_' and '-', starting with "
            "a letter",
            field="alias",
        )
    if _RESERVED_ALIAS_RE.match(alias):
        raise InvalidArgument(
            f"alias {alias!r} is reserved (`latest` and `v<number>` name versions)", field="alias"
        )
    return alias


def check_version(version: str) -> str:
    if not VERSION_RE.match(version):
        raise InvalidArgument(
            f"version {version!r} is invalid (want a number from 1)", field="version"
        )
    return version


def version_name(name: str) -> tuple[str, str, str]:
    """`models/{id}/versions/{n}` -> (id, n, ""); `models/{id}@{alias}` -> (id, "", alias)."""
    want = "want `models/{id}/versions/{n}` or `models/{id}@{alias}`"
    if not name.startswith("models/"):
        raise InvalidArgument(f"model version name {name!r} is malformed ({want})", field="name")
    rest = name[len("models/") :]
    if "@" in rest:
        mid, _, alias = rest.partition("@")
        if not names.ID_RE.match(mid) or not ALIAS_RE.match(alias):
            raise InvalidArgument(
                f"model version name {name!r} is malformed ({want})", field="name"
            )
        return mid, "", alias
    parts = rest.split("/")
    if (
        len(parts) != 3
        or parts[1] != "versions"
        or not names.ID_RE.match(parts[0])
        or not VERSION_RE.match(parts[2])
    ):
        raise InvalidArgument(f"model version name {name!r} is malformed ({want})", field="name")
    return parts[0], parts[2], ""


def parse_uri(uri: str) -> tuple[str, str, str]:
    """A `models:/` URI -> (id, version or "latest" or "", alias or "")."""
    bad = InvalidArgument(f"{uri!r} is not a model URI ({_URI_FORMS})", field="uri")
    if not uri.startswith("models:/"):
        raise bad
    rest = uri[len("models:/") :]
    if "@" in rest:
        mid, _, alias = rest.partition("@")
        if not names.ID_RE.match(mid) or not ALIAS_RE.match(alias):
            raise bad
        return mid, "", alias
    mid, sep, version = rest.partition("/")
    if not sep or not names.ID_RE.match(mid):
        raise bad
    if version.lower() == "latest":
        return mid, "latest", ""
    if not VERSION_RE.match(version):
        raise bad
    return mid, version, ""


def artifact_path(path: str, field: str = "path") -> str:
    """A normalized path relative to the artifact root ("" is the root itself)."""
    if "\\" in path or "\x00" in path:
        raise InvalidArgument(
            f"artifact path {path!r} is invalid: use '/' between folders", field=field
        )
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise InvalidArgument(
            f"artifact path {path!r} must be relative to the artifact root", field=field
        )
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(
            f"artifact path {path!r} must not contain '..' (it may not leave the artifact root)",
            field=field,
        )
    return "/".join(parts)


def _files(target: Path) -> list[Path]:
    """Regular files at or under ``target``, in order; links are never followed."""
    if target.is_symlink():
        return []
    if target.is_file():
        return [target]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(target):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not p.is_symlink() and p.is_file():
                found.append(p)
    return found


class ModelRegistry:
    def __init__(
        self, jobs: JobManager, tracking: Tracking, tokens: PageTokens, audit: AuditFn
    ) -> None:
        self.audit = audit
        self.jobs = jobs
        self.tracking = tracking
        self.tokens = tokens

    def _require_mlflow(self) -> None:
        if not self.tracking.enabled:
            raise FailedPrecondition(MLFLOW_OFF)

    async def _run_of(self, name: str, who: Principal) -> tuple[Job, str]:
        """The job (if ``who`` may see it) and its MLflow run."""
        job = await self.jobs.get(name, who)
        self._require_mlflow()
        if not job.mlflow_run_id:
            raise FailedPrecondition(
                f"job {job.id!r} has no MLflow run (MLflow was off when it was submitted)"
            )
        return job, job.mlflow_run_id

    # -- models

    async def register(
        self, model: str, job: str, path: str, description: str, who: Principal
    ) -> ModelVersion:
        """A new version of ``model`` (created when new, with ``description``) from the files
        the job logged at ``path``."""
        problems = names.text_problems(
            description, "description", names.MAX_DESCRIPTION_CHARS, field="description"
        )
        mid = ""
        if not model:
            problems.append(("model_id", "model_id is required"))
        else:
            try:
                mid = names.check_id(model, "model", field="model_id")
            except InvalidArgument as exc:
                problems += exc.violations
        try:
            names.job_id(job, field="job")
        except InvalidArgument as exc:
            problems += exc.violations
        try:
            rel = artifact_path(path or DEFAULT_ARTIFACT_PATH, "artifact_path")
            if not rel:
                problems.append(
                    ("artifact_path", "artifact_path must name a file or folder, not the root")
                )
        except InvalidArgument as exc:
            problems += exc.violations
        if problems:
            raise InvalidArgument.of(problems)
        found, run_id = await self._run_of(job, who)
        if await self.tracking.stat_artifact(run_id, rel) is None:
            raise NotFound(f"job {found.id!r} logged nothing at {rel!r}")
        version = await self.tracking.register_model_version(
            mid, run_id, rel, description, {JOB_TAG: found.id, PATH_TAG: rel, CREATOR_TAG: who.name}
        )
        await self.audit(
            who, "model.register", f"models/{mid}/versions/{version.version}", f"jobs/{found.id}"
        )
        log.info(
            "registered model %s version %s from job %s (run %s, path %s)",
            mid,
            version.version,
            found.id,
            run_id,
            rel,
        )
        return version

    async def get(self, name: str) -> RegisteredModel:
        mid = model_id(name)
        self._require_mlflow()
        return await self.tracking.get_model(mid)

    async def page(self, size: int, token: str) -> tuple[list[RegisteredModel], str]:
        """Models by id."""
        n = page_size(size)
        query = "models:"
        after = self.tokens.decode(query, token)
        if after is not None and not isinstance(after, str):
            raise InvalidArgument("page_token is invalid", field="page_token")
        self._require_mlflow()
        models = [m for m in await self.tracking.list_models() if after is None or m.id > after]
        nxt = self.tokens.encode(query, models[n - 1].id) if len(models) > n else ""
        return models[:n], nxt

    async def versions(self, parent: str, size: int, token: str) -> tuple[list[ModelVersion], str]:
        """A model's versions, newest first."""
        mid = model_id(parent)
        n = page_size(size)
        query = f"versions:{mid}"
        before = self.tokens.decode(query, token)
        if before is not None and not isinstance(before, int):
            raise InvalidArgument("page_token is invalid", field="page_token")
        self._require_mlflow()
        versions = [
            v
            for v in await self.tracking.list_model_versions(mid)
            if before is None or int(v.version) < before
        ]
        nxt = self.tokens.encode(query, int(versions[n - 1].version)) if len(versions) > n else ""
        return versions[:n], nxt

    async def _version(self, mid: str, version: str, alias: str) -> ModelVersion:
        self._require_mlflow()
        if alias:
            return await self.tracking.get_model_version_by_alias(mid, alias)
        if version == "latest":
            latest = (await self.tracking.get_model(mid)).latest_version
            if not latest:
                raise NotFound(f"model {mid!r} has no versions")
            version = latest
        return await self.tracking.get_model_version(mid, version)

    async def get_version(self, name: str) -> ModelVersion:
        """`models/{id}/versions/{n}` or `models/{id}@{alias}`."""
        return await self._version(*version_name(name))

    async def resolve(self, uri: str) -> ModelVersion:
        return await self._version(*parse_uri(uri))

    async def set_alias(
        self, name: str, alias: str, version: str, who: Principal
    ) -> RegisteredModel:
        problems: list[tuple[str, str]] = []  # (field, problem)
        mid = ""
        try:
            mid = model_id(name)
        except InvalidArgument as exc:
            problems += exc.violations
        for check, value in ((check_alias, alias), (check_version, version)):
            try:
                check(value)
            except InvalidArgument as exc:
                problems += exc.violations
        if problems:
            raise InvalidArgument.of(problems)
        self._require_mlflow()
        model = await self.tracking.set_model_alias(mid, alias, version)
        await self.audit(who, "model.alias.set", f"models/{mid}", f"{alias} -> {version}")
        return model

    async def delete_alias(self, name: str, alias: str, who: Principal) -> RegisteredModel:
        mid = model_id(name)
        if not ALIAS_RE.match(alias):
            raise InvalidArgument(f"alias {alias!r} is invalid", field="alias")
        self._require_mlflow()
        model = await self.tracking.delete_model_alias(mid, alias)
        await self.audit(who, "model.alias.delete", f"models/{mid}", alias)
        return model

    async def download(self, name: str) -> AsyncIterator[Chunk]:
        """A version's files; paths are relative to the version's folder (`MLmodel`, ...)."""
        v = await self.get_version(name)
        if v.run_id and v.artifact_path:
            try:
                rel = artifact_path(v.artifact_path)
            except InvalidArgument:
                raise FailedPrecondition(
                    f"model {v.model_id!r} version {v.version} points outside its run's "
                    f"artifacts ({v.artifact_path!r})"
                ) from None
            run_id = v.run_id

            def fetch(dst: Path) -> Awaitable[Path]:
                return self.tracking.download_artifacts(run_id, rel, dst)
        else:

            def fetch(dst: Path) -> Awaitable[Path]:
                return self.tracking.download_model_version(v.model_id, v.version, dst)

        async for item in _stream(fetch, ""):
            yield item

    # -- job artifacts

    async def list_artifacts(
        self, job: str, path: str, recursive: bool, who: Principal
    ) -> list[Artifact]:
        """Direct children of ``path`` (files and folders), or with ``recursive`` every file
        under it; a file's path lists that file."""
        names.job_id(job)
        rel = artifact_path(path)
        _, run_id = await self._run_of(job, who)
        return await self.tracking.list_artifacts(run_id, rel, recursive)

    async def download_artifact(self, job: str, path: str, who: Principal) -> AsyncIterator[Chunk]:
        """One file, or every file under a folder; paths are relative to the run's root."""
        names.job_id(job)
        rel = artifact_path(path)
        found, run_id = await self._run_of(job, who)
        if await self.tracking.stat_artifact(run_id, rel) is None:
            raise NotFound(f"job {found.id!r} has no artifact {rel!r}")

        def fetch(dst: Path) -> Awaitable[Path]:
            return self.tracking.download_artifacts(run_id, rel, dst)

        async for item in _stream(fetch, rel):
            yield item


async def _stream(fetch: Callable[[Path], Awaitable[Path]], name: str) -> AsyncIterator[Chunk]:
    """Has ``fetch`` copy a file or folder into a temporary directory, then yields its files
    chunk by chunk, named ``name/<path in the folder>`` (or ``name`` for a file; with no
    ``name``, the path in the folder or the file's own name).
    """
    tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="brinell-download-"))
    try:
        target = await fetch(tmp)
        is_dir = await asyncio.to_thread(target.is_dir)
        for file in await asyncio.to_thread(_files, target):
            if is_dir:
                inner = file.relative_to(target).as_posix()
                rel = f"{name}/{inner}" if name else inner
            else:
                rel = name or file.name
            with file.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                info: Artifact | None = Artifact(rel, False, size)
                while True:
                    chunk = await asyncio.to_thread(f.read, CHUNK_SIZE)
                    if not chunk and info is None:
                        break
                    yield info, chunk
                    info = None
                    if len(chunk) < CHUNK_SIZE:
                        break
    finally:
        # Not awaited: this also runs when the client went away and the stream was cancelled.
        asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, tmp, True)
