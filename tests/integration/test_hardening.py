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


def _mlproject_archive(tmp_path: Path, name: str, text: str, **files: str) -> Path:
    return _write(tmp_path, f"{name}.tar.gz", tar_gz({"MLproject": text, **files}))


def test_yaml_alias_bombs_and_unbounded_mlprojects_are_refused(
    client: Client, tmp_path: Path
) -> None:
    # Under 400 bytes of anchors that stand for 9**9 nodes: the project name was 7 MB and broke
    # ListEntryPoints for every client.
    levels = "".join(
        f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]\n"
        for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    )
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + levels
    bomb = laughs + "name: *i\nentry_points:\n  main:\n    command: echo\n"
    assert len(bomb) < 400
    archive = _mlproject_archive(tmp_path, "laughs", bomb)
    assert "expands to more than" in _refused(client.entry_points.push, archive, id="laughs")
    # One long string referenced many times: few nodes, many characters.
    long = "s: &s " + "x" * 20_000 + "\nname: [" + ", ".join(["*s"] * 100) + "]\n"
    archive = _mlproject_archive(tmp_path, "long", long + "entry_points: {main: {command: e}}\n")
    assert "expands to more than" in _refused(client.entry_points.push, archive, id="long")
    # The same in a task graph an entry runs.
    graph_bomb = laughs + "steps: {one: {task: x, args: {v: *i}}}\n"
    archive = _mlproject_archive(
        tmp_path,
        "graph",
        "name: g\nentry_points: {main: {graph: g.yaml}}\n",
        **{"g.yaml": graph_bomb},
    )
    assert "expands to more than" in _refused(client.entry_points.push, archive, id="graph")
    # Names, counts and sizes are bounded, each problem named.
    many = "\n".join(f"  e{i}: {{command: echo}}" for i in range(101))
    for text, problem in [
        ("name: [1, 2]\nentry_points: {main: {command: e}}\n", "`name` must be a name"),
        (f"name: {'n' * 101}\nentry_points: {{main: {{command: e}}}}\n", "`name` must be"),
        (f"name: m\nentry_points:\n{many}\n", "more than 100 entry points"),
        (
            "name: m\nentry_points: {main: {command: e, parameters: {p: {default: "
            + "d" * 6001
            + "}}}}\n",
            "default longer than 6000",
        ),
        (
            "name: m\nentry_points: {main: {command: '" + "x" * 100_001 + "'}}\n",
            "command is over",
        ),
        ("name: m\nentry_points: {main: {command: e, plugins: [Bad!]}}\n", "not a plugin id"),
    ]:
        archive = _mlproject_archive(tmp_path, "bounded", text)
        assert problem in _refused(client.entry_points.push, archive, id="bounded"), problem
    assert list(client.entry_points.list()) == []


def test_stored_strings_and_lists_are_bounded(srv: ServerThread, client: Client) -> None:
    import grpc

    from brinell.v1 import job_service_pb2 as job_pb
    from brinell.v1 import job_service_pb2_grpc as job_grpc
    from tests.conftest import admin_channel

    huge = "d" * (5 << 20)
    assert "description is over 10000" in _refused(client.experiments.create, "e", huge)
    labels = {f"k{i}": "v" for i in range(33)}
    assert "at most 32 labels" in _refused(client.experiments.create, "e", labels=labels)
    assert "label" in _refused(client.experiments.create, "e", labels={"k": "v" * 256})
    client.experiments.create("e")
    with pytest.raises(InvalidArgumentError):
        client.experiments.update("e", description=huge)
    # A 10k-character name gave RESOURCE_EXHAUSTED "Stream removed": the error quoted it
    # whole, past what gRPC's trailers hold.
    with admin_channel(srv.target) as channel:
        jobs = job_grpc.JobServiceStub(channel)
        long = "x" * 10_000
        for request in [
            job_pb.GetJobRequest(name="jobs/" + long),
            job_pb.SubmitJobRequest(experiment="experiments/" + long, entry_point="entryPoints/e"),
            job_pb.SubmitJobRequest(
                experiment="experiments/e",
                entry_point="entryPoints/" + long,
                queue=long,
                selector={f"k{i}": long for i in range(40)},
                parameters={f"p{i}" + long: long for i in range(200)},
                plugin_versions={f"p{i}": long for i in range(100)},
                request_id=long,
            ),
        ]:
            method = jobs.GetJob if isinstance(request, job_pb.GetJobRequest) else jobs.SubmitJob
            with pytest.raises(grpc.RpcError) as info:
                method(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(info.value.details()) <= 1000


def test_list_pages_fit_what_a_default_client_receives(srv: ServerThread, client: Client) -> None:
    from brinell.v1 import experiment_service_pb2 as exp_pb
    from brinell.v1 import experiment_service_pb2_grpc as exp_grpc
    from tests.conftest import admin_channel

    # 400 experiments of the longest description: 4 MB, more than a client accepts in one
    # message by default (4 MiB), in a page of 1000.
    for i in range(400):
        client.experiments.create(f"e{i}", "d" * 10_000)
    with admin_channel(srv.target) as channel:
        stub = exp_grpc.ExperimentServiceStub(channel)
        first = stub.ListExperiments(exp_pb.ListExperimentsRequest(page_size=1000))
        assert 0 < len(first.experiments) < 400 and first.next_page_token
        assert first.ByteSize() <= 3 << 20
        rest = stub.ListExperiments(
            exp_pb.ListExperimentsRequest(page_size=1000, page_token=first.next_page_token)
        )
        ids = [e.name for e in [*first.experiments, *rest.experiments]]
        assert len(ids) == len(set(ids)) == 400 and not rest.next_page_token
    assert len(list(client.experiments.list(page_size=1000))) == 400
