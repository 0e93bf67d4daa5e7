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

Prefect and MLflow are imported only when a graph runs.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import pkgutil
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .mlproject import EntrySpec, MLprojectError, ProjectSpec, did_you_mean
from .mlproject import parse as parse_mlproject
from .mlproject import resolve as resolve_parameters
from .plugin import TaskInfo, describe, registered_tasks

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

DEFAULT_FLOW_NAME = "brinell-graph"
PLUGIN_PACKAGES_ENV = "BRINELL_PLUGIN_PACKAGES"
PARAMETERS_ENV = "BRINELL_PARAMETERS"

_NAME = r"[A-Za-z_][A-Za-z0-9_.-]*"
_NAME_RE = re.compile(rf"^{_NAME}$")
_REF_RE = re.compile(rf"^\$({_NAME})$")
_GRAPH_KEYS = ("name", "description", "steps")
_STEP_KEYS = ("task", "args", "after")


class GraphError(ValueError):
    """The graph cannot be used; ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class StepFailedError(RuntimeError):
    """A step's task raised; the original exception is ``__cause__``."""

    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(f"step {step!r} failed: {type(error).__name__}: {error}")
        self.step = step


@dataclass(frozen=True)
class Ref:
    """``$name`` in a step's arguments: a parameter or another step's output."""

    name: str


@dataclass
class Step:
    name: str
    task: str
    args: dict[str, Any] = field(default_factory=dict)  # literals, with Ref where `$name` was
    after: list[str] = field(default_factory=list)


@dataclass
class Graph:
    steps: dict[str, Step]
    name: str = ""
    description: str = ""


@dataclass(frozen=True)
class TaskSignature:
    """What validation needs to know about a task; built from a manifest or a TaskInfo."""

    name: str
    module: str
    inputs: tuple[tuple[str, str, bool], ...]  # (name, annotation, has_default)
    output: str = ""
    # The function takes **kwargs: any argument name is accepted. Plugin manifests leave
    # *args/**kwargs out of `inputs`; this records that they were there.
    any_keyword: bool = False

    @classmethod
    def from_task_info(cls, info: TaskInfo) -> TaskSignature:
        return cls(
            info.name,
            info.module,
            tuple((name, ann, has_default) for name, ann, has_default, _ in info.inputs),
            info.output,
        )

    @property
    def qualified_name(self) -> str:
        return f"{self.module}.{self.name}" if self.module else self.name


# --- parsing ----------------------------------------------------------------------------


