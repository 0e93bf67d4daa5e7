"""Plugin authoring: ``@task`` marks a plugin function as a Brinell task.

A task is a ``prefect.task`` whose signature Brinell records, so entry points and task
graphs can call it by name and the control plane can check their arguments before a job
runs. The control plane reads the same information from a plugin's source without
importing it (see ``brinell.plugin_manifest``); this decorator is what a job uses.
Prefect is imported only when a decorated module is imported (inside jobs), never by
``import brinell``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["TaskInfo", "registered_tasks", "task"]


@dataclass(frozen=True)
class TaskInfo:
    """A task's name and signature, as written in its source."""

    name: str
    module: str
    inputs: tuple[tuple[str, str, bool, str], ...]  # (name, annotation, has_default, default)
    output: str
    doc: str


_TASKS: dict[str, Any] = {}


def _annotation(value: Any) -> str:
    if value is inspect.Parameter.empty:
        return ""
    return value if isinstance(value, str) else getattr(value, "__name__", repr(value))


def describe(fn: Callable[..., Any], name: str | None = None) -> TaskInfo:
    sig = inspect.signature(fn)
    inputs = tuple(
        (
            p.name,
            _annotation(p.annotation),
            p.default is not inspect.Parameter.empty,
            "" if p.default is inspect.Parameter.empty else repr(p.default),
        )
        for p in sig.parameters.values()
    )
    return TaskInfo(
        name or fn.__name__,
        fn.__module__,
        inputs,
        _annotation(sig.return_annotation),
        inspect.getdoc(fn) or "",
    )


@overload
def task(fn: F) -> Any: ...


@overload
def task(*, name: str | None = None, **prefect_options: Any) -> Callable[[F], Any]: ...


def task(fn: Any = None, *, name: str | None = None, **prefect_options: Any) -> Any:
    """Marks ``fn`` as a Brinell task: a ``prefect.task`` with a recorded signature.

    Use bare (``@task``) or with options (``@task(name="fgsm", retries=2)``); options other
    than ``name`` go to ``prefect.task``.
    """

    def wrap(f: Callable[..., Any]) -> Any:
        from prefect import task as prefect_task

        info = describe(f, name)
        wrapped = prefect_task(name=info.name, **prefect_options)(f)
        wrapped.__brinell_task__ = info  # type: ignore[attr-defined]
        _TASKS[info.name] = wrapped
        return wrapped

    return wrap(fn) if fn is not None else wrap


def registered_tasks() -> dict[str, Any]:
    """Tasks defined so far in this process, by name."""
    return dict(_TASKS)
