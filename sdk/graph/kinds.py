"""Whether a value or a step's output fits a task input's annotation (as text)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .model import Graph, Ref, TaskSignature, _lookup


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
