"""``brinell plugin ...``: push task plugins and inspect their versions and tasks.

Mounted by ``brinell.cli`` (``app.add_typer(plugin_app, name="plugin")``); the shared
helpers (client, JSON output, tables) come from ``brinell.cli_common``. Errors and
``--json`` behave as in every other command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .cli_common import (
    JsonOpt,
    _client,
    _details,
    _jsonable,
    _print_json,
    _print_table,
    _short,
    _size,
    _table,
    _time,
    _want_json,
    out,
)
from .plugins import Plugin, PluginVersion, Task

__all__ = ["plugin_app"]

plugin_app = typer.Typer(
    help="Push task plugins and inspect their versions and tasks.", no_args_is_help=True
)


def _inputs(t: Task) -> str:
    return ", ".join(str(i) for i in t.inputs) or "-"


def _show_version(v: PluginVersion) -> None:
    _details(
        [
            ("version", v.name),
            ("digest", v.digest),
            ("size", _size(v.size_bytes)),
            ("package", v.package or "-"),
            ("description", v.description or "-"),
            ("requirements", ", ".join(v.requirements) or "-"),
            ("created", _time(v.create_time)),
            *([("yanked", v.yank_reason or "yes")] if v.yanked else []),
        ]
    )
    if v.tasks:
        out.print()
        _print_tasks(list(v.tasks))


def _print_tasks(tasks: list[Task]) -> None:
    table = _table("TASK", "INPUTS", "OUTPUT", "DESCRIPTION")
    for t in tasks:
        table.add_row(
            escape(t.name), escape(_inputs(t)), escape(t.output_type or "-"), escape(t.summary)
        )
    _print_table(table)


@plugin_app.command("push")
def plugin_push(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(help="A folder with brinell-plugin.yaml, or a bundle archive.")
    ],
    json_output: JsonOpt = False,
) -> None:
    """Upload a plugin version (the same bytes again give back the existing version)."""
    pushed: tuple[Plugin, PluginVersion, bool] = _client(ctx).plugins.push(path)
    plugin, version, created = pushed
    if _want_json(ctx, json_output):
        _print_json(
            {"plugin": _jsonable(plugin), "version": _jsonable(version), "created": created}
        )
        return
    verb = "pushed" if created else "unchanged:"
    tasks = ", ".join(t.name for t in version.tasks) or "-"
    out.print(
        f"{verb} {escape(plugin.id)} {escape(version.version)} {version.digest} "
        f"({_size(version.size_bytes)}, package {escape(version.package or '-')}, "
        f"tasks: {escape(tasks)})"
    )


@plugin_app.command("get")
def plugin_get(ctx: typer.Context, plugin: str, json_output: JsonOpt = False) -> None:
    """Show a plugin and its latest version's tasks."""
    p: Plugin = _client(ctx).plugins.get(plugin)
    if _want_json(ctx, json_output):
        _print_json(p)
        return
    _details(
        [
            ("name", p.name),
            ("description", p.description or "-"),
            ("latest", p.latest_version.version if p.latest_version else "-"),
            ("versions", str(p.version_count)),
            ("created", _time(p.create_time)),
            ("updated", _time(p.update_time)),
        ]
    )
    if p.latest_version is not None:
        out.print()
        _show_version(p.latest_version)


@plugin_app.command("list")
def plugin_list(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """List plugins by name."""
    plugins: list[Plugin] = list(_client(ctx).plugins.list())
    if _want_json(ctx, json_output):
        _print_json(plugins)
        return
    table = _table("ID", "LATEST", "VERSIONS", "PACKAGE", "TASKS", "DESCRIPTION", "UPDATED")
    for p in plugins:
        v = p.latest_version
        table.add_row(
            escape(p.id),
            escape(v.version if v else "-"),
            str(p.version_count),
            escape(v.package if v else "-"),
            str(len(v.tasks)) if v else "-",
            escape(p.description or "-"),
            _time(p.update_time),
        )
    _print_table(table)


@plugin_app.command("versions")
def plugin_versions(ctx: typer.Context, plugin: str, json_output: JsonOpt = False) -> None:
    """List a plugin's versions, highest first."""
    versions: list[PluginVersion] = list(_client(ctx).plugins.versions(plugin))
    if _want_json(ctx, json_output):
        _print_json(versions)
        return
    table = _table("VERSION", "DIGEST", "SIZE", "TASKS", "REQUIREMENTS", "CREATED")
    for v in versions:
        table.add_row(
            escape(v.version) + (" (yanked)" if v.yanked else ""),
            _short(v.digest),
            _size(v.size_bytes),
            str(len(v.tasks)),
            escape(", ".join(v.requirements) or "-"),
            _time(v.create_time),
        )
    _print_table(table)


@plugin_app.command("tasks")
def plugin_tasks(
    ctx: typer.Context,
    plugin: str,
    version: Annotated[
        str | None, typer.Option("--version", "-v", help="Version (default: the latest).")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """List a version's tasks: inputs with types and defaults, output type, summary."""
    tasks: list[Task] = _client(ctx).plugins.tasks(plugin, version)
    if _want_json(ctx, json_output):
        _print_json(tasks)
        return
    _print_tasks(tasks)


@plugin_app.command("yank")
def plugin_yank(
    ctx: typer.Context,
    plugin: str,
    version: str,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Shown at submit.")] = "",
    undo: Annotated[bool, typer.Option("--undo", help="Take the yank back.")] = False,
) -> None:
    """Yank a version (admins): new jobs stop pinning it; jobs that pinned it keep it."""
    plugins = _client(ctx).plugins
    v = plugins.unyank(plugin, version) if undo else plugins.yank(plugin, version, reason)
    out.print(f"{escape(v.name)} {'yanked' if v.yanked else 'no longer yanked'}")


@plugin_app.command("delete")
def plugin_delete(ctx: typer.Context, plugin: str, version: str) -> None:
    """Delete a version (admins); the plugin goes with its last version."""
    _client(ctx).plugins.delete_version(plugin, version)
    out.print(f"deleted {escape(plugin.removeprefix('plugins/'))} {escape(version)}")
