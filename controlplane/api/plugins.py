"""PluginService servicer: validate, convert, delegate."""

from __future__ import annotations

from collections.abc import AsyncIterator

from brinell.v1 import plugin_service_pb2 as pb
from brinell.v1 import plugin_service_pb2_grpc as pb_grpc

from ..domain.plugins import PluginManager
from . import convert
from .auth import current
from .errors import Ctx, unary
from .paging import fitted


class PluginServicer(pb_grpc.PluginServiceServicer):
    def __init__(self, plugins: PluginManager) -> None:
        self.plugins = plugins

    @unary
    async def UploadPlugin(
        self, request_iterator: AsyncIterator[pb.UploadPluginRequest], context: Ctx
    ) -> pb.UploadPluginResponse:
        meta, chunks = await convert.split_upload(request_iterator)
        plugin, version, created = await self.plugins.upload(meta.sha256, chunks, current())
        return pb.UploadPluginResponse(
            plugin=convert.plugin(plugin), version=convert.plugin_version(version), created=created
        )

    @unary
    async def GetPlugin(self, request: pb.GetPluginRequest, context: Ctx) -> pb.GetPluginResponse:
        return pb.GetPluginResponse(plugin=convert.plugin(await self.plugins.get(request.name)))

    @unary
    async def ListPlugins(
        self, request: pb.ListPluginsRequest, context: Ctx
    ) -> pb.ListPluginsResponse:
        return await fitted(
            lambda n: self.plugins.page(n, request.page_token),
            request.page_size,
            lambda plugins, token: pb.ListPluginsResponse(
                plugins=[convert.plugin(p) for p in plugins], next_page_token=token
            ),
        )

    @unary
    async def GetPluginVersion(
        self, request: pb.GetPluginVersionRequest, context: Ctx
    ) -> pb.GetPluginVersionResponse:
        version = await self.plugins.version(request.name)
        return pb.GetPluginVersionResponse(version=convert.plugin_version(version))

    @unary
    async def ListPluginVersions(
        self, request: pb.ListPluginVersionsRequest, context: Ctx
    ) -> pb.ListPluginVersionsResponse:
        return await fitted(
            lambda n: self.plugins.versions(request.parent, n, request.page_token),
            request.page_size,
            lambda versions, token: pb.ListPluginVersionsResponse(
                versions=[convert.plugin_version(v) for v in versions], next_page_token=token
            ),
        )

    @unary
    async def ListPluginTasks(
        self, request: pb.ListPluginTasksRequest, context: Ctx
    ) -> pb.ListPluginTasksResponse:
        version = await self.plugins.version(request.parent)
        return pb.ListPluginTasksResponse(tasks=[convert.task(t) for t in version.tasks])

    @unary
    async def YankPluginVersion(
        self, request: pb.YankPluginVersionRequest, context: Ctx
    ) -> pb.YankPluginVersionResponse:
        version = await self.plugins.yank(request.name, request.reason, request.undo, current())
        return pb.YankPluginVersionResponse(version=convert.plugin_version(version))

    @unary
    async def DeletePluginVersion(
        self, request: pb.DeletePluginVersionRequest, context: Ctx
    ) -> pb.DeletePluginVersionResponse:
        await self.plugins.delete_version(request.name, current())
        return pb.DeletePluginVersionResponse()
