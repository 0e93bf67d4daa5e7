"""Reading a graph file: YAML to a Graph, every problem reported at once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..mlproject import did_you_mean, load_yaml
from .model import _GRAPH_KEYS, _NAME_RE, _REF_RE, _STEP_KEYS, Graph, GraphError, Ref, Step


def parse(text: str | bytes) -> Graph:
    """Parses a graph document; raises GraphError listing every structural problem."""
    try:
        doc = load_yaml(text, "the graph")
    except ValueError as exc:
        raise GraphError([str(exc)]) from None
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
