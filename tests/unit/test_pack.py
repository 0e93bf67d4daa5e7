"""Deterministic packing of entry-point directories (``brinell.pack``)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from brinell.pack import default_id, default_id_source, is_archive, pack_directory, sha256_hex


def _project(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "MLproject").write_text(
        "name: demo\nentry_points:\n  main:\n    command: python main.py\n"
    )
    (root / "main.py").write_text("print('hi')\n")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o700)
    (root / "pkg" / "mod.py").write_text("X = 1\n")
    (root / "pkg" / "data.txt").write_text("data\n")
    (root / "pkg" / "data.txt").chmod(0o600)
    (root / "empty").mkdir()
    return root


def _add_junk(root: Path) -> None:
    for d in ("__pycache__", ".git", "mlruns", "pkg/__pycache__", ".venv"):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d / "junk").write_text("junk")
    (root / "pkg" / "mod.pyc").write_bytes(b"\0")
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "mlflow.db").write_bytes(b"\0")


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_same_content_gives_same_digest(tmp_path: Path) -> None:
    a = _project(tmp_path / "a")
    b = _project(tmp_path / "b")
    assert sha256_hex(pack_directory(a)) == sha256_hex(pack_directory(b))
    assert pack_directory(a) == pack_directory(a)


def test_mtimes_modes_and_creation_order_do_not_matter(tmp_path: Path) -> None:
    a = _project(tmp_path / "a")
    digest = sha256_hex(pack_directory(a))
    for i, path in enumerate(sorted(a.rglob("*"))):
        os.utime(path, (1_000_000 + i, 2_000_000 + i * 7))
    (a / "main.py").chmod(0o664)  # group write: not part of the content
    (a / "run.sh").chmod(0o775)  # still executable
    assert sha256_hex(pack_directory(a)) == digest

    # Files created in another order (directory listing order differs on some filesystems).
    c = tmp_path / "c"
    (c / "empty").mkdir(parents=True)
    (c / "pkg").mkdir()
    for rel in ("pkg/data.txt", "pkg/mod.py", "run.sh", "main.py", "MLproject"):
        (c / rel).write_bytes((a / rel).read_bytes())
    (c / "run.sh").chmod(0o755)
    assert sha256_hex(pack_directory(c)) == digest


def test_content_change_changes_digest(tmp_path: Path) -> None:
    a = _project(tmp_path / "a")
    digest = sha256_hex(pack_directory(a))
    (a / "main.py").write_text("print('bye')\n")
    assert sha256_hex(pack_directory(a)) != digest
    (a / "main.py").write_text("print('hi')\n")
    (a / "main.py").chmod(0o755)  # becoming executable is a real change
    assert sha256_hex(pack_directory(a)) != digest


def test_excluded_files_absent_and_do_not_change_digest(tmp_path: Path) -> None:
    a = _project(tmp_path / "a")
    digest = sha256_hex(pack_directory(a))
    _add_junk(a)
    data = pack_directory(a)
    assert sha256_hex(data) == digest
    names = set(_members(data))
    assert names == {
        "MLproject",
        "empty",
        "main.py",
        "pkg",
        "pkg/data.txt",
        "pkg/mod.py",
        "run.sh",
    }


def test_members_are_normalized(tmp_path: Path) -> None:
    data = pack_directory(_project(tmp_path / "a"))
    members = _members(data)
    assert list(members) == sorted(members)
    for m in members.values():
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
    assert members["pkg"].isdir() and members["pkg"].mode == 0o755
    assert members["run.sh"].mode == 0o755
    assert members["main.py"].mode == 0o644
    assert members["pkg/data.txt"].mode == 0o644
    # The gzip header carries neither a time nor a file name.
    assert data[4:8] == b"\0\0\0\0"
    assert not data[3] & 0x08  # FNAME flag
    assert gzip.decompress(data)


def test_file_symlinks_are_stored_as_files(tmp_path: Path) -> None:
    a = _project(tmp_path / "a")
    (a / "link.py").symlink_to("main.py")
    members = _members(pack_directory(a))
    assert members["link.py"].isfile()
    (a / "dirlink").symlink_to("pkg")
    with pytest.raises(ValueError, match="directories"):
        pack_directory(a)


def test_default_id() -> None:
    assert default_id("examples/hello-world") == "hello-world"
    assert default_id("/x/My_Attack.tgz") == "my-attack"
    assert default_id("/x/fgsm.tar.gz") == "fgsm"
    assert default_id("/x/3d-model") == "ep-3d-model"
    assert len(default_id("/x/" + "a" * 100)) == 63


def test_default_id_is_the_mlproject_name(tmp_path: Path) -> None:
    folder = tmp_path / "fail"
    folder.mkdir()
    (folder / "MLproject").write_text("name: Failer_2\nentry_points: {}\n")
    assert default_id_source(folder) == ("failer-2", "the MLproject's name")

    tgz = tmp_path / "upload.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(folder, arcname="top")  # under one top-level folder
    assert default_id_source(tgz) == ("failer-2", "the MLproject's name")
    zipped = tmp_path / "upload.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("MLproject", "name: zipped\n")
    assert default_id(zipped) == "zipped"

    # No usable name: the folder's or the archive's.
    (folder / "MLproject").write_text("entry_points: {}\n")
    assert default_id_source(folder) == ("fail", "the folder's name")
    (folder / "MLproject").write_text(": not yaml: [")
    assert default_id(folder) == "fail"
    (tmp_path / "broken.tgz").write_bytes(b"not gzip")
    assert default_id_source(tmp_path / "broken.tgz") == ("broken", "the archive's name")


def test_is_archive() -> None:
    assert is_archive(Path("a.tar.gz")) and is_archive(Path("a.TGZ")) and is_archive(Path("a.zip"))
    assert not is_archive(Path("a.tar")) and not is_archive(Path("main.py"))
