"""Declarative task graphs: a YAML file of steps that call plugin tasks, run as one Prefect flow.

An entry point can name a graph (``graph: attack.yaml`` in its MLproject entry) instead of
writing a flow by hand::

    steps:
      data:  {task: load_digits, args: {seed: $seed}}
      model: {task: train_logistic_regression, args: {data: $data, C: 1.0}}
      fgsm:  {task: fgsm, args: {model: $model, data: $data, eps: $eps}}
      pgd:   {task: pgd, args: {model: $model, data: $data, eps: $eps}}
      report: {task: evaluate_attack, args: {model: $model, result: $fgsm}, after: [pgd]}

``$name`` is an entry-point parameter or another step's output (``$$`` writes a literal
``$``). The control plane checks a graph at submit with :func:`validate` against the task
signatures in plugin manifests, so a typo fails the submit rather than a job an hour in; the
job runs it with ``python -m brinell.graph GRAPH.yaml``. Steps that do not depend on each
other run concurrently: each step is submitted with its upstream futures as arguments.

Prefect and MLflow are imported only when a graph runs. The package keeps one job per module:
``model`` (the graph and task signatures), ``parsing``, ``validation`` with ``kinds`` (type
compatibility) and ``order`` (cycles, levels), ``plugins`` (finding tasks), ``runner`` (the
Prefect flow) and ``cli`` (``python -m brinell.graph``).
"""

from __future__ import annotations

from .cli import main
from .model import (
    DEFAULT_FLOW_NAME,
    Graph,
    GraphError,
    Ref,
    Step,
    StepFailedError,
    TaskSignature,
)
from .order import topological_order
from .parsing import parse
from .plugins import load_plugins
from .runner import run
from .validation import validate

__all__ = [
    "DEFAULT_FLOW_NAME",
    "Graph",
    "GraphError",
    "Ref",
    "Step",
    "StepFailedError",
    "TaskSignature",
    "load_plugins",
    "main",
    "parse",
    "run",
    "topological_order",
    "validate",
]
