"""The docker executor end to end: a real engine, a runtime image built here offline and pulled
from a registry that requires a password, a control plane with an MLflow tracking server, and
agents started with `--executor docker`.

The module's fixtures build what every test shares once (the engine and registry from
tools/docker-env, the runtime image from `make wheelhouse` + images/runtime/Dockerfile, the
MLflow server, the control plane); each test starts its own agent.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brinell import Client, JobState, LogStream, Resources
from tests.conftest import ROOT, Proc, start_server
from tests.dockerenv import DockerEnv, build_image, docker_env, push, wheelhouse
from tests.e2e.conftest import start_agent, start_mlflow_server, wait_connected

# The engine's containers take their time on 2 cores with the vfs storage driver.
pytestmark = pytest.mark.timeout(900)

# A job id no control plane ever made (the scheme's shape, not its randomness).
STRAY = "00000000deadbeef"

TICKER = """\
name: ticker
entry_points:
  main:
    parameters:
      n: {type: int, default: 10}
      pause: {type: float, default: 0.2}
    command: "python ticker.py {n} {pause}"
"""

TICKER_PY = """\
import os, sys, time
n, pause = int(sys.argv[1]), float(sys.argv[2])
print("uid", os.getuid(), "cwd", os.getcwd(), flush=True)
for i in range(n):
    print(f"tick {i}", flush=True)
    print(f"tock {i}", file=sys.stderr, flush=True)
    time.sleep(pause)
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def denv() -> DockerEnv:
    return docker_env()


@pytest.fixture(scope="module")
def runtime_image(denv: DockerEnv) -> str:
    """images/runtime built from this checkout's wheelhouse and pushed to the registry."""
    tag = f"{denv.registry}/brinell/runtime:test"
    seconds = build_image(denv, "images/runtime/Dockerfile", tag, wheelhouse("runtime"))
    push(denv, tag)
    print(f"runtime image built in {seconds:.0f} s")
    return tag


@pytest.fixture(scope="module")
def plane(
    tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str
) -> Iterator[dict[str, Any]]:
    """An MLflow tracking server (containers reach it on the host network) and a control
    plane that hands its URI to jobs."""
    tmp = tmp_path_factory.mktemp("docker")
    mlflow_proc, port = start_mlflow_server(tmp / "mlflow", "127.0.0.1", ["127.0.0.1", "localhost"])
    uri = f"http://127.0.0.1:{port}"
    server, target = start_server(tmp / "server", 0, "--mlflow-tracking-uri", uri)
    client = Client(target, timeout=60)
    client.experiments.create("docker")
    try:
        yield {"client": client, "target": target, "tmp": tmp, "mlflow": uri}
    finally:
        client.close()
        server.stop()
        mlflow_proc.stop()


def _agent(
    plane: dict[str, Any],
    denv: DockerEnv,
    agent_id: str,
    prefect_api_url: str,
    *args: str,
    password: str | None = None,
) -> Proc:
    work = plane["tmp"] / agent_id
    work.mkdir(exist_ok=True)
    auth = denv.auth_file(plane["tmp"] / f"{agent_id}-auth.json", password)
    proc = start_agent(
        plane["target"],
        work / "work",
        prefect_api_url,
        agent_id,
        2,
        "--executor",
        "docker",
        "--registry-auth",
        str(auth),
        *args,
        env={"DOCKER_HOST": denv.host},
    )
    wait_connected(plane["client"], agent_id)
    return proc


def _project(tmp: Path, name: str, mlproject: str, files: dict[str, str]) -> Path:
    project = tmp / name
    project.mkdir(exist_ok=True)
    (project / "MLproject").write_text(mlproject)
    for file, text in files.items():
        (project / file).write_text(text)
    return project


def _containers(denv: DockerEnv, job_id: str) -> list[Any]:
    return list(denv.client().containers.list(all=True, filters={"label": f"brinell.job={job_id}"}))


