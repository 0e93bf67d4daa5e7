"""CLI/SDK -> control plane -> agent -> Prefect/MLflow -> back, with real processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from brinell import Client, JobState
from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import start_agent, start_server, wait_connected

ROOT = Path(__file__).resolve().parents[2]

SLEEPER = """\
name: sleeper
entry_points:
  main:
    parameters:
      seconds: {type: float, default: 1000}
      code: {type: int, default: 0}
    command: "sh -c 'echo pid=$$; sleep {seconds} & echo child=$!; wait; echo slept; exit {code}'"
  stubborn:
    command: "sh -c 'trap \\"echo ignoring TERM\\" TERM; echo pid=$$; while true; do sleep 0.1; done'"
  crash:
    command: "python -c 'import json; json.loads(\\"{\\")'"
  chatty:
    parameters:
      lines: {type: int, default: 2000}
    command: "python -c 'import sys; [print(\\"line\\", i) for i in range(int(sys.argv[1]))]' {lines}"
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie waiting for its parent to reap it is gone for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


@pytest.fixture
def sleeper(cluster: dict[str, Any]) -> str:
    d = cluster["tmp"] / "sleeper"
    d.mkdir()
    (d / "MLproject").write_text(SLEEPER)
    cluster["client"].experiments.create("e2e")
    return cluster["client"].entry_points.push(d)[0].id


def pids(client: Client, job: Any, timeout: float = 30) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {}
        for ln in client.jobs.logs(job):
            key, sep, value = ln.text.partition("=")
            if sep and key in ("pid", "child") and value.isdigit():
                found[key] = int(value)
        if "pid" in found:
            return found
        time.sleep(0.1)
    raise AssertionError("the job never printed its pid")


def test_hello_world_end_to_end(cluster: dict[str, Any]) -> None:
    c: Client = cluster["client"]
    exp = c.experiments.create("hello", description="e2e")
    ep, rev = c.entry_points.push(ROOT / "examples" / "hello-world")
    job = c.jobs.submit(exp, ep, {"name": "Ada", "rounds": 4, "scale": 2.5}, timeout=300)
    assert job.mlflow_run_id
    final = c.jobs.wait(job, timeout=240)
    assert final.state == JobState.SUCCEEDED, (
        final.state_reason,
        [ln.text for ln in c.jobs.logs(job)],
    )
    assert final.exit_code == 0 and final.agent == "agents/e2e-agent"

    lines = list(c.jobs.logs(job))
    assert [ln.offset for ln in lines] == list(range(len(lines)))
    seqs = [ln.sequence for ln in lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    texts = [ln.text for ln in lines]
    start = next(i for i, t in enumerate(texts) if t.startswith("hello-world: start"))
    done = next(i for i, t in enumerate(texts) if t.startswith("hello-world done: score="))
    assert start < done
    assert any("letters('Ada')" in t for t in texts) and any("waves(4, 2.5)" in t for t in texts)
    # Prefect logs its flow run, but links to no UI: the Prefect server here serves none.
    assert any("Beginning flow run" in t for t in texts), texts
    assert not any("View at" in t for t in texts), [t for t in texts if "View at" in t]

    from mlflow.tracking import MlflowClient

    ml = MlflowClient(tracking_uri=f"sqlite:///{cluster['data'] / 'mlflow.db'}")
    run = ml.get_run(final.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"name": "Ada", "rounds": "4", "scale": "2.5"}
    score = float(texts[done].split("=")[1])
    assert run.data.metrics["score"] == pytest.approx(score)
    assert run.data.tags["brinell.job"] == job.name
    assert run.data.tags["brinell.entry_point_digest"] == rev.digest
    experiment = ml.get_experiment(run.info.experiment_id)
    assert experiment.name == "brinell/hello"


def test_cancel_kills_the_process_group_within_grace(cluster: dict[str, Any], sleeper: str) -> None:
    c: Client = cluster["client"]
    job = c.jobs.submit("e2e", sleeper, {"seconds": 1000})
    found = pids(c, job)
    assert alive(found["pid"]) and alive(found["child"])
    started = time.monotonic()
    c.jobs.cancel(job, reason="e2e cancel")
    final = c.jobs.wait(job, timeout=30)
    elapsed = time.monotonic() - started
    assert final.state == JobState.CANCELLED and final.state_reason == "e2e cancel"
    assert not alive(found["pid"]) and not alive(found["child"])
    assert elapsed < 2 + 3  # grace period 2 s, plus reporting slack

    stubborn = c.jobs.submit("e2e", sleeper, entry="stubborn")
    pid = pids(c, stubborn)["pid"]
    c.jobs.cancel(stubborn)
    assert c.jobs.wait(stubborn, timeout=30).state == JobState.CANCELLED
    assert not alive(pid)  # SIGTERM was ignored: SIGKILL after the grace period
    assert any("ignoring TERM" in ln.text for ln in c.jobs.logs(stubborn))


def test_timeout_and_failure(cluster: dict[str, Any], sleeper: str) -> None:
    c: Client = cluster["client"]
    slow = c.jobs.submit("e2e", sleeper, {"seconds": 1000}, timeout=1.5)
    failing = c.jobs.submit("e2e", sleeper, {"seconds": 0.1, "code": 3})
    t = c.jobs.wait(slow, timeout=60)
    assert t.state == JobState.TIMED_OUT
    pid = pids(c, slow)["pid"]
    assert not alive(pid)
    f = c.jobs.wait(failing, timeout=60)
    assert f.state == JobState.FAILED and f.exit_code == 3
    assert [ln.text for ln in c.jobs.logs(failing)][-2:] != []
    assert any(ln.text == "slept" for ln in c.jobs.logs(failing))


def test_many_log_lines_arrive_complete_and_in_order(cluster: dict[str, Any], sleeper: str) -> None:
    c: Client = cluster["client"]
    job = c.jobs.submit("e2e", sleeper, {"lines": 3000}, entry="chatty")
    followed = [ln.text for ln in c.jobs.logs(job, follow=True)]
    assert c.jobs.get(job).state == JobState.SUCCEEDED
    out = [t for t in followed if t.startswith("line ")]
    assert out == [f"line {i}" for i in range(3000)]


def test_a_200k_line_job_loses_nothing_and_reports_no_false_drops(
    cluster: dict[str, Any], sleeper: str
) -> None:
    """Issue 11: such a job got about 17 "the agent dropped N log line(s)" lines while its
    stream was connected the whole time (lines sent but not yet acknowledged were evicted
    beyond the 100,000-line buffer and counted as lost)."""
    c: Client = cluster["client"]
    n = 200_000
    job = c.jobs.wait(c.jobs.submit("e2e", sleeper, {"lines": n}, entry="chatty"), timeout=300)
    assert job.state == JobState.SUCCEEDED, job.state_reason
    lines = list(c.jobs.logs(job))
    assert not [ln.text for ln in lines if "dropped" in ln.text]
    seqs = [ln.sequence for ln in lines]
    assert seqs == list(range(1, len(lines) + 1))  # contiguous: nothing lost
    assert sum(ln.text.startswith("line ") for ln in lines) == n


def test_agent_reconnects_after_control_plane_restart(
    cluster: dict[str, Any], sleeper: str
) -> None:
    c: Client = cluster["client"]
    job = c.jobs.submit("e2e", sleeper, {"seconds": 4})
    pids(c, job)
    target = cluster["target"]
    cluster["server"].stop(signal_kill := 9)  # noqa: F841 - a crash, not a shutdown
    server, _ = start_server(cluster["data"], port=int(target.rsplit(":", 1)[1]))
    cluster["server"] = server
    final = c.jobs.wait(job, timeout=60)
    assert final.state == JobState.SUCCEEDED and final.attempt == 1
    texts = [ln.text for ln in c.jobs.logs(job)]
    assert "slept" in texts and texts.count("slept") == 1


def test_buf_curl_through_reflection(cluster: dict[str, Any]) -> None:
    buf = shutil.which("buf") or str(Path(sys.executable).parent / "buf")
    url = f"http://{cluster['target']}"
    listed = subprocess.run(
        [buf, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-services", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    for svc in (
        "brinell.v1.ExperimentService",
        "brinell.v1.JobService",
        "brinell.v1.AgentService",
        "brinell.v1.EntryPointService",
    ):
        assert svc in listed.stdout
    cluster["client"].experiments.create("via-buf")

    def list_experiments(*headers: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                buf,
                "curl",
                "--protocol",
                "grpc",
                "--http2-prior-knowledge",
                *headers,
                "-d",
                "{}",
                f"{url}/brinell.v1.ExperimentService/ListExperiments",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    # Reflection is open; the API needs the token as a header.
    anonymous = list_experiments()
    assert anonymous.returncode != 0 and "unauthenticated" in anonymous.stdout + anonymous.stderr
    called = list_experiments("-H", f"authorization: Bearer {ADMIN_TOKEN}")
    assert called.returncode == 0, called.stderr
    assert "experiments/via-buf" in called.stdout


def test_second_agent_process_gets_work(cluster: dict[str, Any], sleeper: str) -> None:
    c: Client = cluster["client"]
    other = start_agent(
        cluster["target"],
        cluster["tmp"] / "agent2",
        cluster["prefect"],
        agent_id="e2e-agent-2",
        slots=1,
    )
    try:
        wait_connected(c, "e2e-agent-2")
        jobs = [c.jobs.submit("e2e", sleeper, {"seconds": 1}) for _ in range(3)]
        finals = [c.jobs.wait(j, timeout=60) for j in jobs]
        assert all(f.state == JobState.SUCCEEDED for f in finals)
        assert {f.agent for f in finals} == {"agents/e2e-agent", "agents/e2e-agent-2"}
    finally:
        assert other.stop() == 0


def test_cli_submit_watch_shows_states_and_logs(cluster: dict[str, Any], sleeper: str) -> None:
    env = dict(os.environ, BRINELL_TARGET=cluster["target"])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "brinell.cli",
            "job",
            "submit",
            "e2e",
            sleeper,
            "-p",
            "seconds=0.2",
            "--watch",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "RUNNING" in out and "SUCCEEDED" in out
    assert "slept" in out  # the job's own output, streamed live
    failing = subprocess.run(
        [
            sys.executable,
            "-m",
            "brinell.cli",
            "job",
            "submit",
            "e2e",
            sleeper,
            "-p",
            "seconds=0",
            "-p",
            "code=4",
            "--watch",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert failing.returncode == 1 and "FAILED" in failing.stdout

    # A Python failure: the job's reason is the exception's line, the exit code said once.
    crashed = subprocess.run(
        [sys.executable, "-m", "brinell.cli", "job", "submit", "e2e", sleeper, "--entry", "crash"]
        + ["--watch"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert crashed.returncode == 1, crashed.stdout + crashed.stderr
    final = [ln for ln in crashed.stdout.splitlines() if " FAILED" in ln]
    assert len(final) == 1, crashed.stdout
    assert "FAILED - exit code 1: json.decoder.JSONDecodeError: Expecting property name" in final[0]
    assert final[0].count("exit code") == 1


def test_an_agent_keeps_only_its_newest_workspaces(cluster: dict[str, Any], sleeper: str) -> None:
    c: Client = cluster["client"]
    work = cluster["tmp"] / "pruner"
    agent = start_agent(
        cluster["target"], work, cluster["prefect"], "pruner", 1, "--queue", "prune",
        "--keep-workspaces", "2",
    )  # fmt: skip
    try:
        wait_connected(c, "pruner")
        jobs = [c.jobs.submit("e2e", sleeper, {"seconds": 0}, queue="prune") for _ in range(4)]
        for job in jobs:
            assert c.jobs.wait(job, timeout=120).state == JobState.SUCCEEDED
        # The pruning runs as each attempt ends: give the last one a moment, then check.
        kept: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            kept = sorted(p.name for p in (work / "jobs").iterdir())
            if len(kept) == 2:
                break
            time.sleep(0.1)
        assert kept == sorted(j.id for j in jobs[-2:])
    finally:
        agent.stop()


def test_an_agent_with_its_own_prefect_registers_once_prefect_is_up(
    cluster: dict[str, Any],
) -> None:
    c: Client = cluster["client"]
    work = cluster["tmp"] / "own-prefect"
    agent = start_agent(cluster["target"], work, "auto", "own-prefect", 1, "--queue", "own")
    try:
        wait_connected(c, "own-prefect", timeout=240)
        log = (work.parent / "own-prefect.log").read_text()
        # It took no job (it did not register) before its runtime answered.
        assert log.index("local Prefect server ready after") < log.index("registered as"), log
    finally:
        assert agent.stop() == 0
