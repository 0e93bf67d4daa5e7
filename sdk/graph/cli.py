"""``python -m brinell.graph GRAPH.yaml``: validate, then run (an entry point's command)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..mlproject import EntrySpec, MLprojectError, ProjectSpec
from ..mlproject import parse as parse_mlproject
from ..mlproject import resolve as resolve_parameters
from . import outputs
from .model import PARAMETERS_ENV, GraphError
from .parsing import parse
from .plugins import _import_problems, _signature_of, load_plugins
from .runner import run
from .validation import validate


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
                results = run(
                    graph,
                    values,
                    tasks,
                    types=types,
                    on_step_done=done,
                    mlflow_run_id=active.info.run_id,
                )
                shown = outputs.outputs(results)
                outputs.log_to_mlflow(shown)
        else:
            shown = outputs.outputs(run(graph, values, tasks, types=types, on_step_done=done))
        for line in outputs.lines(shown):
            print(line, flush=True)
    except GraphError as exc:
        return fail(exc.problems)
    except Exception as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    return 0