def _gone(denv: DockerEnv, container_id: str) -> bool:
    import docker.errors  # type: ignore[import-untyped]

    try:
        denv.client().containers.get(container_id)
    except docker.errors.NotFound:
        return True
    return False


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_hello_world_runs_in_a_container_pulled_with_a_password(
    denv: DockerEnv, runtime_image: str, plane: dict[str, Any], prefect_api_url: str
) -> None:
    c: Client = plane["client"]
    agent = _agent(plane, denv, "docker-hello", prefect_api_url)
    try:
        assert c.agents.get("docker-hello").executor == "docker"
        ep, _ = c.entry_points.push(ROOT / "examples" / "hello-world")
        job = c.jobs.submit("docker", ep, {"name": "box"}, image=runtime_image, timeout=300)
        final = c.jobs.wait(job, timeout=400)
        texts = [ln.text for ln in c.jobs.logs(job)]
        assert final.state == JobState.SUCCEEDED, (final.state_reason, texts[-30:])
        # The digest the agent resolved, from the registry it pulled from.
        repository = runtime_image.rsplit(":", 1)[0]
        assert final.image == runtime_image
        assert final.image_digest.startswith(repository + "@sha256:"), final.image_digest
        pulled = denv.client().images.get(runtime_image).attrs["RepoDigests"]
        assert final.image_digest in pulled
        assert any("hello-world done: score=" in t for t in texts), texts[-20:]
        assert any(t.startswith("pulling image ") for t in texts)

        from mlflow.tracking import MlflowClient

        run = MlflowClient(tracking_uri=plane["mlflow"]).get_run(final.mlflow_run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["name"] == "box" and "score" in run.data.metrics
        # The container is removed after the attempt.
        assert _containers(denv, job.id) == []
    finally:
        agent.stop()


def test_limits_labels_user_cancel_and_timeout(
    denv: DockerEnv, runtime_image: str, plane: dict[str, Any], prefect_api_url: str
) -> None:
    c: Client = plane["client"]
    agent = _agent(
        plane, denv, "docker-limits", prefect_api_url, "--image", runtime_image, "--network", "none"
    )
    try:
        project = _project(plane["tmp"], "ticker", TICKER, {"ticker.py": TICKER_PY})
        ep, _ = c.entry_points.push(project)
        # The queue's default image (no image on the job); limits from the resource request.
        job = c.jobs.submit(
            "docker",
            ep,
            {"n": 1000, "pause": 0.2},
            resources=Resources(cpus=0.5, memory_bytes=256 * 1024 * 1024),
        )
        container = _wait_for(lambda: _containers(denv, job.id), 300, "the job's container")[0]
        _wait_for(lambda: any(ln.text == "tick 1" for ln in c.jobs.logs(job)), 300, "ticks")
        container.reload()
        host = container.attrs["HostConfig"]
        assert host["NanoCpus"] == 500_000_000
        assert host["Memory"] == 256 * 1024 * 1024
        assert host["NetworkMode"] == "none"
        assert container.labels["brinell.job"] == job.id
        assert container.labels["brinell.attempt"] == "1"
        assert container.labels["brinell.agent"] == "docker-limits"
        texts = [ln.text for ln in c.jobs.logs(job)]
        # The image's own user, in the project inside the mounted workspace.
        assert "uid 10001 cwd /brinell/workspace/ticker" in texts or any(
            t.startswith("uid 10001 cwd /brinell/workspace") for t in texts
        ), texts[:20]
        assert any(ln.text == "tock 1" and ln.stream == LogStream.STDERR for ln in c.jobs.logs(job))

        c.jobs.cancel(job, "enough")
        final = c.jobs.wait(job, timeout=120)
        assert final.state == JobState.CANCELLED, final.state_reason
        _wait_for(lambda: _containers(denv, job.id) == [], 60, "the cancelled container to go")

        slow = c.jobs.submit("docker", ep, {"n": 1000, "pause": 0.2}, timeout=8)
        final = c.jobs.wait(slow, timeout=300)
        assert final.state == JobState.TIMED_OUT, final.state_reason
        _wait_for(lambda: _containers(denv, slow.id) == [], 60, "the timed-out container to go")
    finally:
        agent.stop()


def test_clear_failures(
    denv: DockerEnv, runtime_image: str, plane: dict[str, Any], prefect_api_url: str
) -> None:
    c: Client = plane["client"]
    project = _project(plane["tmp"], "ticker", TICKER, {"ticker.py": TICKER_PY})
    ep, _ = c.entry_points.push(project)
    bare = f"{denv.registry}/brinell/base:test"
    denv.client().images.get(denv.base_image).tag(bare)
    push(denv, bare)

    wrong = _agent(plane, denv, "docker-wrong", prefect_api_url, password="not-the-password")
    try:
        job = c.jobs.submit("docker", ep, {"n": 1}, image=runtime_image)
        final = c.jobs.wait(job, timeout=300)
        assert final.state == JobState.FAILED
        assert "refused the agent's credentials" in final.state_reason, final.state_reason
        assert denv.password not in json.dumps([ln.text for ln in c.jobs.logs(job)])
    finally:
        wrong.stop()
    assert denv.password not in (plane["tmp"] / "docker-wrong" / "docker-wrong.log").read_text()

    agent = _agent(plane, denv, "docker-fail", prefect_api_url, "--keep-failed-containers")
    try:
        cases = {
            f"{denv.registry}/brinell/nothing-here:1": "no such image",
            "127.0.0.1:1/brinell/runtime:test": "is unreachable",
            bare: "exit code 127",
        }
        jobs = {ref: c.jobs.submit("docker", ep, {"n": 1}, image=ref) for ref in cases}
        for ref, expected in cases.items():
            final = c.jobs.wait(jobs[ref], timeout=300)
            assert final.state == JobState.FAILED, (ref, final.state)
            assert expected in final.state_reason, (ref, final.state_reason)
            assert "Traceback" not in final.state_reason
        assert "not in image" in c.jobs.get(jobs[bare]).state_reason
        # Asked to, the agent keeps a failed attempt's container for `docker logs`.
        kept = _containers(denv, jobs[bare].id)
        assert len(kept) == 1 and kept[0].status == "exited"
        assert kept[0].name == f"brinell-{jobs[bare].id}-1-failed"
        assert "python: not found" in kept[0].logs().decode()
        kept[0].remove()
    finally:
        agent.stop()


def test_a_container_survives_an_agent_restart_and_leftovers_are_removed(
    denv: DockerEnv, runtime_image: str, plane: dict[str, Any], prefect_api_url: str
) -> None:
    c: Client = plane["client"]
    project = _project(plane["tmp"], "ticker", TICKER, {"ticker.py": TICKER_PY})
    ep, _ = c.entry_points.push(project)
    agent = _agent(plane, denv, "docker-restart", prefect_api_url, "--image", runtime_image)
    try:
        n = 60
        job = c.jobs.submit("docker", ep, {"n": n, "pause": 0.25})
        _wait_for(lambda: any(ln.text == "tick 5" for ln in c.jobs.logs(job)), 300, "ticks")
        # The agent dies; its container does not.
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(30)
        container = _containers(denv, job.id)[0]
        container.reload()
        assert container.status == "running"
        # Containers of an attempt the control plane does not assign to this agent, and one
        # with labels no agent writes (it must not keep the agent from registering).
        stray = denv.client().containers.run(
            runtime_image,
            ["sleep", "600"],
            detach=True,
            network_mode="none",
            labels={
                "brinell.job": STRAY,
                "brinell.attempt": "1",
                "brinell.agent": "docker-restart",
                "brinell.grace-period": "1",
            },
        )
        malformed = denv.client().containers.run(
            runtime_image,
            ["sleep", "600"],
            detach=True,
            network_mode="none",
            labels={
                "brinell.job": "not/a job",
                "brinell.attempt": "x",
                "brinell.agent": "docker-restart",
            },
        )
        time.sleep(2)  # lines printed while no agent reads them
        agent = _agent(plane, denv, "docker-restart", prefect_api_url, "--image", runtime_image)
        final = c.jobs.wait(job, timeout=300)
        lines = list(c.jobs.logs(job))
        assert final.state == JobState.SUCCEEDED, (final.state_reason, [ln.text for ln in lines])
        assert final.attempt == 1
        # Every line once, in order, none lost while the agent was away.
        stdout = [ln.text for ln in lines if ln.stream == LogStream.STDOUT]
        ticks = [text for text in stdout if text.startswith("tick")]
        assert ticks == [f"tick {i}" for i in range(n)]
        tocks = [ln.text for ln in lines if ln.stream == LogStream.STDERR]
        assert tocks == [f"tock {i}" for i in range(n)]
        sequences = [ln.sequence for ln in lines]
        assert sequences == sorted(set(sequences))
        assert any("re-attached to container" in ln.text for ln in lines)
        _wait_for(lambda: _containers(denv, STRAY) == [], 60, "the stray container to go")
        _wait_for(lambda: _gone(denv, malformed.id), 60, "the malformed container to go")
        del stray
        assert _containers(denv, job.id) == []
    finally:
        agent.stop()


def test_a_container_ends_itself_when_its_agent_never_comes_back(
    denv: DockerEnv, runtime_image: str, plane: dict[str, Any], prefect_api_url: str
) -> None:
    """Issue 10, fix 2 for containers: killed with its agent gone for good, a container ran
    to the end while the requeued attempt ran elsewhere. The watchdog ends it."""
    c: Client = plane["client"]
    project = _project(plane["tmp"], "ticker-gone", TICKER, {"ticker.py": TICKER_PY})
    ep, _ = c.entry_points.push(project)
    agent = _agent(
        plane,
        denv,
        "docker-gone",
        prefect_api_url,
        "--image",
        runtime_image,
        "--container-watchdog",
        "4",
    )
    try:
        job = c.jobs.submit("docker", ep, {"n": 600, "pause": 0.1})
        _wait_for(lambda: any(ln.text == "tick 3" for ln in c.jobs.logs(job)), 300, "ticks")
        container = _containers(denv, job.id)[0]
        # A process the job started in the background dies with it too.
        container.exec_run(["sh", "-c", "sleep 600 &"], detach=True)
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(30)
        killed = time.monotonic()

        def exited() -> bool:
            container.reload()
            return bool(container.status == "exited")

        _wait_for(exited, 30, "the container to end itself")
        assert time.monotonic() - killed < 15  # 4 s, checked every 2 s
        assert container.attrs["State"]["ExitCode"] == 137
        output = container.logs(stdout=False, stderr=True).decode()
        assert "tock 10" in output and "tock 599" not in output
    finally:
        agent.stop()
    # A job that finishes in a watched container keeps its exit code and its output.
    agent = _agent(plane, denv, "docker-gone-2", prefect_api_url, "--image", runtime_image)
    try:
        done = c.jobs.wait(c.jobs.submit("docker", ep, {"n": 3, "pause": 0}), timeout=300)
        assert done.state == JobState.SUCCEEDED and done.exit_code == 0
        lines = [ln.text for ln in c.jobs.logs(done) if ln.stream == LogStream.STDOUT]
        assert lines[1:] == ["tick 0", "tick 1", "tick 2", "done"]
    finally:
        agent.stop()
