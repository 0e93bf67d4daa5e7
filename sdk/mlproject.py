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

from . import images

TYPES = ("string", "float", "int", "path", "uri")
# A Brinell id (experiments, entry points, plugins, groups): what an entry's `plugins:` names.
ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
# Bounds on what an MLproject may declare: everything here is stored, listed and shown.
MAX_NAME_CHARS = 100  # the project's, an entry's, a parameter's name
MAX_ENTRIES = 100
MAX_PARAMETERS = 100  # per entry
MAX_PLUGINS = 32  # per entry
MAX_VALUE_CHARS = 6000  # a parameter's value (its default included)
# A YAML document's size with every alias expanded (nodes plus the characters of its
# strings): a few hundred bytes of anchors and aliases can stand for gigabytes of document
# (the "billion laughs"); a real MLproject or task graph is a few thousand.
MAX_YAML_SIZE = 1_000_000
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
    # The plugins (ids) the entry's code uses: a job pins these (and a graph's plugins).
    plugins: tuple[str, ...] = ()
    # The container image for the docker executor: the entry's `docker_env.image`, else the
    # project's (MLflow's key); "" when neither names one.
    image: str = ""
    # `isolated: true` (Brinell's key): always a fresh interpreter, never the warm runtime.
    isolated: bool = False

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


def yaml_size(doc: Any, limit: int = MAX_YAML_SIZE) -> int:
    """``doc``'s nodes plus the characters of its strings, every alias expanded, counted no
    further than past ``limit`` (so a document that stands for billions costs ``limit``)."""
    count, stack = 0, [doc]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        if isinstance(node, str):
            count += len(node)
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count


def load_yaml(text: str | bytes, what: str) -> Any:
    """``text`` parsed (safe_load) and bounded; raises ValueError with the problem."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{what} is not valid YAML: {shown(str(exc))}") from None
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None
    if yaml_size(doc) > MAX_YAML_SIZE:
        raise ValueError(
            f"{what} expands to more than {MAX_YAML_SIZE} nodes and characters (its aliases "
            "expanded)"
        )
    return doc


def _name(value: Any, what: str, problems: list[str]) -> str:
    text = _scalar(value) if not isinstance(value, (dict, list)) else ""
    if not text or len(text) > MAX_NAME_CHARS:
        problems.append(f"{what} must be a name of 1-{MAX_NAME_CHARS} characters")
    return text[:MAX_NAME_CHARS]


def _plugins(raw: Any, entry_name: str, problems: list[str]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_PLUGINS:
        problems.append(
            f"entry {entry_name!r}: `plugins` must be a list of at most {MAX_PLUGINS} plugin ids"
        )
        return ()
    bad = [shown(str(p)) for p in raw if not isinstance(p, str) or not ID_RE.match(p)]
    if bad:
        problems.append(
            f"entry {entry_name!r}: `plugins` has what is not a plugin id: " + ", ".join(bad[:5])
        )
        return ()
    return tuple(dict.fromkeys(raw))


def _image(raw: Any, entry: str, problems: list[str]) -> str:
    """`docker_env: {image: REF}` (MLflow's key); other docker_env keys are MLflow's to use."""
    if raw is None:
        return ""
    where = f"entry {entry!r}: " if entry else ""
    image = raw.get("image") if isinstance(raw, dict) else None
    if not isinstance(image, str):
        problems.append(f"{where}`docker_env` must be a mapping with an `image` string")
        return ""
    problem = images.reference_problem(image)
    if problem:
        problems.append(f"{where}docker_env.image: {problem}")
        return ""
    return image


def parse(text: str | bytes) -> ProjectSpec:
    """Parses an MLproject document; raises MLprojectError naming every problem."""
    try:
        doc = load_yaml(text, "MLproject")
    except ValueError as exc:
        raise MLprojectError([str(exc)]) from None
    if not isinstance(doc, dict):
        raise MLprojectError(["MLproject must be a mapping with an `entry_points` key"])
    problems: list[str] = []
    raw_entries = doc.get("entry_points")
    if not isinstance(raw_entries, dict) or not raw_entries:
        raise MLprojectError(["MLproject has no `entry_points` mapping"])
    if len(raw_entries) > MAX_ENTRIES:
        raise MLprojectError([f"MLproject has more than {MAX_ENTRIES} entry points"])
    project_name = "" if doc.get("name") is None else _name(doc["name"], "`name`", problems)
    project_image = _image(doc.get("docker_env"), "", problems)
    entries: list[EntrySpec] = []
    for raw_name, raw in raw_entries.items():
        entry_name = _name(raw_name, "an entry point's name", problems)
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
        if len(raw["command"].encode()) > MAX_COMMAND_BYTES:
            problems.append(f"entry {entry_name!r}: the command is over {MAX_COMMAND_BYTES} bytes")
            continue
        params: list[ParameterSpec] = []
        raw_params = raw.get("parameters") or {}
        if not isinstance(raw_params, dict) or len(raw_params) > MAX_PARAMETERS:
            problems.append(
                f"entry {entry_name!r}: `parameters` must be a mapping of at most "
                f"{MAX_PARAMETERS} parameters"
            )
            raw_params = {}
        for pname, pdecl in raw_params.items():
            pname = _name(pname, f"entry {entry_name!r}: a parameter's name", problems)
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
            if default is not None and len(default) > MAX_VALUE_CHARS:
                problems.append(
                    f"entry {entry_name!r}: parameter {pname!r} has a default longer than "
                    f"{MAX_VALUE_CHARS} characters"
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
        plugins = _plugins(raw.get("plugins"), entry_name, problems)
        image = _image(raw.get("docker_env"), entry_name, problems) or project_image
        isolated = raw.get("isolated", False)
        if not isinstance(isolated, bool):
            problems.append(f"entry {entry_name!r}: `isolated` must be true or false")
        entries.append(
            EntrySpec(
                entry_name, raw["command"], tuple(params), graph, plugins, image, isolated is True
            )
        )
    if problems:
        raise MLprojectError(problems[:50])
    return ProjectSpec(project_name, tuple(entries))


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
