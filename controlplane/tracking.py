"""MLflow behind a small interface: one MLflow experiment per experiment, one run per job,
and MLflow's model registry and run artifacts for the registry API.

`import mlflow` costs about 2 s, so it happens on a worker thread after the server is up,
never on the import path. All MLflow calls run on one dedicated thread: its SQLite store
is not meant for concurrent writers from one process.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import posixpath
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from .domain.registry_types import Artifact, ModelVersion, RegisteredModel
from .store.db import ALEMBIC_LOCK

if TYPE_CHECKING:  # `import mlflow` stays off the import path
    from mlflow.entities import LoggedModel, Run
    from mlflow.entities.model_registry import ModelVersion as MlflowModelVersion
    from mlflow.entities.model_registry import RegisteredModel as MlflowRegisteredModel
    from mlflow.tracking import MlflowClient

log = logging.getLogger("brinell.controlplane.tracking")

_T = TypeVar("_T")

FINAL_STATUS = {
    "SUCCEEDED": "FINISHED",
    "FAILED": "FAILED",
    "TIMED_OUT": "FAILED",
    "CANCELLED": "KILLED",
}

#: MLflow model-version tags that record where a version came from.
JOB_TAG = "brinell.job"
PATH_TAG = "brinell.artifact_path"
CREATOR_TAG = "brinell.creator"
MLFLOW_OFF = "MLflow is turned off on this control plane (started with --mlflow-tracking-uri none)"


class Tracking(Protocol):
    tracking_uri: str
    #: False when MLflow is off: no runs, no registry, no artifacts.
    enabled: bool

    async def create_experiment(self, experiment_id: str) -> str: ...

    async def create_run(
        self,
        mlflow_experiment_id: str,
        job_id: str,
        tags: dict[str, str],
        params: Mapping[str, str],
    ) -> str: ...

    async def end_run(self, run_id: str, state: str) -> None: ...

    async def log_params(self, run_id: str, params: Mapping[str, str]) -> None: ...

    async def run_model_versions(self, run_id: str) -> list[tuple[str, str]]:
        """(model id, version) of every model version registered from the run."""
        ...

    # -- model registry (registered model name = Brinell model id)

    async def register_model_version(
        self, model_id: str, run_id: str, artifact_path: str, description: str, tags: dict[str, str]
    ) -> ModelVersion: ...

    async def get_model(self, model_id: str) -> RegisteredModel: ...

    async def list_models(self) -> list[RegisteredModel]: ...

    async def list_model_versions(self, model_id: str) -> list[ModelVersion]: ...

    async def get_model_version(self, model_id: str, version: str) -> ModelVersion: ...

    async def get_model_version_by_alias(self, model_id: str, alias: str) -> ModelVersion: ...

    async def set_model_alias(self, model_id: str, alias: str, version: str) -> RegisteredModel: ...

    async def delete_model_alias(self, model_id: str, alias: str) -> RegisteredModel: ...

    async def download_model_version(self, model_id: str, version: str, dst: Path) -> Path: ...

    # -- a run's artifacts (paths are checked by the caller: relative, no `..`)

    async def list_artifacts(self, run_id: str, path: str, recursive: bool) -> list[Artifact]: ...

    async def stat_artifact(self, run_id: str, path: str) -> Artifact | None: ...

    async def download_artifacts(self, run_id: str, path: str, dst: Path) -> Path: ...

    def close(self) -> None: ...


class NullTracking:
    """No MLflow: jobs get no run (benchmarks of the dispatch path, tests that opt out)."""

    tracking_uri = ""
    enabled = False

    async def create_experiment(self, experiment_id: str) -> str:
        return ""

    async def create_run(
        self,
        mlflow_experiment_id: str,
        job_id: str,
        tags: dict[str, str],
        params: Mapping[str, str],
    ) -> str:
        return ""

    async def end_run(self, run_id: str, state: str) -> None:
        return None

    async def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        return None

    async def run_model_versions(self, run_id: str) -> list[tuple[str, str]]:
        return []

    async def register_model_version(
        self, model_id: str, run_id: str, artifact_path: str, description: str, tags: dict[str, str]
    ) -> ModelVersion:
        raise FailedPrecondition(MLFLOW_OFF)

    async def get_model(self, model_id: str) -> RegisteredModel:
        raise FailedPrecondition(MLFLOW_OFF)

    async def list_models(self) -> list[RegisteredModel]:
        raise FailedPrecondition(MLFLOW_OFF)

    async def list_model_versions(self, model_id: str) -> list[ModelVersion]:
        raise FailedPrecondition(MLFLOW_OFF)

    async def get_model_version(self, model_id: str, version: str) -> ModelVersion:
        raise FailedPrecondition(MLFLOW_OFF)

    async def get_model_version_by_alias(self, model_id: str, alias: str) -> ModelVersion:
        raise FailedPrecondition(MLFLOW_OFF)

    async def set_model_alias(self, model_id: str, alias: str, version: str) -> RegisteredModel:
        raise FailedPrecondition(MLFLOW_OFF)

    async def delete_model_alias(self, model_id: str, alias: str) -> RegisteredModel:
        raise FailedPrecondition(MLFLOW_OFF)

    async def download_model_version(self, model_id: str, version: str, dst: Path) -> Path:
        raise FailedPrecondition(MLFLOW_OFF)

    async def list_artifacts(self, run_id: str, path: str, recursive: bool) -> list[Artifact]:
        raise FailedPrecondition(MLFLOW_OFF)

    async def stat_artifact(self, run_id: str, path: str) -> Artifact | None:
        raise FailedPrecondition(MLFLOW_OFF)

    async def download_artifacts(self, run_id: str, path: str, dst: Path) -> Path:
        raise FailedPrecondition(MLFLOW_OFF)

    def close(self) -> None:
        return None


# -- MLflow entities -> records (on the MLflow thread)


def _time(millis: int | None) -> datetime | None:
    return datetime.fromtimestamp(int(millis) / 1000, UTC) if millis else None


def _model(rm: MlflowRegisteredModel) -> RegisteredModel:
    # `latest_versions` holds the newest version of each stage; Brinell uses no stages, and
    # the newest over all stages is the newest version.
    numbers = [int(v.version) for v in (rm.latest_versions or [])]
    return RegisteredModel(
        id=str(rm.name),
        description=str(rm.description or ""),
        aliases={str(a): str(v) for a, v in (rm.aliases or {}).items()},
        latest_version=str(max(numbers)) if numbers else "",
        create_time=_time(rm.creation_timestamp),
        update_time=_time(rm.last_updated_timestamp),
    )


def _version(mv: MlflowModelVersion, aliases: dict[str, str]) -> ModelVersion:
    """``aliases`` comes from the registered model: MLflow's version searches leave it out."""
    tags = dict(mv.tags or {})
    run_id = str(mv.run_id or "")
    source = str(mv.source or "")
    path = tags.get(PATH_TAG, "")
    prefix = f"runs:/{run_id}/"
    if not path and run_id and source.startswith(prefix):
        path = source[len(prefix) :]
    version = str(mv.version)
    return ModelVersion(
        model_id=str(mv.name),
        version=version,
        job_id=tags.get(JOB_TAG, ""),
        run_id=run_id,
        artifact_path=path,
        source=source,
        aliases=tuple(sorted(a for a, v in aliases.items() if v == version)),
        description=str(mv.description or ""),
        create_time=_time(mv.creation_timestamp),
    )


