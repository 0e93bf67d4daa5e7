"""robustness `attack`: attacks a saved model with FGSM or PGD over several ε, with a defense.

A Prefect flow of ml-security plugin tasks: load the model (``runs:/`` or ``models:/`` URI)
and the held-out digits it was not trained on, apply the defense (a preprocessing defense
attached to the model, so the attack sees it; or PGD adversarial training of a copy), attack
each ε, and log clean/robust accuracy, attack success rate and perturbation sizes to MLflow
(step = index of ε, and as ``<metric>_eps_<ε>``), plus a grid of examples at the largest ε.
Prints one ``result attack=… defense=… eps=… clean_accuracy=… robust_accuracy=…
attack_success_rate=…`` line per ε.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import mlflow
from brinell_ml.attacks import fgsm, pgd
from brinell_ml.data import load_dataset, load_digits, subset
from brinell_ml.defenses import DEFENSES, adversarial_training_pgd, defend_model
from brinell_ml.metrics import adversarial_grid, evaluate_attack, log_metrics
from brinell_ml.models import load_model
from prefect import flow

from brinell import runtime

ATTACKS = {"fgsm": fgsm, "pgd": pgd}
DEFENSE_NAMES = ("none", *DEFENSES, "adversarial_training")
# Defaults of adversarial training here (the attack job retrains a copy: keep it short).
ADVERSARIAL_TRAINING = {"eps": 0.1, "ratio": 0.5, "epochs": 20, "max_iter": 10}


def parse_eps(text: str) -> list[float]:
    values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"eps_values must be non-negative numbers: {text!r}")
    return values


def parse_params(text: str) -> dict[str, float]:
    """``"bit_depth=2"`` or ``"eps=0.1,epochs=20"`` → numbers by name."""
    out: dict[str, float] = {}
    for item in text.replace(";", ",").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"defense_params wants name=value, got {item!r}")
        number = float(value)
        out[name.strip()] = int(number) if number.is_integer() else number
    return out


@flow(name="robustness-attack", log_prints=False)
def attack_flow(
    model_uri: str,
    attack: str,
    eps_values: list[float],
    defense: str,
    defense_params: dict[str, Any],
    seed: int,
    n_test: int,
) -> list[dict[str, float]]:
    model = load_model(model_uri)
    source = model.trained_on or {"name": "digits", "test_size": 0.25, "seed": seed}
    data = load_dataset(source) if source.get("name") else load_digits(seed=seed)
    if defense == "adversarial_training":
        model = adversarial_training_pgd(
            data, model, **{**ADVERSARIAL_TRAINING, **defense_params}, seed=seed
        )
    else:
        model = defend_model(model, defense, **defense_params)
    small = subset(data, n_test, seed=seed)

    rows = []
    result = None
    for step, eps in enumerate(eps_values):
        result = ATTACKS[attack](model, small, eps=eps, seed=seed)
        metrics = evaluate_attack(model, result)
        # Unsuffixed names at step = index of eps (MLflow plots them against eps), and
        # suffixed ones for a flat table of runs.
        suffixed = {f"{name}_eps_{eps:g}": value for name, value in metrics.items()}
        log_metrics({**metrics, "eps": eps, **suffixed}, step=step)
        rows.append({"eps": eps, **metrics})
    if result is not None:
        with tempfile.TemporaryDirectory() as folder:
            adversarial_grid(
                result, model, n=10, path=os.path.join(folder, "adversarial_examples.png")
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--attack", default="fgsm", choices=sorted(ATTACKS))
    parser.add_argument("--eps-values", type=parse_eps, default=parse_eps("0,0.05,0.1,0.2,0.3"))
    parser.add_argument("--defense", default="none", choices=DEFENSE_NAMES)
    parser.add_argument("--defense-params", type=parse_params, default={})
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-test", type=int, default=300)
    args = parser.parse_args()

    print(
        f"attack: job={runtime.job()} attempt={runtime.attempt()} run={runtime.run_id()}",
        flush=True,
    )
    with mlflow.start_run(), runtime.prefect_flow_settings():
        # The entry point's parameters are the run's params already (Brinell logs them at
        # submit); the parsed defense overrides are logged one by one beside them.
        mlflow.log_params({f"defense_{k}": v for k, v in args.defense_params.items()})
        started = time.perf_counter()
        rows = attack_flow(
            args.model_uri,
            args.attack,
            args.eps_values,
            args.defense,
            args.defense_params,
            args.seed,
            args.n_test,
        )
        mlflow.log_metric("flow_seconds", time.perf_counter() - started)
    for row in rows:
        print(
            f"result attack={args.attack} defense={args.defense} eps={row['eps']:g} "
            f"clean_accuracy={row['clean_accuracy']:.4f} "
            f"robust_accuracy={row['robust_accuracy']:.4f} "
            f"attack_success_rate={row['attack_success_rate']:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
