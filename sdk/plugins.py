"""``client.plugins``: the task plugin registry.

A plugin version is an immutable bundle: a tar.gz (or zip) of a folder holding
``brinell-plugin.yaml`` (name, version, description, requirements, package) and the Python
package it names. Jobs pin plugin versions when they are submitted (``Job.plugins``), so
pushing a new version changes nothing that already runs. The control plane reads each
version's ``@task`` functions from the source, without importing it: ``tasks()`` lists them
with their typed inputs.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from brinell.v1 import plugin_pb2, plugin_service_pb2, plugin_service_pb2_grpc

from .client import (
    _UPLOAD_MIN_RATE,
    Client,
    _name,
    _pages,
    _Service,
    _upload_source,
)
from .errors import InvalidArgumentError, NotFoundError
from .types import PluginPin, _after, _time

__all__ = [
    "MANIFEST",
    "Plugin",
    "PluginPin",
    "PluginVersion",
    "Plugins",
    "Task",
    "TaskInput",
]

#: The manifest a plugin folder must hold at its root.
MANIFEST = "brinell-plugin.yaml"


@dataclass(frozen=True)
class TaskInput:
    """One input of a task as written in its signature; ``default`` is the default's source
    text, or None when the input is required."""

    name: str
    type: str = ""
    default: str | None = None

    @property
    def required(self) -> bool:
        return self.default is None

    @classmethod
    def from_proto(cls, msg: plugin_pb2.TaskInput) -> TaskInput:
        return cls(
            name=str(msg.name),
            type=str(msg.type),
            default=str(msg.default_value) if msg.has_default else None,
        )

    def __str__(self) -> str:
        text = f"{self.name}: {self.type}" if self.type else self.name
        return text if self.default is None else f"{text} = {self.default}"


@dataclass(frozen=True)
class Task:
    """A ``@task`` function of a plugin version."""

    name: str
    module: str = ""
    description: str = ""
    inputs: tuple[TaskInput, ...] = ()
    output_type: str = ""

    @property
    def summary(self) -> str:
        """The first line of the docstring."""
        return next((ln.strip() for ln in self.description.splitlines() if ln.strip()), "")

    @property
    def signature(self) -> str:
        """``name(a: int, b: float = 0.5) -> float``."""
        inputs = ", ".join(str(i) for i in self.inputs)
        return f"{self.name}({inputs})" + (f" -> {self.output_type}" if self.output_type else "")

    @classmethod
    def from_proto(cls, msg: plugin_pb2.Task) -> Task:
        return cls(
            name=str(msg.name),
            module=str(msg.module),
            description=str(msg.description),
            inputs=tuple(TaskInput.from_proto(i) for i in msg.inputs),
            output_type=str(msg.output_type),
        )


@dataclass(frozen=True)
class PluginVersion:
    """An immutable bundle of a plugin, identified by its sha256 digest."""

    name: str  # `plugins/{id}/versions/{version}`
    version: str = ""
    digest: str = ""
    size_bytes: int = 0
    description: str = ""
    requirements: tuple[str, ...] = ()
    package: str = ""
    tasks: tuple[Task, ...] = ()
    create_time: datetime | None = None
    #: Who created it (``users/{id}``; empty for what predates users).
    creator: str = ""
    #: A yanked version is not pinned by default, and a submit naming it is refused.
    yanked: bool = False
    yank_reason: str = ""

    @property
    def plugin(self) -> str:
        """The owning plugin's resource name (``plugins/{id}``)."""
        return self.name.split("/versions/", 1)[0]

    @property
    def plugin_id(self) -> str:
        return _after(self.plugin, "plugins/")

    def task(self, name: str) -> Task | None:
        return next((t for t in self.tasks if t.name == name), None)

    @classmethod
    def from_proto(cls, msg: plugin_pb2.PluginVersion) -> PluginVersion:
        return cls(
            name=str(msg.name),
            version=str(msg.version),
            digest=str(msg.digest),
            size_bytes=int(msg.size_bytes),
            description=str(msg.description),
            requirements=tuple(str(r) for r in msg.requirements),
            package=str(msg.package),
            tasks=tuple(Task.from_proto(t) for t in msg.tasks),
            create_time=_time(msg, "create_time"),
            creator=str(msg.creator),
            yanked=bool(msg.yanked),
            yank_reason=str(msg.yank_reason),
        )


@dataclass(frozen=True)
class Plugin:
    """A named series of versions; jobs pin ``latest_version`` unless they choose one."""

    name: str  # `plugins/{id}`
    description: str = ""
    latest_version: PluginVersion | None = None
    version_count: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None

    @property
    def id(self) -> str:
        return _after(self.name, "plugins/")

    @classmethod
    def from_proto(cls, msg: plugin_pb2.Plugin) -> Plugin:
        return cls(
            name=str(msg.name),
            description=str(msg.description),
            latest_version=(
                PluginVersion.from_proto(msg.latest_version)
                if msg.HasField("latest_version")
                else None
            ),
            version_count=int(msg.version_count),
            create_time=_time(msg, "create_time"),
            update_time=_time(msg, "update_time"),
        )


def _version_name(plugin: str | Plugin, version: str | PluginVersion) -> str:
    """``plugins/{id}/versions/{version}`` from an id or name and a version string."""
    if isinstance(version, PluginVersion):
        return version.name
    if not isinstance(version, str) or not version or "/" in version:
        raise InvalidArgumentError(f"{version!r} is not a plugin version (like 1.0.0)")
    return f"{_name(plugin, 'plugins', 'plugin')}/versions/{version}"


