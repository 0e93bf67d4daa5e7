"""``brinell model …`` and ``brinell artifact …``: the model registry and job artifacts.

Mounted on the main app by cli.py, whose root group prints SDK errors as ``error: CODE:
message`` (exit 2) and whose root options (``--target``, ``--json``) live on the context's
root object. This module reads that object by attribute rather than importing cli.py, so
``python -m brinell.cli`` (where cli.py runs as ``__main__``) imports nothing twice.
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
    _size,
    _table,
    _time,
    _want_json,
    out,
)
from .models import Artifact, Model, ModelVersion

model_app = typer.Typer(
    help="Register models that jobs logged, version and alias them, download them.",
    no_args_is_help=True,
)
alias_app = typer.Typer(help="Point aliases (champion, staging) at versions.", no_args_is_help=True)
model_app.add_typer(alias_app, name="alias")
artifact_app = typer.Typer(help="List and download what a job logged.", no_args_is_help=True)


def _details_text(rows: list[tuple[str, str]]) -> None:
    """Rows of plain text (escaped: names may hold rich markup characters)."""
    _details([(key, escape(value)) for key, value in rows])


def _aliases(aliases: dict[str, str]) -> str:
    return ", ".join(f"{a}->{v}" for a, v in sorted(aliases.items())) or "-"


def _show_model(m: Model) -> None:
    _details_text(
        [
            ("name", m.name),
            ("description", m.description or "-"),
            ("latest version", m.latest_version or "-"),
            ("aliases", _aliases(m.aliases)),
            ("created", _time(m.create_time)),
            ("updated", _time(m.update_time)),
        ]
    )


def _show_version(v: ModelVersion) -> None:
    _details_text(
        [
            ("name", v.name),
            ("uri", v.uri),
            ("aliases", ", ".join(v.aliases) or "-"),
            ("job", v.job or "-"),
            ("mlflow run", v.mlflow_run_id or "-"),
            ("artifact path", v.artifact_path or "-"),
            ("source", v.source or "-"),
            ("description", v.description or "-"),
            ("created", _time(v.create_time)),
        ]
    )


def _is_version(name: str) -> bool:
    return name.startswith("models:/") or "@" in name or "/versions/" in name


# ----------------------------------------------------------------------------- models


@model_app.command("register")
def model_register(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(help="The job (id or jobs/ID) that logged the model.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model id ([a-z0-9-]).")],
    path: Annotated[
        str, typer.Option("--path", help="Path of the model in the job's artifacts.")
    ] = "model",
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    json_output: JsonOpt = False,
) -> None:
    """Register what a job logged as the next version of a model (created when new)."""
    v = _client(ctx).models.register(model, job, artifact_path=path, description=description)
    if _want_json(ctx, json_output):
        _print_json(v)
    else:
        out.print(
            f"registered {escape(v.name)} ({escape(v.uri)}) from "
            f"{escape(v.job)}:{escape(v.artifact_path)}"
        )


@model_app.command("get")
def model_get(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(
            help="A model (m, models/m) or a version (models/m/versions/3, m@champion, "
            "models:/m/latest)."
        ),
    ],
    json_output: JsonOpt = False,
) -> None:
    """Show a model, or one of its versions."""
    client = _client(ctx)
    if _is_version(name):
        v = client.models.version(name)
        if _want_json(ctx, json_output):
            _print_json(v)
        else:
            _show_version(v)
        return
    m = client.models.get(name)
    if _want_json(ctx, json_output):
        _print_json(m)
    else:
        _show_model(m)


@model_app.command("list")
def model_list(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """List models by id."""
    models = list(_client(ctx).models.list())
    if _want_json(ctx, json_output):
        _print_json(models)
        return
    table = _table("ID", "LATEST", "ALIASES", "DESCRIPTION", "UPDATED")
    for m in models:
        table.add_row(
            escape(m.id),
            m.latest_version or "-",
            escape(_aliases(m.aliases)),
            escape(m.description or "-"),
            _time(m.update_time),
        )
    _print_table(table)


@model_app.command("versions")
def model_versions(ctx: typer.Context, model: str, json_output: JsonOpt = False) -> None:
    """List a model's versions, newest first."""
    versions = list(_client(ctx).models.versions(model))
    if _want_json(ctx, json_output):
        _print_json(versions)
        return
    table = _table("VERSION", "ALIASES", "JOB", "PATH", "CREATED")
    for v in versions:
        table.add_row(
            v.version,
            escape(", ".join(v.aliases) or "-"),
            escape(v.job.removeprefix("jobs/") or "-"),
            escape(v.artifact_path or "-"),
            _time(v.create_time),
        )
    _print_table(table)


