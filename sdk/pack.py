"""Deterministic packing of an entry-point directory into a tar.gz.

Revisions are content-addressed by the archive's sha256, so packing the same files twice must
give the same bytes: otherwise every push would create a new revision and jobs could not be
reproduced by digest. Everything that varies between checkouts but not in content is
normalized: entry order, mtimes, owners, permission bits beyond "executable or not", and the
gzip header's timestamp and file name. (The compressed bytes depend on the zlib version too;
the same Python build always gives the same digest.)
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import re
import stat
import tarfile
import zipfile
from pathlib import Path

import yaml

__all__ = [
    "EXCLUDED",
    "default_id",
    "default_id_source",
    "is_archive",
    "pack_directory",
    "sha256_hex",
]

#: Names (fnmatch patterns, matched against each path component) never packed: caches,
#: version control, local MLflow stores (from running a script by hand), virtual environments.
EXCLUDED: tuple[str, ...] = (
    "__pycache__",
    ".git",
    "*.pyc",
    "*.pyo",
    ".DS_Store",
    "mlruns",
    "mlartifacts",
    "mlflow.db",
    ".venv",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".ipynb_checkpoints",
)

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")


def is_archive(path: Path) -> bool:
    """Whether ``path`` names an archive that is uploaded as is."""
    return path.name.lower().endswith(_ARCHIVE_SUFFIXES)


def _excluded(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in EXCLUDED)


def _walk(root: Path, rel: str = "") -> list[tuple[str, Path, bool]]:
    """Lists ``(archive name, path, is_dir)`` in sorted order, following file symlinks.

    Links to directories are refused: following them risks cycles, and keeping them as links
    would make the agent (which refuses links out of the workspace) reject the archive.
    """
    out: list[tuple[str, Path, bool]] = []
    base = root / rel if rel else root
    for name in sorted(os.listdir(base)):
        if _excluded(name):
            continue
        path = base / name
        arcname = f"{rel}/{name}" if rel else name
        if path.is_symlink():
            if not path.exists():
                raise ValueError(f"{path}: broken symbolic link")
            if path.is_dir():
                raise ValueError(f"{path}: symbolic links to directories cannot be packed")
        if path.is_dir():
            out.append((arcname, path, True))
            out.extend(_walk(root, arcname))
        elif path.is_file():
            out.append((arcname, path, False))
        # sockets, fifos and devices are not project content: skipped
    return out


def pack_directory(directory: str | os.PathLike[str]) -> bytes:
    """Packs a directory's content (at the archive root) into deterministic tar.gz bytes."""
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    buf = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of the path and the time.
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for arcname, path, is_dir in _walk(root):
            info = tarfile.TarInfo(arcname)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if is_dir:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            st = path.stat()
            info.mode = (
                0o755 if st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH) else 0o644
            )
            info.size = st.st_size
            with path.open("rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def default_id(path: str | os.PathLike[str]) -> str:
    """The entry-point id a push uses when none is given; see :func:`default_id_source`."""
    return default_id_source(path)[0]


def default_id_source(path: str | os.PathLike[str]) -> tuple[str, str]:
    """The default entry-point id and where it comes from: the MLproject's ``name:``
    (``name: failer`` -> ``failer``), else the directory or archive name
    (``My_Attack.tgz`` -> ``my-attack``).

    Ids are 1-63 characters of ``[a-z0-9-]`` starting with a letter (see the API).
    """
    p = Path(path)
    project = _mlproject_name(p)
    if project:
        return _slug(project), "the MLproject's name"
    name = p.resolve().name if p.name in ("", ".", "..") else p.name
    lower = name.lower()
    for suffix in _ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return _slug(lower[: -len(suffix)]), "the archive's name"
    return _slug(lower), "the folder's name"


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = f"ep-{slug}" if slug else "entry-point"
    return slug[:63].rstrip("-")


_MLPROJECT_MAX_BYTES = 1 << 20


def _mlproject_name(path: Path) -> str:
    """``name:`` of the MLproject in a directory, or at the root of an archive (or under its
    one top-level folder); "" when there is none or it cannot be read (the push reports that)."""
    try:
        if path.is_dir():
            raw = (path / "MLproject").read_bytes()[:_MLPROJECT_MAX_BYTES]
        elif is_archive(path):
            raw = _archive_mlproject(path)
        else:
            return ""
        doc = yaml.safe_load(raw)
    except (OSError, tarfile.TarError, zipfile.BadZipFile, yaml.YAMLError):
        return ""
    name = doc.get("name") if isinstance(doc, dict) else None
    return name if isinstance(name, str) else ""


def _archive_mlproject(path: Path) -> bytes:
    def wanted(member: str) -> bool:
        parts = member.strip("/").split("/")
        return parts[-1] == "MLproject" and len(parts) <= 2

    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if wanted(info.filename) and not info.is_dir():
                    with zf.open(info) as f:
                        return f.read(_MLPROJECT_MAX_BYTES)
        return b""
    with tarfile.open(path, "r:gz") as tf:
        for member in tf:
            if wanted(member.name) and member.isfile():
                extracted = tf.extractfile(member)
                return extracted.read(_MLPROJECT_MAX_BYTES) if extracted is not None else b""
    return b""
