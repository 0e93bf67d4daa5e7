"""``client.models`` and ``client.artifacts``: the model registry and a job's artifacts.

A model version is what a job logged to its MLflow run (``mlflow.<flavor>.log_model(...,
name="model")``, or any folder or file), registered under a model id. Versions are numbered
from 1; aliases (``champion``) point at one version each. Everywhere a version is wanted, any
of these works: a ``ModelVersion``, ``"models/m/versions/3"``, ``"models/m@champion"``, or an
MLflow URI ``"models:/m/3"``, ``"models:/m@champion"``, ``"models:/m/latest"``.

Downloads write the files under ``dest_dir`` (folders created as needed, existing files
overwritten) and refuse any path from the server that would leave it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol, TypeVar

import grpc

from brinell.v1 import (
    artifact_service_pb2,
    artifact_service_pb2_grpc,
    model_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
)

from .client import _id, _name, _pages, _Service
from .errors import InvalidArgumentError, from_rpc_error
from .types import Job, _after, _time

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Artifact", "Artifacts", "Model", "ModelVersion", "Models"]


@dataclass(frozen=True)
class Model:
    """A registered model; ``aliases`` maps alias -> version number (as a string)."""

    name: str
    description: str = ""
    aliases: dict[str, str] = field(default_factory=dict)
    latest_version: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None

    @property
    def id(self) -> str:
        return _after(self.name, "models/")

    @classmethod
    def from_proto(cls, msg: model_pb2.Model) -> Model:
        return cls(
            name=str(msg.name),
            description=str(msg.description),
            aliases=dict(msg.aliases),
            latest_version=str(msg.latest_version),
            create_time=_time(msg, "create_time"),
            update_time=_time(msg, "update_time"),
        )


@dataclass(frozen=True)
class ModelVersion:
    """One version of a model: the files a job logged at ``artifact_path`` of its run."""

    name: str
    version: str = ""
    job: str = ""
    mlflow_run_id: str = ""
    artifact_path: str = ""
    source: str = ""
    aliases: tuple[str, ...] = ()
    description: str = ""
    create_time: datetime | None = None

    @property
    def model(self) -> str:
        """The model's resource name (``models/{id}``)."""
        return self.name.split("/versions/", 1)[0]

    @property
    def model_id(self) -> str:
        return _after(self.model, "models/")

    @property
    def uri(self) -> str:
        """The MLflow URI of this version (``models:/{id}/{version}``)."""
        return f"models:/{self.model_id}/{self.version}"

    @classmethod
    def from_proto(cls, msg: model_pb2.ModelVersion) -> ModelVersion:
        return cls(
            name=str(msg.name),
            version=str(msg.version),
            job=str(msg.job),
            mlflow_run_id=str(msg.mlflow_run_id),
            artifact_path=str(msg.artifact_path),
            source=str(msg.source),
            aliases=tuple(str(a) for a in msg.aliases),
            description=str(msg.description),
            create_time=_time(msg, "create_time"),
        )


@dataclass(frozen=True)
class Artifact:
    """A file or folder among a job's (or a model version's) artifacts."""

    path: str
    is_dir: bool = False
    size_bytes: int = 0

    @classmethod
    def from_proto(cls, msg: model_pb2.Artifact) -> Artifact:
        return cls(path=str(msg.path), is_dir=bool(msg.is_dir), size_bytes=int(msg.size_bytes))


def _model_name(model: str | Model | ModelVersion) -> str:
    if isinstance(model, ModelVersion):
        return model.model
    return _name(model, "models", "model")


def _version_name(value: str | ModelVersion, version: int | str | None) -> str:
    """A version's resource name from the many ways of naming one (not URIs)."""
    if isinstance(value, ModelVersion):
        return value.name
    if version is not None:
        return f"{_name(value, 'models', 'model')}/versions/{version}"
    name = value if value.startswith("models/") else f"models/{value}"
    return name


def _destination(dest_dir: Path, path: str) -> Path:
    """Where a file the server named goes; refuses names that would leave ``dest_dir``."""
    rel = PurePosixPath(path)
    if not path or rel.is_absolute() or ".." in rel.parts or "\\" in path:
        raise InvalidArgumentError(f"the server sent an unsafe file name {path!r}")
    return dest_dir.joinpath(*rel.parts)


class _FileChunk(Protocol):
    """A download response: the file's name on its first chunk, then its bytes."""

    @property
    def file(self) -> model_pb2.Artifact: ...
    @property
    def chunk(self) -> bytes: ...
    def HasField(self, field_name: Literal["file"]) -> bool: ...


_Req = TypeVar("_Req")
_Chunk = TypeVar("_Chunk", bound=_FileChunk)


