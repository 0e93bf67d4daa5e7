"""The warm runtime with real agents, a real Prefect server and MLflow (issue 11): a job forked
from the pre-imported parent gives the results and logs a fresh interpreter gives, and keeps
the cold path's guarantees (cancel, crash, a dead parent, a dead agent)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from brinell import Client, JobState, LogStream
from tests.conftest import Proc
from tests.e2e.conftest import start_agent, wait_connected
from tests.e2e.test_jobs import alive

MLPROJECT = """\
name: same
entry_points:
  main:
    parameters:
      mode: {type: string, default: ok}
    command: "python same.py {mode}"
  shell:
    command: "echo from the shell && python same.py plain"
  isolated:
    isolated: true
    command: "python same.py plain"
  sleepy:
    command: "python sleepy.py"
  crash:
    command: "python -m crash"
  rand:
    command: "python rand.py"
"""
SAME_PY = """\
import os, sys, threading, time

import mlflow
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

import helper

mode = sys.argv[1]
print("argv", sys.argv, __name__, flush=True)
print("file", __file__ == os.path.abspath("same.py"), sys.path[0] == os.getcwd())
print("env", sorted(k for k in os.environ if k.startswith("BRINELL_")))
print("helper", helper.VALUE)
print("to stderr", file=sys.stderr)
if mode == "plain":
    sys.exit(0)


@task
def double(x: int) -> int:
    get_run_logger().info("double says %s", x)
    return 2 * x


@flow(name="same")
def same(n: int) -> int:
    print(f"flow-run={flow_run.id}", flush=True)
    return sum(f.result() for f in [double.submit(i) for i in range(n)])


run = mlflow.start_run()  # left open: ended when the interpreter exits
total = same(3)
mlflow.log_metric("total", total)
print("total", total)


def later() -> None:
    time.sleep(0.3)
    print("a thread's last words", flush=True)


threading.Thread(target=later).start()  # not a daemon: joined before the exit
if mode == "fail":
    raise ValueError("boom")
if mode == "exit":
    sys.exit(7)
"""
SLEEPY_PY = """\
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "120"])
print(f"pid={os.getpid()} child={child.pid} parent={os.getppid()}", flush=True)
time.sleep(120)
"""
RAND_PY = """\
import random
import numpy
print("draws", numpy.random.random())
print("stdlib", random.random())
"""
CRASH_PY = """\
import os, signal
print("crashing", flush=True)
os.kill(os.getpid(), signal.SIGSEGV)
"""


@pytest.fixture()
def project(cluster: dict[str, Any]) -> str:
    c: Client = cluster["client"]
    root = cluster["tmp"] / "same"
    root.mkdir()
    (root / "MLproject").write_text(MLPROJECT)
    (root / "same.py").write_text(SAME_PY)
    (root / "helper.py").write_text("VALUE = 42\n")
    (root / "sleepy.py").write_text(SLEEPY_PY)
    (root / "crash.py").write_text(CRASH_PY)
    (root / "rand.py").write_text(RAND_PY)
    c.experiments.create("warm")
    ep, _ = c.entry_points.push(root)
    return ep.name


@pytest.fixture()
def pair(cluster: dict[str, Any]) -> Iterator[None]:
    """A warm and a cold agent, which jobs pick by label, instead of the cluster's agent."""
    cluster["agent"].stop()
    agents = [
        start_agent(
            cluster["target"],
            cluster["tmp"] / kind,
            cluster["prefect"],
            f"{kind}-agent",
            2,
            "--label",
            f"runtime={kind}",
            *extra,
        )
        for kind, extra in [("warm", []), ("cold", ["--no-warm-runtime"])]
    ]
    try:
        for kind in ("warm", "cold"):
            wait_connected(cluster["client"], f"{kind}-agent")
        warmed(agents[0])
        yield
    finally:
        for agent in agents:
            agent.stop()


def warmed(agent: Proc, times: int = 1) -> None:
    """Waits for the agent's warm runtime (to have started ``times`` times): until it is
    ready its jobs run cold, so that a restarted agent never makes a job wait for imports."""
    _until(
        lambda: agent.log.read_text().count("warm runtime ready") >= times,
        120,
        "the warm runtime",
    )


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as response:
        return json.loads(response.read())


