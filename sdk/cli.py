"""The ``brinell`` command line: run a server or an agent, and drive them.

Human output goes to stdout as rich tables; ``--json`` (global, or on get/list/submit/wait)
prints JSON on stdout instead, for scripts. Errors from the control plane print
``error: CODE: message`` on stderr and exit with status 2; ``job wait``, ``job watch`` and
``job submit --watch`` exit 0 when the job succeeded and 1 when it ended otherwise.
The server and agent are imported only by their commands, so the client commands start fast
and work with only the ``[cli]`` extra installed.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from .cli_auth import audit_app, group_app, login, token_app, user_app, whoami
from .cli_common import (
    EXIT_ERROR,
    EXIT_FAILED,
    JsonOpt,
    _bytes,
    _client,
    _details,
    _jsonable,
    _kv,
    _limited,
    _print_json,
    _print_table,
    _seconds,
    _short,
    _size,
    _State,
    _state,
    _table,
    _time,
    _want_json,
    err,
    out,
)
from .cli_models import artifact_app, model_app
from .cli_plugins import plugin_app
from .client import DEFAULT_TARGET, Client
from .errors import BrinellError
from .extras import needs
from .pack import default_id_source
from .types import (
    Agent,
    EntryPointRevision,
    Experiment,
    Job,
    JobState,
    LogLine,
    Resources,
    RetryPolicy,
)


class _Group(TyperGroup):
    """Turns SDK errors into one line on stderr: user errors deserve no traceback."""

    def invoke(self, ctx: Any) -> Any:  # click.Context, vendored privately by typer
        try:
            return super().invoke(ctx)
        except BrinellError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}")
            for v in exc.details:
                err.print(f"  {escape(v.field)}: {escape(v.description)}")
            if exc.code == "UNAVAILABLE":
                state = ctx.obj if isinstance(ctx.obj, _State) else None
                target = state.target if state else DEFAULT_TARGET
                err.print(f"  is a control plane running at {escape(target)}? (--target)")
            raise typer.Exit(EXIT_ERROR) from None
        except (OSError, ValueError) as exc:  # local problems: bad path, bad key=value
            err.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(EXIT_ERROR) from None


app = typer.Typer(
    cls=_Group,
    name="brinell",
    help="Brinell: run, track and organize ML-security experiments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
experiment_app = typer.Typer(help="Create and manage experiments.", no_args_is_help=True)
entrypoint_app = typer.Typer(help="Push and inspect entry points.", no_args_is_help=True)
job_app = typer.Typer(help="Submit, watch and cancel jobs.", no_args_is_help=True)
agent_app = typer.Typer(
    help="Run the agent daemon (no subcommand), or list agents.", invoke_without_command=True
)
app.add_typer(experiment_app, name="experiment")
app.add_typer(entrypoint_app, name="entrypoint")
app.add_typer(job_app, name="job")
app.add_typer(agent_app, name="agent")
app.add_typer(plugin_app, name="plugin")
app.add_typer(model_app, name="model")
app.add_typer(artifact_app, name="artifact")
app.add_typer(user_app, name="user")
app.add_typer(group_app, name="group")
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")
app.command("login")(login)
app.command("whoami")(whoami)


@app.callback()
def _root(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Option(
            "--target", "-t", envvar="BRINELL_TARGET", help="Control plane address HOST:PORT."
        ),
    ] = DEFAULT_TARGET,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON on get/list/submit commands.")
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="BRINELL_TOKEN",
            help="API token (default: ~/.brinell/credentials, see `brinell login`).",
            show_default=False,
        ),
    ] = None,
    tls_ca: Annotated[
        str | None,
        typer.Option(
            envvar="BRINELL_TLS_CA",
            help="Use TLS, verifying the control plane with this CA certificate file.",
            show_default=False,
        ),
    ] = None,
) -> None:
    ctx.obj = _State(target=target, json=json_output, token=token, tls_ca=tls_ca)


# ----------------------------------------------------------------------------- formatting


def _pairs(mapping: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(mapping.items())) or "-"


_STATE_STYLE = {
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.TIMED_OUT: "red",
    JobState.CANCELLED: "yellow",
    JobState.RUNNING: "cyan",
    JobState.ASSIGNED: "cyan",
}


def _state_text(state: JobState) -> str:
    style = _STATE_STYLE.get(state)
    return f"[{style}]{state}[/{style}]" if style else str(state)


# ----------------------------------------------------------------------------- server/agent


@app.command()
def server(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7070,
    data_dir: Annotated[
        Path, typer.Option(help="Database, blobs and MLflow store (embedded mode).")
    ] = Path("~/.brinell/server"),
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in --data-dir).")
    ] = None,
    mlflow_tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: a store in --data-dir).")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="Serve TLS with this PEM certificate.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="... and this PEM private key.")] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(
            help="Mutual TLS: require client certificates this CA signed (CN agents/ID: "
            "that agent's credential)."
        ),
    ] = None,
) -> None:
    """Run the control plane (gRPC API, scheduler, MLflow tracking) in the foreground."""
    with needs("server", "brinell server"):
        from brinell.controlplane.server import ServerConfig, serve_forever

    serve_forever(
        ServerConfig(
            host=host,
            port=port,
            data_dir=data_dir.expanduser(),
            database_url=database_url,
            mlflow_tracking_uri=mlflow_tracking_uri,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
        )
    )


@agent_app.callback()
def agent(
    ctx: typer.Context,
    control_plane: Annotated[
        str | None,
        typer.Option(help="Control plane HOST:PORT (default: --target).", show_default=False),
    ] = None,
    queue: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help="Queue to take jobs from (repeat).")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", help="KEY=VALUE label jobs may select on (repeat)."),
    ] = None,
    slots: Annotated[int, typer.Option(help="Jobs run at once.")] = 1,
    work_dir: Annotated[Path, typer.Option(help="Workspaces and the archive cache.")] = Path(
        "~/.brinell/agent"
    ),
    prefect_api_url: Annotated[
        str,
        typer.Option(
            help="auto: run a local Prefect server; none: jobs get no PREFECT_API_URL; "
            "or a Prefect API URL."
        ),
    ] = "auto",
    agent_id: Annotated[
        str | None, typer.Option(help="Agent id (default: the host name).", show_default=False)
    ] = None,
    keep_workspaces: Annotated[
        int, typer.Option(help="Finished attempts' workspaces kept, newest first.")
    ] = 10,
    workspace_ttl_hours: Annotated[
        float, typer.Option(help="Finished workspaces older than this are removed (0: never).")
    ] = 24.0,
    token_file: Annotated[
        Path | None,
        typer.Option(help="File holding the agent's token (default: --token, BRINELL_TOKEN)."),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="This agent's certificate, for mutual TLS.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key.")] = None,
    executor: Annotated[
        str, typer.Option(help="process: jobs run in this environment; docker: in containers.")
    ] = "process",
    image: Annotated[
        list[str] | None,
        typer.Option(
            metavar="[QUEUE=]IMAGE", help="docker: image for jobs naming none (per queue, repeat)."
        ),
    ] = None,
    network: Annotated[
        list[str] | None,
        typer.Option(
            metavar="[QUEUE=]MODE", help="docker: host|none|bridge (per queue, repeat; host)."
        ),
    ] = None,
    registry_auth: Annotated[
        Path | None,
        typer.Option(
            help="docker: config file with registry credentials (default: "
            "BRINELL_REGISTRY_AUTH, ~/.docker/config.json)."
        ),
    ] = None,
    pull: Annotated[str, typer.Option(help="docker: always | missing.")] = "always",
    keep_failed_containers: Annotated[
        bool, typer.Option(help="docker: keep containers of attempts that did not succeed.")
    ] = False,
    drain_timeout: Annotated[
        float, typer.Option(help="On SIGTERM or a drain, seconds running jobs may finish.")
    ] = 60.0,
    container_watchdog: Annotated[
        float,
        typer.Option(help="docker: seconds a container outlives a stopped agent (0: forever)."),
    ] = 60.0,
    warm_runtime: Annotated[
        bool,
        typer.Option(help="process: Python jobs fork from a pre-imported runtime (~1 s, not ~10)."),
    ] = True,
    warm_import: Annotated[
        list[str] | None,
        typer.Option(metavar="MODULE", help="A module the warm runtime imports ahead (repeat)."),
    ] = None,
) -> None:
    """Run the agent daemon: take jobs from the control plane and run them on this host."""
    if ctx.invoked_subcommand is not None:
        return
    with needs("agent", "brinell agent"):
        from brinell.agent.config import AgentConfig, per_queue
        from brinell.agent.daemon import run_forever

    config = AgentConfig(
        control_plane=control_plane or _state(ctx).target,
        queues=list(queue or ["default"]),
        labels=_kv(label, "--label"),
        agent_id=agent_id,
        slots=slots,
        work_dir=work_dir.expanduser(),
        prefect_api_url=prefect_api_url,
        keep_workspaces=keep_workspaces,
        workspace_ttl_hours=workspace_ttl_hours,
        token=token_file.expanduser().read_text().strip() if token_file else _state(ctx).token,
        tls_ca=Path(tls_ca) if (tls_ca := _state(ctx).tls_ca) else None,
        tls_cert=tls_cert,
        tls_key=tls_key,
        executor=executor,
        images=per_queue(image or []),
        networks=per_queue(network or []),
        registry_auth=registry_auth,
        pull=pull,
        keep_failed_containers=keep_failed_containers,
        drain_timeout=drain_timeout,
        container_watchdog=container_watchdog,
        warm_runtime=warm_runtime,
        warm_imports=list(warm_import or []),
    )
    run_forever(config)


def _agent_row(a: Agent) -> tuple[str, ...]:
    gpus = str(len(a.capacity.gpus)) if a.capacity.gpus else "-"
    return (
        escape(a.id),
        str(a.state),
        escape(a.hostname),
        escape(",".join(a.queues) or "-"),
        escape(_pairs(a.labels)),
        f"{a.running}/{a.capacity.slots}",
        gpus,
        _time(a.last_heartbeat_time),
    )


@agent_app.command("list")
def agent_list(
    ctx: typer.Context,
    filter: Annotated[
        str, typer.Option("--filter", help="e.g. 'state=CONNECTED queue=q labels.k=v'.")
    ] = "",
    json_output: JsonOpt = False,
) -> None:
    """List the agents the control plane has seen."""
    agents = list(_client(ctx).agents.list(filter=filter))
    if _want_json(ctx, json_output):
        _print_json(agents)
        return
    table = _table("ID", "STATE", "HOST", "QUEUES", "LABELS", "RUNNING", "GPUS", "HEARTBEAT")
    for a in agents:
        table.add_row(*_agent_row(a))
    _print_table(table)


@agent_app.command("drain")
def agent_drain(
    ctx: typer.Context,
    agent_id: str,
    deadline: Annotated[
        float | None,
        typer.Option(help="Seconds its running jobs may finish (default: its --drain-timeout)."),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (shown in its jobs' reasons).")] = "",
    json_output: JsonOpt = False,
) -> None:
    """Drain an agent: no new work, running jobs finish (until the deadline), then it exits."""
    a = _client(ctx).agents.drain(agent_id, deadline, reason)
    if _want_json(ctx, json_output):
        _print_json(a)
        return
    out.print(f"{escape(a.name)} is {a.state}")


@agent_app.command("get")
def agent_get(ctx: typer.Context, agent_id: str, json_output: JsonOpt = False) -> None:
    """Show one agent."""
    a = _client(ctx).agents.get(agent_id)
    if _want_json(ctx, json_output):
        _print_json(a)
        return
    cap = a.capacity
    _details(
        [
            ("name", a.name),
            ("state", str(a.state)),
            ("host", a.hostname),
            ("queues", ", ".join(a.queues) or "-"),
            ("labels", _pairs(a.labels)),
            ("executor", a.executor or "-"),
            ("version", a.version or "-"),
            ("running", f"{a.running} of {cap.slots} slots"),
            ("cpus", str(cap.cpus)),
            ("memory", _size(cap.memory_bytes)),
            ("connected", _time(a.connect_time)),
            ("heartbeat", _time(a.last_heartbeat_time)),
            ("replica", a.replica or "-"),
        ]
        + [
            (f"gpu {i}", f"{g.model} {_size(g.memory_bytes)} {g.uuid}")
            for i, g in enumerate(cap.gpus)
        ]
    )


# ----------------------------------------------------------------------------- experiments


def _show_experiment(e: Experiment) -> None:
    _details(
        [
            ("name", e.name),
            ("group", e.group or "-"),
            ("description", e.description or "-"),
            ("labels", _pairs(e.labels)),
            ("mlflow experiment", e.mlflow_experiment_id or "-"),
            ("created", _time(e.create_time)),
            ("updated", _time(e.update_time)),
        ]
    )


@experiment_app.command("create")
def experiment_create(
    ctx: typer.Context,
    experiment_id: Annotated[
        str | None, typer.Argument(help="Id ([a-z0-9-], from a letter); generated when omitted.")
    ] = None,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE")] = None,
    group: Annotated[
        str | None,
        typer.Option(help="Its group (default: your only group; an admin's: default)."),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Create an experiment."""
    e = _client(ctx).experiments.create(
        experiment_id, description=description, labels=_kv(label, "--label"), group=group
    )
    if _want_json(ctx, json_output):
        _print_json(e)
    else:
        out.print(f"created {escape(e.name)}")


