"""`make demo`: a control plane and an agent on embedded defaults, hello-world end to end.

Starts `crucible server` (SQLite, local blobs, a local MLflow store, all under .demo/) and
one process-executor agent (which starts its own Prefect server), pushes
examples/hello-world, submits it with a parameter, shows the state and the logs live,
prints the final state, the MLflow run and its metrics, and shuts everything down.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from crucible import Client, JobState

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"


def start(cmd: list[str], log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, start_new_session=True,
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
    server = start([py, "-m", "crucible.controlplane", "--port", "0", "--data-dir",
                    str(DEMO / "server"), "--heartbeat-interval", "2", "--lease-duration", "10"],
                   DEMO / "server.log")
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
        print("== starting an agent (it starts a local Prefect server: ~20 s)")
        agent = start([py, "-m", "crucible.agent", "--control-plane", target, "--queue",
                       "default", "--work-dir", str(DEMO / "agent"), "--agent-id", "demo-agent"],
                      DEMO / "agent.log")
        with Client(target) as client:
            deadline = time.monotonic() + 180
            while not list(client.agents.list(filter="state=CONNECTED")):
                if agent.poll() is not None or time.monotonic() > deadline:
                    print("the agent did not connect; see .demo/agent.log")
                    return 1
                time.sleep(0.5)
            (a,) = client.agents.list(filter="state=CONNECTED")
            print(f"   agent {a.id} connected: queues={list(a.queues)} "
                  f"slots={a.capacity.slots if a.capacity else '?'}")

            exp = client.experiments.create("demo", description="make demo")
            ep, rev = client.entry_points.push(ROOT / "examples" / "hello-world")
            print(f"== pushed entry point {ep.id} revision {rev.digest[:19]}…")
            job = client.jobs.submit(exp, ep, {"name": "Crucible", "rounds": 5})
            print(f"== submitted {job.name} with name=Crucible rounds=5; live log:")

            def follow() -> None:
                for ln in client.jobs.logs(job, follow=True):
                    print(f"   | {ln.text}", flush=True)

            tail = threading.Thread(target=follow, daemon=True)
            tail.start()
            final = job
            for state in client.jobs.watch(job):
                print(f"   state: {state.state.value}"
                      + (f" on {state.agent}" if state.agent else ""), flush=True)
                final = state
            tail.join(10)

            print(f"== final state: {final.state.value} (exit code {final.exit_code})")
            print(f"   MLflow run: {final.mlflow_run_id}")
            from mlflow.tracking import MlflowClient

            uri = f"sqlite:///{DEMO / 'server' / 'mlflow.db'}"
            run = MlflowClient(tracking_uri=uri).get_run(final.mlflow_run_id)
            print(f"   MLflow status: {run.info.status}")
            print(f"   parameters: {dict(sorted(run.data.params.items()))}")
            print(f"   metrics: {dict(sorted(run.data.metrics.items()))}")
            print(f"   open the MLflow UI: {py} -m mlflow ui --backend-store-uri {uri}")
            return 0 if final.state == JobState.SUCCEEDED else 1
    finally:
        print("== shutting down")
        if agent is not None:
            stop(agent, "agent")
        stop(server, "control plane")


if __name__ == "__main__":
    sys.exit(main())