def parse(text: str | bytes) -> Graph:
    """Parses a graph document; raises GraphError listing every structural problem."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GraphError([f"the graph is not valid YAML: {exc}"]) from None
    if not isinstance(doc, dict):
        raise GraphError(["a graph must be a mapping with a `steps` mapping"])
    problems: list[str] = []
    for key in doc:
        if key not in _GRAPH_KEYS:
            problems.append(
                f"unknown key {key!r} at the top of the graph (allowed: {', '.join(_GRAPH_KEYS)})"
            )
    name = doc.get("name") or ""
    if not isinstance(name, str):
        problems.append("`name` must be a string")
        name = ""
    description = doc.get("description") or ""
    if not isinstance(description, str):
        problems.append("`description` must be a string")
        description = ""
    raw_steps = doc.get("steps")
    if not isinstance(raw_steps, dict) or not raw_steps:
        problems.append("the graph has no steps (a `steps` mapping of step name to step)")
        raise GraphError(problems)
    names = {str(n) for n in raw_steps}
    steps: dict[str, Step] = {}
    for raw_name, raw in raw_steps.items():
        step_name = str(raw_name)
        where = f"step {step_name!r}"
        if not isinstance(raw_name, str) or not _NAME_RE.match(raw_name):
            problems.append(
                f"{where}: a step name must start with a letter or `_` and hold "
                "only letters, digits, `_`, `.` and `-` (it is referenced as $name)"
            )
        if not isinstance(raw, dict):
            problems.append(f"{where}: must be a mapping with a `task` key")
            continue
        for key in raw:
            if key not in _STEP_KEYS:
                problems.append(f"{where}: unknown key {key!r} (allowed: {', '.join(_STEP_KEYS)})")
        task = raw.get("task")
        if not isinstance(task, str) or not task.strip():
            problems.append(f"{where}: `task` must be a task name (a non-empty string)")
            task = ""
        raw_args = raw.get("args")
        args: dict[str, Any] = {}
        if raw_args is None:
            pass
        elif not isinstance(raw_args, dict):
            problems.append(f"{where}: `args` must be a mapping of argument name to value")
        else:
            for arg, value in raw_args.items():
                if not isinstance(arg, str) or not arg.isidentifier():
                    problems.append(f"{where}: argument name {arg!r} is not a Python identifier")
                    continue
                args[arg] = _literal(value, f"{where}: argument {arg!r}", problems)
        after: list[str] = []
        raw_after = raw.get("after")
        if raw_after is None:
            pass
        elif not isinstance(raw_after, list) or not all(isinstance(a, str) for a in raw_after):
            problems.append(f"{where}: `after` must be a list of step names")
        else:
            for other in raw_after:
                if other in after:
                    problems.append(f"{where}: `after` lists {other!r} twice")
                elif other not in names:
                    problems.append(
                        f"{where}: `after` names {other!r}, which is not a step"
                        f"{did_you_mean(other, names)}"
                    )
                else:
                    after.append(other)
        steps[step_name] = Step(step_name, task.strip(), args, after)
    if problems:
        raise GraphError(problems)
    return Graph(steps, name.strip(), description)


def _literal(value: Any, where: str, problems: list[str]) -> Any:
    """A YAML value with `$name` strings turned into Ref and `$$` unescaped."""
    if isinstance(value, str):
        if value.startswith("$$"):
            return value[1:]
        if value.startswith("$"):
            match = _REF_RE.match(value)
            if match:
                return Ref(match.group(1))
            problems.append(
                f"{where}: {value!r} is not a reference ($name); write `$$` for a literal `$`"
            )
        return value
    if isinstance(value, list):
        return [_literal(v, where, problems) for v in value]
    if isinstance(value, dict):
        return {k: _literal(v, where, problems) for k, v in value.items()}
    return value


def _refs(value: Any) -> Iterator[Ref]:
    if isinstance(value, Ref):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _refs(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _refs(v)


# --- validation -------------------------------------------------------------------------


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


def _unique(signatures: Iterable[TaskSignature]) -> list[TaskSignature]:
    seen: dict[tuple[str, str], TaskSignature] = {}
    for sig in signatures:
        seen.setdefault((sig.module, sig.name), sig)
    return list(seen.values())


def _lookup(task: str, signatures: list[TaskSignature]) -> tuple[TaskSignature | None, str]:
    """The task a step names (short or module-qualified), or why there is none."""
    matches = [s for s in signatures if s.name == task]
    if not matches:
        matches = [s for s in signatures if s.qualified_name == task]
    if len(matches) == 1:
        return matches[0], ""
    if matches:
        qualified = ", ".join(sorted(s.qualified_name for s in matches))
        return None, (
            f"task {task!r} is ambiguous: tasks in several modules have that name; "
            f"use a qualified name ({qualified})"
        )
    if not signatures:
        return None, f"unknown task {task!r} (no tasks are available)"
    names = sorted({s.name for s in signatures} | {s.qualified_name for s in signatures})
    if hint := did_you_mean(task, names):
        return None, f"unknown task {task!r}{hint}"
    shown = sorted({s.name for s in signatures})
    more = f", … {len(shown) - 20} more" if len(shown) > 20 else ""
    return None, f"unknown task {task!r} (tasks: {', '.join(shown[:20])}{more})"


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


def _check_type(
    graph: Graph,
    parameters: Mapping[str, str],
    value: Any,
    annotation: str,
    signatures: list[TaskSignature],
) -> str | None:
    if isinstance(value, Ref):
        if value.name in parameters and value.name in graph.steps:
            return None  # reported as an ambiguous reference
        if value.name in parameters:
            kind = _PARAMETER_KINDS.get(parameters[value.name])
            if kind and _incompatible([kind], annotation):
                return f"parameter ${value.name} is of type {parameters[value.name]}"
            return None
        upstream = graph.steps.get(value.name)
        if upstream is None:
            return None
        sig, _ = _lookup(upstream.task, signatures)
        if sig is None or _outputs_compatible(sig.output, annotation):
            return None
        return f"${value.name} is the output of task {sig.name!r}, of type {sig.output}"
    kind = _literal_kind(value)
    if kind and _incompatible([kind], annotation):
        return f"the literal {value!r} is a {kind}"
    return None


# MLproject parameter type -> Python type of the value a task receives (see run()).
_PARAMETER_KINDS = {"int": "int", "float": "float", "string": "str", "path": "str", "uri": "str"}

# For annotations made only of these builtins: which value types each accepts. Anything else
# (a class, a protocol, numpy) accepts everything: only a certain mismatch is reported.
_ACCEPTS: dict[str, frozenset[str]] = {
    "int": frozenset({"int", "bool"}),
    "float": frozenset({"float", "int", "bool"}),
    "complex": frozenset({"complex", "float", "int", "bool"}),
    "bool": frozenset({"bool"}),
    "str": frozenset({"str"}),
    "bytes": frozenset({"bytes"}),
    "list": frozenset({"list", "tuple"}),
    "tuple": frozenset({"tuple", "list"}),
    "set": frozenset({"set", "frozenset"}),
    "frozenset": frozenset({"frozenset", "set"}),
    "dict": frozenset({"dict"}),
    "None": frozenset({"None"}),
}
_ALIASES = {
    "List": "list",
    "Dict": "dict",
    "Tuple": "tuple",
    "Set": "set",
    "FrozenSet": "frozenset",
    "NoneType": "None",
    "Text": "str",
}
_PREFIXES = ("typing.", "typing_extensions.", "builtins.", "t.")


def _literal_kind(value: Any) -> str | None:
    if value is None:
        return "None"
    for kind in (bool, int, float, str, bytes, list, dict):
        if isinstance(value, kind):
            return kind.__name__
    return None  # dates and other YAML types: not checked


def _split_top(text: str, sep: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _members(annotation: str) -> list[str] | None:
    """The base types of an annotation's union members; None when it accepts anything."""
    text = annotation.strip().strip("'\"").strip()
    if not text:
        return None
    members: list[str] = []
    for part in _split_top(text, "|"):
        base, _, rest = part.partition("[")
        base = base.strip()
        for prefix in _PREFIXES:
            if base.startswith(prefix):
                base = base[len(prefix) :]
        inner = rest[:-1] if rest.endswith("]") else ""
        if base in ("Any", "object", ""):
            return None
        if base in ("Optional", "Union", "Annotated"):
            args = _split_top(inner, ",") if inner else []
            if base == "Annotated":
                args = args[:1]
            if not args:
                return None
            for arg in args:
                sub = _members(arg)
                if sub is None:
                    return None
                members.extend(sub)
            if base == "Optional":
                members.append("None")
            continue
        members.append(_ALIASES.get(base, base))
    return members


