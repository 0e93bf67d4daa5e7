"""The two-host setup: an MLflow tracking server over HTTP, as the README starts it, with a
control plane and an agent that reach it by the host's address, not by localhost.

MLflow 3 answers only Host headers it allows (localhost and private ranges by default), so a
server other hosts use needs `--allowed-hosts`; the test shows both the refusal and the setup
working end to end: a job's params and metrics in the server, and a model it logged registered
and downloaded through the control plane (artifacts proxied by the MLflow server).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from brinell import Client, JobState
from tests.conftest import start_server
from tests.e2e.conftest import start_agent, start_mlflow_server, status, wait_connected

LOGGER = """\
name: logger
entry_points:
  main:
    parameters:
      c: {type: float, default: 1.0}
    command: "python main.py --c {c}"
"""

MAIN = """\
import argparse

import mlflow
import mlflow.sklearn
from sklearn.linear_model import LogisticRegression

parser = argparse.ArgumentParser()
parser.add_argument("--c", type=float)
c = parser.parse_args().c
model = LogisticRegression(C=c).fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
with mlflow.start_run():
    mlflow.log_metric("train_accuracy", model.score([[0.0], [3.0]], [0, 1]))
    mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
print("logged", flush=True)
"""


def _host_address() -> str | None:
    """This host's address on its network (not loopback), as another host would use it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.254.254.254", 9))  # no packet is sent: this only picks a route
            address = str(s.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Any:
    address = _host_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address for a second host to use")
    # The README's command for a server other hosts reach.
    proc, port = start_mlflow_server(tmp_path / "mlflow", "0.0.0.0", [address, "localhost"])
    try:
        yield address, port
    finally:
        proc.stop()


def test_control_plane_and_agent_with_an_mlflow_server_over_http(
    mlflow_server: tuple[str, int], tmp_path: Path, prefect_api_url: str
) -> None:
    address, port = mlflow_server
    uri = f"http://{address}:{port}"
    # What --allowed-hosts is for: the API answers a Host it was told about and refuses
    # another (without the flag, this host's own address is refused too, unless private).
    api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
    assert status(api, f"{address}:{port}") == 200
    assert status(api, f"elsewhere.example:{port}") == 403

    server, target = start_server(tmp_path / "server", 0, "--mlflow-tracking-uri", uri)
    agent = start_agent(target, tmp_path / "agent", prefect_api_url)
    try:
        with Client(target, timeout=60) as c:
            wait_connected(c, "e2e-agent")
            project = tmp_path / "logger"
            project.mkdir()
            (project / "MLproject").write_text(LOGGER)
            (project / "main.py").write_text(MAIN)
            c.experiments.create("two-hosts")
            ep, _ = c.entry_points.push(project)
            job = c.jobs.submit("two-hosts", ep, {"c": 0.5}, timeout=300)
            final = c.jobs.wait(job, timeout=300)
            texts = [ln.text for ln in c.jobs.logs(job)]
            assert final.state == JobState.SUCCEEDED, (final.state_reason, texts[-20:])

            from mlflow.tracking import MlflowClient

            run = MlflowClient(tracking_uri=uri).get_run(final.mlflow_run_id)
            assert run.info.status == "FINISHED"
            assert run.data.params == {"c": "0.5"} and run.data.metrics["train_accuracy"] == 1.0

            version = c.models.register("two-hosts-model", job)
            path = c.models.download(version, tmp_path / "download")
            assert "sklearn" in (path / "MLmodel").read_text()
            assert any(a.path == "model/MLmodel" for a in c.artifacts.list(job, recursive=True))
        # The control plane wrote nothing where it ran (no ./mlflow.db, no ./mlruns).
        assert list((tmp_path / "server-cwd").iterdir()) == []
    finally:
        agent.stop()
        server.stop()
