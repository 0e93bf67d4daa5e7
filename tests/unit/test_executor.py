"""ProcessExecutor against real shell processes: output, exit codes, timeouts and cancels."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
from pathlib import Path

import pytest

from brinell.agent.executor import (
    CancelSignal,
    ExecutionResult,
    Outcome,
    ProcessExecutor,
    RunSpec,
    Stream,
    build_env,
    group_members,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups via /proc")


def _project(tmp_path: Path, entries: str) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "MLproject").write_text("name: t\nentry_points:\n" + entries)
    return root


def _alive(pid: int) -> bool:
    """True while ``pid`` runs and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


class Run:
    """Runs one entry and records everything the executor reports."""

    def __init__(self, root: Path, entry: str = "main", **kwargs: object) -> None:
        self.lines: list[tuple[Stream, str]] = []
        self.pids: list[int] = []
        self.spec = RunSpec(
            project_root=root,
            entry=entry,
            parameters=kwargs.pop("parameters", {}),  # type: ignore[arg-type]
            job_id="job1",
            attempt=3,
            env=kwargs.pop("env", {}),  # type: ignore[arg-type]
            timeout=kwargs.pop("timeout", None),  # type: ignore[arg-type]
            grace_period=kwargs.pop("grace_period", 5.0),  # type: ignore[arg-type]
        )
        self.cancel = CancelSignal()

    async def run(self) -> ExecutionResult:
        return await ProcessExecutor().run(
            self.spec,
            on_line=lambda s, t: self.lines.append((s, t)),
            on_start=lambda pid, _digest: self.pids.append(pid),
            cancel=self.cancel,
        )

    def text(self, stream: Stream) -> list[str]:
        return [t for s, t in self.lines if s == stream]


def test_success_lines_in_order_and_quoted_parameters(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "for i in range(300):\n"
        "    print('out', i)\n"
        "    print('err', i, file=sys.stderr)\n"
        "print('arg', repr(sys.argv[1]))\n"
        "print('job', os.environ['BRINELL_JOB'], os.environ['BRINELL_ATTEMPT'])\n"
        "print('extra', os.environ['EXTRA'])\n"
        "print('noeol', end='')\n"
    )
    (tmp_path / "s.py").write_text(script)
    root = _project(
        tmp_path,
        "  main:\n"
        "    parameters:\n"
        "      msg: {type: string, default: hello}\n"
        f"    command: python {tmp_path / 's.py'} {{msg}}\n",
    )
    run = Run(root, parameters={"msg": 'it\'s $HOME; `x` "y"'}, env={"EXTRA": "yes"})
    result = asyncio.run(run.run())

    assert result == ExecutionResult(Outcome.SUCCEEDED, 0, "")
    out = run.text(Stream.STDOUT)
    assert out[:300] == [f"out {i}" for i in range(300)]
    assert out[300] == "arg " + repr('it\'s $HOME; `x` "y"')
    assert out[301] == "job jobs/job1 3"
    assert out[302:] == ["extra yes", "noeol"]
    assert run.text(Stream.STDERR) == [f"err {i}" for i in range(300)]
    system = run.text(Stream.SYSTEM)
    assert system[0].startswith("running: python ")
    assert system[-1] == "exit code 0"
    assert len(run.pids) == 1


def test_python_is_the_agents_interpreter(tmp_path: Path) -> None:
    root = _project(
        tmp_path, "  main:\n    command: python -c 'import sys; print(sys.executable)'\n"
    )
    run = Run(root)
    assert asyncio.run(run.run()).outcome is Outcome.SUCCEEDED
    assert Path(run.text(Stream.STDOUT)[0]).parent == Path(sys.executable).parent


def test_env_order(tmp_path: Path) -> None:
    spec = RunSpec(
        project_root=tmp_path,
        entry="main",
        parameters={},
        job_id="j",
        attempt=1,
        env={"A": "assignment", "PREFECT_API_URL": "from-assignment"},
        prefect_api_url="http://127.0.0.1:1/api",
    )
    env = build_env(spec, base={"A": "agent", "PATH": "/usr/bin"}, python="/venv/bin/python")
    assert env["A"] == "assignment"
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:1/api"
    assert env["PATH"] == "/venv/bin" + os.pathsep + "/usr/bin"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert (env["BRINELL_JOB"], env["BRINELL_ATTEMPT"]) == ("jobs/j", "1")
    assert "PREFECT_UI_URL" not in env  # Prefect's default link, for a server with a UI
    no_ui = dataclasses.replace(spec, prefect_ui_url="")
    assert build_env(no_ui, base={}, python="/venv/bin/python")["PREFECT_UI_URL"] == ""


def test_nonzero_exit_fails_with_code(tmp_path: Path) -> None:
    root = _project(tmp_path, "  main:\n    command: echo bye; exit 3\n")
    run = Run(root)
    result = asyncio.run(run.run())
    assert result == ExecutionResult(Outcome.FAILED, 3, "exit code 3")
    assert run.text(Stream.STDOUT) == ["bye"]
    assert run.text(Stream.SYSTEM)[-1] == "exit code 3"