def _incompatible(kinds: list[str], annotation: str) -> bool:
    """True only when no value of these kinds can be what the annotation allows."""
    accepted = _members(annotation)
    if accepted is None or any(a not in _ACCEPTS for a in accepted):
        return False
    return not any(k in _ACCEPTS[a] for k in kinds for a in accepted)


def _outputs_compatible(output: str, annotation: str) -> bool:
    out, inp = output.strip(), annotation.strip()
    if out == inp or out in inp or inp in out:  # equal, or a union/Optional naming the other
        return True
    kinds = _members(out)
    if kinds is None or any(k not in _ACCEPTS for k in kinds):
        return True  # a class may subclass a builtin: not certainly wrong
    return not _incompatible(kinds, inp)


def _edges(graph: Graph) -> dict[str, list[str]]:
    """Each step's upstream steps (references and `after`), without self-loops."""
    upstream: dict[str, list[str]] = {}
    for step in graph.steps.values():
        names = [r.name for v in step.args.values() for r in _refs(v)] + list(step.after)
        deps: list[str] = []
        for name in names:
            if name in graph.steps and name != step.name and name not in deps:
                deps.append(name)
        upstream[step.name] = deps
    return upstream


def _cycles(graph: Graph) -> list[str]:
    """One problem per cycle (strongly connected group of steps), named in data-flow order."""
    upstream = _edges(graph)
    downstream: dict[str, list[str]] = {name: [] for name in graph.steps}
    for name, deps in upstream.items():
        for dep in deps:
            downstream[dep].append(name)
    order = list(graph.steps)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def strongconnect(start: str) -> None:  # iterative Tarjan, so deep graphs cannot overflow
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            succ = downstream[node]
            if i < len(succ):
                work.append((node, i + 1))
                nxt = succ[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                groups.append(group)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])

    for name in order:
        if name not in index:
            strongconnect(name)
    problems = []
    for group in groups:
        if len(group) < 2:
            continue
        members = set(group)
        first = min(group, key=order.index)
        path = _cycle_path(first, members, downstream)
        problems.append(
            "steps form a cycle: "
            + " → ".join([*path, first])
            + " (each step needs the one before it)"
        )
    problems.sort()
    return problems


