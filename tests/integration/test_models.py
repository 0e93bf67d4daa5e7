"""ModelService and ArtifactService against a real control plane with its embedded MLflow
store (SQLite + local artifacts): through the generated stubs, the SDK and the CLI.

The test plays the job's part: it logs to the job's MLflow run what a script would (a
scikit-learn model with `mlflow.sklearn.log_model`, text files in folders, a file bigger than
one stream chunk), as MLflow 3 stores it (the model as a "logged model" of the run).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from brinell import (
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from brinell.v1 import (
    artifact_service_pb2 as art_pb,
)
from brinell.v1 import (
    artifact_service_pb2_grpc as art_grpc,
)
from brinell.v1 import (
    entry_point_service_pb2 as ep_pb,
)
from brinell.v1 import (
    entry_point_service_pb2_grpc as ep_grpc,
)
from brinell.v1 import (
    experiment_service_pb2 as exp_pb,
)
from brinell.v1 import (
    experiment_service_pb2_grpc as exp_grpc,
)
from brinell.v1 import (
    job_service_pb2 as job_pb,
)
from brinell.v1 import (
    job_service_pb2_grpc as job_grpc,
)
from brinell.v1 import (
    model_service_pb2 as model_pb,
)
from brinell.v1 import (
    model_service_pb2_grpc as model_grpc,
)
from tests.conftest import (
    SLEEPY_MLPROJECT,
    admin_channel,
    make_server,
    run_cli,
    start_server,
    tar_gz,
)

OK = grpc.StatusCode
CHUNK = 1 << 20
BIG = bytes(range(256)) * (10 * 1024 + 7)  # ≈2.5 MiB: three chunks
UNKNOWN_JOB = "jobs/0123456789abcdef"


@dataclass
class Stubs:
    exp: exp_grpc.ExperimentServiceStub
    ep: ep_grpc.EntryPointServiceStub
    job: job_grpc.JobServiceStub
    model: model_grpc.ModelServiceStub
    art: art_grpc.ArtifactServiceStub


def make_stubs(channel: grpc.Channel) -> Stubs:
    return Stubs(
        exp_grpc.ExperimentServiceStub(channel),
        ep_grpc.EntryPointServiceStub(channel),
        job_grpc.JobServiceStub(channel),
        model_grpc.ModelServiceStub(channel),
        art_grpc.ArtifactServiceStub(channel),
    )


def code_of(fn: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = fn(request)
        if hasattr(result, "__iter__") and not hasattr(result, "ByteSize"):
            list(result)
    return info.value.code(), info.value.details()


def upload(stubs: Stubs, ep_id: str, data: bytes) -> None:
    def messages() -> Iterator[ep_pb.UploadEntryPointRequest]:
        yield ep_pb.UploadEntryPointRequest(
            metadata=ep_pb.UploadEntryPointMetadata(entry_point_id=ep_id)
        )
        yield ep_pb.UploadEntryPointRequest(chunk=data)

    stubs.ep.UploadEntryPoint(messages())


def setup_world(stubs: Stubs) -> None:
    stubs.exp.CreateExperiment(exp_pb.CreateExperimentRequest(experiment_id="exp"))
    upload(stubs, "sleepy", tar_gz({"MLproject": SLEEPY_MLPROJECT}))


def submit(stubs: Stubs) -> Any:
    return stubs.job.SubmitJob(
        job_pb.SubmitJobRequest(
            experiment="experiments/exp",
            entry_point="entryPoints/sleepy",
            parameters={"label": "x"},
        )
    ).job


def log_like_a_job(tracking_uri: str, run_id: str) -> None:
    """What a job's script logs to its run."""
    import mlflow
    import mlflow.sklearn
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
        mlflow.log_text("hello\n", "notes/readme.txt")
        mlflow.log_text("deep\n", "notes/deep/b.txt")
        mlflow.log_text("", "notes/empty.txt")
    client = mlflow.tracking.MlflowClient(tracking_uri)
    local = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    (local / "data").mkdir(parents=True)
    (local / "data" / "big.bin").write_bytes(BIG)


def reference_files(tracking_uri: str, run_id: str, path: str, dest: Path) -> dict[str, bytes]:
    """The files as MLflow itself downloads them, relative to ``path``."""
    import mlflow.artifacts

    root = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=str(dest), tracking_uri=tracking_uri
        )
    )
    return tree(root)


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def collect(responses: Any) -> tuple[dict[str, bytes], list[Any]]:
    """Files from a download stream, plus every message (to check the chunking)."""
    files: dict[str, bytes] = {}
    messages = list(responses)
    current = None
    for msg in messages:
        if msg.HasField("file"):
            current = msg.file.path
            assert current not in files
            files[current] = b""
        assert current is not None, "a chunk before its file"
        assert len(msg.chunk) <= CHUNK
        files[current] += msg.chunk
    return files, messages


