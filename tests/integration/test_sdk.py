"""The SDK and the CLI against a real control plane on port 0 (SQLite)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from brinell import (
    AlreadyExistsError,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    JobState,
    NotFoundError,
)
from brinell.v1 import job_pb2
from tests.conftest import CLI, SLEEPY_MLPROJECT, ServerThread, make_server, run_cli
from tests.simagent import SimAgent


@pytest.fixture
def srv(tmp_path: Path) -> Any:
    s = make_server(tmp_path)
    yield s
    s.stop()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    d = tmp_path / "sleepy"
    d.mkdir()
    (d / "MLproject").write_text(SLEEPY_MLPROJECT)
    (d / "main.py").write_text("print('hi')\n")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    return d


def test_sdk_round_trip(srv: ServerThread, project: Path) -> None:
    with Client(srv.target, timeout=10) as c:
        exp = c.experiments.create("sdk", description="d", labels={"k": "v"})
        assert exp.id == "sdk" and exp.labels == {"k": "v"}
        with pytest.raises(AlreadyExistsError):
            c.experiments.create("sdk")
        # get_or_create returns the existing one untouched, and creates what is missing.
        assert c.experiments.get_or_create("sdk", description="other") == exp
        made = c.experiments.get_or_create("sdk-new", description="n", labels={"a": "b"})
        assert (made.id, made.description, made.labels) == ("sdk-new", "n", {"a": "b"})
        assert c.experiments.get("sdk-new") == made
        c.experiments.delete("sdk-new")
        with pytest.raises(NotFoundError):
            c.experiments.get("missing")
        assert c.experiments.update("sdk", description="new").description == "new"
        assert [e.id for e in c.experiments.list(filter="labels.k=v")] == ["sdk"]

        ep, rev = c.entry_points.push(project)
        assert ep.id == "sleepy" and rev.digest.startswith("sha256:")
        ep2, rev2 = c.entry_points.push(project)
        assert rev2.digest == rev.digest and ep2.revision_count == 1  # deterministic packing

        with pytest.raises(InvalidArgumentError) as info:
            c.jobs.submit(exp, ep, {"seconds": "soon", "extra": 1})
        assert len(info.value.problems) == 3, info.value.problems  # seconds, extra, label

        job = c.jobs.submit(exp, ep, {"label": "x", "seconds": 0.5}, timeout=30, request_id="same")
        assert (
            c.jobs.submit(
                exp, ep, {"label": "x", "seconds": 0.5}, timeout=30, request_id="same"
            ).name
            == job.name
        )
        assert job.state == JobState.QUEUED and job.parameters["seconds"] == "0.5"
        assert [j.name for j in c.jobs.list(filter="state=QUEUED")] == [job.name]

        agent = SimAgent(srv.target, "sdk-agent")
        try:
            a = agent.next("assignment")
            seen: list[JobState] = []
            watcher = threading.Thread(
                target=lambda: seen.extend(j.state for j in c.jobs.watch(job))
            )
            watcher.start()
            agent.update(job.name, a.attempt, job_pb2.JOB_STATE_RUNNING)
            agent.logs(job.name, a.attempt, [(1, "line one"), (2, "line two")])
            agent.update(job.name, a.attempt, job_pb2.JOB_STATE_SUCCEEDED, exit_code=0)
            final = c.jobs.wait(job, timeout=10)
            watcher.join(10)
            assert final.state == JobState.SUCCEEDED and final.state.is_final
            assert seen[-1] == JobState.SUCCEEDED
            assert [ln.text for ln in c.jobs.logs(job)] == ["line one", "line two"]
            assert [ln.text for ln in c.jobs.logs(job, start_offset=1)] == ["line two"]
            (listed,) = c.agents.list()
            assert listed.id == "sdk-agent"
        finally:
            agent.close()
        with pytest.raises(FailedPreconditionError):
            c.experiments.delete("sdk")


def test_cli_commands(srv: ServerThread, project: Path) -> None:
    run_cli(srv.target, "experiment", "create", "cli")
    pushed = json.loads(run_cli(srv.target, "--json", "entrypoint", "push", str(project)).stdout)
    assert "sha256:" in json.dumps(pushed)
    job = json.loads(
        run_cli(srv.target, "--json", "job", "submit", "cli", "sleepy", "-p", "label=x").stdout
    )
    name = job["name"] if "name" in job else job["job"]["name"]
    listed = json.loads(run_cli(srv.target, "--json", "job", "list").stdout)
    assert name in json.dumps(listed)
    got = json.loads(run_cli(srv.target, "--json", "job", "get", name).stdout)
    assert got["state"] in ("QUEUED", "JOB_STATE_QUEUED")
    # The root options work after the subcommand too (BRINELL_TARGET points nowhere here).
    for args in (["-t", srv.target, "--json"], [f"--target={srv.target}", "--json"]):
        after = run_cli("127.0.0.1:1", "job", "get", name, *args).stdout
        assert json.loads(after)["name"] == name
    exps = json.loads(
        run_cli("127.0.0.1:1", "experiment", "list", "--target", srv.target, "--json").stdout
    )
    assert "cli" in [e["id"] for e in exps]
    run_cli(srv.target, "job", "cancel", name, "--reason", "cli test")
    waited = run_cli(srv.target, "job", "wait", name, check=False)
    assert waited.returncode == 1  # cancelled is not success
    bad = run_cli(srv.target, "job", "submit", "cli", "sleepy", "-p", "rounds=x", check=False)
    assert bad.returncode == 2
    assert "INVALID_ARGUMENT" in bad.stderr and "rounds" in bad.stderr
    assert "Traceback" not in bad.stderr
    named = run_cli(srv.target, "experiment", "create", "Bad Name!", check=False)
    assert named.returncode == 2
    assert "  experiment_id: experiment id 'Bad Name!' is invalid" in named.stderr  # never "  : "
    missing = run_cli(srv.target, "experiment", "get", "nope", check=False)
    assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr
    agents = run_cli(srv.target, "agent", "list")
    assert agents.returncode == 0


def test_entrypoint_push_takes_the_id_from_the_mlproject_name(
    srv: ServerThread, tmp_path: Path
) -> None:
    folder = tmp_path / "fail"
    folder.mkdir()
    (folder / "MLproject").write_text(
        "name: failer\nentry_points:\n  main:\n    command: 'false'\n"
    )
    pushed = run_cli(srv.target, "entrypoint", "push", str(folder)).stdout
    assert "pushed entryPoints/failer " in pushed
    assert "id failer from the MLproject's name (--id sets another)" in pushed
    explicit = run_cli(srv.target, "entrypoint", "push", str(folder), "--id", "fail").stdout
    assert "pushed entryPoints/fail " in explicit and "--id sets another" not in explicit


def test_job_list_never_wraps_ids_and_is_plain_when_piped(srv: ServerThread, project: Path) -> None:
    run_cli(srv.target, "experiment", "create", "wrap")
    run_cli(srv.target, "entrypoint", "push", str(project))
    ids = [
        json.loads(
            run_cli(srv.target, "--json", "job", "submit", "wrap", "sleepy", "-p", "label=x").stdout
        )["name"].removeprefix("jobs/")
        for _ in range(2)
    ]
    # Piped: a header, then one tab-separated line per job, nothing cut or wrapped.
    piped = run_cli(srv.target, "job", "list").stdout.splitlines()
    assert piped[0].split("\t") == [
        "ID", "STATE", "EXPERIMENT", "ENTRY POINT", "AGENT", "CREATED", "DURATION", "REASON"
    ]  # fmt: skip
    rows = [line.split("\t") for line in piped[1:]]
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert all(r[1] == "QUEUED" and r[2] == "wrap" for r in rows)
    assert all(r[-1] == "no connected agent serves queue 'default'" for r in rows)

    # On an 80-column terminal: a table whose ids stay whole on one line.
    env = dict(os.environ, BRINELL_TARGET=srv.target, TTY_COMPATIBLE="1", COLUMNS="80")
    term = subprocess.run([*CLI, "job", "list"], capture_output=True, text=True, env=env)
    assert term.returncode == 0, term.stderr
    lines = term.stdout.splitlines()
    assert all(any(i in line for line in lines) for i in ids), term.stdout
    assert "\t" not in term.stdout
