"""The robustness experiment end to end: plugin push, train job, model registry, attack jobs
under defenses, metrics in MLflow, and reproducible results."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from brinell import Client, JobState

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "robustness"))
import experiment  # noqa: E402


def test_robustness_experiment(cluster: dict[str, Any], tmp_path: Path) -> None:
    c: Client = cluster["client"]
    results = experiment.run(
        c,
        attacks=("fgsm", "pgd"),
        defenses=("none", "feature_squeezing", "adversarial_training"),
        eps=(0.0, 0.1, 0.3),
        n_test=200,
        say=lambda _: None,
    )
    assert len(results.robust) == 6 and all(len(row) == 3 for row in results.robust.values())
    none_fgsm = results.robust[("fgsm", "none")]
    none_pgd = results.robust[("pgd", "none")]
    clean = results.clean[("fgsm", "none")]
    assert clean > 0.9
    assert none_fgsm[0.0] == clean  # ε = 0 changes nothing
    assert none_fgsm[0.3] < clean - 0.3  # the attack works at a large ε
    assert none_pgd[0.1] <= none_fgsm[0.1] + 1e-9  # PGD is at least as strong as FGSM
    # Adversarial training buys robustness against the attack it trained on.
    assert results.robust[("pgd", "adversarial_training")][0.1] > none_pgd[0.1]

    # Chained by the control plane: every attack job waited for the train job and loaded
    # the model from its run; the registered champion is that model.
    job = results.jobs[("fgsm", "none")]
    train = results.train_job
    assert job.depends_on == {"train": train.name}
    assert job.parameters["model_uri"] == f"runs:/{train.mlflow_run_id}/model"
    assert job.start_time is not None and train.end_time is not None
    assert job.start_time >= train.end_time
    mv = c.models.resolve("models:/digits-classifier@champion")
    assert mv.version == results.model_version and mv.job == train.name

    # The metrics are in the job's MLflow run, with the adversarial grid as an image.
    from mlflow.tracking import MlflowClient

    ml = MlflowClient(tracking_uri=f"sqlite:///{cluster['data'] / 'mlflow.db'}")
    run = ml.get_run(job.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert abs(run.data.metrics["robust_accuracy_eps_0.3"] - none_fgsm[0.3]) < 1e-6
    artifacts = [a.path for a in c.artifacts.list(job, recursive=True)]
    assert any(p.endswith(".png") for p in artifacts), artifacts

    # Submitting the same job again gives identical metrics (seeds are fixed and recorded).
    again = c.jobs.submit("robustness", "robustness", dict(job.parameters), entry="attack")
    final = c.jobs.wait(again, timeout=600)
    assert final.state == JobState.SUCCEEDED
    rerun = ml.get_run(final.mlflow_run_id).data.metrics
    assert {k: v for k, v in rerun.items() if "accuracy" in k or "success" in k} == {
        k: v for k, v in run.data.metrics.items() if "accuracy" in k or "success" in k
    }

    plot = results.plot(tmp_path / "robustness.png")
    assert plot.stat().st_size > 10_000