@dataclass
class World:
    target: str
    data_dir: Path  # the server's --data-dir
    cwd: Path  # the server's working directory, which must stay empty
    stubs: Stubs
    job: str
    run_id: str
    tracking_uri: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # The server runs as its own process: MLflow state this test process sets (its global
    # tracking URI, set by log_like_a_job) must not make the server's MLflow calls work.
    data = tmp_path_factory.mktemp("models") / "server"
    server, target = start_server(data)
    channel = admin_channel(target)
    try:
        stubs = make_stubs(channel)
        setup_world(stubs)
        job = submit(stubs)
        assert job.mlflow_run_id
        uri = f"sqlite:///{data / 'mlflow.db'}"  # the embedded store under --data-dir
        log_like_a_job(uri, job.mlflow_run_id)
        yield World(
            target, data, data.parent / "server-cwd", stubs, job.name, job.mlflow_run_id, uri
        )
    finally:
        channel.close()
        assert server.stop() == 0, f"see {server.log}"


def test_a_jobs_parameters_are_its_runs_mlflow_params(world: World) -> None:
    from mlflow.tracking import MlflowClient

    run = MlflowClient(world.tracking_uri).get_run(world.run_id)
    job = world.stubs.job.GetJob(job_pb.GetJobRequest(name=world.job)).job
    # Resolved at submit: what was given and the defaults, exactly as the command gets them.
    assert run.data.params == dict(job.parameters)
    assert run.data.params["label"] == "x" and run.data.params["data"] == "data.csv"
    assert run.data.tags["brinell.entry_point_digest"] == job.entry_point_digest
    assert not any(k.startswith("brinell.param.") for k in run.data.tags)

    # A value MLflow would refuse as a param is refused at submit, naming the parameter.
    code, msg = code_of(
        world.stubs.job.SubmitJob,
        job_pb.SubmitJobRequest(
            experiment="experiments/exp",
            entry_point="entryPoints/sleepy",
            parameters={"label": "x" * 6001},
        ),
    )
    assert code == OK.INVALID_ARGUMENT and "'label'" in msg and "6000 characters" in msg


# -- registry ------------------------------------------------------------------------------


def test_register_version_alias_resolve(world: World) -> None:
    s = world.stubs
    v1 = s.model.RegisterModel(
        model_pb.RegisterModelRequest(
            model_id="digits", job=world.job, artifact_path="model", description="first"
        )
    ).version
    assert v1.name == "models/digits/versions/1" and v1.version == "1"
    assert v1.job == world.job and v1.mlflow_run_id == world.run_id
    # MLflow 3 keeps log_model's output as a "logged model", apart from the run's files:
    # the version points there, so `models:/` URIs load it.
    assert v1.artifact_path == "model" and "/models/m-" in v1.source
    assert v1.description == "first" and v1.create_time.seconds > 0
    import mlflow

    mlflow.set_tracking_uri(world.tracking_uri)
    loaded = mlflow.sklearn.load_model("models:/digits/1")
    assert hasattr(loaded, "predict")
    # The default path is `model`; a job id works as well as its name.
    v2 = s.model.RegisterModel(
        model_pb.RegisterModelRequest(model_id="digits", job=world.job.removeprefix("jobs/"))
    ).version
    assert v2.name == "models/digits/versions/2" and v2.artifact_path == "model"

    m = s.model.GetModel(model_pb.GetModelRequest(name="models/digits")).model
    assert m.name == "models/digits" and m.latest_version == "2"
    assert m.description == "first" and dict(m.aliases) == {}
    assert s.model.GetModel(model_pb.GetModelRequest(name="digits")).model.name == m.name

    m = s.model.SetModelAlias(
        model_pb.SetModelAliasRequest(name="models/digits", alias="champion", version="1")
    ).model
    assert dict(m.aliases) == {"champion": "1"}
    got = s.model.GetModelVersion(
        model_pb.GetModelVersionRequest(name="models/digits@champion")
    ).version
    assert got.name == v1.name and list(got.aliases) == ["champion"]
    got = s.model.GetModelVersion(
        model_pb.GetModelVersionRequest(name="models/digits/versions/2")
    ).version
    assert got.name == v2.name and list(got.aliases) == []

    def resolve(uri: str) -> str:
        return str(s.model.ResolveModel(model_pb.ResolveModelRequest(uri=uri)).version.name)

    assert resolve("models:/digits@champion") == v1.name
    assert resolve("models:/digits/latest") == v2.name
    assert resolve("models:/digits/1") == v1.name

    # Moving an alias; two aliases on one version.
    s.model.SetModelAlias(
        model_pb.SetModelAliasRequest(name="models/digits", alias="champion", version="2")
    )
    m = s.model.SetModelAlias(
        model_pb.SetModelAliasRequest(name="models/digits", alias="staging", version="2")
    ).model
    assert dict(m.aliases) == {"champion": "2", "staging": "2"}
    assert resolve("models:/digits@champion") == v2.name
    listed = s.model.ListModelVersions(
        model_pb.ListModelVersionsRequest(parent="models/digits")
    ).versions
    assert [(v.version, list(v.aliases)) for v in listed] == [
        ("2", ["champion", "staging"]),
        ("1", []),
    ]

    m = s.model.DeleteModelAlias(
        model_pb.DeleteModelAliasRequest(name="models/digits", alias="staging")
    ).model
    assert dict(m.aliases) == {"champion": "2"}
    code, msg = code_of(
        s.model.ResolveModel, model_pb.ResolveModelRequest(uri="models:/digits@staging")
    )
    assert code == OK.NOT_FOUND and "staging" in msg

    # Any file or folder the job logged can be a version, not only MLflow models.
    v3 = s.model.RegisterModel(
        model_pb.RegisterModelRequest(
            model_id="digits", job=world.job, artifact_path="notes/readme.txt"
        )
    ).version
    assert v3.version == "3" and v3.artifact_path == "notes/readme.txt"


