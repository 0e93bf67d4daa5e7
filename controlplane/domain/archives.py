"""Reading files out of an uploaded archive (tar, tar.gz or zip) without extracting it."""

from __future__ import annotations

import functools
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InvalidArgument

#: The request field of an upload's bytes: what a problem with the archive's content is about.
UPLOAD_FIELD = "chunk"

MAX_FILE_BYTES = 1 << 20


class Archive:
    """The regular files of an open archive, by name (leading ``./`` removed)."""

    def __init__(self, files: dict[str, tuple[int, Callable[[], bytes]]]) -> None:
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
            raise InvalidArgument(f"the archive has no file {name}", field=UPLOAD_FIELD)
        size, read = self.files[name]
        if size > limit:
            raise InvalidArgument(f"{name} is larger than {limit} bytes", field=UPLOAD_FIELD)
        return read()


@contextmanager
def open_archive(path: Path) -> Iterator[Archive]:
    """Opens a tar/tar.gz/zip; INVALID_ARGUMENT when it is none of them or is damaged."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                yield Archive(
                    {
                        i.filename.lstrip("./"): (i.file_size, functools.partial(zf.read, i))
                        for i in zf.infolist()
                        if not i.is_dir()
                    }
                )
            return
        with tarfile.open(path, "r:*") as tf:

            def reader(member: tarfile.TarInfo) -> bytes:
                f = tf.extractfile(member)
                assert f is not None
                return f.read()

            yield Archive(
                {
                    m.name.lstrip("./"): (m.size, functools.partial(reader, m))
                    for m in tf.getmembers()
                    if m.isfile()
                }
            )
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise InvalidArgument(
            f"the upload is not a readable tar.gz, tar or zip archive ({exc})", field=UPLOAD_FIELD
        ) from None


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
                problems.append(f"MLproject names {rel!r}, which leaves the project")
            elif root + rel not in archive.files:
                problems.append(f"MLproject names {rel!r}, which is not in the archive")
            else:
                files[rel] = archive.read(root + rel)
        if problems:
            raise InvalidArgument(problems, field=UPLOAD_FIELD)
        return text, files
