"""Checking a graph against task signatures and parameter types, before anything runs."""

from __future__ import annotations

from collections.abc import Mapping

from ..mlproject import did_you_mean
from .kinds import _check_type
from .model import Graph, Ref, Step, TaskSignature, _lookup, _unique
from .order import _cycles
from .parsing import _refs


def validate(
    graph: Graph, parameters: Mapping[str, str], tasks: Mapping[str, TaskSignature]
) -> list[str]:
    """Every problem that would make the graph fail or misbehave; empty when it is valid.

    ``parameters`` maps an entry-point parameter to its MLproject type (string, float, int,
    path, uri); ``tasks`` are the tasks available to the job (their keys are not used: tasks
    are found by their name or their module-qualified name). Type checks report only what is
    certainly wrong: an annotation they do not understand accepts anything.
    """
    problems: list[str] = []
    signatures = _unique(tasks.values())
    for step in graph.steps.values():
        where = f"step {step.name!r}"
        for other in step.after:
            if other == step.name:
                problems.append(f"{where}: `after` lists the step itself")
            elif other not in graph.steps:
                problems.append(
                    f"{where}: `after` names {other!r}, which is not a step"
                    f"{did_you_mean(other, graph.steps.keys() - {step.name})}"
                )
        for arg, value in step.args.items():
            for ref in _refs(value):
                problem = _check_ref(graph, parameters, step, arg, ref)
                if problem:
                    problems.append(problem)
        sig, problem = _lookup(step.task, signatures)
        if sig is None:
            problems.append(f"{where}: {problem}")
            continue
        problems.extend(_check_call(graph, parameters, step, sig, signatures))
    problems.extend(_cycles(graph))
    return problems


def _check_ref(
    graph: Graph, parameters: Mapping[str, str], step: Step, arg: str, ref: Ref
) -> str | None:
    where = f"step {step.name!r}: argument {arg!r}"
    if ref.name == step.name:
        return f"{where} refers to the step itself (${ref.name})"
    if ref.name in graph.steps and ref.name in parameters:
        return (
            f"{where}: ${ref.name} is both a parameter and a step; rename the step so "
            "the reference means one thing"
        )
    if ref.name not in graph.steps and ref.name not in parameters:
        known = sorted(set(parameters) | (graph.steps.keys() - {step.name}))
        return (
            f"{where}: ${ref.name} is neither a parameter nor a step{did_you_mean(ref.name, known)}"
        )
    return None


def _check_call(
    graph: Graph,
    parameters: Mapping[str, str],
    step: Step,
    sig: TaskSignature,
    signatures: list[TaskSignature],
) -> list[str]:
    problems: list[str] = []
    where = f"step {step.name!r}"
    inputs = {name: (ann, has_default) for name, ann, has_default in sig.inputs}
    for arg in step.args:
        if arg not in inputs and not sig.any_keyword:
            takes = ", ".join(inputs) or "no arguments"
            problems.append(
                f"{where}: argument {arg!r} is not an input of task {sig.name!r} "
                f"(it takes: {takes}){did_you_mean(arg, list(inputs))}"
            )
    for name, (_, has_default) in inputs.items():
        if not has_default and name not in step.args:
            problems.append(
                f"{where}: argument {name!r} is missing: task {sig.name!r} "
                "requires it (it has no default)"
            )
    for arg, value in step.args.items():
        if arg not in inputs:
            continue
        annotation = inputs[arg][0]
        problem = _check_type(graph, parameters, value, annotation, signatures)
        if problem:
            problems.append(
                f"{where}: argument {arg!r}: {problem}, but task {sig.name!r} takes {annotation}"
            )
    return problems