def _cycle_path(first: str, members: set[str], downstream: dict[str, list[str]]) -> list[str]:
    """A simple path first → … → (back to first) inside one strongly connected group."""
    parents: dict[str, str] = {}
    frontier = [first]
    while frontier:  # breadth first: the shortest cycle through `first`
        nxt: list[str] = []
        for node in frontier:
            for succ in downstream[node]:
                if succ not in members:
                    continue
                if succ == first:
                    path = [node]
                    while path[-1] != first:
                        path.append(parents[path[-1]])
                    return path[::-1]
                if succ not in parents:
                    parents[succ] = node
                    nxt.append(succ)
        frontier = nxt
    return sorted(members)  # unreachable for a strongly connected group


def topological_order(graph: Graph) -> list[list[str]]:
    """Levels of steps: each step's upstream steps are all in earlier levels.

    Steps within a level are independent of each other; raises GraphError on a cycle.
    """
    upstream = _edges(graph)
    problems = _cycles(graph)
    problems.extend(
        f"step {s.name!r}: `after` lists the step itself"
        for s in graph.steps.values()
        if s.name in s.after
    )
    if problems:
        raise GraphError(problems)
    done: set[str] = set()
    levels: list[list[str]] = []
    while len(done) < len(graph.steps):
        level = [n for n in graph.steps if n not in done and all(d in done for d in upstream[n])]
        levels.append(level)
        done.update(level)
    return levels


# --- running ----------------------------------------------------------------------------


def load_plugins(
    packages: str | Sequence[str] | None = None, *, errors: dict[str, str] | None = None
) -> dict[str, Any]:
    """Imports plugin packages and every submodule, so their ``@task`` functions register.

    ``packages`` defaults to ``BRINELL_PLUGIN_PACKAGES`` (comma-separated). Returns every
    task known to this process, by name and by module-qualified name (two plugins may
    define tasks of the same name; the qualified name tells them apart). A job pins every
    plugin, including ones it does not use, so with ``errors`` a module that fails to import
    is skipped and recorded there (module -> error); without it the ImportError propagates.
    """
    if packages is None:
        packages = os.environ.get(PLUGIN_PACKAGES_ENV, "")
    if isinstance(packages, str):
        packages = [p.strip() for p in packages.split(",")]

    def load(name: str) -> Any:
        try:
            return importlib.import_module(name)
        except Exception as exc:
            if errors is None:
                raise ImportError(f"cannot import plugin module {name}: {exc!r}") from exc
            errors[name] = f"{type(exc).__name__}: {exc}"
            return None

    found: dict[str, Any] = {}
    for package in dict.fromkeys(p for p in packages if p):
        module = load(package)
        if module is None:
            continue
        modules = [module]
        path = getattr(module, "__path__", None)
        if path is not None:
            # walk_packages imports subpackages to walk them; load() reports their errors.
            for info in pkgutil.walk_packages(path, f"{module.__name__}.", onerror=_ignore):
                sub = load(info.name)
                if sub is not None:
                    modules.append(sub)
        for mod in modules:
            for value in vars(mod).values():
                info_ = getattr(value, "__brinell_task__", None)
                if isinstance(info_, TaskInfo):
                    found[f"{info_.module}.{info_.name}"] = value
    tasks = registered_tasks()
    tasks.update(found)
    return tasks


def _ignore(_: str) -> None:
    pass


