"""Which commands the warm runtime runs, and what sends a job to a fresh interpreter."""

from __future__ import annotations

from pathlib import Path

import pytest

from brinell.agent.__main__ import parse_args
from brinell.agent.daemon import make_executor
from brinell.agent.executor import ProcessExecutor
from brinell.agent.warm import Launch, WarmRuntime, launch_for

PY = "/opt/venv/bin/python"


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text("print('hi')\n")
    return tmp_path


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("python main.py", Launch("script", "main.py", ("main.py",))),
        (
            "python3 -u main.py --name 'a b' --x=1",
            Launch("script", "main.py", ("main.py", "--name", "a b", "--x=1")),
        ),
        (f"{PY} main.py", Launch("script", "main.py", ("main.py",))),
        (
            "python -m brinell.graph 'graph.yaml'",
            Launch("module", "brinell.graph", ("brinell.graph", "graph.yaml")),
        ),
        (
            "python main.py 'it''s $HOME; ok'",
            Launch("script", "main.py", ("main.py", "its $HOME; ok")),
        ),
    ],
)
def test_plain_python_commands_run_warm(project: Path, command: str, expected: Launch) -> None:
    launch = launch_for(command, PY, project)
    assert isinstance(launch, Launch)
    assert (launch.kind, Path(launch.target).name, launch.argv) == (
        expected.kind,
        Path(expected.target).name,
        expected.argv,
    )


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("python main.py && echo done", "not a plain"),
        ("python main.py > out.txt", "not a plain"),
        ("python main.py $HOME", "not a plain"),
        ('python main.py "$HOME"', "not a plain"),
        ("python main.py *.csv", "not a plain"),
        ("X=1 python main.py", "not Python"),
        ("bash run.sh", "not Python"),
        ("python -c 'print(1)'", "option '-c'"),
        ("python -X importtime main.py", "option '-X'"),
        ("python missing.py", "not a file"),
        ("python", "interactive"),
        ("python 'unclosed", "not a plain"),
    ],
)
def test_everything_else_runs_cold_saying_why(project: Path, command: str, why: str) -> None:
    reason = launch_for(command, PY, project)
    assert isinstance(reason, str) and why in reason, reason


def test_a_job_the_parent_would_shadow_or_an_interpreter_setting_runs_cold(project: Path) -> None:
    runtime = WarmRuntime(env={"PATH": "/bin", "PYTHONHASHSEED": "0"})
    runtime.names = frozenset({"yaml", "mlflow"})
    launch = launch_for("python main.py", PY, project)
    assert isinstance(launch, Launch)
    env = {"PATH": "/bin", "PYTHONHASHSEED": "0", "PYTHONPATH": ""}
    assert runtime.cold_reason(launch, env, project) == ""
    # The parent's hash seed is fixed: a job that sets another needs its own interpreter.
    assert "PYTHONHASHSEED" in runtime.cold_reason(launch, {**env, "PYTHONHASHSEED": "1"}, project)
    assert "PYTHONWARNINGS" in runtime.cold_reason(
        launch, {**env, "PYTHONWARNINGS": "error"}, project
    )
    # A module of the job's, or of a plugin on PYTHONPATH, named like one the parent imported.
    plugin = project / "plugin"
    (plugin / "mlflow").mkdir(parents=True)
    assert "mlflow" in runtime.cold_reason(launch, {**env, "PYTHONPATH": str(plugin)}, project)
    (project / "yaml.py").write_text("")
    assert "yaml" in runtime.cold_reason(launch, env, project)


def test_the_warm_runtime_is_an_agent_option(tmp_path: Path) -> None:
    common = ["--control-plane", "127.0.0.1:1", "--work-dir", str(tmp_path)]
    warm = make_executor(parse_args([*common, "--warm-import", "json"]))
    cold = make_executor(parse_args([*common, "--no-warm-runtime"]))
    assert isinstance(warm, ProcessExecutor) and isinstance(cold, ProcessExecutor)
    assert warm.warm is not None and warm.warm.modules == ("json",)
    assert cold.warm is None
