"""What a graph's steps returned, made visible: scalars and dicts of scalars, by step.

A step's other results (models, data sets, attack results) stay in memory; a number or a
string a step returns is what a researcher looks for after the job, so it is printed at the
end of the job's log and logged to the job's MLflow run: numbers as metrics named
``<step>`` or ``<step>.<key>``, text and booleans as ``brinell.output.<…>`` tags.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

Scalar = bool | int | float | str

OUTPUT_TAG_PREFIX = "brinell.output."
# MLflow's metric and tag names: letters, digits and _ - . / and spaces.
_UNSAFE = re.compile(r"[^\w\-./ ]")
_MAX_TEXT = 5000  # tag values stay well under MLflow's limit
_MAX_OUTPUTS = 1000


def outputs(results: Mapping[str, Any]) -> dict[str, Scalar]:
    """``{"report": {"acc": 0.9}, "n": 3, "model": <obj>}`` -> ``{"report.acc": 0.9, "n": 3}``."""
    found: dict[str, Scalar] = {}
    for step, value in results.items():
        if isinstance(value, Scalar):
            found[step] = value
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(key, str) and isinstance(item, Scalar):
                    found[f"{step}.{key}"] = item
        if len(found) >= _MAX_OUTPUTS:
            break
    return {_UNSAFE.sub("_", k): v for k, v in list(found.items())[:_MAX_OUTPUTS]}


def _is_number(value: Scalar) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def lines(found: Mapping[str, Scalar]) -> list[str]:
    """The outputs as the job's log shows them at its end."""
    if not found:
        return []
    return ["outputs:", *(f"  {name} = {value!r}" for name, value in found.items())]


def log_to_mlflow(found: Mapping[str, Scalar]) -> None:
    """Numbers as metrics, the rest as tags, on the active MLflow run."""
    import mlflow

    metrics = {k: float(v) for k, v in found.items() if _is_number(v) and math.isfinite(float(v))}
    tags = {
        f"{OUTPUT_TAG_PREFIX}{k}": str(v)[:_MAX_TEXT] for k, v in found.items() if not _is_number(v)
    }
    if metrics:
        mlflow.log_metrics(metrics)
    if tags:
        mlflow.set_tags(tags)
