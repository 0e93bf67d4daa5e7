"""robustness `train`: trains a classifier on scikit-learn's digits and logs it to MLflow.

A Prefect flow of ml-security plugin tasks: load the digits (seeded split), train the model,
measure its clean test accuracy, and save it as an MLflow model in the job's run (artifact
path ``model``). Prints ``model_uri=runs:/<run id>/model`` for the attack entry point.
Under Brinell the agent sets ``MLFLOW_RUN_ID`` (``mlflow.start_run()`` resumes the job's
run) and puts the plugin on ``PYTHONPATH``; by hand, set ``PYTHONPATH=plugins/ml-security``.
"""

from __future__ import annotations

import argparse
import time

import mlflow
from brinell_ml.data import load_digits
from brinell_ml.metrics import accuracy, log_metrics
from brinell_ml.models import MODEL_KINDS, save_model, train_model
from prefect import flow

from brinell import runtime


@flow(name="robustness-train", log_prints=False)
def train_flow(model: str, seed: int, test_size: float, epochs: int) -> tuple[str, float]:
    data = load_digits(test_size=test_size, seed=seed)
    trained = train_model(data, model=model, seed=seed, epochs=epochs)
    clean = accuracy(trained, data.x_test, data.y_test)
    log_metrics({"clean_accuracy": clean, "n_train": len(data.y_train), "n_test": len(data.y_test)})
    return save_model(trained, artifact_path="model"), clean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="logistic_regression", choices=MODEL_KINDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=5, help="CNN training epochs")
    args = parser.parse_args()

    print(
        f"train: job={runtime.job()} attempt={runtime.attempt()} run={runtime.run_id()}", flush=True
    )
    with mlflow.start_run(), runtime.prefect_flow_settings():
        # The entry point's parameters are the run's params already (Brinell logs them at
        # submit); what is not a parameter goes here.
        mlflow.log_param("dataset", "digits")
        started = time.perf_counter()
        uri, clean = train_flow(args.model, args.seed, args.test_size, args.epochs)
        mlflow.log_metric("flow_seconds", time.perf_counter() - started)
    print(f"train: {args.model} clean_accuracy={clean:.4f}", flush=True)
    print(f"model_uri={uri}", flush=True)


if __name__ == "__main__":
    main()