def _code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", "") or "")


def _is_not_found(exc: BaseException) -> bool:
    return _code(exc) in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def _domain_error(exc: BaseException) -> DomainError | None:
    """MLflow's answer to bad input or a missing resource, as the error users should see."""
    message = str(getattr(exc, "message", "") or exc)
    code = _code(exc)
    if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
        return NotFound(message)
    if code in ("INVALID_PARAMETER_VALUE", "INVALID_ARGUMENT", "BAD_REQUEST"):
        # MLflow refused a value it was handed: the model (version) the request names.
        return InvalidArgument(message, field="name")
    if code == "RESOURCE_ALREADY_EXISTS":
        return AlreadyExists(message)
    return None


def _local_path(uri: str) -> Path | None:
    """The directory of a ``file:`` (or scheme-less) artifact URI; None for remote stores."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" and uri:
        return Path(uri)
    return None


def _check_inside(root: Path, rel: str) -> None:
    """Refuses when ``root/rel``, or anything under it, is a link that leaves ``root``.

    A job writes its artifacts straight into a local store, so it could plant a symbolic link
    to the control plane's own files; MLflow's local download follows links.
    """
    real_root = root.resolve()

    def inside(p: Path) -> bool:
        real = p.resolve()
        return real == real_root or real_root in real.parents

    start = root / rel if rel else root
    if not os.path.lexists(start):
        return
    where = rel or "the artifact root"
    stack = [start]
    seen: set[Path] = set()
    while stack:
        p = stack.pop()
        if not inside(p):
            raise InvalidArgument(
                f"artifact {where!r} links outside the artifact root", field="path"
            )
        real = p.resolve()
        if real in seen or not p.is_dir():
            continue
        seen.add(real)
        with os.scandir(p) as entries:
            stack.extend(Path(e.path) for e in entries)


class MlflowTracking:
    enabled = True

    def __init__(self, tracking_uri: str, artifact_root: Path | None) -> None:
        self.tracking_uri = tracking_uri
        self._artifact_root = artifact_root
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
        # Start the import and the store's schema migration now, in the background.
        self._client: Future[MlflowClient] = self._executor.submit(self._make_client)

    def _make_client(self) -> MlflowClient:
        # Downloads happen on a server: no progress bars in its log.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow
        from mlflow.tracking import MlflowClient

        # MLflow 3 resolves logged models (`models:/m-…`, and the run paths that lead to one)
        # through its process-global tracking and registry URIs, whatever `tracking_uri` the
        # call was given; unset, those fall back to ./mlflow.db in the working directory (and
        # create it). A control plane process has one tracking backend: set them to it.
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)

        # Creating the client and its first call set up the store's schema with Alembic,
        # whose migration context is process-global: never at the same time as the control
        # plane's own migrations (or another control plane's, in one test process).
        with ALEMBIC_LOCK:
            client = MlflowClient(tracking_uri=self.tracking_uri)
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
        log.info("MLflow tracking ready at %s", self.tracking_uri)
        return client

    async def _call(self, what: str, fn: Callable[..., _T], *args: Any, mapped: bool = False) -> _T:
        """Runs ``fn(client, *args)`` on the MLflow thread.

        Domain errors raised by ``fn`` pass through. With ``mapped``, MLflow's own "not found"
        and "bad input" answers become NotFound / InvalidArgument; every other failure means
        the tracking store is unusable: Unavailable.
        """

        def run() -> _T:
            return fn(self._client.result(), *args)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except DomainError:
            raise
        except Exception as exc:
            if mapped and (err := _domain_error(exc)) is not None:
                raise err from exc
            log.exception("MLflow %s failed", what)
            raise Unavailable(
                f"MLflow tracking at {self.tracking_uri} failed to {what}: {exc}"
            ) from exc

    async def create_experiment(self, experiment_id: str) -> str:
        def create(client: MlflowClient) -> str:
            name = f"brinell/{experiment_id}"
            existing = client.get_experiment_by_name(name)
            if existing is not None:
                if existing.lifecycle_stage == "deleted":
                    client.restore_experiment(existing.experiment_id)
                return str(existing.experiment_id)
            location = None
            if self._artifact_root is not None:
                location = (self._artifact_root / experiment_id).as_uri()
            return str(
                client.create_experiment(
                    name, artifact_location=location, tags={"brinell.experiment": experiment_id}
                )
            )

        return str(await self._call("create an experiment", create))

    async def create_run(
        self,
        mlflow_experiment_id: str,
        job_id: str,
        tags: dict[str, str],
        params: Mapping[str, str],
    ) -> str:
        def create(client: MlflowClient) -> str:
            from mlflow.entities import Param

            run = client.create_run(mlflow_experiment_id, run_name=f"job-{job_id}", tags=tags)
            if params:
                client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
            return str(run.info.run_id)

        return str(await self._call("create a run", create))

    async def end_run(self, run_id: str, state: str) -> None:
        status = FINAL_STATUS.get(state, "FAILED")

        def end(client: MlflowClient) -> None:
            client.set_terminated(run_id, status=status)

        await self._call("end a run", end)

    async def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        def log(client: MlflowClient) -> None:
            from mlflow.entities import Param

            client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])

        await self._call("log parameters", log)

    async def run_model_versions(self, run_id: str) -> list[tuple[str, str]]:
        def search(client: MlflowClient) -> list[tuple[str, str]]:
            found = client.search_model_versions(f"run_id = '{run_id}'", max_results=1000)
            return sorted((str(mv.name), str(mv.version)) for mv in found)

        return await self._call("find the run's model versions", search, mapped=True)

    # -- model registry

    @staticmethod
    def _registered(client: MlflowClient, model_id: str) -> MlflowRegisteredModel:
        try:
            return client.get_registered_model(model_id)
        except Exception as exc:
            if _is_not_found(exc):
                raise NotFound(f"model {model_id!r} not found") from None
            raise

    @staticmethod
    def _model_version(client: MlflowClient, model_id: str, version: str) -> MlflowModelVersion:
        try:
            return client.get_model_version(model_id, version)
        except Exception as exc:
            if _is_not_found(exc):
                raise NotFound(f"model {model_id!r} has no version {version}") from None
            raise

    async def register_model_version(
        self, model_id: str, run_id: str, artifact_path: str, description: str, tags: dict[str, str]
    ) -> ModelVersion:
        def register(client: MlflowClient) -> ModelVersion:
            try:
                rm = client.get_registered_model(model_id)
            except Exception as exc:
                if not _is_not_found(exc):
                    raise
                try:
                    client.create_registered_model(model_id, description=description or None)
                except Exception as again:  # another registration created it meanwhile
                    if _code(again) != "RESOURCE_ALREADY_EXISTS":
                        raise
                rm = client.get_registered_model(model_id)
            # MLflow 3 keeps a model logged with log_model apart from the run's files (a
            # "logged model"): register that, so `models:/…` URIs load it; otherwise the
            # files at the path in the run's artifacts.
            source, logged_id = f"runs:/{run_id}/{artifact_path}", None
            logged = self._logged_models(client, client.get_run(run_id), artifact_path)
            if logged:
                source, logged_id = str(logged[0].artifact_location), str(logged[0].model_id)
            create = functools.partial(
                client.create_model_version,
                model_id,
                source=source,
                run_id=run_id,
                tags=tags,
                description=description or None,
            )
            # MLflow 2 has no logged models, and no `model_id` parameter.
            mv = create(model_id=logged_id) if logged_id else create()
            return _version(mv, _model(rm).aliases)

        return await self._call("register a model version", register, mapped=True)

    async def get_model(self, model_id: str) -> RegisteredModel:
        def get(client: MlflowClient) -> RegisteredModel:
            return _model(self._registered(client, model_id))

        return await self._call("get a model", get, mapped=True)

    async def list_models(self) -> list[RegisteredModel]:
        def search(client: MlflowClient) -> list[RegisteredModel]:
            out: list[RegisteredModel] = []
            token = None
            while True:
                page = client.search_registered_models(max_results=1000, page_token=token)
                out.extend(_model(rm) for rm in page)
                token = page.token
                if not token:
                    return sorted(out, key=lambda m: m.id)

        return await self._call("list models", search, mapped=True)

    async def list_model_versions(self, model_id: str) -> list[ModelVersion]:
        def search(client: MlflowClient) -> list[ModelVersion]:
            aliases = _model(self._registered(client, model_id)).aliases
            out: list[ModelVersion] = []
            token = None
            while True:
                page = client.search_model_versions(
                    f"name = '{model_id}'", max_results=10_000, page_token=token
                )
                out.extend(_version(mv, aliases) for mv in page)
                token = page.token
                if not token:
                    return sorted(out, key=lambda v: -int(v.version))

        return await self._call("list model versions", search, mapped=True)

    async def get_model_version(self, model_id: str, version: str) -> ModelVersion:
        def get(client: MlflowClient) -> ModelVersion:
            aliases = _model(self._registered(client, model_id)).aliases
            return _version(self._model_version(client, model_id, version), aliases)

        return await self._call("get a model version", get, mapped=True)

    async def get_model_version_by_alias(self, model_id: str, alias: str) -> ModelVersion:
        def get(client: MlflowClient) -> ModelVersion:
            aliases = _model(self._registered(client, model_id)).aliases
            if alias not in aliases:
                raise NotFound(f"model {model_id!r} has no alias {alias!r}")
            return _version(self._model_version(client, model_id, aliases[alias]), aliases)

        return await self._call("get a model version", get, mapped=True)

    async def set_model_alias(self, model_id: str, alias: str, version: str) -> RegisteredModel:
        def set_alias(client: MlflowClient) -> RegisteredModel:
            self._registered(client, model_id)
            self._model_version(client, model_id, version)
            client.set_registered_model_alias(model_id, alias, version)
            return _model(client.get_registered_model(model_id))

        return await self._call("set a model alias", set_alias, mapped=True)

    async def delete_model_alias(self, model_id: str, alias: str) -> RegisteredModel:
        def delete(client: MlflowClient) -> RegisteredModel:
            if alias not in _model(self._registered(client, model_id)).aliases:
                raise NotFound(f"model {model_id!r} has no alias {alias!r}")
            client.delete_registered_model_alias(model_id, alias)
            return _model(client.get_registered_model(model_id))

        return await self._call("delete a model alias", delete, mapped=True)

    async def download_model_version(self, model_id: str, version: str, dst: Path) -> Path:
        """For versions whose files are not a run's artifacts (registered outside Brinell)."""

        def download(client: MlflowClient) -> Path:
            from mlflow.artifacts import download_artifacts

            self._model_version(client, model_id, version)
            return Path(
                download_artifacts(
                    artifact_uri=f"models:/{model_id}/{version}",
                    dst_path=str(dst),
                    tracking_uri=self.tracking_uri,
                    registry_uri=self.tracking_uri,
                )
            )

        return await self._call("download a model version", download, mapped=True)

    # -- run artifacts (MLflow 3 keeps `log_model` output apart, as a "logged model" of the
    # run; MLflow's `runs:/` repository shows it under its name, and so do we)

    @staticmethod
    def _logged_models(
        client: MlflowClient, run: Run, name: str | None = None
    ) -> list[LoggedModel]:
        search = getattr(client, "search_logged_models", None)
        if search is None:  # MLflow 2
            return []
        run_id = run.info.run_id
        found: list[LoggedModel] = []
        token = None
        while True:
            page = search(
                experiment_ids=[run.info.experiment_id],
                filter_string=f"source_run_id = '{run_id}'",
                page_token=token,
            )
            found.extend(
                m for m in page if m.source_run_id == run_id and (name is None or m.name == name)
            )
            token = page.token
            if not token:
                return found

    def _children(self, client: MlflowClient, run: Run, path: str) -> list[Artifact]:
        from mlflow.artifacts import list_artifacts

        infos = list_artifacts(
            run_id=run.info.run_id, artifact_path=path or None, tracking_uri=self.tracking_uri
        )
        found = {
            str(i.path): Artifact(str(i.path), bool(i.is_dir), int(i.file_size or 0)) for i in infos
        }
        if not path:
            for m in self._logged_models(client, run):
                found.setdefault(str(m.name), Artifact(str(m.name), True))
        return sorted(found.values(), key=lambda a: a.path)

    @staticmethod
    def _run(client: MlflowClient, run_id: str) -> Run:
        try:
            return client.get_run(run_id)
        except Exception as exc:
            if _is_not_found(exc):
                raise NotFound(f"MLflow run {run_id} not found") from None
            raise

    def _stat(self, client: MlflowClient, run: Run, path: str) -> Artifact | None:
        if not path:
            return Artifact("", True)
        parent = posixpath.dirname(path)
        return next((a for a in self._children(client, run, parent) if a.path == path), None)

    async def list_artifacts(self, run_id: str, path: str, recursive: bool) -> list[Artifact]:
        def listing(client: MlflowClient) -> list[Artifact]:
            run = self._run(client, run_id)
            children = self._children(client, run, path)
            if not children and path:  # a file lists as nothing: show the file itself
                found = self._stat(client, run, path)
                return [found] if found is not None and not found.is_dir else []
            if not recursive:
                return children
            files: list[Artifact] = []
            todo = children
            while todo:
                a = todo.pop(0)
                if a.is_dir:
                    todo[:0] = self._children(client, run, a.path)
                else:
                    files.append(a)
            return files

        return await self._call("list artifacts", listing, mapped=True)

    async def stat_artifact(self, run_id: str, path: str) -> Artifact | None:
        def stat(client: MlflowClient) -> Artifact | None:
            return self._stat(client, self._run(client, run_id), path)

        return await self._call("look up an artifact", stat, mapped=True)

    def _check_local(self, client: MlflowClient, run: Run, path: str) -> None:
        """Refuses links out of the local stores the download would read from."""
        root = _local_path(str(run.info.artifact_uri))
        if root is not None:
            _check_inside(root, path)
        first, _, rest = path.partition("/")
        for m in self._logged_models(client, run, first or None):
            model_root = _local_path(str(m.artifact_location))
            if model_root is not None:
                _check_inside(model_root, rest if first else "")

    async def download_artifacts(self, run_id: str, path: str, dst: Path) -> Path:
        """Copies ``path`` (a file or a folder) of the run's artifacts under ``dst``; returns
        where it landed (MLflow keeps only the last part of ``path``; the root is ``dst``)."""

        def download(client: MlflowClient) -> Path:
            from mlflow.artifacts import download_artifacts

            run = self._run(client, run_id)
            self._check_local(client, run, path)
            if path:
                return Path(
                    download_artifacts(
                        run_id=run_id,
                        artifact_path=path,
                        dst_path=str(dst),
                        tracking_uri=self.tracking_uri,
                    )
                )
            download_artifacts(run_id=run_id, dst_path=str(dst), tracking_uri=self.tracking_uri)
            for m in self._logged_models(client, run):
                download_artifacts(
                    run_id=run_id,
                    artifact_path=str(m.name),
                    dst_path=str(dst),
                    tracking_uri=self.tracking_uri,
                )
            return dst

        return await self._call("download artifacts", download, mapped=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
