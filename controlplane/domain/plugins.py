"""The plugin registry: immutable, content-addressed versions of task packages.

A job pins plugin versions at submit and agents fetch the pinned bundles by digest, so
pushing a new version changes nothing that already runs and needs no restart anywhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from packaging.version import Version
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from brinell.mlproject import shown

from ..store.blobs import BlobStore
from ..store.db import Database
from ..store.models import utcnow
from ..store.repositories import Plugins
from . import names
from .errors import AlreadyExists, InvalidArgument, NotFound
from .identity import AuditFn, Principal
from .models import Plugin, PluginPin, PluginVersion
from .paging import PageTokens, page_size
from .task_manifest import read_bundle
from .uploads import Inspector, receive

MAX_YANK_REASON_CHARS = 255


def version_name(name: str) -> tuple[str, str]:
    """`plugins/{id}/versions/{version}` -> (id, version)."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "plugins" or parts[2] != "versions" or not parts[3]:
        raise InvalidArgument(
            f"plugin version name {name!r} is malformed (want `plugins/{{id}}/versions/{{v}}`)",
            field="name",
        )
    return names.check_id(parts[1], "plugin", field="name"), parts[3]


def plugin_id(name: str) -> str:
    return names.parse(name, "plugins", "plugin")


class PluginManager:
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        tokens: PageTokens,
        max_bundle_bytes: int,
        audit: AuditFn,
        inspector: Inspector,
    ) -> None:
        self.inspector = inspector
        self.audit = audit
        self.db = db
        self.blobs = blobs
        self.tokens = tokens
        self.max_bundle_bytes = max_bundle_bytes

    async def upload(
        self, expected_sha256: str, chunks: AsyncIterator[bytes], who: Principal
    ) -> tuple[Plugin, PluginVersion, bool]:
        plugin, version, created = await self._upload(expected_sha256, chunks, who.name)
        if created:
            resource = f"plugins/{plugin.id}/versions/{version.version}"
            await self.audit(who, "plugin.push", resource, version.digest)
        return plugin, version, created

    async def _upload(
        self, expected_sha256: str, chunks: AsyncIterator[bytes], creator: str
    ) -> tuple[Plugin, PluginVersion, bool]:
        async with receive(
            self.blobs, chunks, self.max_bundle_bytes, expected_sha256, "bundle"
        ) as upload:
            # The same bytes were inspected before: what they are is already stored.
            known = await self.db.run(lambda s: Plugins.by_digest(s, upload.digest))
            manifest: dict[str, Any]
            if known is not None:
                manifest = {
                    "name": known.plugin_id,
                    "version": known.version,
                    "description": known.description,
                    "requirements": known.requirements,
                    "package": known.package,
                    "tasks": known.tasks,
                }
            else:
                manifest = await self.inspector.run(upload.digest, read_bundle, upload.path)
            pv = PluginVersion(
                plugin_id=manifest["name"],
                version=manifest["version"],
                digest=upload.digest,
                size_bytes=upload.size,
                description=manifest["description"],
                requirements=manifest["requirements"],
                package=manifest["package"],
                tasks=manifest["tasks"],
                create_time=utcnow(),
                creator=creator,
            )

            def add(s: Session) -> tuple[Plugin, PluginVersion, bool]:
                # "1.0" and "1.0.0" are one PEP 440 version: the one already stored answers.
                wanted = Version(pv.version)
                existing = Plugins.version(s, pv.plugin_id, pv.version) or next(
                    (v for v in Plugins.versions(s, pv.plugin_id) if Version(v.version) == wanted),
                    None,
                )
                if existing is not None:
                    if existing.digest != pv.digest:
                        same = "" if existing.version == pv.version else f" (as {existing.version})"
                        raise AlreadyExists(
                            f"plugin {pv.plugin_id} version {pv.version} already exists{same} "
                            f"with different content ({existing.digest}); versions are "
                            "immutable: push it as a new version"
                        )
                    plugin = Plugins.get(s, pv.plugin_id)
                    assert plugin is not None
                    return plugin, existing, False
                current = Plugins.get(s, pv.plugin_id, with_latest=False)
                is_latest = (
                    current is None
                    or not current.latest_version  # every earlier version is yanked
                    or Version(pv.version) > Version(current.latest_version)
                )
                plugin = Plugins.add_version(s, pv, is_latest)
                stored = Plugins.version(s, pv.plugin_id, pv.version)
                assert stored is not None
                return plugin, stored, True

            try:
                return await self.db.run(add)
            except IntegrityError:  # a concurrent push of the same version won
                return await self.db.run(add)

    async def get(self, name: str) -> Plugin:
        pid = plugin_id(name)
        plugin = await self.db.run(lambda s: Plugins.get(s, pid))
        if plugin is None:
            raise NotFound(f"plugin {pid!r} not found")
        return plugin

    async def version(self, name: str) -> PluginVersion:
        pid, version = version_name(name)
        pv = await self.db.run(lambda s: Plugins.version(s, pid, version))
        if pv is None:
            raise NotFound(f"plugin {pid!r} has no version {shown(version)}")
        return pv

    async def page(self, size: int, token: str) -> tuple[list[Plugin], str]:
        after = self.tokens.decode("plugins", token) or 0
        if not isinstance(after, int):
            raise InvalidArgument("page_token is invalid", field="page_token")
        n = page_size(size)
        rows = await self.db.run(lambda s: Plugins.page(s, after, n + 1))
        nxt = self.tokens.encode("plugins", rows[n - 1][0]) if len(rows) > n else ""
        return [p for _, p in rows[:n]], nxt

    async def versions(self, parent: str, size: int, token: str) -> tuple[list[PluginVersion], str]:
        pid = plugin_id(parent)
        query = f"plugin_versions:{pid}"
        start = self.tokens.decode(query, token) or 0
        if not isinstance(start, int):
            raise InvalidArgument("page_token is invalid", field="page_token")
        n = page_size(size)

        def read(s: Session) -> list[PluginVersion] | None:
            if Plugins.get(s, pid, with_latest=False) is None:
                return None
            return Plugins.versions(s, pid)

        found = await self.db.run(read)
        if found is None:
            raise NotFound(f"plugin {pid!r} not found")
        ordered = sorted(found, key=lambda v: Version(v.version), reverse=True)
        nxt = self.tokens.encode(query, start + n) if len(ordered) > start + n else ""
        return ordered[start : start + n], nxt

    async def yank(self, name: str, reason: str, undo: bool, who: Principal) -> PluginVersion:
        pid, version = version_name(name)
        if problems := names.text_problems(
            reason, "the reason", MAX_YANK_REASON_CHARS, field="reason"
        ):
            raise InvalidArgument.of(problems)
        pv = await self.db.run(lambda s: Plugins.set_yanked(s, pid, version, not undo, reason))
        if pv is None:
            raise NotFound(f"plugin {pid!r} has no version {shown(version)}")
        action = "plugin.unyank" if undo else "plugin.yank"
        await self.audit(who, action, f"plugins/{pid}/versions/{pv.version}", reason)
        return pv

    async def delete_version(self, name: str, who: Principal) -> None:
        pid, version = version_name(name)
        if not await self.db.run(lambda s: Plugins.delete_version(s, pid, version)):
            raise NotFound(f"plugin {pid!r} has no version {shown(version)}")
        await self.audit(who, "plugin.delete", f"plugins/{pid}/versions/{version}", "")

    @staticmethod
    def pins(
        s: Session,
        requested: dict[str, str],
        declared: tuple[str, ...] = (),
        uses: Callable[[PluginPin], bool] | None = None,
    ) -> tuple[PluginPin, ...]:
        """The plugin versions a job runs with: those ``requested`` (id -> version), the
        ``declared`` ids and, when ``uses`` is given, every other plugin whose latest version
        it accepts (a task graph's plugins); each at the requested version, else at its
        latest that is not yanked.

        Raises InvalidArgument naming every unknown plugin, version, and yanked version.
        """
        latest = Plugins.latest_pins(s)
        chosen: dict[str, PluginPin] = {}
        problems = []
        for pid, version in sorted(requested.items()):
            pv = Plugins.version(s, pid, version) if names.ID_RE.match(pid) else None
            if pv is None:
                known = (
                    "no such plugin"
                    if pid not in latest and not Plugins.versions(s, pid)
                    else (
                        "its versions: "
                        + ", ".join(
                            sorted(
                                (v.version for v in Plugins.versions(s, pid)),
                                key=Version,
                                reverse=True,
                            )
                        )
                    )
                )
                problems.append(f"plugin {shown(pid)} has no version {shown(version)} ({known})")
            elif pv.yanked:
                why = f": {pv.yank_reason}" if pv.yank_reason else ""
                problems.append(f"plugin {pid!r} version {pv.version} is yanked{why}")
            else:
                chosen[pid] = pv.pin
        for pid in declared:
            if pid in chosen or pid in requested:
                continue
            if pid in latest:
                chosen[pid] = latest[pid]
            elif Plugins.get(s, pid, with_latest=False) is not None:
                problems.append(f"plugin {pid!r} (declared by the entry) has every version yanked")
            else:
                problems.append(f"plugin {pid!r} (declared by the entry) is not registered")
        if uses is not None:
            for pid, pin in latest.items():
                if pid not in chosen and pid not in requested and uses(pin):
                    chosen[pid] = pin
        if problems:
            raise InvalidArgument(problems, field="plugin_versions")
        return tuple(chosen[k] for k in sorted(chosen))