def test_list_models_and_versions_paging(world: World) -> None:
    s = world.stubs
    for model_id in ("page-c", "page-a", "page-b"):
        for _ in range(3 if model_id == "page-a" else 1):
            s.model.RegisterModel(
                model_pb.RegisterModelRequest(
                    model_id=model_id, job=world.job, artifact_path="notes"
                )
            )
    everything = [m.name for m in s.model.ListModels(model_pb.ListModelsRequest()).models]
    assert everything == sorted(everything)
    assert {"models/page-a", "models/page-b", "models/page-c"} <= set(everything)

    seen: list[str] = []
    token = ""
    while True:
        page = s.model.ListModels(model_pb.ListModelsRequest(page_size=2, page_token=token))
        assert len(page.models) <= 2
        seen += [m.name for m in page.models]
        token = page.next_page_token
        if not token:
            break
    assert seen == everything

    first = s.model.ListModelVersions(
        model_pb.ListModelVersionsRequest(parent="models/page-a", page_size=2)
    )
    assert [v.version for v in first.versions] == ["3", "2"] and first.next_page_token
    second = s.model.ListModelVersions(
        model_pb.ListModelVersionsRequest(
            parent="models/page-a", page_size=2, page_token=first.next_page_token
        )
    )
    assert [v.version for v in second.versions] == ["1"] and not second.next_page_token

    # Tokens are bound to their query, signed, and page sizes must not be negative.
    code, msg = code_of(
        s.model.ListModelVersions,
        model_pb.ListModelVersionsRequest(parent="models/page-b", page_token=first.next_page_token),
    )
    assert code == OK.INVALID_ARGUMENT and "different query" in msg
    code, _ = code_of(
        s.model.ListModels, model_pb.ListModelsRequest(page_token=first.next_page_token)
    )
    assert code == OK.INVALID_ARGUMENT
    code, _ = code_of(s.model.ListModels, model_pb.ListModelsRequest(page_token="garbage"))
    assert code == OK.INVALID_ARGUMENT
    code, _ = code_of(s.model.ListModels, model_pb.ListModelsRequest(page_size=-1))
    assert code == OK.INVALID_ARGUMENT
    code, _ = code_of(
        s.model.ListModelVersions,
        model_pb.ListModelVersionsRequest(parent="models/page-a", page_size=-1),
    )
    assert code == OK.INVALID_ARGUMENT


def test_download_model_version_matches_the_logged_files(world: World, tmp_path: Path) -> None:
    s = world.stubs
    v = s.model.RegisterModel(
        model_pb.RegisterModelRequest(model_id="dl", job=world.job, artifact_path="model")
    ).version
    expected = reference_files(world.tracking_uri, world.run_id, "model", tmp_path / "ref")
    assert "MLmodel" in expected and len(expected) >= 3
    files, messages = collect(
        s.model.DownloadModelVersion(model_pb.DownloadModelVersionRequest(name=v.name))
    )
    assert files == expected
    by_alias = s.model.SetModelAlias(
        model_pb.SetModelAliasRequest(name="models/dl", alias="prod", version="1")
    )
    assert by_alias.model.aliases["prod"] == "1"
    files, _ = collect(
        s.model.DownloadModelVersion(model_pb.DownloadModelVersionRequest(name="models/dl@prod"))
    )
    assert files == expected
    sizes = {m.file.path: m.file.size_bytes for m in messages if m.HasField("file")}
    assert sizes == {k: len(b) for k, b in expected.items()}

    # A big version: several chunks, the file named on the first one only.
    s.model.RegisterModel(
        model_pb.RegisterModelRequest(model_id="big", job=world.job, artifact_path="data")
    )
    files, messages = collect(
        s.model.DownloadModelVersion(
            model_pb.DownloadModelVersionRequest(name="models/big/versions/1")
        )
    )
    assert files == {"big.bin": BIG}
    assert len(messages) == 3 and [m.HasField("file") for m in messages] == [True, False, False]
    # MLflow's fallbacks (./mlflow.db, ./mlruns) wrote here when the server relied on them.
    assert list(world.cwd.iterdir()) == []


