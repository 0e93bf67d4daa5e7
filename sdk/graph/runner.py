"""Running a graph as one Prefect flow (Prefect and MLflow are imported only here, when it runs)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .model import (
    DEFAULT_FLOW_NAME,
    Graph,
    GraphError,
    Ref,
    StepFailedError,
    TaskSignature,
    _lookup,
    _unique,
)
from .order import topological_order
from .plugins import _import_problems, _signature_of, load_plugins
from .validation import validate


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "string" if isinstance(value, str) else ""


def _convert(name: str, value: Any, ptype: str) -> Any:
    if ptype in ("int", "float"):
        text = str(value).strip()
        try:
            return int(text) if ptype == "int" else float(text)
        except ValueError:
            raise GraphError([f"parameter {name!r}: {value!r} is not an {ptype}"]) from None
    if ptype in ("string", "path", "uri") and not isinstance(value, str):
        return str(value)
    return value


def _mlflow_run_activator(run_id: str) -> Callable[..., None]:
    def activate_mlflow_run(*_: Any) -> None:  # a Prefect on_running hook: the task's thread
        import mlflow

        if mlflow.active_run() is None:
            mlflow.start_run(run_id=run_id)

    return activate_mlflow_run


def run(
    graph: Graph,
    parameters: Mapping[str, Any],
    tasks: Mapping[str, Any] | None = None,
    *,
    types: Mapping[str, str] | None = None,
    on_step_done: Callable[[str, Any], None] | None = None,
    mlflow_run_id: str | None = None,
) -> dict[str, Any]:
    """Runs the graph as one Prefect flow and returns each step's result, by step name.

    ``types`` gives parameters' MLproject types (int and float values are converted before
    use); a parameter without one is passed as given. ``tasks`` defaults to the tasks of the
    packages in ``BRINELL_PLUGIN_PACKAGES``. The graph is validated first (GraphError);
    ``on_step_done(step, result)`` is called as each step completes; a failing step raises
    StepFailedError. With ``mlflow_run_id``, that MLflow run is the active run in every task's
    thread: MLflow's active run is per thread, and Prefect runs tasks in worker threads, where
    ``mlflow.log_metric`` would otherwise start a new run of its own.
    """
    types = dict(types or {})
    import_errors: dict[str, str] = {}
    if tasks is None:
        tasks = load_plugins(errors=import_errors)
    by_signature: dict[TaskSignature, Any] = {}
    for key, obj in tasks.items():
        by_signature.setdefault(_signature_of(key, obj), obj)
    signatures = _unique(by_signature)
    declared = {name: types.get(name) or _kind_of(value) for name, value in parameters.items()}
    problems = validate(graph, declared, {s.qualified_name: s for s in signatures})
    if problems:
        raise GraphError(problems + _import_problems(import_errors))
    values = {name: _convert(name, value, declared[name]) for name, value in parameters.items()}
    chosen: dict[str, Any] = {}
    for step in graph.steps.values():
        sig, _ = _lookup(step.task, signatures)
        assert sig is not None  # validated
        chosen[step.name] = by_signature[sig]
    order = [name for level in topological_order(graph) for name in level]

    from prefect import flow, task
    from prefect.futures import as_completed

    from ..runtime import prefect_flow_settings

    for name, obj in chosen.items():
        if not hasattr(obj, "submit"):
            obj = chosen[name] = task(obj)
        if mlflow_run_id is not None:
            hook = _mlflow_run_activator(mlflow_run_id)
            chosen[name] = obj.with_options(on_running=[*obj.on_running_hooks, hook])

    def resolve(value: Any, futures: dict[str, Any]) -> Any:
        if isinstance(value, Ref):
            return futures[value.name] if value.name in graph.steps else values[value.name]
        if isinstance(value, list):
            return [resolve(v, futures) for v in value]
        if isinstance(value, dict):
            return {k: resolve(v, futures) for k, v in value.items()}
        return value

    def graph_flow() -> dict[str, Any]:
        futures: dict[str, Any] = {}
        for name in order:
            step = graph.steps[name]
            args = {arg: resolve(value, futures) for arg, value in step.args.items()}
            futures[name] = chosen[name].submit(
                **args, wait_for=[futures[other] for other in step.after]
            )
        step_of = {future.task_run_id: name for name, future in futures.items()}
        results: dict[str, Any] = {}
        for future in as_completed(list(futures.values())):
            name = step_of[future.task_run_id]
            try:
                results[name] = future.result()
            except Exception as exc:
                raise StepFailedError(name, exc) from exc
            if on_step_done is not None:
                on_step_done(name, results[name])
        return {name: results[name] for name in graph.steps}

    prefect_flow = flow(name=graph.name or DEFAULT_FLOW_NAME, validate_parameters=False)(graph_flow)
    with prefect_flow_settings():
        result: dict[str, Any] = prefect_flow()
    return result
