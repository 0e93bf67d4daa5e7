"""Entry points: uploaded MLproject archives, immutable revisions addressed by sha256."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from brinell import graph as task_graph
from brinell import mlproject

from ..store.blobs import BlobStore
from ..store.db import Database
from ..store.models import utcnow
from ..store.repositories import EntryPoints
from . import names
from .archives import UPLOAD_FIELD, read_project
from .errors import InvalidArgument, NotFound
from .identity import Principal, may_act_on
from .models import EntryPoint, Revision
from .paging import PageTokens, page_size
from .uploads import Inspector, receive


def spec_to_dict(
    project: mlproject.ProjectSpec, graphs: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "graphs": graphs or {},
        "entries": [
            {
                "name": e.name,
                "command": e.command,
                "graph": e.graph,
                "plugins": list(e.plugins),
                "image": e.image,
                "parameters": [
                    {"name": p.name, "type": p.type, "default": p.default} for p in e.parameters
                ],
            }
            for e in project.entries
        ],
    }


def spec_from_dict(name: str, spec: dict[str, Any]) -> mlproject.ProjectSpec:
    return mlproject.ProjectSpec(
        name,
        tuple(
            mlproject.EntrySpec(
                e["name"],
                e["command"],
                tuple(
                    mlproject.ParameterSpec(p["name"], p["type"], p["default"])
                    for p in e["parameters"]
                ),
                e.get("graph"),
                tuple(e.get("plugins", ())),
                e.get("image", ""),
            )
            for e in spec["entries"]
        ),
    )


def _parse_mlproject(text: bytes) -> mlproject.ProjectSpec:
    try:
        return mlproject.parse(text)
    except mlproject.MLprojectError as exc:
        raise InvalidArgument(
            [f"MLproject: {p}" for p in exc.problems], field=UPLOAD_FIELD
        ) from None


def inspect_project(path: Path) -> tuple[mlproject.ProjectSpec, dict[str, str]]:
    """The archive's MLproject and the task graphs its entries run, checked for structure
    (tasks and types are checked at submit, against the plugin versions a job pins)."""
    text, files = read_project(
        path, lambda t: sorted({e.graph for e in _parse_mlproject(t).entries if e.graph})
    )
    project = _parse_mlproject(text)
    graphs: dict[str, str] = {}
    problems: list[str] = []
    for rel, data in files.items():
        try:
            task_graph.parse(data)
        except task_graph.GraphError as exc:
            problems += [f"{rel}: {p}" for p in exc.problems]
            continue
        graphs[rel] = data.decode()
    if problems:
        raise InvalidArgument(problems, field=UPLOAD_FIELD)
    return project, graphs


class EntryPointManager:
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        tokens: PageTokens,
        max_archive_bytes: int,
        inspector: Inspector,
    ) -> None:
        self.inspector = inspector
        self.db = db
        self.blobs = blobs
        self.tokens = tokens
        self.max_archive_bytes = max_archive_bytes

    async def upload(
        self,
        ep_id: str,
        description: str,
        expected_sha256: str,
        chunks: AsyncIterator[bytes],
        who: Principal,
    ) -> tuple[EntryPoint, Revision, bool]:
        """A new revision; of an existing entry point only by its creator or an admin (so
        nobody can replace the code another user's next submit runs)."""
        names.check_id(ep_id, "entry point", field="metadata.entry_point_id")
        if problems := names.text_problems(
            description, "description", names.MAX_DESCRIPTION_CHARS, field="metadata.description"
        ):
            raise InvalidArgument.of(problems)
        existing = await self.db.run(lambda s: EntryPoints.get(s, ep_id, with_latest=False))
        if existing is not None:
            may_act_on(who, existing.creator, f"entryPoints/{ep_id}")
        async with receive(
            self.blobs, chunks, self.max_archive_bytes, expected_sha256, "archive"
        ) as upload:
            # The same bytes were inspected before (by any entry point): reuse what was read.
            known = await self.db.run(lambda s: EntryPoints.any_revision(s, upload.digest))
            if known is not None:
                project_name, spec = known.project_name, known.spec
            else:
                project, graphs = await self.inspector.run(
                    upload.digest, inspect_project, upload.path
                )
                project_name, spec = project.name, spec_to_dict(project, graphs)
        rev = Revision(ep_id, upload.digest, upload.size, project_name, spec, utcnow(), who.name)
        return await self.db.run(lambda s: EntryPoints.add_revision(s, ep_id, description, rev))

    async def get(self, name: str) -> EntryPoint:
        ep_id = names.entry_point_id(name)
        ep = await self.db.run(lambda s: EntryPoints.get(s, ep_id))
        if ep is None:
            raise NotFound(f"entry point {ep_id!r} not found")
        return ep

    async def revision(self, name: str) -> Revision:
        ep_id, digest = names.revision_name(name)
        rev = await self.db.run(lambda s: EntryPoints.revision(s, ep_id, digest))
        if rev is None:
            raise NotFound(f"entry point {ep_id!r} has no revision {digest}")
        return rev

    async def page(self, size: int, token: str) -> tuple[list[EntryPoint], str]:
        after = self.tokens.decode("entry_points", token) or 0
        if not isinstance(after, int):
            raise InvalidArgument("page_token is invalid", field="page_token")
        n = page_size(size)
        rows = await self.db.run(lambda s: EntryPoints.page(s, after, n + 1))
        nxt = self.tokens.encode("entry_points", rows[n - 1][0]) if len(rows) > n else ""
        return [e for _, e in rows[:n]], nxt

    async def revisions(self, parent: str, size: int, token: str) -> tuple[list[Revision], str]:
        ep_id = names.entry_point_id(parent)
        query = f"revisions:{ep_id}"
        before = self.tokens.decode(query, token)
        if before is not None and not isinstance(before, int):
            raise InvalidArgument("page_token is invalid", field="page_token")
        n = page_size(size)

        def read(s: Any) -> list[tuple[int, Revision]] | None:
            if EntryPoints.get(s, ep_id, with_latest=False) is None:
                return None
            return EntryPoints.revisions(s, ep_id, before, n + 1)

        rows = await self.db.run(read)
        if rows is None:
            raise NotFound(f"entry point {ep_id!r} not found")
        nxt = self.tokens.encode(query, rows[n - 1][0]) if len(rows) > n else ""
        return [r for _, r in rows[:n]], nxt
