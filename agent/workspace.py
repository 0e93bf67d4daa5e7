"""Blob cache and safe archive extraction.

Entry-point archives come from users, so extraction treats them as hostile: nothing may be
written outside the attempt's workspace, and size and file-count limits stop archive bombs.
Checks are made before each member is written, so a rejected archive never touches anything
outside the workspace (the partial workspace is removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import lzma
import os
import posixpath
import re
import shutil
import stat
import tempfile
import time
import zlib
from collections.abc import AsyncIterable, Collection
from pathlib import Path
from typing import IO, Any

from brinell import archives

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_COPY_CHUNK = 1024 * 1024
# Files that archivers add beside the real content; ignored when looking for the project root.
_IGNORED_TOP_LEVEL = {"__MACOSX", ".DS_Store"}


class WorkspaceError(Exception):
    """Preparing a job's files failed."""


class BlobError(WorkspaceError):
    """The archive could not be fetched or did not match its digest."""


class ArchiveError(WorkspaceError):
    """The archive could not be extracted."""


class UnsafeArchiveError(ArchiveError):
    """The archive breaks a rule of brinell.archives (shared with the control plane)."""


def parse_digest(digest: str) -> str:
    """Returns the hex part of ``sha256:<hex>``; rejects anything else (it becomes a path)."""
    match = _DIGEST.match(digest)
    if not match:
        raise BlobError(f"malformed digest {digest!r} (expected sha256:<64 lowercase hex>)")
    return match.group(1)


def workspace_dir(work_dir: Path, job_id: str, attempt: int) -> Path:
    """``work_dir/jobs/<job_id>/<attempt>``; the job id comes off the wire, so it is checked."""
    if not _SAFE_SEGMENT.match(job_id):
        raise WorkspaceError(f"job id {job_id!r} cannot be used as a directory name")
    if attempt < 0:
        raise WorkspaceError(f"bad attempt number {attempt}")
    return work_dir / "jobs" / job_id / str(attempt)


def prepare_workspace(work_dir: Path, job_id: str, attempt: int) -> Path:
    """Creates a fresh, empty workspace for one attempt (a leftover from a crash is removed)."""
    dest = workspace_dir(work_dir, job_id, attempt)
    if dest.exists() or dest.is_symlink():
        remove_tree(dest)
    dest.mkdir(parents=True)
    return dest


def prune_workspaces(
    work_dir: Path,
    keep: int,
    max_age: float,
    busy: Collection[Path] = (),
    now: float | None = None,
) -> list[Path]:
    """Removes finished attempts' workspaces: all but the newest ``keep``, and any last touched
    more than ``max_age`` seconds ago (0: no age limit). ``busy`` ones (running attempts), and
    any touched after ``now`` (made since the caller looked), are never removed. Returns what
    was removed."""
    root = work_dir / "jobs"
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    held = {Path(p) for p in busy}
    found: list[tuple[float, Path]] = []
    for job in root.iterdir():
        if not job.is_dir() or job.is_symlink():
            continue
        for attempt in job.iterdir():
            with contextlib.suppress(OSError):
                mtime = attempt.lstat().st_mtime
                if attempt not in held and mtime <= now:
                    found.append((mtime, attempt))
    found.sort(reverse=True)
    removed = [
        path
        for i, (mtime, path) in enumerate(found)
        if i >= keep or (max_age > 0 and now - mtime > max_age)
    ]
    for path in removed:
        remove_tree(path)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # the job's folder, once its last attempt is gone
    return removed


def remove_tree(path: Path) -> None:
    """Removes a workspace, including files the job made read-only."""

    def onerror(func: Any, failed: str, exc_info: Any) -> None:
        try:
            os.chmod(os.path.dirname(failed) or ".", 0o700)
            os.chmod(failed, 0o700)
            func(failed)
        except OSError:
            pass

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=onerror)


# --------------------------------------------------------------------------- blob cache


