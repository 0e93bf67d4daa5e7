"""What a task graph is: its steps, references and the task signatures it is checked against."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..mlproject import did_you_mean
from ..plugin import TaskInfo

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