class Plugins(_Service):
    """``client.plugins``: push plugin bundles and inspect versions and their tasks."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._stub = plugin_service_pb2_grpc.PluginServiceStub(client._channel)

    def push(self, path: str | Path) -> tuple[Plugin, PluginVersion, bool]:
        """Uploads a plugin folder (packed deterministically) or a .tar.gz/.tgz/.zip as is.

        Returns the plugin, the version and whether it was created: pushing the same bytes
        again returns the existing version with ``created`` False, while different content
        under an existing version raises ``AlreadyExistsError`` (versions are immutable: bump
        the version in ``brinell-plugin.yaml``). The name and version come from the manifest.
        """
        p = Path(path)
        if p.is_dir() and not (p / MANIFEST).is_file():
            raise InvalidArgumentError(
                f"{p}: not a plugin folder (no {MANIFEST} with name, version and package)"
            )
        digest, size, chunks = _upload_source(p, "a plugin folder")

        def requests() -> Iterator[plugin_service_pb2.UploadPluginRequest]:
            yield plugin_service_pb2.UploadPluginRequest(
                metadata=plugin_service_pb2.UploadPluginMetadata(sha256=digest)
            )
            for chunk in chunks:
                yield plugin_service_pb2.UploadPluginRequest(chunk=chunk)

        timeout = self._client.timeout + size / _UPLOAD_MIN_RATE
        response = self._unary(self._stub.UploadPlugin, requests(), timeout=timeout)
        return (
            Plugin.from_proto(response.plugin),
            PluginVersion.from_proto(response.version),
            bool(response.created),
        )

    def get(self, id_or_name: str | Plugin) -> Plugin:
        """A plugin with its latest version."""
        request = plugin_service_pb2.GetPluginRequest(name=_name(id_or_name, "plugins", "plugin"))
        return Plugin.from_proto(self._unary(self._stub.GetPlugin, request).plugin)

    def list(self, page_size: int | None = None) -> Iterator[Plugin]:
        """Iterates over all plugins by name (fetching pages lazily)."""

        def fetch(token: str) -> tuple[list[Plugin], str]:
            request = plugin_service_pb2.ListPluginsRequest(
                page_size=page_size or 0, page_token=token
            )
            response = self._unary(self._stub.ListPlugins, request)
            return [Plugin.from_proto(p) for p in response.plugins], str(response.next_page_token)

        return _pages(fetch)

    def versions(
        self, id_or_name: str | Plugin, page_size: int | None = None
    ) -> Iterator[PluginVersion]:
        """Iterates over a plugin's versions, highest first."""
        parent = _name(id_or_name, "plugins", "plugin")

        def fetch(token: str) -> tuple[list[PluginVersion], str]:
            request = plugin_service_pb2.ListPluginVersionsRequest(
                parent=parent, page_size=page_size or 0, page_token=token
            )
            response = self._unary(self._stub.ListPluginVersions, request)
            items = [PluginVersion.from_proto(v) for v in response.versions]
            return items, str(response.next_page_token)

        return _pages(fetch)

    def version(self, id_or_name: str | Plugin, version: str) -> PluginVersion:
        """One version (``"1.0.0"``) with its tasks."""
        request = plugin_service_pb2.GetPluginVersionRequest(
            name=_version_name(id_or_name, version)
        )
        return PluginVersion.from_proto(self._unary(self._stub.GetPluginVersion, request).version)

    def tasks(
        self, id_or_name: str | Plugin, version: str | PluginVersion | None = None
    ) -> builtins.list[Task]:
        """A version's tasks with their typed inputs; ``version`` None means the latest."""
        if version is None:
            latest = self.get(id_or_name).latest_version
            if latest is None:
                name = _name(id_or_name, "plugins", "plugin")
                raise NotFoundError(f"{name} has no versions", code="NOT_FOUND")
            version = latest
        request = plugin_service_pb2.ListPluginTasksRequest(
            parent=_version_name(id_or_name, version)
        )
        response = self._unary(self._stub.ListPluginTasks, request)
        return [Task.from_proto(t) for t in response.tasks]

    def yank(
        self, id_or_name: str | Plugin, version: str | PluginVersion, reason: str = ""
    ) -> PluginVersion:
        """Yanks a version (admins): new jobs no longer pin it, and naming it at submit is
        refused with ``reason``; jobs that already pinned it keep their pin."""
        request = plugin_service_pb2.YankPluginVersionRequest(
            name=_version_name(id_or_name, version), reason=reason
        )
        return PluginVersion.from_proto(self._unary(self._stub.YankPluginVersion, request).version)

    def unyank(self, id_or_name: str | Plugin, version: str | PluginVersion) -> PluginVersion:
        """Takes a yank back (admins)."""
        request = plugin_service_pb2.YankPluginVersionRequest(
            name=_version_name(id_or_name, version), undo=True
        )
        return PluginVersion.from_proto(self._unary(self._stub.YankPluginVersion, request).version)

    def delete_version(self, id_or_name: str | Plugin, version: str | PluginVersion) -> None:
        """Deletes a version (admins); the plugin goes with its last version."""
        request = plugin_service_pb2.DeletePluginVersionRequest(
            name=_version_name(id_or_name, version)
        )
        self._unary(self._stub.DeletePluginVersion, request)
