"""ModelService and ArtifactService: thin servicers over domain/registry.py, and their
converters (kept out of convert.py, which the other services share)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import overload

from brinell.v1 import artifact_service_pb2 as art_pb
from brinell.v1 import artifact_service_pb2_grpc as art_grpc
from brinell.v1 import model_pb2
from brinell.v1 import model_service_pb2 as model_pb
from brinell.v1 import model_service_pb2_grpc as model_grpc

from ..domain.registry import ModelRegistry
from ..domain.registry_types import Artifact, ModelVersion, RegisteredModel
from .auth import current
from .convert import ts
from .errors import Ctx, streaming, unary
from .paging import fitted


def model(m: RegisteredModel) -> model_pb2.Model:
    return model_pb2.Model(
        name=f"models/{m.id}",
        description=m.description,
        aliases=m.aliases,
        latest_version=m.latest_version,
        create_time=ts(m.create_time),
        update_time=ts(m.update_time),
    )


def model_version(v: ModelVersion) -> model_pb2.ModelVersion:
    return model_pb2.ModelVersion(
        name=f"models/{v.model_id}/versions/{v.version}",
        version=v.version,
        job=f"jobs/{v.job_id}" if v.job_id else "",
        mlflow_run_id=v.run_id,
        artifact_path=v.artifact_path,
        source=v.source,
        aliases=list(v.aliases),
        description=v.description,
        create_time=ts(v.create_time),
    )


@overload
def artifact(a: Artifact) -> model_pb2.Artifact: ...
@overload
def artifact(a: None) -> None: ...
def artifact(a: Artifact | None) -> model_pb2.Artifact | None:
    if a is None:
        return None
    return model_pb2.Artifact(path=a.path, is_dir=a.is_dir, size_bytes=a.size_bytes)


class ModelServicer(model_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    @unary
    async def RegisterModel(
        self, request: model_pb.RegisterModelRequest, context: Ctx
    ) -> model_pb.RegisterModelResponse:
        v = await self.registry.register(
            request.model_id, request.job, request.artifact_path, request.description, current()
        )
        return model_pb.RegisterModelResponse(version=model_version(v))

    @unary
    async def GetModel(
        self, request: model_pb.GetModelRequest, context: Ctx
    ) -> model_pb.GetModelResponse:
        return model_pb.GetModelResponse(model=model(await self.registry.get(request.name)))

    @unary
    async def ListModels(
        self, request: model_pb.ListModelsRequest, context: Ctx
    ) -> model_pb.ListModelsResponse:
        return await fitted(
            lambda n: self.registry.page(n, request.page_token),
            request.page_size,
            lambda models, token: model_pb.ListModelsResponse(
                models=[model(m) for m in models], next_page_token=token
            ),
        )

    @unary
    async def GetModelVersion(
        self, request: model_pb.GetModelVersionRequest, context: Ctx
    ) -> model_pb.GetModelVersionResponse:
        v = await self.registry.get_version(request.name)
        return model_pb.GetModelVersionResponse(version=model_version(v))

    @unary
    async def ListModelVersions(
        self, request: model_pb.ListModelVersionsRequest, context: Ctx
    ) -> model_pb.ListModelVersionsResponse:
        return await fitted(
            lambda n: self.registry.versions(request.parent, n, request.page_token),
            request.page_size,
            lambda versions, token: model_pb.ListModelVersionsResponse(
                versions=[model_version(v) for v in versions], next_page_token=token
            ),
        )

    @unary
    async def SetModelAlias(
        self, request: model_pb.SetModelAliasRequest, context: Ctx
    ) -> model_pb.SetModelAliasResponse:
        m = await self.registry.set_alias(request.name, request.alias, request.version, current())
        return model_pb.SetModelAliasResponse(model=model(m))

    @unary
    async def DeleteModelAlias(
        self, request: model_pb.DeleteModelAliasRequest, context: Ctx
    ) -> model_pb.DeleteModelAliasResponse:
        m = await self.registry.delete_alias(request.name, request.alias, current())
        return model_pb.DeleteModelAliasResponse(model=model(m))

    @unary
    async def ResolveModel(
        self, request: model_pb.ResolveModelRequest, context: Ctx
    ) -> model_pb.ResolveModelResponse:
        v = await self.registry.resolve(request.uri)
        return model_pb.ResolveModelResponse(version=model_version(v))

    @streaming
    async def DownloadModelVersion(
        self, request: model_pb.DownloadModelVersionRequest, context: Ctx
    ) -> AsyncIterator[model_pb.DownloadModelVersionResponse]:
        async for file, chunk in self.registry.download(request.name):
            yield model_pb.DownloadModelVersionResponse(file=artifact(file), chunk=chunk)


class ArtifactServicer(art_grpc.ArtifactServiceServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    @unary
    async def ListJobArtifacts(
        self, request: art_pb.ListJobArtifactsRequest, context: Ctx
    ) -> art_pb.ListJobArtifactsResponse:
        found = await self.registry.list_artifacts(
            request.job, request.path, request.recursive, current()
        )
        return art_pb.ListJobArtifactsResponse(artifacts=[artifact(a) for a in found])

    @streaming
    async def DownloadJobArtifact(
        self, request: art_pb.DownloadJobArtifactRequest, context: Ctx
    ) -> AsyncIterator[art_pb.DownloadJobArtifactResponse]:
        async for file, chunk in self.registry.download_artifact(
            request.job, request.path, current()
        ):
            yield art_pb.DownloadJobArtifactResponse(file=artifact(file), chunk=chunk)
