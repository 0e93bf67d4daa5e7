"""`make demo`: a control plane and an agent on embedded defaults, the robustness experiment.

Starts `brinell server` (SQLite, local blobs, a local MLflow store, all under .demo/) and
one process-executor agent with two slots (which starts its own Prefect server), pushes the
built-in ml-security plugin and examples/robustness, trains a model (its log shown live),
registers it, attacks it with FGSM and PGD over ε under four defenses, prints the table of
accuracies, writes .demo/robustness.png, says where the MLflow runs are, and shuts
everything down.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from brinell import Client

sys.path.insert(0, str(Path(__file__).resolve().parent / "robustness"))
import experiment  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"


def start(cmd: list[str], log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        start_new_session=True,
        env=dict(os.environ, HOME=os.environ.get("HOME") or str(DEMO)),
    )


def stop(proc: subprocess.Popen[str], name: str, timeout: float = 30) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"  {name} did not stop in {timeout:g} s: killing it")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Anything it left behind in its process group goes too.
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        print(f"  {name} stopped (exit code {proc.returncode}), nothing left behind")
        return
    os.killpg(proc.pid, signal.SIGKILL)
    print(f"  {name} stopped; stray processes in its group were killed")


def main() -> int:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    py = sys.executable
    print("== starting the control plane (SQLite, blobs and MLflow store under .demo/server)")
    server = start(
        [
            py,
            "-m",
            "brinell.controlplane",
            "--port",
            "0",
            "--data-dir",
            str(DEMO / "server"),
            "--heartbeat-interval",
            "2",
            "--lease-duration",
            "10",
        ],
        DEMO / "server.log",
    )
    agent: subprocess.Popen[str] | None = None
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        match = re.search(r"listening on ([\d.]+:\d+)", line)
        if not match:
            print("the control plane did not start; see .demo/server.log")
            return 1
        target = match.group(1)
        print(f"   listening on {target}")
        # First start: the server made user `admin` and wrote its token here (mode 0600).
        admin_token = (DEMO / "server" / "admin.token").read_text().strip()
        client = Client(target, token=admin_token)
        # The agent gets a credential of its own: an enrollment token bound to its id.
        enrolled = client.tokens.create(agent_id="demo-agent", description="make demo")
        token_file = DEMO / "agent.token"
        token_file.touch(0o600)
        token_file.write_text(enrolled.secret)
        print(f"   admin token: .demo/server/admin.token; agent token {enrolled.token.id}")
        print("== starting an agent (it starts a local Prefect server: ~20 s)")
        agent = start(
            [
                py,
                "-m",
                "brinell.agent",
                "--control-plane",
                target,
                "--queue",
                "default",
                "--work-dir",
                str(DEMO / "agent"),
                "--agent-id",
                "demo-agent",
                "--slots",
                "2",
                "--token-file",
                str(token_file),
                # What the plugin's tasks import, ahead of the first job (≈3 s per job).
                "--warm-import",
                "sklearn.linear_model",
                "--warm-import",
                "art.attacks.evasion",
                "--warm-import",
                "art.defences.preprocessor",
                "--warm-import",
                "art.estimators.classification",
            ],
            DEMO / "agent.log",
        )
        with client:
            deadline = time.monotonic() + 180
            while not list(client.agents.list(filter="state=CONNECTED")):
                if agent.poll() is not None or time.monotonic() > deadline:
                    print("the agent did not connect; see .demo/agent.log")
                    return 1
                time.sleep(0.5)
            (a,) = client.agents.list(filter="state=CONNECTED")
            print(
                f"   agent {a.id} connected: queues={list(a.queues)} "
                f"slots={a.capacity.slots if a.capacity else '?'}"
            )

            results = experiment.run(
                client, say=lambda t: print(f"== {t}", flush=True), live_logs=True
            )
            print()
            print("== robust accuracy per attack, defense and ε (clean accuracy at ε=0):")
            print(results.table())
            plot = results.plot(DEMO / "robustness.png")
            print(f"\n== plot of accuracy vs ε per defense: {plot}")
            uri = f"sqlite:///{DEMO / 'server' / 'mlflow.db'}"
            train_run = results.train_job.mlflow_run_id if results.train_job else ""
            print(
                f"== MLflow: experiment brinell/robustness in {uri}; one run per job "
                f"(the training run is {train_run})"
            )
            print(
                f"   open the MLflow UI: {py} -m mlflow ui --backend-store-uri {uri} "
                f"--default-artifact-root {DEMO / 'server' / 'mlartifacts'}"
            )
            return 0
    finally:
        print("== shutting down")
        if agent is not None:
            stop(agent, "agent")
        stop(server, "control plane")


if __name__ == "__main__":
    sys.exit(main())
