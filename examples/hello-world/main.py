"""hello-world: the smallest Brinell entry point.

A Prefect flow of three tasks: two independent measurements run concurrently, a third
combines them; the resulting ``score`` is logged to MLflow. Under Brinell the agent sets
``MLFLOW_RUN_ID`` (the job's run, created by the control plane with the job's parameters as its
params), so ``mlflow.start_run()`` resumes that run; by hand it creates a run in MLflow's
default local store (``./mlflow.db`` with MLflow 3; ``./mlruns`` with older versions) or wherever
``MLFLOW_TRACKING_URI`` points. Without ``PREFECT_API_URL`` Prefect starts a temporary server
of its own, which works but takes ~10 s.
"""

from __future__ import annotations

import argparse
import math
import time

import mlflow
from prefect import flow, task

from brinell import runtime


@task
def letters(name: str, rounds: int) -> float:
    """Independent of ``waves``: runs concurrently with it."""
    value = float(sum(ord(c) % 7 for c in name) * rounds)
    print(f"hello-world: letters({name!r}) = {value}", flush=True)
    return value


@task
def waves(rounds: int, scale: float) -> float:
    value = scale * sum(math.sin(i) ** 2 for i in range(1, rounds + 1))
    print(f"hello-world: waves({rounds}, {scale}) = {value:.4f}", flush=True)
    return value


@task
def combine(a: float, b: float) -> float:
    return round(a + b, 6)


@flow(name="hello-world", log_prints=False)
def hello(name: str, rounds: int, scale: float) -> float:
    a = letters.submit(name, rounds)
    b = waves.submit(rounds, scale)
    # Passing the futures makes Prefect wait for both before combining.
    return combine.submit(a, b).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="world")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()

    job = runtime.job() or "(not in a Brinell job)"
    print(
        f"hello-world: start {job} attempt={runtime.attempt()} run={runtime.run_id()}", flush=True
    )
    with mlflow.start_run() as run, runtime.prefect_flow_settings():
        started = time.perf_counter()
        score = hello(args.name, args.rounds, args.scale)
        elapsed = time.perf_counter() - started
        mlflow.log_metric("score", score)
        mlflow.log_metric("flow_seconds", elapsed)
        print(f"hello-world: flow took {elapsed:.2f} s (mlflow run {run.info.run_id})", flush=True)
    print(f"hello-world done: score={score}", flush=True)


if __name__ == "__main__":
    main()
