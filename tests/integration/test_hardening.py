"""Inputs found by the bad-input sweep: each is refused with INVALID_ARGUMENT, bounded."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from brinell import Client, InvalidArgumentError
from brinell.archives import MAX_BYTES, MAX_FILES
from tests.conftest import ADMIN_TOKEN, SLEEPY_MLPROJECT, ServerThread, make_server, tar_gz

MANIFEST = "name: evil\nversion: 1.0\npackage: evil_pkg\n"


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[ServerThread]:
    server = make_server(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def client(srv: ServerThread) -> Iterator[Client]:
    with Client(srv.target, token=ADMIN_TOKEN) as c:
        yield c


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _tar(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _refused(fn: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(InvalidArgumentError) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    assert len(info.value.message) < 600  # never a whole input echoed back
    return info.value.message


@pytest.mark.parametrize(
    "name, problem",
    [("../MLproject", "'..'"), ("/MLproject", "absolute"), ("a/../../MLproject", "'..'")],
)
def test_entry_points_that_leave_their_folder_are_refused(
    client: Client, tmp_path: Path, name: str, problem: str
) -> None:
    # The server used to strip "./" characters and see "MLproject" where the agent saw "..".
    archive = _write(tmp_path, "p.tar.gz", _tar([(name, SLEEPY_MLPROJECT.encode())]))
    assert problem in _refused(client.entry_points.push, archive, id="leaves")
    assert list(client.entry_points.list()) == []
    ok = _write(tmp_path, "ok.tar.gz", _tar([("./MLproject", SLEEPY_MLPROJECT.encode())]))
    client.entry_points.push(ok, id="stays")


def test_a_tar_zip_polyglot_is_refused(client: Client, tmp_path: Path) -> None:
    # An uncompressed tar (what the agent runs) followed by a zip (what the API would show).
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as tf:
        info = tarfile.TarInfo("MLproject")
        text = b"name: tar-side\nentry_points:\n  main:\n    command: id\n"
        info.size = len(text)
        tf.addfile(info, io.BytesIO(text))
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("MLproject", SLEEPY_MLPROJECT)
    polyglot = _write(tmp_path, "both.zip", tar.getvalue() + zipped.getvalue())
    assert tarfile.is_tarfile(polyglot) and zipfile.is_zipfile(polyglot)
    assert "both a zip and a tar" in _refused(client.entry_points.push, polyglot, id="both")
    assert list(client.entry_points.list()) == []


def test_plugin_bundles_get_the_agents_checks_at_upload(client: Client, tmp_path: Path) -> None:
    bad = _tar(
        [
            ("brinell-plugin.yaml", MANIFEST.encode()),
            ("evil_pkg/__init__.py", b""),
            ("../escape.py", b"print('owned')"),
        ]
    )
    assert "'..'" in _refused(client.plugins.push, _write(tmp_path, "bad.tgz", bad))
    assert list(client.plugins.list()) == []  # nothing stored, so no job ever pins it
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("brinell-plugin.yaml", MANIFEST)
        zf.writestr("evil_pkg/__init__.py", "")
        zf.writestr("..\\escape.py", "")  # a Windows separator counts too
    assert "'..'" in _refused(client.plugins.push, _write(tmp_path, "bad.zip", buf.getvalue()))


def test_decompression_bombs_are_refused_by_what_they_declare(
    srv: ServerThread, client: Client, tmp_path: Path
) -> None:
    # A member that declares more than an agent would ever extract: refused from its header,
    # before its bytes are decompressed (the upload holds only a little of them).
    header = tarfile.TarInfo("MLproject")
    header.size = MAX_BYTES + 1
    raw = header.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * (1 << 20)
    bomb = _write(tmp_path, "bomb.tar.gz", gzip.compress(raw))
    assert "expands to more than" in _refused(client.entry_points.push, bomb, id="bomb")
    # The same bytes again are refused from memory of their digest, without another walk.
    refused = srv.cp.entry_points.inspector._refused
    assert len(refused) == 1
    assert "expands to more than" in _refused(client.entry_points.push, bomb, id="bomb2")
    assert len(refused) == 1


def test_archives_with_too_many_entries_are_refused(client: Client, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.addfile(_info("MLproject", len(SLEEPY_MLPROJECT)), io.BytesIO(SLEEPY_MLPROJECT.encode()))
        for i in range(MAX_FILES + 1):
            tf.addfile(_info(f"f/{i}", 0), io.BytesIO(b""))
    many = _write(tmp_path, "many.tar.gz", buf.getvalue())
    assert f"more than {MAX_FILES} entries" in _refused(client.entry_points.push, many, id="m")


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


@pytest.mark.parametrize(
    "source",
    [
        "x = " + "-" * 200_000 + "1\n",
        "x = a" + ".b" * 50_000 + "\n",
        "x = " + "(" * 100_000 + ")" * 100_000 + "\n",
    ],
    ids=["unary-minus", "attribute-chain", "parentheses"],
)
def test_pathological_plugin_source_is_invalid_argument(
    client: Client, tmp_path: Path, source: str
) -> None:
    bundle = tar_gz(
        {
            "brinell-plugin.yaml": MANIFEST,
            "evil_pkg/__init__.py": "",
            "evil_pkg/deep.py": source,
        }
    )
    message = _refused(client.plugins.push, _write(tmp_path, "deep.tgz", bundle))
    assert "evil_pkg/deep.py" in message


def test_quoted_placeholders_are_refused_at_upload(client: Client, tmp_path: Path) -> None:
    text = (
        "name: quoted\nentry_points:\n  main:\n    parameters: {name: string}\n"
        "    command: \"echo '{name}'\"\n"
    )
    archive = _write(tmp_path, "q.tar.gz", tar_gz({"MLproject": text}))
    assert "inside single quotes" in _refused(client.entry_points.push, archive, id="quoted")
