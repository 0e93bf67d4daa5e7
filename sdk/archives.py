"""The archive rules both the control plane and the agent apply (one copy, here).

Entry-point archives and plugin bundles come from users, so they are read as hostile. An
archive is a zip (its first bytes are a zip header and its central directory verifies) or
a tar (optionally gzip/bzip2/xz compressed) -- never both: a file that reads as either
would be shown by one reader and run by another. ``members`` walks an archive and yields
only entries that pass every rule: no absolute paths or ``..`` (backslashes count as
separators), no NUL in names, only directories, regular files, symlinks whose target stays
inside on its face, and hard links to earlier files; at most ``max_files`` entries and
``max_bytes`` of declared content, refused before any of the offending bytes are read. The
control plane walks an upload at push time with exactly these rules; the agent extracts
with them (and checks symlink chains on disk after writing).
"""

from __future__ import annotations

import lzma
import posixpath
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

#: Defaults: what an agent extracts at most (its --max-archive-* settings), and so what the
#: control plane accepts at push time.
MAX_BYTES = 512 * 1024 * 1024
MAX_FILES = 20_000
MAX_LINK_TARGET = 4096


class ArchiveError(ValueError):
    """The archive cannot be read (damaged, or not a tar or zip)."""


class UnsafeArchiveError(ArchiveError):
    """The archive breaks a rule: an entry would leave its folder, or it is a bomb."""


@dataclass
class Limits:
    max_bytes: int = MAX_BYTES
    max_files: int = MAX_FILES
    files: int = 0
    declared: int = 0  # sizes the entries declare, checked before their bytes are read
    total: int = 0  # bytes actually read (the agent counts them as it writes)

    def count_member(self) -> None:
        self.files += 1
        if self.files > self.max_files:
            self.too_many()

    def too_many(self) -> None:
        raise UnsafeArchiveError(
            f"archive has more than {self.max_files} entries (limit max_archive_files)"
        )

    def declare(self, size: int, name: str) -> None:
        """Refuses a member by its declared size before any of its bytes are read."""
        self.declared += size
        if self.declared > self.max_bytes:
            self._too_big(name)

    def add_bytes(self, n: int, name: str) -> None:
        self.total += n
        if self.total > self.max_bytes:
            self._too_big(name)

    def _too_big(self, name: str) -> None:
        raise UnsafeArchiveError(
            f"archive expands to more than {self.max_bytes} bytes "
            f"(reached at {_shown(name)}; limit max_archive_bytes)"
        )