class BlobCache:
    """Content-addressed local copies of blobs, under ``root/sha256/<hex>``.

    A blob is written to a temporary file, verified against its digest and renamed into place,
    so a file at its final path is always complete and correct and can be reused without
    re-hashing.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}

    def path_for(self, digest: str) -> Path:
        return self.root / "sha256" / parse_digest(digest)

    def lookup(self, digest: str) -> Path | None:
        path = self.path_for(digest)
        return path if path.is_file() else None

    async def fetch(
        self,
        digest: str,
        chunks: AsyncIterable[bytes],
        *,
        expected_size: int | None = None,
        max_bytes: int | None = None,
    ) -> Path:
        """Stores a blob from a stream of chunks (a DownloadBlob response) unless cached.

        ``chunks`` is only iterated on a cache miss. Raises BlobError on a digest or size
        mismatch; the partial file is removed.
        """
        hex_digest = parse_digest(digest)
        lock = self._locks.setdefault(hex_digest, asyncio.Lock())
        async with lock:
            cached = self.lookup(digest)
            if cached is not None:
                return cached
            final = self.path_for(digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=".part-", dir=final.parent)
            tmp = Path(tmp_name)
            try:
                hasher = hashlib.sha256()
                received = 0
                with os.fdopen(fd, "wb") as out:
                    async for chunk in chunks:
                        received += len(chunk)
                        if max_bytes is not None and received > max_bytes:
                            raise BlobError(
                                f"blob {digest} is larger than the limit of {max_bytes} bytes"
                            )
                        if expected_size is not None and received > expected_size:
                            raise BlobError(
                                f"blob {digest} is larger than its announced {expected_size} bytes"
                            )
                        hasher.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if expected_size is not None and received != expected_size:
                    raise BlobError(
                        f"blob {digest} ended after {received} of {expected_size} bytes"
                    )
                actual = hasher.hexdigest()
                if actual != hex_digest:
                    raise BlobError(f"blob {digest} has the wrong content (its sha256 is {actual})")
                os.chmod(tmp, 0o444)
                os.replace(tmp, final)
                return final
            finally:
                if tmp.exists():
                    tmp.unlink()


# --------------------------------------------------------------------------- extraction


class _Extractor:
    """Writes members below ``root``; symlinks are made last so no write can follow one."""

    def __init__(self, root: Path, limits: archives.Limits) -> None:
        self.root = root
        self.limits = limits
        self.files: set[str] = set()
        self.symlinks: dict[str, str] = {}

    def _path(self, name: str) -> Path:
        return self.root.joinpath(*name.split("/"))

    def _make_parents(self, name: str) -> None:
        parent = posixpath.dirname(name)
        if parent:
            path = self._path(parent)
            try:
                path.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise ArchiveError(
                    f"entry {name!r} is inside {parent!r}, which is not a directory"
                ) from None

    def directory(self, name: str) -> None:
        self.symlinks.pop(name, None)
        path = self._path(name)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ArchiveError(f"directory {name!r} collides with a file of that name") from None

    def file(self, name: str, source: IO[bytes], mode: int) -> None:
        self.symlinks.pop(name, None)
        self._make_parents(name)
        path = self._path(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        perm = 0o755 if mode & 0o111 else 0o644
        try:
            fd = os.open(path, flags, perm)
        except IsADirectoryError:
            raise ArchiveError(f"file {name!r} collides with a directory of that name") from None
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = source.read(_COPY_CHUNK)
                if not chunk:
                    break
                self.limits.add_bytes(len(chunk), name)
                out.write(chunk)
        os.chmod(path, perm)
        self.files.add(name)

    def hardlink(self, name: str, target: str) -> None:
        """Materialises a hard link as a copy of an earlier regular member of the archive
        (``target`` is already a clean name of one, see brinell.archives)."""
        if target not in self.files:
            raise UnsafeArchiveError(
                f"hard link {name!r} -> {target!r} does not point to a file of the archive"
            )
        source_path = self._path(target)
        st = os.lstat(source_path)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeArchiveError(f"hard link {name!r} -> {target!r} is not a regular file")
        with open(source_path, "rb") as source:
            self.file(name, source, st.st_mode)

    def symlink(self, name: str, target: str) -> None:
        self.files.discard(name)
        self.symlinks[name] = target

    def finish_symlinks(self) -> None:
        """Creates the deferred symlinks, then checks every chain resolves inside the root."""
        real_root = os.path.realpath(self.root)
        for name, target in self.symlinks.items():
            # Parents must be real directories: creating a link through another link could
            # place it anywhere.
            current = self.root
            for part in name.split("/")[:-1]:
                current = current / part
                try:
                    st = os.lstat(current)
                except FileNotFoundError:
                    current.mkdir()
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    raise UnsafeArchiveError(
                        f"symlink {name!r} is inside {str(current.relative_to(self.root))!r}, "
                        "which is not a directory"
                    )
            path = self._path(name)
            if os.path.lexists(path):
                raise ArchiveError(f"symlink {name!r} collides with another entry of that name")
            os.symlink(target, path)
        for name in self.symlinks:
            resolved = os.path.realpath(self._path(name))
            if os.path.commonpath([real_root, resolved]) != real_root:
                raise UnsafeArchiveError(
                    f"symlink {name!r} -> {self.symlinks[name]!r} resolves outside the workspace"
                )


def _extract(archive: Path, ex: _Extractor) -> None:
    """Writes what ``brinell.archives.members`` lets through (the control plane checked the
    same rules when the archive was pushed)."""
    try:
        for m in archives.members(archive, ex.limits):
            if m.kind == "dir":
                ex.directory(m.name)
            elif m.kind == "file":
                assert m.open is not None
                with m.open() as source:
                    ex.file(m.name, source, m.mode)
            elif m.kind == "symlink":
                ex.symlink(m.name, m.link)
            else:
                ex.hardlink(m.name, m.link)
    except archives.UnsafeArchiveError as exc:
        raise UnsafeArchiveError(str(exc)) from exc
    except archives.ArchiveError as exc:
        raise ArchiveError(str(exc)) from exc
    except (EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise ArchiveError(f"cannot extract the archive: {exc}") from exc


def extract_archive(archive: Path, dest: Path, max_bytes: int, max_files: int) -> Path:
    """Extracts a tar (optionally gz/bz2/xz) or zip archive into ``dest``; returns the project root.

    ``dest`` must be an empty directory. Rejects absolute paths, ``..`` components, links
    that leave ``dest``, device files and FIFOs, more than ``max_files`` entries and more than
    ``max_bytes`` of content, raising UnsafeArchiveError; on any error ``dest`` is emptied.
    Hard links are materialised as copies of the file they name (which must be in the archive).
    The project root is ``dest``, or its single top-level directory when ``dest`` holds no
    MLproject itself (the usual ``tar czf project.tgz project/`` layout).
    """
    if not dest.is_dir() or any(dest.iterdir()):
        raise ArchiveError(f"workspace {dest} must be an existing empty directory")
    ex = _Extractor(dest, archives.Limits(max_bytes=max_bytes, max_files=max_files))
    try:
        _extract(archive, ex)
        ex.finish_symlinks()
    except BaseException:
        for child in list(dest.iterdir()):
            remove_tree(child)
        raise
    return project_root(dest)


def find_mlproject(root: Path) -> Path | None:
    """The MLproject file in ``root`` (exact name first, then any case, as MLflow does)."""
    exact = root / "MLproject"
    if exact.is_file():
        return exact
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if child.name.lower() == "mlproject" and child.is_file():
            return child
    return None


def project_root(dest: Path) -> Path:
    """``dest``, or its single top-level directory when ``dest`` has no MLproject."""
    if find_mlproject(dest) is not None:
        return dest
    children = [c for c in dest.iterdir() if c.name not in _IGNORED_TOP_LEVEL]
    if len(children) == 1 and children[0].is_dir() and not children[0].is_symlink():
        return children[0]
    return dest


# --------------------------------------------------------------------------- plugin bundles

#: The manifest at the root of a plugin bundle.
PLUGIN_MANIFEST = "brinell-plugin.yaml"


def plugin_bundle_root(dest: Path, package: str = "") -> Path:
    """The folder of an extracted bundle that goes on ``PYTHONPATH``.

    That is the folder holding the package (and the manifest): ``dest`` itself, or its single
    top-level folder when the bundle was packed as ``tar czf b.tgz my-plugin/``. Raises
    WorkspaceError when ``package`` is named but neither place holds it.
    """
    candidates = [dest]
    children = [c for c in dest.iterdir() if c.name not in _IGNORED_TOP_LEVEL]
    if len(children) == 1 and children[0].is_dir() and not children[0].is_symlink():
        candidates.append(children[0])
    if package:
        for root in candidates:
            if (root / package).is_dir() or (root / f"{package}.py").is_file():
                return root
        raise WorkspaceError(f"the plugin bundle has no Python package {package!r}")
    for root in candidates:
        if (root / PLUGIN_MANIFEST).is_file():
            return root
    return candidates[-1]


def extract_plugin_bundle(
    archive: Path, plugins_dir: Path, digest: str, max_bytes: int, max_files: int
) -> tuple[Path, bool]:
    """Extracts a plugin bundle once per digest into ``plugins_dir/<hex>``.

    Returns ``(dest, extracted)``; ``extracted`` is False when an earlier job (or another
    agent sharing the work dir) had already extracted it. Extraction goes to a temporary
    folder beside the final one, which is renamed into place only when complete: a job
    never sees a half-extracted bundle, and a rejected archive leaves nothing behind. The
    same checks as for entry points apply (UnsafeArchiveError). Bundles are immutable, so
    their files are made read-only: one job cannot change the code another job runs.
    """
    hex_digest = parse_digest(digest)
    dest = plugins_dir / hex_digest
    if dest.is_dir():
        return dest, False
    plugins_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{hex_digest[:16]}-", dir=plugins_dir))
    try:
        extract_archive(archive, tmp, max_bytes, max_files)
        _make_read_only(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            # Someone else renamed a complete copy into place first: use theirs.
            if not dest.is_dir():
                raise
            return dest, False
        return dest, True
    finally:
        if tmp.exists():
            remove_tree(tmp)


def _make_read_only(root: Path) -> None:
    """Drops write permission from every file (directories stay writable, so Python can
    still cache bytecode in ``__pycache__``)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o222)


class PluginBundles:
    """Extracted plugin bundles under ``root/<hex>``, shared by every job of the agent.

    A bundle is extracted once per digest and never changed afterwards; concurrent jobs that
    need the same digest wait for the one extraction.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}

    def path_for(self, digest: str) -> Path:
        return self.root / parse_digest(digest)

    def lookup(self, digest: str) -> Path | None:
        path = self.path_for(digest)
        return path if path.is_dir() else None

    async def extract(
        self, archive: Path, digest: str, max_bytes: int, max_files: int
    ) -> tuple[Path, bool]:
        """``extract_plugin_bundle`` on a worker thread, one at a time per digest."""
        lock = self._locks.setdefault(parse_digest(digest), asyncio.Lock())
        async with lock:
            return await asyncio.to_thread(
                extract_plugin_bundle, archive, self.root, digest, max_bytes, max_files
            )
