"""Reading a plugin bundle without importing it: its manifest and its `@task` signatures.

The control plane must never run plugin code (it may need packages the control plane does
not have, and it is not trusted), so tasks are found in the source with `ast`: top-level
functions decorated with `task`, `brinell.task`, or either called with options.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import yaml
from packaging.version import InvalidVersion, Version

from . import names
from .archives import MAX_FILE_BYTES, UPLOAD_FIELD, Archive, open_archive
from .errors import InvalidArgument

MANIFEST = "brinell-plugin.yaml"
MAX_SOURCE_BYTES = 20 << 20


def read_bundle(path: Path) -> dict[str, Any]:
    """The manifest plus the tasks found in the package's source.

    Raises InvalidArgument naming every problem found.
    """
    with open_archive(path) as archive:
        return _read(archive)


def _read(archive: Archive) -> dict[str, Any]:
    files = archive.files
    root = archive.root(MANIFEST)
    if root is None:
        raise InvalidArgument(f"the bundle has no {MANIFEST} at its root", field=UPLOAD_FIELD)
    try:
        # BaseLoader: every scalar stays the text it was written as (`version: 1.10` is "1.10",
        # not the float 1.1).
        doc = yaml.load(archive.read(root + MANIFEST), Loader=yaml.BaseLoader)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{MANIFEST} is not valid YAML: {exc}", field=UPLOAD_FIELD) from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{MANIFEST} must be a mapping", field=UPLOAD_FIELD)
    problems: list[str] = []
    name = str(doc.get("name") or "")
    if not names.ID_RE.match(name):
        problems.append(
            f"plugin name {name!r} is invalid: use 1-63 of [a-z0-9-], starting with a letter"
        )
    version = str(doc.get("version") or "")
    try:
        version = str(Version(version))  # PEP 440's normal form: "v1.0" is "1.0"
    except InvalidVersion:
        problems.append(f"version {version!r} is not a PEP 440 version (like 1.0.0)")
    package = str(doc.get("package") or "")
    if not package.isidentifier():
        problems.append(f"package {package!r} is not a Python package name")
    requirements = doc.get("requirements") or []
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        problems.append("requirements must be a list of strings")
        requirements = []
    sources = {
        n: v for n, v in files.items() if n.startswith(f"{root}{package}/") and n.endswith(".py")
    }
    if package.isidentifier() and f"{root}{package}/__init__.py" not in files:
        problems.append(f"the bundle has no package {package}/ (with an __init__.py)")
    tasks: list[dict[str, Any]] = []
    total = 0
    for path_name in sorted(sources):
        size, data = sources[path_name]
        total += size
        rel = path_name[len(root) :]
        if total > MAX_SOURCE_BYTES or data is None:
            problems.append(
                f"{rel} is over {MAX_FILE_BYTES} bytes"
                if data is None
                else "the package's Python source is larger than 20 MiB"
            )
            break
        module = path_name[len(root) : -3].replace("/", ".").removesuffix(".__init__")
        try:
            tree = ast.parse(data, filename=path_name)
            tasks.extend(tasks_in(tree, module))
        except SyntaxError as exc:
            problems.append(f"{rel}:{exc.lineno}: {exc.msg}")
        except (RecursionError, MemoryError):
            # Pathological source (200k unary minus signs, a 50k-deep attribute chain): the
            # parser's own depth limit, reported as the user's problem.
            problems.append(f"{rel}: too deeply nested for Python's parser")
    if problems:
        raise InvalidArgument(problems, field=UPLOAD_FIELD)
    return {
        "name": name,
        "version": version,
        "package": package,
        "description": str(doc.get("description") or ""),
        "requirements": requirements,
        "tasks": tasks,
    }


def _is_task_decorator(node: ast.expr) -> tuple[bool, str | None]:
    target = node.func if isinstance(node, ast.Call) else node
    is_task = (isinstance(target, ast.Name) and target.id == "task") or (
        isinstance(target, ast.Attribute)
        and target.attr == "task"
        and isinstance(target.value, ast.Name)
        and target.value.id == "brinell"
    )
    name = None
    if is_task and isinstance(node, ast.Call):
        for kw in node.keywords:
            if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                name = str(kw.value.value)
    return is_task, name


def tasks_in(tree: ast.Module, module: str) -> list[dict[str, Any]]:
    out = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for deco in node.decorator_list:
            is_task, name = _is_task_decorator(deco)
            if is_task:
                out.append(_signature(node, module, name or node.name))
                break
    return out


def _signature(
    fn: ast.FunctionDef | ast.AsyncFunctionDef, module: str, name: str
) -> dict[str, Any]:
    args = fn.args
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += list(args.defaults)
    pairs = list(zip(positional, defaults, strict=True))
    pairs += list(zip(args.kwonlyargs, args.kw_defaults, strict=True))
    inputs = [
        {
            "name": a.arg,
            "type": ast.unparse(a.annotation) if a.annotation else "",
            "has_default": d is not None,
            "default": ast.unparse(d) if d is not None else "",
        }
        for a, d in pairs
    ]
    return {
        "name": name,
        "module": module,
        "inputs": inputs,
        "output": ast.unparse(fn.returns) if fn.returns else "",
        # `**kwargs`: any argument name is accepted.
        "any_keyword": args.kwarg is not None,
        "doc": ast.get_docstring(fn) or "",
    }
