"""MLflow ``MLproject`` parsing, parameter validation and command building.

Shared by the control plane (validation at submit) and the agent (command building), so
both read an entry point the same way. Semantics follow MLflow Projects: parameter types
``string``, ``float``, ``int``, ``path`` and ``uri``; a parameter is required when it has no
default; commands are templates whose ``{name}`` placeholders get shell-quoted values.
Unlike MLflow, undeclared parameters are an error rather than appended to the command:
a typo in a parameter name must not silently run with the default.
"""

from __future__ import annotations

import difflib
import math
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

TYPES = ("string", "float", "int", "path", "uri")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.-]*)\}")


class MLprojectError(ValueError):
    """The MLproject file cannot be used; the message lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    type: str = "string"
    default: str | None = None

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True)
class EntrySpec:
    name: str
    command: str
    parameters: tuple[ParameterSpec, ...] = ()
    # A Brinell task graph (YAML, relative to the MLproject) this entry runs.
    graph: str | None = None

    def parameter(self, name: str) -> ParameterSpec | None:
        return next((p for p in self.parameters if p.name == name), None)


@dataclass(frozen=True)
class ProjectSpec:
    name: str
    entries: tuple[EntrySpec, ...] = field(default_factory=tuple)

    def entry(self, name: str) -> EntrySpec | None:
        return next((e for e in self.entries if e.name == name), None)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse(text: str | bytes) -> ProjectSpec:
    """Parses an MLproject document; raises MLprojectError naming every problem."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MLprojectError([f"MLproject is not valid YAML: {exc}"]) from None
    if not isinstance(doc, dict):
        raise MLprojectError(["MLproject must be a mapping with an `entry_points` key"])
    problems: list[str] = []
    raw_entries = doc.get("entry_points")
    if not isinstance(raw_entries, dict) or not raw_entries:
        raise MLprojectError(["MLproject has no `entry_points` mapping"])
    entries: list[EntrySpec] = []
    for entry_name, raw in raw_entries.items():
        entry_name = str(entry_name)
        graph = raw.get("graph") if isinstance(raw, dict) else None
        if graph is not None and (not isinstance(graph, str) or not graph.strip()):
            problems.append(f"entry {entry_name!r}: `graph` must be a file name")
            continue
        if isinstance(raw, dict) and graph and "command" not in raw:
            # A task-graph entry: Brinell's runner executes the graph with the job's
            # parameters (it reads them from the job's environment).
            raw = {**raw, "command": f"python -m brinell.graph {shlex.quote(graph)}"}
        if not isinstance(raw, dict) or not isinstance(raw.get("command"), str):
            problems.append(f"entry {entry_name!r} has no `command` string")
            continue
        params: list[ParameterSpec] = []
        raw_params = raw.get("parameters") or {}
        if not isinstance(raw_params, dict):
            problems.append(f"entry {entry_name!r}: `parameters` must be a mapping")
            raw_params = {}
        for pname, pdecl in raw_params.items():
            pname = str(pname)
            ptype, default = "string", None
            if isinstance(pdecl, str):
                ptype = pdecl
            elif isinstance(pdecl, dict):
                ptype = str(pdecl.get("type", "string"))
                if pdecl.get("default") is not None:
                    default = _scalar(pdecl["default"])
            elif pdecl is not None:
                problems.append(f"entry {entry_name!r}: parameter {pname!r} has a bad declaration")
                continue
            if ptype not in TYPES:
                problems.append(
                    f"entry {entry_name!r}: parameter {pname!r} has unknown type {ptype!r} "
                    f"(one of {', '.join(TYPES)})"
                )
                continue
            spec = ParameterSpec(pname, ptype, default)
            if default is not None:
                err = check_value(spec, default)
                if err:
                    problems.append(f"entry {entry_name!r}: default of {err}")
            params.append(spec)
        declared = {p.name for p in params}
        types = {p.name: p.type for p in params}
        problems += [
            f"entry {entry_name!r}: command has {{{name}}} inside {quote} quotes, where a "
            "value could break out of them: write it unquoted, or in $(...) instead of "
            "backticks (values are shell-quoted for you)"
            for name, quote in quoted_placeholders(raw["command"])
            if types.get(name) not in NUMERIC  # a number cannot end a quote
        ]
        for used in _PLACEHOLDER.findall(raw["command"]):
            if used not in declared:
                problems.append(
                    f"entry {entry_name!r}: command uses {{{used}}} which is not a declared "
                    "parameter"
                )
        entries.append(EntrySpec(entry_name, raw["command"], tuple(params), graph))
    if problems:
        raise MLprojectError(problems)
    return ProjectSpec(str(doc.get("name") or ""), tuple(entries))


