"""Helpers for code running inside a Crucible job.

The agent describes the job to its process through environment variables: ``MLFLOW_RUN_ID``
(the MLflow run the control plane created for the job, which ``mlflow.start_run()`` resumes),
``CRUCIBLE_JOB`` and ``CRUCIBLE_ATTEMPT``. Outside a job these are unset and the helpers
return None, so the same script also runs by hand. Prefect is imported only when asked for:
importing it costs ~1.5 s.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["attempt", "in_job", "job", "prefect_flow_settings", "run_id"]


def run_id() -> str | None:
    """The job's MLflow run id (``MLFLOW_RUN_ID``), or None outside a job."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def job() -> str | None:
    """The job this process runs for, as set by the agent in ``CRUCIBLE_JOB``."""
    return os.environ.get("CRUCIBLE_JOB") or None


def attempt() -> int | None:
    """The attempt number (1 for the first run; higher after an agent was lost)."""
    value = os.environ.get("CRUCIBLE_ATTEMPT")
    try:
        return int(value) if value else None
    except ValueError:
        return None


def in_job() -> bool:
    return job() is not None


@contextmanager
def prefect_flow_settings() -> Iterator[None]:
    """Runs Prefect flows without the flow-run heartbeat thread.

    Prefect's heartbeat (``flows.heartbeat_frequency``, default 180 s) detects crashed flow
    runs; Crucible's attempt leases already do that, and joining the heartbeat thread at flow
    exit costs ~0.9 s of a ~1.1 s two-task flow. The setting can only be turned off (None)
    through the settings API: ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` in the environment must be
    an int >= 30. Checked against Prefect 3.9 (``prefect.settings.models.flows``).
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
