"""MLflow behind a small interface: one MLflow experiment per experiment, one run per job.

`import mlflow` costs about 2 s, so it happens on a worker thread after the server is up,
never on the import path. All MLflow calls run on one dedicated thread: its SQLite store
is not meant for concurrent writers from one process.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from .domain.errors import Unavailable

log = logging.getLogger("crucible.controlplane.tracking")

FINAL_STATUS = {
    "SUCCEEDED": "FINISHED",
    "FAILED": "FAILED",
    "TIMED_OUT": "FAILED",
    "CANCELLED": "KILLED",
}


class Tracking(Protocol):
    tracking_uri: str

    async def create_experiment(self, experiment_id: str) -> str: ...

    async def create_run(self, mlflow_experiment_id: str, job_id: str, tags: dict[str, str]
                         ) -> str: ...

    async def end_run(self, run_id: str, state: str) -> None: ...

    def close(self) -> None: ...


class NullTracking:
    """No MLflow: jobs get no run (benchmarks of the dispatch path, tests that opt out)."""

    tracking_uri = ""

    async def create_experiment(self, experiment_id: str) -> str:
        return ""

    async def create_run(self, mlflow_experiment_id: str, job_id: str, tags: dict[str, str]
                         ) -> str:
        return ""

    async def end_run(self, run_id: str, state: str) -> None:
        return None

    def close(self) -> None:
        return None


class MlflowTracking:
    def __init__(self, tracking_uri: str, artifact_root: Path | None) -> None:
        self.tracking_uri = tracking_uri
        self._artifact_root = artifact_root
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
        # Start the import and the store's schema migration now, in the background.
        self._client: Future[Any] = self._executor.submit(self._make_client)

    def _make_client(self) -> Any:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri)
        client.search_experiments(max_results=1)  # creates the SQLite schema on first use
        log.info("MLflow tracking ready at %s", self.tracking_uri)
        return client

    async def _call(self, what: str, fn: Any, *args: Any) -> Any:
        def run() -> Any:
            return fn(self._client.result(), *args)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except Exception as exc:
            log.exception("MLflow %s failed", what)
            raise Unavailable(f"MLflow tracking at {self.tracking_uri} failed to {what}: {exc}"
                              ) from exc

    async def create_experiment(self, experiment_id: str) -> str:
        def create(client: Any) -> str:
            name = f"crucible/{experiment_id}"
            existing = client.get_experiment_by_name(name)
            if existing is not None:
                if existing.lifecycle_stage == "deleted":
                    client.restore_experiment(existing.experiment_id)
                return str(existing.experiment_id)
            location = None
            if self._artifact_root is not None:
                location = (self._artifact_root / experiment_id).as_uri()
            return str(client.create_experiment(name, artifact_location=location,
                                                tags={"crucible.experiment": experiment_id}))

        return str(await self._call("create an experiment", create))

    async def create_run(self, mlflow_experiment_id: str, job_id: str, tags: dict[str, str]
                         ) -> str:
        def create(client: Any) -> str:
            run = client.create_run(mlflow_experiment_id, run_name=f"job-{job_id}", tags=tags)
            return str(run.info.run_id)

        return str(await self._call("create a run", create))

    async def end_run(self, run_id: str, state: str) -> None:
        status = FINAL_STATUS.get(state, "FAILED")

        def end(client: Any) -> None:
            client.set_terminated(run_id, status=status)

        await self._call("end a run", end)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