@model_app.command("resolve")
def model_resolve(
    ctx: typer.Context,
    uri: Annotated[str, typer.Argument(help="models:/m/3, models:/m@alias or models:/m/latest")],
    json_output: JsonOpt = False,
) -> None:
    """Show the version a models:/ URI points at."""
    v = _client(ctx).models.resolve(uri)
    if _want_json(ctx, json_output):
        _print_json(v)
    else:
        _show_version(v)


@model_app.command("download")
def model_download(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(help="A version: models/m/versions/3, m@champion, models:/m/latest, ..."),
    ],
    dest: Annotated[Path, typer.Option("--dest", help="Folder to write the files into.")],
    json_output: JsonOpt = False,
) -> None:
    """Download a version's files (MLmodel, ...) into a folder."""
    client = _client(ctx)
    v = client.models.version(name)
    path = client.models.download(v, dest)
    if _want_json(ctx, json_output):
        _print_json({"version": _jsonable(v), "path": str(path)})
    else:
        out.print(f"downloaded {escape(v.name)} to {escape(str(path))}")


@alias_app.command("set")
def alias_set(
    ctx: typer.Context, model: str, alias: str, version: str, json_output: JsonOpt = False
) -> None:
    """Point ALIAS at VERSION of MODEL."""
    m = _client(ctx).models.set_alias(model, alias, version)
    if _want_json(ctx, json_output):
        _print_json(m)
    else:
        out.print(f"{escape(m.name)}@{escape(alias)} -> version {escape(version)}")


@alias_app.command("delete")
def alias_delete(ctx: typer.Context, model: str, alias: str, json_output: JsonOpt = False) -> None:
    """Remove ALIAS from MODEL."""
    m = _client(ctx).models.delete_alias(model, alias)
    if _want_json(ctx, json_output):
        _print_json(m)
    else:
        out.print(f"deleted {escape(m.name)}@{escape(alias)}")


# ----------------------------------------------------------------------------- artifacts


@artifact_app.command("list")
def artifact_list(
    ctx: typer.Context,
    job: str,
    path: Annotated[str, typer.Option("--path", help="Folder to list (default: the root).")] = "",
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Every file under the folder.")
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """List a job's artifacts."""
    found: list[Artifact] = _client(ctx).artifacts.list(job, path=path, recursive=recursive)
    if _want_json(ctx, json_output):
        _print_json(found)
        return
    table = _table("PATH", "SIZE")
    for a in found:
        table.add_row(
            escape(a.path + ("/" if a.is_dir else "")), "-" if a.is_dir else _size(a.size_bytes)
        )
    _print_table(table)


@artifact_app.command("download")
def artifact_download(
    ctx: typer.Context,
    job: str,
    path: Annotated[str, typer.Argument(help="A file or folder of the job's artifacts.")],
    dest: Annotated[Path, typer.Option("--dest", help="Folder to write into (keeps PATH).")],
    json_output: JsonOpt = False,
) -> None:
    """Download a file or folder of a job's artifacts (to DEST/PATH)."""
    target = _client(ctx).artifacts.download(job, path, dest)
    if _want_json(ctx, json_output):
        _print_json({"path": str(target)})
    else:
        out.print(f"downloaded {escape(path)} to {escape(str(target))}")