# -- job artifacts -------------------------------------------------------------------------


def test_list_job_artifacts(world: World) -> None:
    s = world.stubs

    def listing(path: str = "", recursive: bool = False) -> list[tuple[str, bool, int]]:
        found = s.art.ListJobArtifacts(
            art_pb.ListJobArtifactsRequest(job=world.job, path=path, recursive=recursive)
        ).artifacts
        return [(a.path, a.is_dir, a.size_bytes) for a in found]

    # MLflow 3 keeps a logged model apart from the run's files; it is listed under its name.
    assert listing() == [("data", True, 0), ("model", True, 0), ("notes", True, 0)]
    assert listing("notes") == [
        ("notes/deep", True, 0),
        ("notes/empty.txt", False, 0),
        ("notes/readme.txt", False, 6),
    ]
    assert listing("notes/", recursive=True) == [
        ("notes/deep/b.txt", False, 5),
        ("notes/empty.txt", False, 0),
        ("notes/readme.txt", False, 6),
    ]
    everything = listing(recursive=True)
    paths = [p for p, _, _ in everything]
    assert all(not d for _, d, _ in everything)
    assert {"data/big.bin", "model/MLmodel", "notes/deep/b.txt", "notes/readme.txt"} <= set(paths)
    assert ("data/big.bin", False, len(BIG)) in everything
    assert listing("model") == [(p, False, n) for p, _, n in everything if p.startswith("model/")]
    assert listing("notes/readme.txt") == [("notes/readme.txt", False, 6)]
    assert listing("missing") == []
    assert listing("./notes/deep") == [("notes/deep/b.txt", False, 5)]
    assert list(world.cwd.iterdir()) == []


def test_download_job_artifacts(world: World, tmp_path: Path) -> None:
    s = world.stubs

    def download(path: str) -> tuple[dict[str, bytes], list[Any]]:
        return collect(
            s.art.DownloadJobArtifact(art_pb.DownloadJobArtifactRequest(job=world.job, path=path))
        )

    files, messages = download("notes/readme.txt")
    assert files == {"notes/readme.txt": b"hello\n"} and len(messages) == 1
    assert messages[0].file.size_bytes == 6 and not messages[0].file.is_dir
    files, _ = download("notes")
    assert files == {
        "notes/deep/b.txt": b"deep\n",
        "notes/empty.txt": b"",
        "notes/readme.txt": b"hello\n",
    }
    files, messages = download("data/big.bin")
    assert files == {"data/big.bin": BIG} and len(messages) == 3
    expected = reference_files(world.tracking_uri, world.run_id, "model", tmp_path / "ref")
    files, _ = download("model")
    assert files == {f"model/{k}": v for k, v in expected.items()}
    files, _ = download("")  # the whole run, logged model included
    assert set(files) == {
        *(f"model/{k}" for k in expected),
        "data/big.bin",
        "notes/deep/b.txt",
        "notes/empty.txt",
        "notes/readme.txt",
    }


def test_links_out_of_the_artifact_root_are_refused(world: World) -> None:
    """A job writes straight into the local store; a link there must not leak server files."""
    import mlflow

    s = world.stubs
    job = submit(s)
    client = mlflow.tracking.MlflowClient(world.tracking_uri)
    local = Path(client.get_run(job.mlflow_run_id).info.artifact_uri.removeprefix("file://"))
    local.mkdir(parents=True)
    (local / "fine.txt").write_text("ok")
    os.symlink(world.data_dir / "brinell.db", local / "leak")
    (local / "dir").mkdir()
    os.symlink(world.data_dir, local / "dir" / "up")

    files, _ = collect(
        s.art.DownloadJobArtifact(art_pb.DownloadJobArtifactRequest(job=job.name, path="fine.txt"))
    )
    assert files == {"fine.txt": b"ok"}
    for path in ("leak", "dir", "dir/up", ""):
        code, msg = code_of(
            s.art.DownloadJobArtifact, art_pb.DownloadJobArtifactRequest(job=job.name, path=path)
        )
        assert code == OK.INVALID_ARGUMENT and "outside the artifact root" in msg, (path, msg)
    s.model.RegisterModel(
        model_pb.RegisterModelRequest(model_id="leaky", job=job.name, artifact_path="dir")
    )
    code, _ = code_of(
        s.model.DownloadModelVersion,
        model_pb.DownloadModelVersionRequest(name="models/leaky/versions/1"),
    )
    assert code == OK.INVALID_ARGUMENT


