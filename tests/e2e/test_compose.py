"""The compose deployment from images built here: `tools/images build` makes every image offline,
`docker-compose -f images/compose.yaml up` starts PostgreSQL, the MLflow server, the Prefect
server, the control plane and a docker-executor agent, and hello-world submitted from the host
runs through it to SUCCEEDED with its MLflow run in the compose MLflow server.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brinell import Client, JobState
from brinell.agent.prefect_server import free_port
from tests.conftest import ROOT
from tests.dockerenv import DockerEnv, docker_env
from tests.e2e.conftest import wait_connected

pytestmark = pytest.mark.timeout(1800)
TAG = "test"


def _compose(
    denv: DockerEnv, env_file: Path, project: str, *args: str, timeout: float = 600
) -> str:
    result = subprocess.run(
        ["docker-compose", "--env-file", str(env_file), "-p", project]
        + ["-f", str(ROOT / "images" / "compose.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        # Only the env file sets the deployment's variables (the tests' own BRINELL_TOKEN
        # would win over it otherwise).
        env={k: v for k, v in denv.env().items() if not k.startswith("BRINELL_")},
    )
    if result.returncode != 0:
        raise AssertionError(f"docker-compose {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return result.stdout


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    denv: DockerEnv = docker_env()
    started = time.monotonic()
    build = subprocess.run(
        [str(ROOT / "tools" / "images"), "build"],
        env={**denv.env(), "BRINELL_TAG": TAG},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    print(f"images: {time.monotonic() - started:.0f} s\n{build.stdout}")

    tmp = tmp_path_factory.mktemp("compose")
    work = tmp / "agent-work"
    work.mkdir()
    os.chown(work, 10001, 10001)
    socket_path = denv.host.removeprefix("unix://")
    ports = {
        "BRINELL_PORT": free_port("127.0.0.1"),
        "BRINELL_PG_PORT": free_port("127.0.0.1"),
        "BRINELL_MLFLOW_PORT": free_port("127.0.0.1"),
        "BRINELL_PREFECT_PORT": free_port("127.0.0.1"),
    }
    settings = {
        "BRINELL_TAG": TAG,
        "BRINELL_TOKEN": "brn_compose-" + secrets.token_hex(16),
        "BRINELL_PG_PASSWORD": secrets.token_hex(12),
        "DOCKER_SOCKET": socket_path,
        "DOCKER_GID": str(os.stat(socket_path).st_gid),
        "BRINELL_AGENT_WORK": str(work),
        "BRINELL_RUNTIME_IMAGE": f"brinell/runtime:{TAG}",
        **{k: str(v) for k, v in ports.items()},
    }
    env_file = tmp / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    project = f"brinell-test-{secrets.token_hex(3)}"
    up = time.monotonic()
    try:
        _compose(denv, env_file, project, "up", "-d")
        yield {
            "settings": settings,
            "target": f"127.0.0.1:{ports['BRINELL_PORT']}",
            "up": up,
            "env_file": env_file,
            "project": project,
        }
    finally:
        logs = _compose(denv, env_file, project, "logs", "--no-color", "--tail=40", timeout=120)
        print(logs[-6000:])
        _compose(denv, env_file, project, "down", "-v", timeout=300)
        shutil.rmtree(work, ignore_errors=True)


def test_hello_world_through_the_compose_deployment(deployment: dict[str, Any]) -> None:
    token = deployment["settings"]["BRINELL_TOKEN"]
    deadline = time.monotonic() + 600
    with Client(deployment["target"], token=token, timeout=30) as c:
        while True:
            try:
                list(c.experiments.list())
                break
            except Exception:
                assert time.monotonic() < deadline, "the compose control plane did not answer"
                time.sleep(1)
        wait_connected(c, "compose-agent", timeout=300)
        agent = c.agents.get("compose-agent")
        assert agent.executor == "docker"
        c.experiments.create("compose")
        ep, _ = c.entry_points.push(ROOT / "examples" / "hello-world")
        job = c.jobs.submit("compose", ep, {"name": "compose"}, timeout=600)
        final = c.jobs.wait(job, timeout=600)
        texts = [ln.text for ln in c.jobs.logs(job)]
        assert final.state == JobState.SUCCEEDED, (final.state_reason, texts[-30:])
        finished = time.monotonic() - deployment["up"]
        print(f"docker-compose up -> first job SUCCEEDED: {finished:.0f} s")
        assert any("hello-world done: score=" in t for t in texts)
        assert final.image == "" and final.image_digest.startswith("sha256:")

        from mlflow.tracking import MlflowClient

        uri = f"http://127.0.0.1:{deployment['settings']['BRINELL_MLFLOW_PORT']}"
        run = MlflowClient(tracking_uri=uri).get_run(final.mlflow_run_id)
        assert run.info.status == "FINISHED" and "score" in run.data.metrics
