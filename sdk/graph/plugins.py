"""Finding the tasks a graph can call: plugin packages imported, tasks and their signatures."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..plugin import TaskInfo, describe, registered_tasks
from .model import PLUGIN_PACKAGES_ENV, TaskSignature


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


def _import_problems(errors: Mapping[str, str]) -> list[str]:
    return [
        f"plugin module {name} could not be imported ({error}); its tasks are missing"
        for name, error in sorted(errors.items())
    ]
