"""A chain with real MLflow: the dependent's parameters get its dependency's run id and the
model version that job registered (issue 10)."""

from __future__ import annotations

from typing import Any

from brinell import Client, JobState

PROJECT = """\
name: chained
entry_points:
  main:
    command: "python make_model.py"
  use:
    parameters:
      run: {type: string}
      model: {type: string}
    command: "python -c 'import sys; print(\\"got\\", sys.argv[1], sys.argv[2])' {run} {model}"
"""
MAKE_MODEL = """\
import os
import mlflow

run_id = os.environ["MLFLOW_RUN_ID"]
with mlflow.start_run(run_id=run_id) as run:
    mlflow.log_text("weights", "model/weights.txt")
    source = run.info.artifact_uri + "/model"
client = mlflow.MlflowClient()
client.create_registered_model("chained-model")
client.create_model_version("chained-model", source=source, run_id=run_id)
print("registered")
"""


def test_a_dependent_gets_the_run_id_and_the_registered_model(cluster: dict[str, Any]) -> None:
    c: Client = cluster["client"]
    project = cluster["tmp"] / "chained"
    project.mkdir()
    (project / "MLproject").write_text(PROJECT)
    (project / "make_model.py").write_text(MAKE_MODEL)
    c.experiments.create("chains")
    ep, _ = c.entry_points.push(project)
    first = c.jobs.submit("chains", ep)
    second = c.jobs.submit(
        "chains",
        ep,
        {"run": "{deps.maker.run_id}", "model": "{deps.maker.model}"},
        entry="use",
        depends_on={"maker": first},
    )
    assert second.state == JobState.PENDING
    done = c.jobs.wait(second, timeout=180)
    assert done.state == JobState.SUCCEEDED, done.state_reason
    made = c.jobs.get(first)
    assert done.parameters == {"run": made.mlflow_run_id, "model": "models:/chained-model/1"}
    assert [ln.text for ln in c.jobs.logs(done) if ln.text.startswith("got")] == [
        f"got {made.mlflow_run_id} models:/chained-model/1"
    ]