def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _streams(c: Client, job: Any) -> tuple[list[str], list[str], list[str]]:
    """stdout and stderr with the attempt's own paths and ids made neutral; system lines."""
    lines = list(c.jobs.logs(job))
    roots = {m.group(0) for ln in lines for m in re.finditer(r"/\S*/jobs/[0-9a-f]+/\d+", ln.text)}

    def neutral(text: str) -> str:
        for root in roots:
            text = text.replace(root, "WORKSPACE")
        return re.sub(r"flow-run=\S+", "flow-run=ID", text)

    out = [neutral(ln.text) for ln in lines if ln.stream == LogStream.STDOUT]
    err = [neutral(ln.text) for ln in lines if ln.stream == LogStream.STDERR]
    system = [ln.text for ln in lines if ln.stream == LogStream.SYSTEM]
    return out, err, system


def _unnamed(line: str) -> str:
    """A Prefect log line without its time and the run names it generated."""
    return re.sub(r"'[^']*'", "'NAME'", re.sub(r"\d\d:\d\d:\d\d\.\d+ ", "", line))


def _flow_run(c: Client, job: Any) -> str:
    texts = [ln.text for ln in c.jobs.logs(job)]
    return next(t.split("=", 1)[1] for t in texts if t.startswith("flow-run="))


def test_a_warm_job_gives_what_a_cold_one_gives(
    cluster: dict[str, Any], project: str, pair: None
) -> None:
    c: Client = cluster["client"]
    prefect = cluster["prefect"]
    from mlflow.tracking import MlflowClient

    ml = MlflowClient(tracking_uri=f"sqlite:///{cluster['data'] / 'mlflow.db'}")
    for mode, state, code in [
        ("ok", JobState.SUCCEEDED, 0),
        ("fail", JobState.FAILED, 1),
        ("exit", JobState.FAILED, 7),
    ]:
        warm = c.jobs.submit("warm", project, {"mode": mode}, selector={"runtime": "warm"})
        cold = c.jobs.submit("warm", project, {"mode": mode}, selector={"runtime": "cold"})
        warm, cold = c.jobs.wait(warm, timeout=180), c.jobs.wait(cold, timeout=180)
        w_out, w_err, w_sys = _streams(c, warm)
        c_out, c_err, c_sys = _streams(c, cold)
        assert warm.state == cold.state == state, (mode, warm.state_reason, w_err, w_sys)
        assert warm.exit_code == cold.exit_code == code
        assert warm.agent == "agents/warm-agent" and cold.agent == "agents/cold-agent"
        assert any(t.startswith("in the warm runtime") for t in w_sys), w_sys
        assert not any("warm runtime" in t for t in c_sys), c_sys
        assert w_out == c_out, mode
        assert "a thread's last words" in w_out and "total 6" in w_out
        # Prefect's lines carry times and generated run names; its tasks run concurrently.
        assert sorted(map(_unnamed, w_err)) == sorted(map(_unnamed, c_err)), (w_err, c_err)
        assert _unnamed(warm.state_reason) == _unnamed(cold.state_reason)

        w_run, c_run = ml.get_run(warm.mlflow_run_id), ml.get_run(cold.mlflow_run_id)
        assert w_run.info.status == c_run.info.status != "RUNNING", mode
        assert w_run.data.metrics == c_run.data.metrics == {"total": 6.0}

        # Prefect: task runs are recorded from the events the job sent, its logs from its
        # log worker; both are flushed before a warm child leaves.
        for job in (warm, cold):
            fid = _flow_run(c, job)
            flow = _post(f"{prefect}/flow_runs/filter", {"flow_runs": {"id": {"any_": [fid]}}})
            assert flow[0]["state_type"] == "COMPLETED"

            def tasks(fid: str = fid) -> Any:
                runs = _post(f"{prefect}/task_runs/filter", {"flow_runs": {"id": {"any_": [fid]}}})
                done = [r for r in runs if r["state_type"] == "COMPLETED"]
                return runs if len(done) == 3 else None

            _until(tasks, 60, f"3 completed task runs of {job.name}")
            logs = _post(f"{prefect}/logs/filter", {"logs": {"flow_run_id": {"any_": [fid]}}})
            said = sorted(r["message"] for r in logs if "double says" in r["message"])
            assert said == ["double says 0", "double says 1", "double says 2"], job.name

    # What the warm runtime cannot honour runs cold, saying why; the output is the same.
    for entry, why in [("shell", "not a plain"), ("isolated", "asks for isolation")]:
        job = c.jobs.submit("warm", project, entry=entry, selector={"runtime": "warm"})
        job = c.jobs.wait(job, timeout=120)
        out, _err, system = _streams(c, job)
        assert job.state == JobState.SUCCEEDED, job.state_reason
        assert any(t.startswith("in a fresh interpreter") and why in t for t in system), system
        assert "helper 42" in out


