"""Reading the MLproject out of an uploaded archive without extracting it."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

from .errors import InvalidArgument

MAX_MLPROJECT_BYTES = 1 << 20


def _pick(names: list[str]) -> str | None:
    """`MLproject` at the root, or under the single top-level folder."""
    clean = [n.lstrip("./") for n in names]
    if "MLproject" in clean:
        return names[clean.index("MLproject")]
    tops = {n.split("/", 1)[0] for n in clean if n}
    if len(tops) == 1:
        want = f"{tops.pop()}/MLproject"
        if want in clean:
            return names[clean.index(want)]
    return None


def read_mlproject(path: Path) -> bytes:
    """The MLproject file's bytes; INVALID_ARGUMENT when the archive has none or is unreadable."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = _pick(zf.namelist())
                if member is None:
                    raise InvalidArgument(_missing())
                info = zf.getinfo(member)
                if info.file_size > MAX_MLPROJECT_BYTES:
                    raise InvalidArgument("MLproject is larger than 1 MiB")
                return zf.read(member)
        with tarfile.open(path, "r:*") as tf:
            members = {m.name: m for m in tf.getmembers()}
            member = _pick(list(members))
            if member is None:
                raise InvalidArgument(_missing())
            m = members[member]
            if not m.isfile():
                raise InvalidArgument("MLproject in the archive is not a regular file")
            if m.size > MAX_MLPROJECT_BYTES:
                raise InvalidArgument("MLproject is larger than 1 MiB")
            f = tf.extractfile(m)
            assert f is not None
            return f.read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise InvalidArgument(
            f"the upload is not a readable tar.gz, tar or zip archive ({exc})"
        ) from None


def _missing() -> str:
    return ("the archive has no MLproject file at its root (or under its single top-level "
            "folder)")

