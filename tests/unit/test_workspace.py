"""Safe extraction of entry-point archives, against archives built to attack it."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import stat
import tarfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from brinell.agent.workspace import (
    ArchiveError,
    BlobCache,
    BlobError,
    UnsafeArchiveError,
    extract_archive,
    parse_digest,
    prepare_workspace,
    prune_workspaces,
    workspace_dir,
)

MB = 1024 * 1024
MLPROJECT = b"name: demo\nentry_points:\n  main:\n    command: python train.py\n"


Member = tuple[tarfile.TarInfo, bytes | None]


def _tar(path: Path, members: list[Member], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _dest(tmp_path: Path) -> Path:
    dest = tmp_path / "ws"
    dest.mkdir()
    return dest


def _extract(archive: Path, dest: Path, max_bytes: int = 10 * MB, max_files: int = 100) -> Path:
    return extract_archive(archive, dest, max_bytes=max_bytes, max_files=max_files)


def _outside_untouched(tmp_path: Path) -> None:
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "outside.txt").exists()


# --------------------------------------------------------------------------- good archives


def test_tar_gz_with_single_top_level_folder(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "p.tar.gz",
        [
            _special("project", tarfile.DIRTYPE),
            _file("project/MLproject", MLPROJECT),
            _file("project/train.py", b"print('hi')\n"),
            _file("project/run.sh", b"#!/bin/sh\necho hi\n", mode=0o755),
            _special("project/data", tarfile.DIRTYPE),
            _file("project/data/x.csv", b"1,2\n"),
            _special("project/link.py", tarfile.SYMTYPE, "train.py"),
            _special("project/data/up.py", tarfile.SYMTYPE, "../train.py"),
            _special("project/copy.py", tarfile.LNKTYPE, "project/train.py"),
        ],
    )
    dest = _dest(tmp_path)
    root = _extract(archive, dest)
    assert root == dest / "project"
    assert (root / "MLproject").read_bytes() == MLPROJECT
    assert (root / "data" / "x.csv").read_text() == "1,2\n"
    assert os.readlink(root / "link.py") == "train.py"
    assert (root / "data" / "up.py").read_text() == "print('hi')\n"
    # Hard links are materialised as independent copies.
    assert (root / "copy.py").read_text() == "print('hi')\n"
    assert not (root / "copy.py").is_symlink()
    assert os.stat(root / "run.sh").st_mode & stat.S_IXUSR
    assert not os.stat(root / "train.py").st_mode & stat.S_IXUSR


def test_tar_with_mlproject_at_root_and_dot_prefix(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "p.tar",
        [
            _special(".", tarfile.DIRTYPE),
            _file("./MLproject", MLPROJECT),
            _file("./src/main.py", b"pass\n"),
        ],
        mode="w",
    )
    dest = _dest(tmp_path)
    assert _extract(archive, dest) == dest
    assert (dest / "src" / "main.py").read_text() == "pass\n"


def test_zip_with_single_top_level_folder(tmp_path: Path) -> None:
    archive = tmp_path / "p.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("proj/", "")
        zf.writestr("proj/MLproject", MLPROJECT)
        zf.writestr("proj/pkg/mod.py", "x = 1\n")
        zf.writestr("__MACOSX/proj/._MLproject", "junk")
    dest = _dest(tmp_path)
    root = _extract(archive, dest)
    assert root == dest / "proj"
    assert (root / "pkg" / "mod.py").read_text() == "x = 1\n"


def test_two_top_level_folders_keep_the_workspace_as_root(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "p.tgz", [_file("a/x", b"1"), _file("b/y", b"2")])
    dest = _dest(tmp_path)
    assert _extract(archive, dest) == dest


# --------------------------------------------------------------------------- malicious archives


@pytest.mark.parametrize("name", ["/tmp/evil", "/etc/cron.d/evil"])
def test_absolute_path_is_rejected(tmp_path: Path, name: str) -> None:
    archive = _tar(tmp_path / "a.tgz", [_file("MLproject", MLPROJECT), _file(name, b"x")])
    dest = _dest(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="absolute"):
        _extract(archive, dest)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("name", ["../evil", "ok/../../evil", "a/b/../../../evil"])
def test_dot_dot_traversal_is_rejected(tmp_path: Path, name: str) -> None:
    archive = _tar(tmp_path / "a.tgz", [_file(name, b"x")])
    dest = _dest(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=r"'\.\.'"):
        _extract(archive, dest)
    _outside_untouched(tmp_path)


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside.txt", "a/../../outside.txt"])
def test_symlink_escaping_is_rejected(tmp_path: Path, target: str) -> None:
    archive = _tar(tmp_path / "a.tgz", [_special("link", tarfile.SYMTYPE, target)])
    dest = _dest(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        _extract(archive, dest)
    assert list(dest.iterdir()) == []


def test_symlink_chain_escaping_is_rejected(tmp_path: Path) -> None:
    # Each target looks inside on its face; together `p` resolves to the parent of the root.
    archive = _tar(
        tmp_path / "a.tgz",
        [_special("p", tarfile.SYMTYPE, "q/.."), _special("q", tarfile.SYMTYPE, ".")],
    )
    dest = _dest(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="resolves outside"):
        _extract(archive, dest)
    assert list(dest.iterdir()) == []


def test_write_through_symlink_is_impossible(tmp_path: Path) -> None:
    # A link to a directory inside, then a file "through" it: the file lands in a real
    # directory and the link then collides, so nothing is written through a link.
    outside = tmp_path / "evil"
    archive = _tar(
        tmp_path / "a.tgz",
        [_special("d", tarfile.SYMTYPE, "."), _file("d/x", b"x")],
    )
    dest = _dest(tmp_path)
    with pytest.raises(ArchiveError):
        _extract(archive, dest)
    assert not outside.exists()


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside.txt", "missing.txt"])
def test_hardlink_outside_the_archive_is_rejected(tmp_path: Path, target: str) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    archive = _tar(tmp_path / "a.tgz", [_special("link", tarfile.LNKTYPE, target)])
    dest = _dest(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="hard link"):
        _extract(archive, dest)
    assert list(dest.iterdir()) == []
    assert (tmp_path / "outside.txt").read_text() == "secret"


@pytest.mark.parametrize(
    ("kind", "what"),
    [(tarfile.CHRTYPE, "device"), (tarfile.BLKTYPE, "device"), (tarfile.FIFOTYPE, "FIFO")],
)
def test_devices_and_fifos_are_rejected(tmp_path: Path, kind: bytes, what: str) -> None:
    archive = _tar(tmp_path / "a.tgz", [_special("dev", kind)])
    with pytest.raises(UnsafeArchiveError, match=what):
        _extract(archive, _dest(tmp_path))


def test_oversize_by_total_size_is_rejected(tmp_path: Path) -> None:
    # Three 400 KiB files against a 1 MiB limit: each alone fits, the sum does not.
    chunk = b"\0" * (400 * 1024)
    archive = _tar(tmp_path / "a.tgz", [_file(f"f{i}", chunk) for i in range(3)])
    dest = _dest(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="max_archive_bytes"):
        _extract(archive, dest, max_bytes=MB)
    assert list(dest.iterdir()) == []


def test_zip_bomb_is_rejected_before_writing(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros", b"\0" * (5 * MB))
    assert archive.stat().st_size < 100 * 1024
    dest = _dest(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="max_archive_bytes"):
        _extract(archive, dest, max_bytes=MB)
    assert list(dest.iterdir()) == []


def test_too_many_files_is_rejected(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tgz", [_file(f"f{i}", b"x") for i in range(11)])
    with pytest.raises(UnsafeArchiveError, match="max_archive_files"):
        _extract(archive, _dest(tmp_path), max_files=10)


def test_zip_too_many_files_is_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(11):
            zf.writestr(f"f{i}", "x")
    with pytest.raises(UnsafeArchiveError, match="max_archive_files"):
        _extract(archive, _dest(tmp_path), max_files=10)


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "..\\evil", "/abs/evil"])
def test_zip_with_dot_dot_or_absolute_is_rejected(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("MLproject", MLPROJECT)
        zf.writestr(zipfile.ZipInfo(name), "x")
    dest = _dest(tmp_path)
    with pytest.raises(UnsafeArchiveError):
        _extract(archive, dest)
    assert list(dest.iterdir()) == []
    _outside_untouched(tmp_path)


def test_zip_symlink_escaping_is_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    info = zipfile.ZipInfo("link")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "../../etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        _extract(archive, _dest(tmp_path))


def test_garbage_is_a_clear_error(tmp_path: Path) -> None:
    archive = tmp_path / "junk.bin"
    archive.write_bytes(b"this is not an archive" * 100)
    with pytest.raises(ArchiveError, match="not a readable tar"):
        _extract(archive, _dest(tmp_path))


def test_destination_must_be_empty(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tgz", [_file("MLproject", MLPROJECT)])
    dest = _dest(tmp_path)
    (dest / "old").write_text("x")
    with pytest.raises(ArchiveError, match="empty"):
        _extract(archive, dest)


# --------------------------------------------------------------------------- paths and cache


def test_workspace_paths_are_fresh_and_checked(tmp_path: Path) -> None:
    ws = prepare_workspace(tmp_path, "abc123", 2)
    assert ws == tmp_path / "jobs" / "abc123" / "2"
    (ws / "stale").write_text("x")
    assert list(prepare_workspace(tmp_path, "abc123", 2).iterdir()) == []
    for bad in ["..", "../x", "a/b", "", "."]:
        with pytest.raises(Exception, match="directory name"):
            workspace_dir(tmp_path, bad, 1)


def test_parse_digest() -> None:
    assert parse_digest("sha256:" + "a" * 64) == "a" * 64
    for bad in ["sha256:abc", "md5:" + "a" * 32, "sha256:" + "A" * 64, "sha256:../" + "a" * 61]:
        with pytest.raises(BlobError):
            parse_digest(bad)


async def _chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_blob_cache_verifies_and_reuses(tmp_path: Path) -> None:
    data = b"archive bytes" * 50
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    cache = BlobCache(tmp_path / "cache")

    async def scenario() -> None:
        path = await cache.fetch(digest, _chunks(data), expected_size=len(data))
        assert path == tmp_path / "cache" / "sha256" / digest.split(":")[1]
        assert path.read_bytes() == data

        async def never() -> AsyncIterator[bytes]:
            raise AssertionError("a cached blob must not be downloaded again")
            yield b""  # pragma: no cover

        assert await cache.fetch(digest, never()) == path

        other = b"something else"
        wrong = "sha256:" + hashlib.sha256(b"expected").hexdigest()
        with pytest.raises(BlobError, match="wrong content"):
            await cache.fetch(wrong, _chunks(other))
        with pytest.raises(BlobError, match="ended after"):
            await cache.fetch(wrong, _chunks(b"expected"), expected_size=100)
        with pytest.raises(BlobError, match="limit"):
            await cache.fetch(wrong, _chunks(b"expected"), max_bytes=3)
        assert cache.lookup(wrong) is None
        leftovers = [p.name for p in (tmp_path / "cache" / "sha256").iterdir()]
        assert leftovers == [digest.split(":")[1]]

    asyncio.run(scenario())


def test_prune_keeps_the_newest_and_the_busy_and_drops_the_old(tmp_path: Path) -> None:
    now = 1_000_000.0

    def workspace(job: str, attempt: int, age_hours: float) -> Path:
        path = tmp_path / "jobs" / job / str(attempt)
        (path / "sub").mkdir(parents=True)
        (path / "sub" / "f").write_text("x")
        os.chmod(path / "sub", 0o500)  # a job may leave read-only folders behind
        os.utime(path, (now - age_hours * 3600, now - age_hours * 3600))
        return path

    newest = workspace("a" * 16, 1, 0.1)
    second = workspace("b" * 16, 1, 0.2)
    third = workspace("b" * 16, 2, 0.3)
    busy = workspace("c" * 16, 1, 50)  # still running: never removed
    later = workspace("d" * 16, 1, -1)  # made after the caller looked: left alone
    removed = prune_workspaces(tmp_path, keep=2, max_age=0, busy=[busy], now=now)
    assert removed == [third]
    assert newest.exists() and second.exists() and busy.exists() and later.exists()

    # The age limit applies too, and a job's folder goes with its last workspace.
    removed = prune_workspaces(tmp_path, keep=10, max_age=0.15 * 3600, busy=[busy], now=now)
    assert removed == [second]
    assert not (tmp_path / "jobs" / ("b" * 16)).exists()
    # keep=0: every finished workspace goes (newest first), the later one still stays.
    assert prune_workspaces(tmp_path, keep=0, max_age=0, now=now) == [newest, busy]
    assert later.exists() and [p.name for p in (tmp_path / "jobs").iterdir()] == ["d" * 16]