@experiment_app.command("get")
def experiment_get(ctx: typer.Context, experiment: str, json_output: JsonOpt = False) -> None:
    """Show one experiment."""
    e = _client(ctx).experiments.get(experiment)
    if _want_json(ctx, json_output):
        _print_json(e)
    else:
        _show_experiment(e)


@experiment_app.command("list")
def experiment_list(
    ctx: typer.Context,
    filter: Annotated[str, typer.Option("--filter", help="e.g. 'labels.team=red'.")] = "",
    json_output: JsonOpt = False,
) -> None:
    """List experiments, oldest first."""
    experiments = list(_client(ctx).experiments.list(filter=filter))
    if _want_json(ctx, json_output):
        _print_json(experiments)
        return
    table = _table("ID", "GROUP", "DESCRIPTION", "LABELS", "MLFLOW", "CREATED")
    for e in experiments:
        table.add_row(
            escape(e.id),
            escape(e.group.removeprefix("groups/") or "-"),
            escape(e.description or "-"),
            escape(_pairs(e.labels)),
            escape(e.mlflow_experiment_id or "-"),
            _time(e.create_time),
        )
    _print_table(table)


@experiment_app.command("update")
def experiment_update(
    ctx: typer.Context,
    experiment: str,
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", help="KEY=VALUE; replaces all labels (repeat)."),
    ] = None,
    clear_labels: Annotated[
        bool, typer.Option("--clear-labels", help="Remove all labels.")
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Change an experiment's description and/or labels."""
    labels = {} if clear_labels else (_kv(label, "--label") if label else None)
    e = _client(ctx).experiments.update(experiment, description=description, labels=labels)
    if _want_json(ctx, json_output):
        _print_json(e)
    else:
        _show_experiment(e)


@experiment_app.command("delete")
def experiment_delete(ctx: typer.Context, experiment: str) -> None:
    """Delete an experiment that has no jobs."""
    client = _client(ctx)
    client.experiments.delete(experiment)
    out.print(f"deleted {escape(experiment)}")


# ----------------------------------------------------------------------------- entry points


def _show_revision(r: EntryPointRevision) -> None:
    _details(
        [
            ("revision", r.name),
            ("digest", r.digest),
            ("size", _size(r.size_bytes)),
            ("project", r.project_name or "-"),
            ("created", _time(r.create_time)),
        ]
    )
    for entry in r.entries:
        out.print(f"\n[bold]entry {escape(entry.name)}[/bold]: {escape(entry.command)}")
        for p in entry.parameters:
            default = "required" if p.default is None else f"default {p.default!r}"
            out.print(f"  {escape(p.name)}: {p.type} ({escape(default)})")


@entrypoint_app.command("push")
def entrypoint_push(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A directory with an MLproject, or an archive.")],
    entry_point_id: Annotated[
        str | None,
        typer.Option("--id", help="Entry point id (default: the MLproject's name)."),
    ] = None,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    json_output: JsonOpt = False,
) -> None:
    """Upload a new revision (unchanged content gives back the existing revision)."""
    ep, rev = _client(ctx).entry_points.push(path, id=entry_point_id, description=description)
    if _want_json(ctx, json_output):
        _print_json({"entry_point": _jsonable(ep), "revision": _jsonable(rev)})
        return
    entries = ", ".join(e.name for e in rev.entries) or "-"
    out.print(
        f"pushed {escape(ep.name)} {rev.digest} ({_size(rev.size_bytes)}, entries: "
        f"{escape(entries)}, {ep.revision_count} revision(s))"
    )
    if entry_point_id is None:
        out.print(f"  id {escape(ep.id)} from {default_id_source(path)[1]} (--id sets another)")


@entrypoint_app.command("get")
def entrypoint_get(ctx: typer.Context, entry_point: str, json_output: JsonOpt = False) -> None:
    """Show an entry point and its latest revision's entries and parameters."""
    ep = _client(ctx).entry_points.get(entry_point)
    if _want_json(ctx, json_output):
        _print_json(ep)
        return
    _details(
        [
            ("name", ep.name),
            ("description", ep.description or "-"),
            ("revisions", str(ep.revision_count)),
            ("created", _time(ep.create_time)),
            ("updated", _time(ep.update_time)),
        ]
    )
    if ep.latest_revision is not None:
        out.print()
        _show_revision(ep.latest_revision)


@entrypoint_app.command("list")
def entrypoint_list(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """List entry points."""
    eps = list(_client(ctx).entry_points.list())
    if _want_json(ctx, json_output):
        _print_json(eps)
        return
    table = _table("ID", "PROJECT", "LATEST", "REVISIONS", "ENTRIES", "UPDATED")
    for ep in eps:
        rev = ep.latest_revision
        table.add_row(
            escape(ep.id),
            escape(rev.project_name if rev else "-"),
            _short(rev.digest if rev else ""),
            str(ep.revision_count),
            escape(", ".join(e.name for e in rev.entries) if rev else "-"),
            _time(ep.update_time),
        )
    _print_table(table)


@entrypoint_app.command("revisions")
def entrypoint_revisions(
    ctx: typer.Context, entry_point: str, json_output: JsonOpt = False
) -> None:
    """List an entry point's revisions, newest first."""
    revs = list(_client(ctx).entry_points.revisions(entry_point))
    if _want_json(ctx, json_output):
        _print_json(revs)
        return
    table = _table("DIGEST", "SIZE", "PROJECT", "ENTRIES", "CREATED")
    for r in revs:
        table.add_row(
            r.digest,
            _size(r.size_bytes),
            escape(r.project_name or "-"),
            escape(", ".join(e.name for e in r.entries) or "-"),
            _time(r.create_time),
        )
    _print_table(table)


# ----------------------------------------------------------------------------- jobs


def _show_job(j: Job) -> None:
    rows: list[tuple[str, object]] = [
        ("name", j.name),
        ("state", _state_text(j.state)),
    ]
    if j.state_reason:
        rows.append(("reason", j.state_reason))
    rows += [
        ("experiment", j.experiment),
        ("entry point", f"{j.entry_point} ({j.entry})"),
        ("revision", j.entry_point_digest or "-"),
        ("parameters", _pairs(j.parameters)),
        ("queue", j.queue),
        ("selector", _pairs(j.selector)),
        ("attempt", f"{j.attempt} of {j.max_attempts}"),
        ("agent", j.agent or "-"),
        ("timeout", _seconds(j.timeout)),
        ("resources", _resources(j.resources)),
        ("priority", str(j.priority)),
        ("queue timeout", _seconds(j.queue_timeout)),
    ]
    if j.retry is not None:
        codes = ",".join(str(c) for c in j.retry.exit_codes)
        rows.append(
            (
                "retries",
                f"{j.retries} of {j.retry.max_retries} (exit {codes}; "
                f"backoff {j.retry.backoff:g} s)",
            )
        )
    if j.depends_on:
        rows.append(("depends on", _pairs(j.depends_on)))
    if j.image or j.image_digest:
        rows.append(("image", j.image or "(the queue's default)"))
    if j.image_digest:
        rows.append(("image digest", j.image_digest))
    if j.gpu_uuids:
        rows.append(("gpus", ", ".join(j.gpu_uuids)))
    rows += [
        ("mlflow run", j.mlflow_run_id or "-"),
        ("created", _time(j.create_time)),
        ("started", _time(j.start_time)),
        ("ended", _time(j.end_time)),
        ("duration", _seconds(j.duration)),
    ]
    if j.is_final and j.attempt:
        rows.append(("exit code", str(j.exit_code)))
    if j.cancel_requested and not j.is_final:
        rows.append(("cancel", "requested"))
    _details((k, v if k == "state" else escape(str(v))) for k, v in rows)


def _resources(r: Resources) -> str:
    parts = []
    if r.cpus:
        parts.append(f"{r.cpus:g} CPUs")
    if r.memory_bytes:
        parts.append(_size(r.memory_bytes))
    if r.gpus:
        parts.append(
            f"{r.gpus} GPU{'s' if r.gpus > 1 else ''}{' ' + r.gpu_model if r.gpu_model else ''}"
        )
    return ", ".join(parts) or "-"


def _state_line(j: Job) -> str:
    parts = [f"{_time(j.update_time)} {escape(j.name)} {_state_text(j.state)}"]
    if j.agent and j.state in (JobState.ASSIGNED, JobState.RUNNING):
        parts.append(f"on {escape(j.agent)} (attempt {j.attempt})")
    # A failure's reason carries its exit status ("exit code 1: ValueError: …"): once is enough.
    if j.is_final and j.attempt and j.state is not JobState.CANCELLED and not j.state_reason:
        parts.append(f"exit code {j.exit_code}")
    if j.state_reason:
        parts.append(f"- {escape(j.state_reason)}")
    return " ".join(parts)


class _Printer:
    """Serializes output from the watch loop and the log thread."""

    def __init__(self, quiet: bool) -> None:
        # With --json, stdout carries only JSON, so progress goes to stderr.
        self.console = err if quiet else out
        self.lock = threading.Lock()
        self.attempt = 0  # of the last log line shown

    def state(self, j: Job) -> None:
        with self.lock:
            self.console.print(_state_line(j))

    def log(self, line: LogLine) -> None:
        with self.lock:
            if line.attempt != self.attempt:
                self.console.out(_attempt_mark(line.attempt), highlight=False)
                self.attempt = line.attempt
            self.console.out(line.text, highlight=False)

    def warn(self, text: str) -> None:
        with self.lock:
            err.print(f"[yellow]warning:[/yellow] {escape(text)}")


def _watch_states(client: Client, job: Job | str, printer: _Printer) -> Job:
    last: Job | None = None
    for j in client.jobs.watch(job):
        if last is None or j.state != last.state or j.attempt != last.attempt:
            printer.state(j)
        last = j
    return last if last is not None else client.jobs.get(job)


def _watch_with_logs(client: Client, job: Job | str, printer: _Printer) -> Job:
    """Shows state changes as they happen while a thread streams the log."""
    done = threading.Event()

    def pump() -> None:
        try:
            for line in client.jobs.logs(job, follow=True):
                printer.log(line)
        except BrinellError as exc:
            if not done.is_set():
                printer.warn(f"log stream: {exc}")

    thread = threading.Thread(target=pump, name="brinell-logs", daemon=True)
    thread.start()
    final = _watch_states(client, job, printer)
    # The log stream ends by itself once the job ended and every line was sent.
    thread.join(timeout=30)
    done.set()
    return final


def _exit_for(j: Job) -> None:
    raise typer.Exit(0 if j.state is JobState.SUCCEEDED else EXIT_FAILED)


def _interruptible(job: Job | str, fn: Callable[[], Job]) -> Job:
    try:
        return fn()
    except KeyboardInterrupt:
        name = job if isinstance(job, str) else job.name
        err.print(
            f"\nstopped watching; {escape(name)} goes on "
            f"(brinell job cancel {escape(name.removeprefix('jobs/'))} to stop it)"
        )
        raise typer.Exit(130) from None


@job_app.command("submit")
def job_submit(
    ctx: typer.Context,
    experiment: Annotated[str, typer.Argument(help="Experiment id or name.")],
    entry_point: Annotated[str, typer.Argument(help="Entry point id or name.")],
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="KEY=VALUE parameter (repeat).")
    ] = None,
    entry: Annotated[str, typer.Option(help="MLproject entry.")] = "main",
    digest: Annotated[
        str | None, typer.Option(help="Revision digest (default: the latest).")
    ] = None,
    queue: Annotated[str, typer.Option(help="Queue to wait in.")] = "default",
    selector: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE label the agent must carry (repeat).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Run-time limit of one attempt, in seconds.")
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option(help="Attempts when agents are lost (default 3).")
    ] = None,
    plugin: Annotated[
        list[str] | None,
        typer.Option(
            "--plugin", help="ID=VERSION plugin version to pin (repeat; others: their latest)."
        ),
    ] = None,
    cpus: Annotated[
        float, typer.Option(help="CPUs it may use (docker executor: a limit); 0: no limit.")
    ] = 0.0,
    memory: Annotated[
        str | None,
        typer.Option(help="Memory it may use, e.g. 512m or 4g (docker executor: a limit)."),
    ] = None,
    gpus: Annotated[int, typer.Option(help="GPUs the job holds alone while it runs.")] = 0,
    gpu_model: Annotated[
        str, typer.Option(help="Only GPUs whose model contains this, e.g. H100.")
    ] = "",
    image: Annotated[
        str | None,
        typer.Option(help="Container image (docker executor), over MLproject docker_env.image."),
    ] = None,
    priority: Annotated[
        int, typer.Option(help="Higher runs first (-1000 to 1000); FIFO within a priority.")
    ] = 0,
    queue_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds it may wait in the queue before it ends TIMED_OUT."),
    ] = None,
    retries: Annotated[
        int, typer.Option(help="Retries when it exits with a retryable code (see --retry-on).")
    ] = 0,
    retry_on: Annotated[
        list[int] | None,
        typer.Option(help="Exit code that means 'retry me' (repeat; default 75, EX_TEMPFAIL)."),
    ] = None,
    retry_backoff: Annotated[
        float, typer.Option(help="Seconds before the first retry; doubled for each next one.")
    ] = 10.0,
    depends_on: Annotated[
        list[str] | None,
        typer.Option(
            "--depends-on",
            help="ALIAS=JOB it waits on (repeat); parameters may use {deps.ALIAS.run_id}, "
            "{deps.ALIAS.job}, {deps.ALIAS.model}.",
        ),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Follow state and logs until it ends.")
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Submit a job. With --watch, exits 0 if it succeeded and 1 otherwise."""
    client = _client(ctx)
    as_json = _want_json(ctx, json_output)
    j = client.jobs.submit(
        experiment,
        entry_point,
        _kv(param, "--param"),
        entry=entry,
        digest=digest,
        queue=queue,
        selector=_kv(selector, "--selector"),
        timeout=timeout,
        max_attempts=max_attempts,
        plugin_versions=_kv(plugin, "--plugin"),
        resources=Resources(cpus, _bytes(memory, "--memory") if memory else 0, gpus, gpu_model),
        image=image,
        priority=priority,
        queue_timeout=queue_timeout,
        retry=RetryPolicy(retries, retry_backoff, tuple(retry_on or (75,))) if retries else None,
        depends_on=_kv(depends_on, "--depends-on"),
    )
    if not watch:
        if as_json:
            _print_json(j)
        else:
            out.print(f"submitted {escape(j.name)} ({_state_text(j.state)})")
        return
    printer = _Printer(quiet=as_json)
    printer.console.print(f"submitted {escape(j.name)}")
    final = _interruptible(j, lambda: _watch_with_logs(client, j, printer))
    if as_json:
        _print_json(final)
    _exit_for(final)


@job_app.command("get")
def job_get(ctx: typer.Context, job: str, json_output: JsonOpt = False) -> None:
    """Show one job."""
    j = _client(ctx).jobs.get(job)
    if _want_json(ctx, json_output):
        _print_json(j)
    else:
        _show_job(j)


@job_app.command("list")
def job_list(
    ctx: typer.Context,
    filter: Annotated[
        str,
        typer.Option(
            "--filter",
            help="e.g. 'state=RUNNING,QUEUED experiment=experiments/x queue=q agent=agents/a'.",
        ),
    ] = "",
    limit: Annotated[int, typer.Option(help="Show at most this many (0: all).")] = 50,
    json_output: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    jobs = _limited(_client(ctx).jobs.list(filter=filter), limit)
    if _want_json(ctx, json_output):
        _print_json(jobs)
        return
    table = _table(
        "ID", "STATE", "EXPERIMENT", "ENTRY POINT", "AGENT", "CREATED", "DURATION", "REASON"
    )
    for j in jobs:
        table.add_row(
            escape(j.id),
            _state_text(j.state),
            escape(j.experiment.removeprefix("experiments/")),
            escape(j.entry_point.removeprefix("entryPoints/")),
            escape(j.agent.removeprefix("agents/") or "-"),
            _time(j.create_time),
            _seconds(j.duration),
            escape(j.state_reason or "-"),
        )
    _print_table(table)


@job_app.command("watch")
def job_watch(
    ctx: typer.Context,
    job: str,
    logs: Annotated[bool, typer.Option("--logs", help="Stream the log too.")] = False,
) -> None:
    """Print the job's state changes until it ends; exits 0 if it succeeded, 1 otherwise."""
    client = _client(ctx)
    printer = _Printer(quiet=False)
    follow = _watch_with_logs if logs else _watch_states
    _exit_for(_interruptible(job, lambda: follow(client, job, printer)))


@job_app.command("logs")
def job_logs(
    ctx: typer.Context,
    job: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep streaming until the job ends.")
    ] = False,
    offset: Annotated[int, typer.Option(help="First line to show (0-based).")] = 0,
    attempt: Annotated[
        int, typer.Option(help="Only this attempt's lines (1, 2, ...; 0: every attempt).")
    ] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Print the job's log; a line "--- attempt N ---" marks where each attempt's lines begin."""
    as_json = _want_json(ctx, json_output)
    shown = 0  # the attempt of the last line shown
    try:
        for line in _client(ctx).jobs.logs(
            job, follow=follow, start_offset=offset, attempt=attempt
        ):
            if as_json:
                sys.stdout.write(json.dumps(_jsonable(line)) + "\n")
            else:
                if line.attempt != shown:
                    sys.stdout.write(_attempt_mark(line.attempt) + "\n")
                    shown = line.attempt
                sys.stdout.write(line.text + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except BrokenPipeError:  # `brinell job logs X | head`: the reader is done, so are we
        _silence_stdout()
        raise typer.Exit(0) from None


def _attempt_mark(attempt: int) -> str:
    return f"--- attempt {attempt} ---"


def _silence_stdout() -> None:
    """Points stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (e.g. captured output)
        pass


@job_app.command("cancel")
def job_cancel(
    ctx: typer.Context,
    job: str,
    reason: Annotated[str, typer.Option(help="Recorded as the job's state reason.")] = "",
    json_output: JsonOpt = False,
) -> None:
    """Cancel a job (a running one gets SIGTERM, then SIGKILL after the grace period)."""
    j = _client(ctx).jobs.cancel(job, reason=reason)
    if _want_json(ctx, json_output):
        _print_json(j)
    elif j.is_final:
        out.print(f"{escape(j.name)} {_state_text(j.state)}")
    else:
        out.print(f"{escape(j.name)} {_state_text(j.state)}: cancel requested")


@job_app.command("wait")
def job_wait(
    ctx: typer.Context,
    job: str,
    timeout: Annotated[
        float | None, typer.Option(help="Give up after this many seconds (exit 2).")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Wait for the job to end; exits 0 if it succeeded, 1 otherwise."""
    client = _client(ctx)
    final = _interruptible(job, lambda: client.jobs.wait(job, timeout=timeout))
    if _want_json(ctx, json_output):
        _print_json(final)
    else:
        out.print(_state_line(final))
    _exit_for(final)


def _hoist_root_options(argv: list[str]) -> list[str]:
    """Moves ``-t/--target``, ``--token``, ``--tls-ca`` and ``--json`` in front of the
    subcommand, wherever they stand, so ``brinell job list -t HOST:PORT`` works like
    ``brinell -t HOST:PORT job list``. What follows ``--`` is left alone."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        if arg in ("-t", "--target", "--token", "--tls-ca") and i + 1 < len(argv):
            front += argv[i : i + 2]
            i += 2
            continue
        hoisted = arg == "--json" or arg.startswith(("--target=", "--token=", "--tls-ca="))
        (front if hoisted else rest).append(arg)
        i += 1
    return front + rest


def main() -> None:
    """Console-script entry point (``brinell``)."""
    app(args=_hoist_root_options(sys.argv[1:]), prog_name="brinell")


if __name__ == "__main__":
    main()