# A command runs as one argument of `sh -c`; Linux refuses an argument over 128 KiB at exec.
MAX_COMMAND_BYTES = 100_000
_SHOWN_CHARS = 40


def shown(value: str) -> str:
    """``value`` as an error message quotes it: repr, cut to a few dozen characters."""
    return repr(value) if len(value) <= _SHOWN_CHARS else repr(value[:_SHOWN_CHARS]) + "…"


def check_value(spec: ParameterSpec, value: str) -> str | None:
    """Returns a problem description when ``value`` does not fit the parameter's type (or
    could not be run at all: a NUL character cannot be passed to a process)."""
    if "\x00" in value:
        return f"parameter {spec.name!r}: a NUL character is not allowed"
    if spec.type == "int":
        try:
            int(value.strip())
        except ValueError:
            return f"parameter {spec.name!r}: {shown(value)} is not an int"
    elif spec.type == "float":
        try:
            number = float(value.strip())
        except ValueError:
            return f"parameter {spec.name!r}: {shown(value)} is not a float"
        if math.isnan(number):
            return f"parameter {spec.name!r}: NaN is not allowed"
        if math.isinf(number):
            return f"parameter {spec.name!r}: infinity is not allowed"
    elif spec.type in ("path", "uri") and not value.strip():
        return f"parameter {spec.name!r}: an empty {spec.type} is not allowed"
    return None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or nothing when none is close."""
    close = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def resolve(project: ProjectSpec, entry: str, given: dict[str, str]) -> dict[str, str]:
    """Validates ``given`` against the entry and returns every parameter, defaults filled in.

    Raises MLprojectError listing every missing, unknown and mistyped parameter at once.
    """
    spec = project.entry(entry)
    if spec is None:
        known = ", ".join(e.name for e in project.entries)
        raise MLprojectError([f"entry {entry!r} is not in the MLproject (entries: {known})"])
    problems: list[str] = []
    declared = {p.name for p in spec.parameters}
    for name in sorted(set(given) - declared):
        hint = (
            did_you_mean(name, declared) or f" (declared: {', '.join(sorted(declared)) or 'none'})"
        )
        problems.append(f"unknown parameter {shown(name)}{hint}")
    resolved: dict[str, str] = {}
    for p in spec.parameters:
        if p.name in given:
            err = check_value(p, given[p.name])
            if err:
                problems.append(err)
            resolved[p.name] = given[p.name]
        elif p.default is not None:
            resolved[p.name] = p.default
        else:
            problems.append(f"missing required parameter {p.name!r} ({p.type})")
    if not problems and spec.command:
        size = len(build_command(spec, resolved).encode())
        if size > MAX_COMMAND_BYTES:
            problems.append(
                f"the command with these parameters is {size} bytes, more than the "
                f"{MAX_COMMAND_BYTES} a process can be given"
            )
    if problems:
        raise MLprojectError(problems)
    return resolved


NUMERIC = ("int", "float")


def quoted_placeholders(command: str) -> list[tuple[str, str]]:
    """(name, "single" | "double") of each placeholder the shell would read inside quotes: a
    value substituted there, quoted by ``build_command``, would end the template's quote and
    run as shell text (``echo '{x}'`` with ``x = "a'; touch F; '"``); in backticks a value's
    own backtick ends them. Unquoted placeholders, also inside ``$(...)``, are safe; quoted
    ones are refused unless numeric."""
    found: list[tuple[str, str]] = []
    state = ""  # "" outside quotes, "'" or '"' inside them
    i = 0
    while i < len(command):
        c = command[i]
        if c == "\\" and state != "'":
            i += 2  # an escaped character, outside quotes or inside double quotes
            continue
        if state == "" and c in "'\"`":
            state = c
        elif state and c == state:
            state = ""
        elif state and (m := _PLACEHOLDER.match(command, i)):
            found.append((m.group(1), {"'": "single", '"': "double", "`": "backtick"}[state]))
            i = m.end()
            continue
        i += 1
    return found


def build_command(entry: EntrySpec, parameters: dict[str, str]) -> str:
    """The shell command for an entry, each placeholder replaced by its quoted value."""

    def sub(match: re.Match[str]) -> str:
        return shlex.quote(parameters[match.group(1)])

    return _PLACEHOLDER.sub(sub, entry.command)