def _signature_of(key: str, obj: Any) -> TaskSignature:
    """The signature of a task object: a Brinell task, a plain Prefect task or a function."""
    fn = getattr(obj, "fn", obj)
    info = getattr(obj, "__brinell_task__", None)
    if not isinstance(info, TaskInfo):
        info = describe(fn, key)
    sig = TaskSignature.from_task_info(info)
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return sig
    variadic = {p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return replace(
        sig,
        inputs=tuple(i for i in sig.inputs if i[0] not in variadic),
        any_keyword=any(p.kind is p.VAR_KEYWORD for p in params),
    )


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


def _import_problems(errors: Mapping[str, str]) -> list[str]:
    return [
        f"plugin module {name} could not be imported ({error}); its tasks are missing"
        for name, error in sorted(errors.items())
    ]


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

    from .runtime import prefect_flow_settings

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


# --- command line -----------------------------------------------------------------------


def _graph_entry(graph_path: Path) -> tuple[ProjectSpec, EntrySpec] | None:
    """The MLproject entry whose ``graph:`` is this file, if there is one.

    The nearest MLproject in the graph's folder or a folder above it is the one that counts.
    """
    target = graph_path.resolve()
    for folder in [target.parent, *target.parent.parents]:
        path = folder / "MLproject"
        if not path.is_file():
            continue
        try:
            project = parse_mlproject(path.read_bytes())
        except OSError as exc:
            raise MLprojectError([f"cannot read {path}: {exc}"]) from None
        for entry in project.entries:
            if entry.graph and (folder / entry.graph).resolve() == target:
                return project, entry
        return None
    return None


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _given_parameters(pairs: list[str]) -> dict[str, str]:
    given: dict[str, str] = {}
    raw = os.environ.get(PARAMETERS_ENV)
    if raw:
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise GraphError([f"{PARAMETERS_ENV} is not JSON: {exc}"]) from None
        if not isinstance(doc, dict):
            raise GraphError([f"{PARAMETERS_ENV} must be a JSON object"])
        given.update({str(k): _scalar(v) for k, v in doc.items()})
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise GraphError([f"-p {pair!r}: write -p name=value"])
        given[name] = value
    return given


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m brinell.graph GRAPH.yaml [-p name=value ...]``: validates, then runs.

    Exit status: 0 when every step succeeded, 2 when the graph or its parameters are invalid
    (every problem on stderr), 1 when a step failed.
    """
    parser = argparse.ArgumentParser(
        prog="python -m brinell.graph", description="Runs a Brinell task graph."
    )
    parser.add_argument("graph", type=Path, help="the graph file (YAML)")
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"a parameter; overrides {PARAMETERS_ENV}",
    )
    args = parser.parse_args(argv)
    path: Path = args.graph

    def fail(problems: list[str], code: int = 2) -> int:
        print(f"{path}: the graph cannot run:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return code

    try:
        graph = parse(path.read_bytes())
        given = _given_parameters(args.param)
        found = _graph_entry(path)
        if found is None:  # run by hand, outside an entry point: parameters are strings
            values, types = given, dict.fromkeys(given, "string")
        else:
            project, entry = found
            values = resolve_parameters(project, entry.name, given)
            types = {p.name: p.type for p in entry.parameters}
    except OSError as exc:
        return fail([f"cannot read the graph: {exc}"])
    except (GraphError, MLprojectError) as exc:
        return fail(exc.problems)
    import_errors: dict[str, str] = {}
    tasks = load_plugins(errors=import_errors)
    signatures = [_signature_of(key, obj) for key, obj in tasks.items()]
    problems = validate(graph, types, {s.qualified_name: s for s in signatures})
    if problems:
        return fail(problems + _import_problems(import_errors))
    for problem in _import_problems(import_errors):  # not needed by this graph, but say so
        print(f"warning: {problem}", file=sys.stderr)

    def done(step: str, _result: Any) -> None:
        print(f"step {step} done", flush=True)

    try:
        if os.environ.get("MLFLOW_RUN_ID"):
            import mlflow

            with mlflow.start_run() as active:
                run(
                    graph,
                    values,
                    tasks,
                    types=types,
                    on_step_done=done,
                    mlflow_run_id=active.info.run_id,
                )
        else:
            run(graph, values, tasks, types=types, on_step_done=done)
    except GraphError as exc:
        return fail(exc.problems)
    except Exception as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