def test_a_failure_says_the_last_error_line(tmp_path: Path) -> None:
    root = _project(tmp_path, "  main:\n    command: python fail.py\n")
    (root / "fail.py").write_text(
        "import sys\nprint('working')\nsys.stderr.write('warning: x\\n\\n')\n"
        "raise ValueError('boom')\n"
    )
    run = Run(root)
    result = asyncio.run(run.run())
    assert result == ExecutionResult(Outcome.FAILED, 1, "exit code 1: ValueError: boom")
    assert run.text(Stream.STDERR)[0] == "warning: x"
    assert run.text(Stream.SYSTEM)[-1] == "exit code 1"  # the log says it once, plainly

    (tmp_path / "long").mkdir()
    long = _project(tmp_path / "long", "  main:\n    command: printf %0600d 0 >&2; exit 2\n")
    result = asyncio.run(Run(long).run())
    assert result.message == "exit code 2: " + "0" * 499 + "…"


def test_bad_parameters_fail_before_start(tmp_path: Path) -> None:
    root = _project(tmp_path, "  main:\n    parameters:\n      n: int\n    command: echo {n}\n")
    run = Run(root, parameters={"n": "many"})
    result = asyncio.run(run.run())
    assert result.outcome is Outcome.FAILED
    assert result.exit_code is None
    assert "not an int" in result.message
    assert run.pids == []


def test_missing_mlproject_fails(tmp_path: Path) -> None:
    run = Run(tmp_path)
    result = asyncio.run(run.run())
    assert result.outcome is Outcome.FAILED
    assert "no MLproject" in result.message


def test_timeout_kills_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    root = _project(tmp_path, f"  main:\n    command: sleep 1000 & echo $! > {pidfile}; wait\n")
    run = Run(root, timeout=0.5, grace_period=2.0)
    started = time.monotonic()
    result = asyncio.run(run.run())
    elapsed = time.monotonic() - started
    assert result.outcome is Outcome.TIMED_OUT
    assert result.message == "timed out after 0.5s"
    assert result.exit_code is not None
    assert elapsed < 0.5 + 2.0 + 1.5
    assert not _alive(int(pidfile.read_text()))
    assert group_members(run.pids[0]) == []
    assert any("SIGTERM" in t for t in run.text(Stream.SYSTEM))


def _cancel_scenario(run: Run, after: float, grace: float | None = None) -> ExecutionResult:
    async def scenario() -> ExecutionResult:
        task = asyncio.create_task(run.run())
        await asyncio.sleep(after)
        run.cancel.cancel("user asked", grace_period=grace)
        return await task

    return asyncio.run(scenario())


def test_cancel_stops_shell_and_sleep_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    root = _project(
        tmp_path,
        "  main:\n"
        f"    command: sleep 1000 & echo $! >> {pids}; sleep 1000 & echo $! >> {pids}; "
        f"echo started; sleep 1000\n",
    )
    run = Run(root, grace_period=3.0)
    started = time.monotonic()
    result = _cancel_scenario(run, after=0.5)
    elapsed = time.monotonic() - started
    assert result.outcome is Outcome.CANCELLED
    assert result.message == "cancelled: user asked"
    # SIGTERM was enough: the shell died of it (128 + 15).
    assert result.exit_code == 143
    assert elapsed < 0.5 + 1.5
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 2
    assert not any(_alive(p) for p in [*children, run.pids[0]])
    assert group_members(run.pids[0]) == []
    assert run.text(Stream.STDOUT) == ["started"]
    assert not any("SIGKILL" in t for t in run.text(Stream.SYSTEM))


def test_cancel_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The shell ignores TERM, and its children inherit the ignored disposition.
    root = _project(
        tmp_path,
        "  main:\n"
        f"    command: trap '' TERM; sleep 1000 & echo $! >> {pids}; echo ready; sleep 1000\n",
    )
    run = Run(root, grace_period=30.0)
    grace = 1.0
    started = time.monotonic()
    result = _cancel_scenario(run, after=0.5, grace=grace)
    elapsed = time.monotonic() - started
    assert result.outcome is Outcome.CANCELLED
    assert result.exit_code == 137
    assert 0.5 + grace <= elapsed < 0.5 + grace + 1.5
    assert not _alive(int(pids.read_text()))
    assert group_members(run.pids[0]) == []
    system = run.text(Stream.SYSTEM)
    assert any("SIGKILL" in t for t in system)
    assert system[-1] == "killed by SIGKILL (exit code 137)"


def test_leftover_background_children_end_with_the_attempt(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    root = _project(tmp_path, f"  main:\n    command: sleep 1000 & echo $! > {pids}; echo done\n")
    run = Run(root, grace_period=2.0)
    started = time.monotonic()
    result = asyncio.run(run.run())
    assert result.outcome is Outcome.SUCCEEDED
    assert time.monotonic() - started < 3.0
    assert not _alive(int(pids.read_text()))
    assert run.text(Stream.STDOUT) == ["done"]


def test_cancel_before_start(tmp_path: Path) -> None:
    root = _project(tmp_path, "  main:\n    command: echo never\n")
    run = Run(root)
    run.cancel.cancel("early")
    result = asyncio.run(run.run())
    assert result.outcome is Outcome.CANCELLED
    assert run.pids == []


def test_long_lines_are_split(tmp_path: Path) -> None:
    root = _project(tmp_path, "  main:\n    command: python -c 'print(\"x\" * 100000)'\n")
    run = Run(root)
    assert asyncio.run(run.run()).outcome is Outcome.SUCCEEDED
    out = run.text(Stream.STDOUT)
    assert "".join(out) == "x" * 100000
    assert len(out) == 4
