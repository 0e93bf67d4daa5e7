"""Helpers for code running inside a Brinell job.

The agent describes the job to its process through environment variables: ``MLFLOW_RUN_ID``
(the MLflow run the control plane created for the job, which ``mlflow.start_run()`` resumes),
``BRINELL_JOB``, ``BRINELL_ATTEMPT``, ``BRINELL_PARAMETERS`` (the job's parameters as a
JSON object), and the plugin versions the job pinned at submit: ``BRINELL_PLUGINS`` (a JSON
list of ``{plugin, version, digest, package, path}``), ``BRINELL_PLUGIN_PACKAGES`` (their
package names, comma-separated) and ``PYTHONPATH`` (their folders first). Outside a job these
are unset and the helpers return None or empty values, so the same script also runs by hand.
Prefect and mlflow are imported only when asked for: importing either costs ~1.5-2 s.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "attempt",
    "in_job",
    "job",
    "load_plugins",
    "mlflow_run",
    "parameters",
    "plugin_import_errors",
    "plugins",
    "prefect_flow_settings",
    "run_id",
    "task",
]


def run_id() -> str | None:
    """The job's MLflow run id (``MLFLOW_RUN_ID``), or None outside a job."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def job() -> str | None:
    """The job this process runs for, as set by the agent in ``BRINELL_JOB``."""
    return os.environ.get("BRINELL_JOB") or None


def attempt() -> int | None:
    """The attempt number (1 for the first run; higher after an agent was lost)."""
    value = os.environ.get("BRINELL_ATTEMPT")
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
    runs; Brinell's attempt leases already do that, and joining the heartbeat thread at flow
    exit costs ~0.9 s of a ~1.1 s two-task flow. The setting can only be turned off (None)
    through the settings API: ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` in the environment must be
    an int >= 30. Checked against Prefect 3.9 (``prefect.settings.models.flows``).
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def parameters() -> dict[str, str]:
    """The job's parameters (``BRINELL_PARAMETERS``) as strings; empty outside a job.

    Values are the strings the job was submitted with; declared types are checked by the
    control plane, conversions are the script's.
    """
    raw = os.environ.get("BRINELL_PARAMETERS")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"BRINELL_PARAMETERS is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("BRINELL_PARAMETERS must be a JSON object")
    return {str(k): str(v) for k, v in value.items()}


def plugins() -> list[dict[str, str]]:
    """The pinned plugin versions (``BRINELL_PLUGINS``): dicts with ``plugin`` (its
    resource name ``plugins/{id}``), ``version``, ``digest``, ``package`` and ``path``."""
    raw = os.environ.get("BRINELL_PLUGINS")
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"BRINELL_PLUGINS is not valid JSON: {exc}") from None
    if not isinstance(value, list):
        raise ValueError("BRINELL_PLUGINS must be a JSON list")
    return [{str(k): str(v) for k, v in item.items()} for item in value if isinstance(item, dict)]


def _plugin_packages() -> list[str]:
    raw = os.environ.get("BRINELL_PLUGIN_PACKAGES", "")
    return list(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))


# Module name -> the error its import raised, from the last load_plugins().
_IMPORT_ERRORS: dict[str, str] = {}


def load_plugins(*, strict: bool = False) -> dict[str, Any]:
    """Imports every pinned plugin package and all its submodules; returns the tasks by name.

    Every registered plugin is pinned (at its latest version unless the job chose one), so a
    job usually sees plugins it does not use. A module that fails to import (say, it needs a
    package this host lacks) is therefore skipped with a warning, and its error is kept for
    ``task()``'s message and ``plugin_import_errors()``; ``strict=True`` raises instead.
    Calling it again is cheap: Python imports each module once per process.
    """
    from .graph import load_plugins as load

    errors: dict[str, str] | None = None if strict else {}
    try:
        tasks = load(_plugin_packages(), errors=errors)
    except ImportError as exc:
        raise ImportError(str(exc)) from exc
    for name, error in (errors or {}).items():
        if _IMPORT_ERRORS.get(name) != error:
            warnings.warn(
                f"brinell: cannot import plugin module {name}: {error}",
                RuntimeWarning,
                stacklevel=2,
            )
        _IMPORT_ERRORS[name] = error
    return tasks


def plugin_import_errors() -> dict[str, str]:
    """Plugin modules that ``load_plugins()`` could not import, with their errors."""
    return dict(_IMPORT_ERRORS)


def task(name: str) -> Any:
    """A plugin task by name (``"fgsm"``) or by module-qualified function name
    (``"brinell_ml.attacks.fgsm"``), after ``load_plugins()``.

    Raises KeyError listing the tasks that exist when there is no such task.
    """
    tasks = load_plugins()
    if name in tasks:
        return tasks[name]
    for candidate in tasks.values():
        info = getattr(candidate, "__brinell_task__", None)
        fn = getattr(candidate, "fn", None)
        qualified = {f"{info.module}.{info.name}"} if info is not None else set()
        if info is not None and fn is not None:
            qualified.add(f"{info.module}.{getattr(fn, '__name__', '')}")
        if name in qualified:
            return candidate
    available = ", ".join(sorted(tasks)) or "none"
    message = f"no plugin task {name!r}; available: {available}"
    packages = _plugin_packages()
    if not packages:
        message += " (this process has no plugins: BRINELL_PLUGIN_PACKAGES is empty)"
    if _IMPORT_ERRORS:
        failed = "; ".join(f"{m}: {e}" for m, e in sorted(_IMPORT_ERRORS.items()))
        message += f"; modules that failed to import: {failed}"
    raise KeyError(message)


@contextmanager
def mlflow_run() -> Iterator[Any]:
    """The job's MLflow run (``MLFLOW_RUN_ID``), resumed and ended with the block.

    Outside a job this starts a new run in MLflow's default store, as ``mlflow.start_run()``
    does. mlflow is imported here, not with this module.
    """
    import mlflow

    with mlflow.start_run(run_id=run_id()) as active:
        yield active
