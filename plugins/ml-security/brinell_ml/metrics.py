"""Metrics: accuracy, attack effect and perturbation sizes, MLflow logging, example grids."""

from __future__ import annotations

import os

import numpy as np
from prefect.cache_policies import NO_CACHE

from brinell import task

from .attacks import AttackResult
from .models import TrainedModel

__all__ = [
    "accuracy",
    "adversarial_grid",
    "attack_metrics",
    "evaluate_attack",
    "log_metrics",
    "perturbation_sizes",
]

# Features that moved by no more than this count as unchanged for L0.
L0_TOLERANCE = 1e-9


def perturbation_sizes(x: np.ndarray, x_adv: np.ndarray) -> dict[str, float]:
    """Mean over samples of the L0 (features changed by more than 1e-9), L2 and L-inf norms
    of ``x_adv - x``."""
    delta = np.asarray(x_adv, dtype=np.float64) - np.asarray(x, dtype=np.float64)
    delta = delta.reshape(len(delta), -1)
    if len(delta) == 0:
        return {"perturbation_l0": 0.0, "perturbation_l2": 0.0, "perturbation_linf": 0.0}
    return {
        "perturbation_l0": float((np.abs(delta) > L0_TOLERANCE).sum(axis=1).mean()),
        "perturbation_l2": float(np.linalg.norm(delta, axis=1).mean()),
        "perturbation_linf": float(np.abs(delta).max(axis=1).mean()),
    }


def attack_metrics(y: np.ndarray, pred_clean: np.ndarray, pred_adv: np.ndarray) -> dict[str, float]:
    """Clean and robust accuracy, and the attack success rate: the fraction of inputs
    classified correctly when clean that are misclassified once attacked (0 when none were
    correct)."""
    y, pred_clean, pred_adv = (np.asarray(a).reshape(-1) for a in (y, pred_clean, pred_adv))
    if len(y) == 0:
        return {"clean_accuracy": 0.0, "robust_accuracy": 0.0, "attack_success_rate": 0.0}
    correct = pred_clean == y
    flipped = correct & (pred_adv != y)
    return {
        "clean_accuracy": float(correct.mean()),
        "robust_accuracy": float((pred_adv == y).mean()),
        "attack_success_rate": float(flipped.sum() / correct.sum()) if correct.any() else 0.0,
    }


@task(cache_policy=NO_CACHE)
def accuracy(model: TrainedModel, x: np.ndarray, y: np.ndarray) -> float:
    """The fraction of inputs ``x`` (flattened images) the model, defenses included,
    classifies as their labels ``y``."""
    y = np.asarray(y).reshape(-1)
    if len(y) == 0:
        return 0.0
    return float((model.predict(x) == y).mean())


@task(cache_policy=NO_CACHE)
def evaluate_attack(model: TrainedModel, result: AttackResult) -> dict[str, float]:
    """Scores an attack against ``model`` (defenses included): clean_accuracy,
    robust_accuracy, attack_success_rate (originally correct inputs that become
    misclassified), n_samples, and the mean perturbation_l0 / perturbation_l2 /
    perturbation_linf of x_adv - x."""
    metrics = attack_metrics(result.y, model.predict(result.x), model.predict(result.x_adv))
    metrics.update(perturbation_sizes(result.x, result.x_adv))
    metrics["n_samples"] = float(len(result.y))
    return metrics


@task(cache_policy=NO_CACHE)
def log_metrics(metrics: dict[str, float], prefix: str = "", step: int | None = None) -> None:
    """Logs numeric metrics to the active MLflow run (MLflow starts one if none is active),
    each name prefixed with ``prefix``, at ``step`` when given."""
    import mlflow

    mlflow.log_metrics(
        {f"{prefix}{name}": float(value) for name, value in metrics.items()}, step=step
    )


@task(cache_policy=NO_CACHE)
def adversarial_grid(
    result: AttackResult,
    model: TrainedModel,
    n: int = 10,
    path: str = "adversarial_examples.png",
) -> str:
    """Draws the first ``n`` clean inputs (top row) over their adversarial versions (bottom
    row), titled with the model's predictions (red, with the true label, when wrong),
    writes the PNG to ``path`` and logs it as an artifact of the active MLflow run when
    there is one; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, min(n, len(result.y)))
    x, x_adv, y = result.x[:n], result.x_adv[:n], np.asarray(result.y[:n])
    shape = result.image_shape or model.image_shape
    pred_clean, pred_adv = model.predict(x), model.predict(x_adv)
    figure, axes = plt.subplots(2, n, figsize=(1.3 * n, 3.0), squeeze=False)
    low, high = model.clip_values
    for i in range(n):
        for row, images, preds in ((0, x, pred_clean), (1, x_adv, pred_adv)):
            axis = axes[row][i]
            axis.imshow(images[i].reshape(shape), cmap="gray", vmin=low, vmax=high)
            right = preds[i] == y[i]
            axis.set_title(
                f"{preds[i]}" if right else f"{preds[i]} (y={y[i]})",
                color="black" if right else "red",
                fontsize=9,
            )
            axis.set_xticks([])
            axis.set_yticks([])
    axes[0][0].set_ylabel("clean", fontsize=9)
    axes[1][0].set_ylabel("adv", fontsize=9)
    eps = result.params.get("eps")
    title = result.attack + (f" eps={eps:g}" if eps is not None else "")
    if model.defenses:
        title += " against " + "+".join(str(spec["name"]) for spec in model.defenses)
    figure.suptitle(title + " (titles: predicted label, red when wrong)", fontsize=10)
    figure.tight_layout()
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)

    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_artifact(path)
    return path
