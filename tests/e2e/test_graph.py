"""A declarative task-graph entry point run by a real agent: plugin tasks, Prefect flow,
independent steps concurrent, results in the log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from brinell import Client, InvalidArgumentError, JobState

TASKS = '''
"""Graph test tasks."""
import time

from brinell import task


@task
def numbers(n: int) -> list[int]:
    """The first n numbers."""
    return list(range(n))


@task
def slow_sum(values: list[int], delay: float = 0.0) -> int:
    time.sleep(delay)
    return sum(values)


@task
def slow_max(values: list[int], delay: float = 0.0) -> int:
    time.sleep(delay)
    return max(values)


@task
def report(total: int, largest: int) -> str:
    line = f"graph result total={total} largest={largest}"
    print(line, flush=True)
    return line
'''

MLPROJECT = """\
name: graph-demo
entry_points:
  main:
    parameters:
      n: {type: int, default: 5}
      delay: {type: float, default: 1.0}
    graph: graph.yaml
"""

GRAPH = """\
steps:
  values: {task: numbers, args: {n: $n}}
  total: {task: slow_sum, args: {values: $values, delay: $delay}}
  largest: {task: slow_max, args: {values: $values, delay: $delay}}
  out: {task: report, args: {total: $total, largest: $largest}}
"""


def test_graph_entry_point_runs_on_an_agent(cluster: dict[str, Any], tmp_path: Path) -> None:
    c: Client = cluster["client"]
    plugin = tmp_path / "graph-plugin"
    (plugin / "graph_tasks").mkdir(parents=True)
    (plugin / "brinell-plugin.yaml").write_text(
        "name: graph-tasks\nversion: 0.1.0\npackage: graph_tasks\ndescription: test\n"
    )
    (plugin / "graph_tasks" / "__init__.py").write_text("")
    (plugin / "graph_tasks" / "tasks.py").write_text(TASKS)
    c.plugins.push(plugin)
    project = tmp_path / "graph-demo"
    project.mkdir()
    (project / "MLproject").write_text(MLPROJECT)
    (project / "graph.yaml").write_text(GRAPH)
    c.experiments.create("graphs")
    ep, _ = c.entry_points.push(project)

    job = c.jobs.submit("graphs", ep, {"n": 10, "delay": 2.0}, timeout=300)
    final = c.jobs.wait(job, timeout=240)
    texts = [ln.text for ln in c.jobs.logs(job)]
    assert final.state == JobState.SUCCEEDED, (final.state_reason, texts[-30:])
    assert "graph result total=45 largest=9" in texts
    assert [p.plugin for p in final.plugins] == ["plugins/graph-tasks"]
    for step in ("values", "total", "largest", "out"):
        assert any(t.startswith(f"step {step} done") for t in texts), (step, texts)

    # What the steps returned is visible: at the end of the log, and in the job's MLflow run
    # (numbers as metrics, text as tags); the list of values is neither a scalar nor a dict.
    end = texts[texts.index("outputs:") :]
    assert "  total = 45" in end and "  largest = 9" in end
    assert "  out = 'graph result total=45 largest=9'" in end
    assert not any("values" in t for t in end)
    from mlflow.tracking import MlflowClient

    run = MlflowClient(f"sqlite:///{cluster['data'] / 'mlflow.db'}").get_run(final.mlflow_run_id)
    assert run.data.metrics == {"total": 45.0, "largest": 9.0}
    assert run.data.tags["brinell.output.out"] == "graph result total=45 largest=9"
    assert run.data.params == {"n": "10", "delay": "2.0"}

    with pytest.raises(InvalidArgumentError) as info:
        c.jobs.submit("graphs", ep, {"n": 1.5})
    assert "'n'" in str(info.value)