# -- error codes ---------------------------------------------------------------------------


def test_every_documented_error_code(world: World) -> None:
    s = world.stubs
    m = s.model
    s.model.RegisterModel(model_pb.RegisterModelRequest(model_id="errs", job=world.job))
    cases: list[tuple[Any, Any, grpc.StatusCode, str]] = [
        # RegisterModel
        (
            m.RegisterModel,
            model_pb.RegisterModelRequest(model_id="Bad_Id", job=world.job),
            OK.INVALID_ARGUMENT,
            "Bad_Id",
        ),
        (
            m.RegisterModel,
            model_pb.RegisterModelRequest(job=world.job),
            OK.INVALID_ARGUMENT,
            "model_id",
        ),
        (
            m.RegisterModel,
            model_pb.RegisterModelRequest(model_id="x", job="jobs/../x"),
            OK.INVALID_ARGUMENT,
            "job",
        ),
        (
            m.RegisterModel,
            model_pb.RegisterModelRequest(model_id="x", job=world.job, artifact_path="../secret"),
            OK.INVALID_ARGUMENT,
            "..",
        ),
        (
            m.RegisterModel,
            model_pb.RegisterModelRequest(model_id="x", job=world.job, artifact_path="/etc"),
            OK.INVALID_ARGUMENT,
            "relative",
        ),
        (
            m.RegisterModel,
            model_pb.RegisterModelRequest(
                model_id="x", job=world.job, artifact_path="notes/../../x"
            ),
            OK.INVALID_ARGUMENT,
            "..",
        ),
        (
            m.RegisterModel,
            model_pb.RegisterModelRequest(model_id="x", job=UNKNOWN_JOB),
            OK.NOT_FOUND,
            "0123456789abcdef",
        ),
        (
            m.RegisterModel,
            model_pb.RegisterModelRequest(
                model_id="x", job=world.job, artifact_path="nothing-here"
            ),
            OK.NOT_FOUND,
            "nothing-here",
        ),
        # GetModel
        (m.GetModel, model_pb.GetModelRequest(name="models/Bad"), OK.INVALID_ARGUMENT, "Bad"),
        (m.GetModel, model_pb.GetModelRequest(name=""), OK.INVALID_ARGUMENT, "required"),
        (m.GetModel, model_pb.GetModelRequest(name="models/nope"), OK.NOT_FOUND, "nope"),
        # GetModelVersion
        (
            m.GetModelVersion,
            model_pb.GetModelVersionRequest(name="models/errs/versions/x"),
            OK.INVALID_ARGUMENT,
            "malformed",
        ),
        (
            m.GetModelVersion,
            model_pb.GetModelVersionRequest(name="models/errs/1"),
            OK.INVALID_ARGUMENT,
            "malformed",
        ),
        (
            m.GetModelVersion,
            model_pb.GetModelVersionRequest(name="models/errs@"),
            OK.INVALID_ARGUMENT,
            "malformed",
        ),
        (
            m.GetModelVersion,
            model_pb.GetModelVersionRequest(name="models/nope/versions/1"),
            OK.NOT_FOUND,
            "nope",
        ),
        (
            m.GetModelVersion,
            model_pb.GetModelVersionRequest(name="models/errs/versions/99"),
            OK.NOT_FOUND,
            "99",
        ),
        (
            m.GetModelVersion,
            model_pb.GetModelVersionRequest(name="models/errs@ghost"),
            OK.NOT_FOUND,
            "ghost",
        ),
        # ListModelVersions
        (
            m.ListModelVersions,
            model_pb.ListModelVersionsRequest(parent="models/x/y"),
            OK.INVALID_ARGUMENT,
            "malformed",
        ),
        (
            m.ListModelVersions,
            model_pb.ListModelVersionsRequest(parent="models/nope"),
            OK.NOT_FOUND,
            "nope",
        ),
        # SetModelAlias
        (
            m.SetModelAlias,
            model_pb.SetModelAliasRequest(name="models/errs", alias="latest", version="1"),
            OK.INVALID_ARGUMENT,
            "reserved",
        ),
        (
            m.SetModelAlias,
            model_pb.SetModelAliasRequest(name="models/errs", alias="v2", version="1"),
            OK.INVALID_ARGUMENT,
            "reserved",
        ),
        (
            m.SetModelAlias,
            model_pb.SetModelAliasRequest(name="models/errs", alias="no spaces", version="1"),
            OK.INVALID_ARGUMENT,
            "alias",
        ),
        (
            m.SetModelAlias,
            model_pb.SetModelAliasRequest(name="models/errs", alias="ok", version="one"),
            OK.INVALID_ARGUMENT,
            "version",
        ),
        (
            m.SetModelAlias,
            model_pb.SetModelAliasRequest(name="models/nope", alias="ok", version="1"),
            OK.NOT_FOUND,
            "nope",
        ),
        (
            m.SetModelAlias,
            model_pb.SetModelAliasRequest(name="models/errs", alias="ok", version="42"),
            OK.NOT_FOUND,
            "42",
        ),
        # DeleteModelAlias
        (
            m.DeleteModelAlias,
            model_pb.DeleteModelAliasRequest(name="models/nope", alias="a"),
            OK.NOT_FOUND,
            "nope",
        ),
        (
            m.DeleteModelAlias,
            model_pb.DeleteModelAliasRequest(name="models/errs", alias="a"),
            OK.NOT_FOUND,
            "alias",
        ),
        # ResolveModel
        (
            m.ResolveModel,
            model_pb.ResolveModelRequest(uri="runs:/abc/model"),
            OK.INVALID_ARGUMENT,
            "models:/",
        ),
        (
            m.ResolveModel,
            model_pb.ResolveModelRequest(uri="models:/errs"),
            OK.INVALID_ARGUMENT,
            "models:/",
        ),
        (
            m.ResolveModel,
            model_pb.ResolveModelRequest(uri="models:/errs/one"),
            OK.INVALID_ARGUMENT,
            "models:/",
        ),
        (
            m.ResolveModel,
            model_pb.ResolveModelRequest(uri="models:/Errs/1"),
            OK.INVALID_ARGUMENT,
            "models:/",
        ),
        (m.ResolveModel, model_pb.ResolveModelRequest(uri="models:/nope/1"), OK.NOT_FOUND, "nope"),
        (
            m.ResolveModel,
            model_pb.ResolveModelRequest(uri="models:/nope/latest"),
            OK.NOT_FOUND,
            "nope",
        ),
        (m.ResolveModel, model_pb.ResolveModelRequest(uri="models:/errs/7"), OK.NOT_FOUND, "7"),
        (
            m.ResolveModel,
            model_pb.ResolveModelRequest(uri="models:/errs@ghost"),
            OK.NOT_FOUND,
            "ghost",
        ),
        # DownloadModelVersion
        (
            m.DownloadModelVersion,
            model_pb.DownloadModelVersionRequest(name="errs"),
            OK.INVALID_ARGUMENT,
            "malformed",
        ),
        (
            m.DownloadModelVersion,
            model_pb.DownloadModelVersionRequest(name="models/errs/versions/5"),
            OK.NOT_FOUND,
            "5",
        ),
        (
            m.DownloadModelVersion,
            model_pb.DownloadModelVersionRequest(name="models/nope/versions/1"),
            OK.NOT_FOUND,
            "nope",
        ),
        # ListJobArtifacts
        (
            s.art.ListJobArtifacts,
            art_pb.ListJobArtifactsRequest(job="jobs/x y"),
            OK.INVALID_ARGUMENT,
            "job",
        ),
        (
            s.art.ListJobArtifacts,
            art_pb.ListJobArtifactsRequest(job=world.job, path="../.."),
            OK.INVALID_ARGUMENT,
            "..",
        ),
        (
            s.art.ListJobArtifacts,
            art_pb.ListJobArtifactsRequest(job=world.job, path="/"),
            OK.INVALID_ARGUMENT,
            "relative",
        ),
        (
            s.art.ListJobArtifacts,
            art_pb.ListJobArtifactsRequest(job=UNKNOWN_JOB),
            OK.NOT_FOUND,
            "not found",
        ),
        # DownloadJobArtifact
        (
            s.art.DownloadJobArtifact,
            art_pb.DownloadJobArtifactRequest(job="", path="a"),
            OK.INVALID_ARGUMENT,
            "job",
        ),
        (
            s.art.DownloadJobArtifact,
            art_pb.DownloadJobArtifactRequest(job=world.job, path="notes/../../../etc/passwd"),
            OK.INVALID_ARGUMENT,
            "..",
        ),
        (
            s.art.DownloadJobArtifact,
            art_pb.DownloadJobArtifactRequest(job=world.job, path="C:\\x"),
            OK.INVALID_ARGUMENT,
            "path",
        ),
        (
            s.art.DownloadJobArtifact,
            art_pb.DownloadJobArtifactRequest(job=UNKNOWN_JOB, path="a"),
            OK.NOT_FOUND,
            "not found",
        ),
        (
            s.art.DownloadJobArtifact,
            art_pb.DownloadJobArtifactRequest(job=world.job, path="notes/missing.txt"),
            OK.NOT_FOUND,
            "missing.txt",
        ),
    ]
    for fn, request, want, fragment in cases:
        code, msg = code_of(fn, request)
        assert (code, fragment in msg) == (want, True), (request, code, msg)