def _shown(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def clean_name(raw: str) -> str | None:
    """A member name as a safe relative POSIX path; None for the archive root itself.

    Raises UnsafeArchiveError for absolute paths and ``..`` components. Backslashes are treated
    as separators too, since Windows zip tools write them and a later consumer might honour them.
    """
    if "\x00" in raw:
        raise UnsafeArchiveError(f"entry name {_shown(raw)} contains a NUL byte")
    name = raw.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(f"entry {_shown(raw)} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"entry {_shown(raw)} contains '..'")
    if not parts:
        return None
    return "/".join(parts)


def check_link_target(name: str, target: str) -> None:
    """Rejects symlink targets that are absolute or point above the archive on their face."""
    if not target:
        raise UnsafeArchiveError(f"symlink {_shown(name)} has an empty target")
    if target.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", target) or "\x00" in target:
        raise UnsafeArchiveError(f"symlink {_shown(name)} points to an absolute path")
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if joined == ".." or joined.startswith("../"):
        raise UnsafeArchiveError(
            f"symlink {_shown(name)} -> {_shown(target)} points outside the workspace "
            "it is extracted into"
        )


def _is_tar(path: Path) -> bool:
    try:
        with tarfile.open(path, mode="r|*") as tf:
            return tf.next() is not None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError):
        return False


def archive_kind(path: Path) -> Literal["zip", "tar"]:
    """Which reader opens ``path``; refuses a file that both read (a tar+zip polyglot) and a
    zip with bytes before its first entry (what a polyglot or a self-extractor looks like)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    zip_at_start = magic in (b"PK\x03\x04", b"PK\x05\x06")
    zip_anywhere = zipfile.is_zipfile(path)
    if zip_anywhere and (not zip_at_start or _is_tar(path)):
        raise UnsafeArchiveError(
            "the archive reads as both a zip and a tar (or has data before its zip content): "
            "upload a plain .tar.gz or .zip"
        )
    return "zip" if zip_at_start else "tar"


Kind = Literal["dir", "file", "symlink", "hardlink"]


@dataclass(frozen=True)
class Member:
    """An entry that passed the rules. ``open`` reads a file's bytes (while the walk is at
    it: tar archives are read as a stream); ``link`` is a link's target (a hard link's as a
    clean name of an earlier file)."""

    name: str
    kind: Kind
    size: int = 0
    mode: int = 0o644
    link: str = ""
    open: Callable[[], IO[bytes]] | None = None


def members(path: Path, limits: Limits) -> Iterator[Member]:
    """The entries of the archive at ``path``, each checked before it is yielded."""
    kind = archive_kind(path)
    try:
        yield from _zip_members(path, limits) if kind == "zip" else _tar_members(path, limits)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise ArchiveError(f"the archive is not a readable tar archive: {exc}") from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as exc:
        raise ArchiveError(f"the archive is not a readable zip archive: {exc}") from exc


def _tar_members(path: Path, limits: Limits) -> Iterator[Member]:
    files: set[str] = set()
    # Random-access mode, read in order: each member is read (or skipped) once, so a
    # compressed archive is decompressed once, and skipping a member's bytes runs at zlib's
    # speed (stream mode skips through 10 KiB Python-level reads: 8x slower, 19 s of CPU for
    # a 0.5 MB archive holding 500 MiB of zeros). Consumers read a member before the next.
    with tarfile.open(path, mode="r:*") as tf:
        while (m := tf.next()) is not None:
            limits.count_member()
            name = clean_name(m.name)
            if name is None:
                continue
            if m.isdir():
                yield Member(name, "dir")
            elif m.isreg():
                # Declared size first, so a bomb is refused before its bytes are read.
                limits.declare(m.size, name)
                files.add(name)
                yield Member(name, "file", m.size, m.mode, open=_tar_reader(tf, m))
            elif m.issym():
                check_link_target(name, m.linkname)
                yield Member(name, "symlink", link=m.linkname)
            elif m.islnk():
                target = _hardlink_target(name, m.linkname, files)
                yield Member(name, "hardlink", link=target)
            elif m.ischr() or m.isblk():
                raise UnsafeArchiveError(f"entry {_shown(m.name)} is a device file")
            elif m.isfifo():
                raise UnsafeArchiveError(f"entry {_shown(m.name)} is a FIFO")
            else:
                raise UnsafeArchiveError(f"entry {_shown(m.name)} has an unsupported type")


def _tar_reader(tf: tarfile.TarFile, m: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
    def read() -> IO[bytes]:
        source = tf.extractfile(m)
        assert source is not None  # regular members always have data
        return source

    return read


def _hardlink_target(name: str, raw: str, files: set[str]) -> str:
    try:
        target = clean_name(raw)
    except UnsafeArchiveError as exc:
        raise UnsafeArchiveError(f"hard link {_shown(name)}: {exc}") from None
    if target is None or target == name or target not in files:
        raise UnsafeArchiveError(
            f"hard link {_shown(name)} -> {_shown(raw)} does not name an earlier file"
        )
    return target


def _zip_reader(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], IO[bytes]]:
    def read() -> IO[bytes]:
        return zf.open(info)

    return read


def _zip_members(path: Path, limits: Limits) -> Iterator[Member]:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        # The central directory lists everything up front: refuse before reading anything.
        if len(infos) > limits.max_files:
            limits.too_many()
        limits.declare(sum(i.file_size for i in infos), "(whole archive)")
        for info in infos:
            limits.count_member()
            name = clean_name(info.filename)
            if name is None:
                continue
            mode = info.external_attr >> 16
            if info.is_dir():
                yield Member(name, "dir")
            elif stat.S_ISLNK(mode):
                if info.file_size > MAX_LINK_TARGET:
                    raise UnsafeArchiveError(f"symlink {_shown(name)} has an oversized target")
                target = zf.read(info).decode("utf-8", errors="surrogateescape")
                check_link_target(name, target)
                yield Member(name, "symlink", link=target)
            # Type bits are optional in zips (Windows tools, zipfile.writestr): none = file.
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                raise UnsafeArchiveError(
                    f"entry {_shown(info.filename)} is not a regular file, directory or symlink"
                )
            else:
                yield Member(name, "file", info.file_size, mode, open=_zip_reader(zf, info))