def test_warm_jobs_draw_their_own_random_numbers(cluster: dict[str, Any], project: str) -> None:
    """Forked from one parent, children would share NumPy's global generator state: each
    is seeded from the OS, as a fresh interpreter is."""
    c: Client = cluster["client"]
    warmed(cluster["agent"])
    draws = []
    for _ in range(2):
        job = c.jobs.wait(c.jobs.submit("warm", project, entry="rand"), timeout=120)
        assert job.state == JobState.SUCCEEDED, job.state_reason
        texts = [ln.text for ln in c.jobs.logs(job)]
        assert any(t.startswith("in the warm runtime") for t in texts), texts
        draws.append([t for t in texts if t.startswith(("draws ", "stdlib "))])
    numpy_draws, stdlib_draws = zip(*draws, strict=True)
    assert numpy_draws[0] != numpy_draws[1], draws
    assert stdlib_draws[0] != stdlib_draws[1], draws


def _pids(c: Client, job: Any) -> dict[str, int]:
    def found() -> dict[str, int] | None:
        for ln in c.jobs.logs(job):
            if ln.text.startswith("pid="):
                return {k: int(v) for k, v in (w.split("=") for w in ln.text.split())}
        return None

    return _until(found, 60, "the job's pids")  # type: ignore[no-any-return]


def _gone(*pids: int, timeout: float = 10) -> None:
    _until(lambda: not any(alive(p) for p in pids), timeout, f"processes {pids} to end")


def test_a_crash_a_cancel_and_a_dead_runtime(cluster: dict[str, Any], project: str) -> None:
    c: Client = cluster["client"]
    warmed(cluster["agent"])
    # A job that crashes takes only its child: the next job forks from the same parent.
    crash = c.jobs.wait(c.jobs.submit("warm", project, entry="crash"), timeout=120)
    assert crash.state == JobState.FAILED and crash.exit_code == 139, crash.state_reason
    assert "SIGSEGV" in crash.state_reason
    first = c.jobs.submit("warm", project, entry="sleepy")
    pids = _pids(c, first)
    assert any("in the warm runtime" in ln.text for ln in c.jobs.logs(first))

    # Cancel ends the job's whole process group, as cold.
    c.jobs.cancel(first)
    assert c.jobs.wait(first, timeout=60).state == JobState.CANCELLED
    _gone(pids["pid"], pids["child"])
    parent = pids["parent"]
    assert alive(parent)

    # The parent killed: its running job ends as killed, the next job gets a new parent.
    second = c.jobs.submit("warm", project, entry="sleepy")
    pids = _pids(c, second)
    assert pids["parent"] == parent
    os.kill(parent, signal.SIGKILL)
    ended = c.jobs.wait(second, timeout=60)
    assert ended.state == JobState.FAILED and ended.exit_code == 137, ended.state_reason
    _gone(pids["pid"], pids["child"])
    # Started again at once (meanwhile jobs run cold), it takes the next job.
    warmed(cluster["agent"], times=2)
    third = c.jobs.submit("warm", project, entry="sleepy")
    pids = _pids(c, third)
    assert pids["parent"] != parent and alive(pids["parent"])
    assert any("in the warm runtime" in ln.text for ln in c.jobs.logs(third))
    c.jobs.cancel(third)
    c.jobs.wait(third, timeout=60)


def test_a_killed_agent_leaves_no_warm_job_behind(cluster: dict[str, Any], project: str) -> None:
    c: Client = cluster["client"]
    agent: Proc = cluster["agent"]
    warmed(agent)
    job = c.jobs.submit("warm", project, entry="sleepy")
    pids = _pids(c, job)
    assert any("in the warm runtime" in ln.text for ln in c.jobs.logs(job))
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(30)
    _gone(pids["pid"], pids["child"], pids["parent"])