def test_mlflow_off_and_jobs_without_a_run(tmp_path: Path) -> None:
    srv = make_server(tmp_path, mlflow_tracking_uri="none")
    try:
        with admin_channel(srv.target) as channel:
            s = make_stubs(channel)
            setup_world(s)
            job = submit(s)
            assert job.mlflow_run_id == ""
            m = s.model
            calls: list[tuple[Any, Any]] = [
                (m.RegisterModel, model_pb.RegisterModelRequest(model_id="m", job=job.name)),
                (m.GetModel, model_pb.GetModelRequest(name="models/m")),
                (m.ListModels, model_pb.ListModelsRequest()),
                (m.GetModelVersion, model_pb.GetModelVersionRequest(name="models/m/versions/1")),
                (m.ListModelVersions, model_pb.ListModelVersionsRequest(parent="models/m")),
                (
                    m.SetModelAlias,
                    model_pb.SetModelAliasRequest(name="models/m", alias="a", version="1"),
                ),
                (m.DeleteModelAlias, model_pb.DeleteModelAliasRequest(name="models/m", alias="a")),
                (m.ResolveModel, model_pb.ResolveModelRequest(uri="models:/m/1")),
                (m.DownloadModelVersion, model_pb.DownloadModelVersionRequest(name="models/m@a")),
                (s.art.ListJobArtifacts, art_pb.ListJobArtifactsRequest(job=job.name)),
                (
                    s.art.DownloadJobArtifact,
                    art_pb.DownloadJobArtifactRequest(job=job.name, path="x"),
                ),
            ]
            for fn, request in calls:
                code, msg = code_of(fn, request)
                assert code == OK.FAILED_PRECONDITION and "MLflow is turned off" in msg, request
    finally:
        srv.stop()

    # The same data, now with MLflow: the old job still has no run. (Its own process, like
    # every server with MLflow on here: MLflow's tracking URI is process-global.)
    server, target = start_server(tmp_path / "server")
    try:
        with admin_channel(target) as channel:
            s = make_stubs(channel)
            for fn, request in [
                (s.model.RegisterModel, model_pb.RegisterModelRequest(model_id="m", job=job.name)),
                (s.art.ListJobArtifacts, art_pb.ListJobArtifactsRequest(job=job.name)),
                (
                    s.art.DownloadJobArtifact,
                    art_pb.DownloadJobArtifactRequest(job=job.name, path="x"),
                ),
            ]:
                code, msg = code_of(fn, request)
                assert code == OK.FAILED_PRECONDITION and "no MLflow run" in msg, request
    finally:
        assert server.stop() == 0, f"see {server.log}"