def _write_stream(responses: Iterable[_FileChunk], dest_dir: Path) -> list[Path]:
    """Writes a stream of (file on the first chunk, chunk) messages; returns the files."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    out: BinaryIO | None = None
    try:
        for response in responses:
            if response.HasField("file"):
                if out is not None:
                    out.close()
                target = _destination(dest_dir, str(response.file.path))
                target.parent.mkdir(parents=True, exist_ok=True)
                out = target.open("wb")
                written.append(target)
            if response.chunk:
                if out is None:
                    raise InvalidArgumentError("the server sent data before naming its file")
                out.write(response.chunk)
    finally:
        if out is not None:
            out.close()
    return written


class _Streaming(_Service):
    def _download(
        self,
        method: grpc.UnaryStreamMultiCallable[_Req, _Chunk],
        request: _Req,
        dest_dir: str | Path,
    ) -> list[Path]:
        call = method(request)
        try:
            return _write_stream(call, Path(dest_dir))
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()  # type: ignore[no-untyped-call]  # unannotated in types-grpcio


class Models(_Streaming):
    """``client.models``: the model registry (MLflow's, behind the control plane)."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._stub = model_service_pb2_grpc.ModelServiceStub(client._channel)

    def register(
        self,
        model_id: str | Model,
        job: str | Job,
        artifact_path: str = "model",
        description: str = "",
    ) -> ModelVersion:
        """Registers what ``job`` logged at ``artifact_path`` as the next version of the model.

        The model is created on first registration (with ``description``, which also
        describes the version).
        """
        request = model_service_pb2.RegisterModelRequest(
            model_id=_id(model_id, "models", "model"),
            job=_name(job, "jobs", "job"),
            artifact_path=artifact_path,
            description=description,
        )
        return ModelVersion.from_proto(self._unary(self._stub.RegisterModel, request).version)

    def get(self, model: str | Model | ModelVersion) -> Model:
        request = model_service_pb2.GetModelRequest(name=_model_name(model))
        return Model.from_proto(self._unary(self._stub.GetModel, request).model)

    def list(self, page_size: int | None = None) -> Iterator[Model]:
        """Iterates over all models by id."""

        def fetch(token: str) -> tuple[list[Model], str]:
            request = model_service_pb2.ListModelsRequest(
                page_size=page_size or 0, page_token=token
            )
            response = self._unary(self._stub.ListModels, request)
            return [Model.from_proto(m) for m in response.models], str(response.next_page_token)

        return _pages(fetch)

    def versions(
        self, model: str | Model | ModelVersion, page_size: int | None = None
    ) -> Iterator[ModelVersion]:
        """Iterates over a model's versions, newest first."""
        parent = _model_name(model)

        def fetch(token: str) -> tuple[list[ModelVersion], str]:
            request = model_service_pb2.ListModelVersionsRequest(
                parent=parent, page_size=page_size or 0, page_token=token
            )
            response = self._unary(self._stub.ListModelVersions, request)
            items = [ModelVersion.from_proto(v) for v in response.versions]
            return items, str(response.next_page_token)

        return _pages(fetch)

    def version(
        self, name_or_uri: str | Model | ModelVersion, version: int | str | None = None
    ) -> ModelVersion:
        """One version: ``version("m", 3)``, ``version("models/m@champion")``,
        ``version("models:/m/latest")``, ..."""
        if isinstance(name_or_uri, str) and name_or_uri.startswith("models:/"):
            return self.resolve(name_or_uri)
        if isinstance(name_or_uri, Model):
            if version is None:
                raise InvalidArgumentError("which version? pass version=N")
            name_or_uri = name_or_uri.name
        request = model_service_pb2.GetModelVersionRequest(name=_version_name(name_or_uri, version))
        return ModelVersion.from_proto(self._unary(self._stub.GetModelVersion, request).version)

    def set_alias(
        self, model: str | Model | ModelVersion, alias: str, version: int | str | ModelVersion
    ) -> Model:
        """Points ``alias`` at ``version`` (moving it if it pointed elsewhere)."""
        number = version.version if isinstance(version, ModelVersion) else str(version)
        request = model_service_pb2.SetModelAliasRequest(
            name=_model_name(model), alias=alias, version=number
        )
        return Model.from_proto(self._unary(self._stub.SetModelAlias, request).model)

    def delete_alias(self, model: str | Model | ModelVersion, alias: str) -> Model:
        request = model_service_pb2.DeleteModelAliasRequest(name=_model_name(model), alias=alias)
        return Model.from_proto(self._unary(self._stub.DeleteModelAlias, request).model)

    def resolve(self, uri: str) -> ModelVersion:
        """``models:/m/3``, ``models:/m@alias`` or ``models:/m/latest`` -> that version."""
        request = model_service_pb2.ResolveModelRequest(uri=uri)
        return ModelVersion.from_proto(self._unary(self._stub.ResolveModel, request).version)

    def download(self, model_version: str | ModelVersion, dest_dir: str | Path) -> Path:
        """Writes the version's files (``MLmodel``, ...) into ``dest_dir``; returns it.

        Load it with MLflow, e.g. ``mlflow.pyfunc.load_model(str(path))``.
        """
        if isinstance(model_version, str) and model_version.startswith("models:/"):
            model_version = self.resolve(model_version)
        request = model_service_pb2.DownloadModelVersionRequest(
            name=_version_name(model_version, None)
        )
        self._download(self._stub.DownloadModelVersion, request, dest_dir)
        return Path(dest_dir)


class Artifacts(_Streaming):
    """``client.artifacts``: what a job logged to its MLflow run."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._stub = artifact_service_pb2_grpc.ArtifactServiceStub(client._channel)

    def list(self, job: str | Job, path: str = "", recursive: bool = False) -> list[Artifact]:
        """Files and folders directly under ``path`` (the root when empty), or with
        ``recursive`` every file under it."""
        request = artifact_service_pb2.ListJobArtifactsRequest(
            job=_name(job, "jobs", "job"), path=path, recursive=recursive
        )
        response = self._unary(self._stub.ListJobArtifacts, request)
        return [Artifact.from_proto(a) for a in response.artifacts]

    def download(self, job: str | Job, path: str, dest_dir: str | Path) -> Path:
        """Copies one file or folder of the job's artifacts to ``dest_dir/path`` (the layout
        of the run's artifacts is kept, as MLflow does) and returns that path."""
        request = artifact_service_pb2.DownloadJobArtifactRequest(
            job=_name(job, "jobs", "job"), path=path
        )
        self._download(self._stub.DownloadJobArtifact, request, dest_dir)
        rel = PurePosixPath(path.strip("/"))
        return Path(dest_dir).joinpath(*rel.parts) if rel.parts else Path(dest_dir)
