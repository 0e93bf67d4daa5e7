"""``crucible plugin ...``: push task plugins and inspect their versions and tasks.

Mounted by ``crucible.cli`` (``app.add_typer(plugin_app, name="plugin")``); that module
imports this one at its top, so the shared helpers (client, JSON output, tables) are looked
up at run time in the module that runs the app (see ``_cli``). Errors and ``--json`` behave
as in every other command.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer
from rich.markup import escape

from .plugins import Plugin, PluginVersion, Task

__all__ = ["plugin_app"]

plugin_app = typer.Typer(
    help="Push task plugins and inspect their versions and tasks.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]


def _cli(ctx: typer.Context) -> ModuleType:
    """The module that runs the app and holds its state and helpers.

    That is ``crucible.cli``, except under ``python -m crucible.cli``, where it is
    ``__main__``: importing ``crucible.cli`` there would load a second copy whose ``_State``
    the running app's state is not an instance of (its ``--target`` would be lost).
    """
    state = ctx.find_root().obj
    running = sys.modules.get(type(state).__module__) if state is not None else None
    if running is not None and hasattr(running, "_client"):
        return running
    from . import cli

    return cli


def _inputs(t: Task) -> str:
    return ", ".join(str(i) for i in t.inputs) or "-"


def _show_version(cli: ModuleType, v: PluginVersion) -> None:
    cli._details(
        [
            ("version", v.name),
            ("digest", v.digest),
            ("size", cli._size(v.size_bytes)),
            ("package", v.package or "-"),
            ("description", v.description or "-"),
            ("requirements", ", ".join(v.requirements) or "-"),
            ("created", cli._time(v.create_time)),
        ]
    )
    if v.tasks:
        cli.out.print()
        _print_tasks(cli, list(v.tasks))


def _print_tasks(cli: ModuleType, tasks: list[Task]) -> None:
    table = cli._table("TASK", "INPUTS", "OUTPUT", "DESCRIPTION")
    for t in tasks:
        table.add_row(
            escape(t.name), escape(_inputs(t)), escape(t.output_type or "-"), escape(t.summary)
        )
    cli.out.print(table)


@plugin_app.command("push")
def plugin_push(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(help="A folder with crucible-plugin.yaml, or a bundle archive.")
    ],
    json_output: JsonOpt = False,
) -> None:
    """Upload a plugin version (the same bytes again give back the existing version)."""
    cli = _cli(ctx)
    pushed: tuple[Plugin, PluginVersion, bool] = cli._client(ctx).plugins.push(path)
    plugin, version, created = pushed
    if cli._want_json(ctx, json_output):
        cli._print_json(
            {"plugin": cli._jsonable(plugin), "version": cli._jsonable(version), "created": created}
        )
        return
    verb = "pushed" if created else "unchanged:"
    tasks = ", ".join(t.name for t in version.tasks) or "-"
    cli.out.print(
        f"{verb} {escape(plugin.id)} {escape(version.version)} {version.digest} "
        f"({cli._size(version.size_bytes)}, package {escape(version.package or '-')}, "
        f"tasks: {escape(tasks)})"
    )


@plugin_app.command("get")
def plugin_get(ctx: typer.Context, plugin: str, json_output: JsonOpt = False) -> None:
    """Show a plugin and its latest version's tasks."""
    cli = _cli(ctx)
    p: Plugin = cli._client(ctx).plugins.get(plugin)
    if cli._want_json(ctx, json_output):
        cli._print_json(p)
        return
    cli._details(
        [
            ("name", p.name),
            ("description", p.description or "-"),
            ("latest", p.latest_version.version if p.latest_version else "-"),
            ("versions", str(p.version_count)),
            ("created", cli._time(p.create_time)),
            ("updated", cli._time(p.update_time)),
        ]
    )
    if p.latest_version is not None:
        cli.out.print()
        _show_version(cli, p.latest_version)


@plugin_app.command("list")
def plugin_list(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """List plugins by name."""
    cli = _cli(ctx)
    plugins: list[Plugin] = list(cli._client(ctx).plugins.list())
    if cli._want_json(ctx, json_output):
        cli._print_json(plugins)
        return
    table = cli._table("ID", "LATEST", "VERSIONS", "PACKAGE", "TASKS", "DESCRIPTION", "UPDATED")
    for p in plugins:
        v = p.latest_version
        table.add_row(
            escape(p.id),
            escape(v.version if v else "-"),
            str(p.version_count),
            escape(v.package if v else "-"),
            str(len(v.tasks)) if v else "-",
            escape(p.description or "-"),
            cli._time(p.update_time),
        )
    cli.out.print(table)


@plugin_app.command("versions")
def plugin_versions(ctx: typer.Context, plugin: str, json_output: JsonOpt = False) -> None:
    """List a plugin's versions, highest first."""
    cli = _cli(ctx)
    versions: list[PluginVersion] = list(cli._client(ctx).plugins.versions(plugin))
    if cli._want_json(ctx, json_output):
        cli._print_json(versions)
        return
    table = cli._table("VERSION", "DIGEST", "SIZE", "TASKS", "REQUIREMENTS", "CREATED")
    for v in versions:
        table.add_row(
            escape(v.version),
            cli._short(v.digest),
            cli._size(v.size_bytes),
            str(len(v.tasks)),
            escape(", ".join(v.requirements) or "-"),
            cli._time(v.create_time),
        )
    cli.out.print(table)


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
    cli = _cli(ctx)
    tasks: list[Task] = cli._client(ctx).plugins.tasks(plugin, version)
    if cli._want_json(ctx, json_output):
        cli._print_json(tasks)
        return
    _print_tasks(cli, tasks)