def test_health_and_reflection_list_the_services(world: World) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with admin_channel(world.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("brinell.v1.ModelService", "brinell.v1.ArtifactService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"brinell.v1.ModelService", "brinell.v1.ArtifactService"} <= services


# -- SDK and CLI ---------------------------------------------------------------------------


def test_sdk(world: World, tmp_path: Path) -> None:
    with Client(world.target, timeout=30) as c:
        job = c.jobs.get(world.job)
        v1 = c.models.register("sdk-model", job, description="from the SDK")
        v2 = c.models.register("models/sdk-model", job.id, artifact_path="model")
        assert (v1.version, v2.version) == ("1", "2")
        assert v1.model == "models/sdk-model" and v1.model_id == "sdk-model"
        assert v1.uri == "models:/sdk-model/1" and v1.job == job.name
        model = c.models.get("sdk-model")
        assert model.id == "sdk-model" and model.latest_version == "2"
        assert "sdk-model" in [m.id for m in c.models.list(page_size=1)]
        assert [v.version for v in c.models.versions(model, page_size=1)] == ["2", "1"]

        model = c.models.set_alias(model, "champion", v1)
        assert model.aliases == {"champion": "1"}
        assert c.models.version("sdk-model", 1) == c.models.version("models/sdk-model@champion")
        assert c.models.version("sdk-model@champion").aliases == ("champion",)
        assert c.models.version("models:/sdk-model@champion").name == v1.name
        assert c.models.resolve("models:/sdk-model/latest").name == v2.name
        assert c.models.version(model, version=2).name == v2.name
        assert c.models.delete_alias("sdk-model", "champion").aliases == {}

        expected = reference_files(world.tracking_uri, world.run_id, "model", tmp_path / "ref")
        path = c.models.download(v2, tmp_path / "v2")
        assert path == tmp_path / "v2" and tree(path) == expected
        c.models.set_alias("sdk-model", "prod", "2")
        assert tree(c.models.download("models:/sdk-model@prod", tmp_path / "uri")) == expected

        listed = c.artifacts.list(job, "notes")
        assert [(a.path, a.is_dir) for a in listed] == [
            ("notes/deep", True),
            ("notes/empty.txt", False),
            ("notes/readme.txt", False),
        ]
        assert len(c.artifacts.list(job, recursive=True)) >= 8
        one = c.artifacts.download(job, "notes/readme.txt", tmp_path / "a")
        assert one == tmp_path / "a" / "notes" / "readme.txt" and one.read_text() == "hello\n"
        folder = c.artifacts.download(job.name, "notes", tmp_path / "b")
        assert folder == tmp_path / "b" / "notes"
        assert tree(folder) == {"deep/b.txt": b"deep\n", "empty.txt": b"", "readme.txt": b"hello\n"}

        with pytest.raises(NotFoundError):
            c.models.get("never-registered")
        with pytest.raises(NotFoundError):
            c.models.resolve("models:/sdk-model@ghost")
        with pytest.raises(NotFoundError):
            c.models.download("models/sdk-model/versions/9", tmp_path / "none")
        with pytest.raises(InvalidArgumentError):
            c.artifacts.list(job, "../up")
        with pytest.raises(InvalidArgumentError):
            c.artifacts.download(job, "/etc/passwd", tmp_path / "c")
        with pytest.raises(InvalidArgumentError):
            c.models.register("Bad Id", job)
        with pytest.raises(NotFoundError):
            c.artifacts.download(job, "nothing", tmp_path / "d")


def test_sdk_mlflow_off(tmp_path: Path) -> None:
    srv = make_server(tmp_path, mlflow_tracking_uri="none")
    try:
        with Client(srv.target, timeout=10) as c, pytest.raises(FailedPreconditionError):
            list(c.models.list())
    finally:
        srv.stop()


def test_cli(world: World, tmp_path: Path) -> None:
    t = world.target
    registered = json.loads(
        run_cli(t, "--json", "model", "register", world.job, "--model", "cli-model").stdout
    )
    assert registered["name"] == "models/cli-model/versions/1"
    run_cli(t, "model", "register", world.job, "--model", "cli-model", "--path", "notes")
    listed = json.loads(run_cli(t, "--json", "model", "list").stdout)
    assert "cli-model" in [m["id"] for m in listed]
    versions = json.loads(run_cli(t, "model", "versions", "cli-model", "--json").stdout)
    assert [v["version"] for v in versions] == ["2", "1"]
    assert "cli-model" in run_cli(t, "model", "get", "cli-model").stdout
    run_cli(t, "model", "alias", "set", "cli-model", "champion", "1")
    resolved = json.loads(
        run_cli(t, "--json", "model", "resolve", "models:/cli-model@champion").stdout
    )
    assert resolved["version"] == "1" and resolved["aliases"] == ["champion"]
    got = json.loads(run_cli(t, "--json", "model", "get", "cli-model@champion").stdout)
    assert got["name"] == "models/cli-model/versions/1"
    run_cli(t, "model", "download", "models:/cli-model/2", "--dest", str(tmp_path / "m"))
    assert (tmp_path / "m" / "readme.txt").read_text() == "hello\n"
    # Version 1 is the logged model (MLflow 3 keeps it apart from the run's files).
    run_cli(t, "model", "download", "models:/cli-model@champion", "--dest", str(tmp_path / "c"))
    assert "flavors" in (tmp_path / "c" / "MLmodel").read_text()
    run_cli(t, "model", "alias", "delete", "cli-model", "champion")

    files = json.loads(
        run_cli(t, "--json", "artifact", "list", world.job, "--recursive", "--path", "notes").stdout
    )
    assert [f["path"] for f in files] == ["notes/deep/b.txt", "notes/empty.txt", "notes/readme.txt"]
    assert "notes" in run_cli(t, "artifact", "list", world.job).stdout
    everything = json.loads(
        run_cli(t, "--json", "artifact", "list", world.job, "--recursive").stdout
    )
    assert "model/MLmodel" in [f["path"] for f in everything]
    run_cli(t, "artifact", "download", world.job, "notes/deep", "--dest", str(tmp_path / "a"))
    assert (tmp_path / "a" / "notes" / "deep" / "b.txt").read_text() == "deep\n"

    missing = run_cli(t, "model", "get", "no-such-model", check=False)
    assert missing.returncode == 2 and "error: NOT_FOUND:" in missing.stderr
    bad = run_cli(t, "artifact", "list", world.job, "--path", "../x", check=False)
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr
    assert "Traceback" not in bad.stderr + missing.stderr
