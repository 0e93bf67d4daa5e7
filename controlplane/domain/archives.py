"""Reading files out of an uploaded archive (tar, tar.gz or zip) without extracting it."""

from __future__ import annotations

import lzma
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from brinell import archives
from brinell.mlproject import shown

from .errors import InvalidArgument

#: The request field of an upload's bytes: what a problem with the archive's content is about.
UPLOAD_FIELD = "chunk"

MAX_FILE_BYTES = 1 << 20


#: What the control plane keeps in memory of an archive while inspecting it: files it may
#: read (manifests, MLprojects, graphs, Python source), each at most MAX_FILE_BYTES.
KEPT_SUFFIXES = ("", ".yaml", ".yml", ".py")
MAX_KEPT_BYTES = 32 << 20


class Archive:
    """The regular files of an archive that passed the shared rules, by clean name."""

    def __init__(self, files: dict[str, tuple[int, bytes | None]]) -> None:
        # name -> (size, content, or None for a file not kept: too big or of another kind)
        self.files = files

    def root(self, marker: str) -> str | None:
        """The folder holding ``marker``: "" at the root, or the single top-level folder."""
        if marker in self.files:
            return ""
        tops = {n.split("/", 1)[0] for n in self.files}
        if len(tops) == 1 and f"{next(iter(tops))}/{marker}" in self.files:
            return next(iter(tops)) + "/"
        return None

    def read(self, name: str, limit: int = MAX_FILE_BYTES) -> bytes:
        if name not in self.files:
            raise InvalidArgument(f"the archive has no file {shown(name)}", field=UPLOAD_FIELD)
        size, data = self.files[name]
        if size > limit or data is None:
            raise InvalidArgument(f"{shown(name)} is larger than {limit} bytes", field=UPLOAD_FIELD)
        return data


def walk(path: Path) -> Archive:
    """Checks every entry with the rules the agent extracts by (brinell.archives, with the
    agents' default limits), reading the archive once, and keeps the small text files.
    INVALID_ARGUMENT for an unreadable or unsafe archive."""
    files: dict[str, tuple[int, bytes | None]] = {}
    kept = 0
    try:
        for m in archives.members(path, archives.Limits()):
            if m.kind == "hardlink":
                files[m.name] = files[m.link]
            elif m.kind != "file":
                files.pop(m.name, None)
            else:
                assert m.open is not None
                keep = m.size <= MAX_FILE_BYTES and kept + m.size <= MAX_KEPT_BYTES
                keep = keep and PurePosixPath(m.name).suffix in KEPT_SUFFIXES
                data = None
                if keep:
                    with m.open() as f:
                        data = f.read(MAX_FILE_BYTES + 1)
                    kept += len(data)
                files[m.name] = (m.size, data)
    except archives.UnsafeArchiveError as exc:
        raise InvalidArgument(f"the archive is refused: {exc}", field=UPLOAD_FIELD) from None
    except (archives.ArchiveError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise InvalidArgument(
            f"the upload is not a readable tar.gz, tar or zip archive ({exc})", field=UPLOAD_FIELD
        ) from None
    return Archive(files)


@contextmanager
def open_archive(path: Path) -> Iterator[Archive]:
    yield walk(path)


def read_project(
    path: Path, extra: Callable[[bytes], list[str]] | None = None
) -> tuple[bytes, dict[str, bytes]]:
    """The MLproject's bytes, and the files it names (``extra`` lists them, relative to it)."""
    with open_archive(path) as archive:
        root = archive.root("MLproject")
        if root is None:
            raise InvalidArgument(
                "the archive has no MLproject file at its root (or under its "
                "single top-level folder)",
                field=UPLOAD_FIELD,
            )
        text = archive.read(root + "MLproject")
        named = extra(text) if extra else []
        problems, files = [], {}
        for rel in named:
            if rel.startswith("/") or ".." in rel.split("/"):
                problems.append(f"MLproject names {shown(rel)}, which leaves the project")
            elif root + rel not in archive.files:
                problems.append(f"MLproject names {shown(rel)}, which is not in the archive")
            else:
                files[rel] = archive.read(root + rel)
        if problems:
            raise InvalidArgument(problems, field=UPLOAD_FIELD)
        return text, files
