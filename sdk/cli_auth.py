"""``brinell login``, ``whoami``, ``user ...``, ``group ...``, ``token ...``, ``audit list``.

Mounted by ``brinell.cli``; the shared helpers come from ``brinell.cli_common``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .accounts import ROLES, AuditEvent, Group, Token, User
from .cli_common import (
    JsonOpt,
    _client,
    _kv,
    _print_json,
    _print_table,
    _state,
    _table,
    _time,
    _want_json,
    err,
    out,
)
from .client import Client
from .credentials import save_token

__all__ = ["audit_app", "group_app", "login", "token_app", "user_app", "whoami"]

user_app = typer.Typer(help="Manage users and their roles (admin).", no_args_is_help=True)
group_app = typer.Typer(
    help="Groups: who sees which experiments (changes: admin).", no_args_is_help=True
)
token_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)
audit_app = typer.Typer(help="Read the audit log (admin).", no_args_is_help=True)

_TTL = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _ttl(text: str | None) -> timedelta | None:
    if not text:
        return None
    match = _TTL.match(text.strip())
    if not match:
        raise ValueError(f"--ttl {text!r} must look like 30m, 12h or 90d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def login(
    ctx: typer.Context,
    token_file: Annotated[
        Path | None, typer.Option(help="Read the token from this file (e.g. admin.token).")
    ] = None,
) -> None:
    """Store a token for --target in ~/.brinell/credentials (checked against the server
    first). Without --token-file, the root --token / BRINELL_TOKEN, else a prompt."""
    state = _state(ctx)
    secret = (
        token_file.expanduser().read_text().strip()
        if token_file
        else state.token or typer.prompt("token", hide_input=True).strip()
    )
    with Client(state.target, token=secret, tls=state.tls_ca) as client:
        me = client.whoami()
    path = save_token(state.target, secret)
    out.print(f"logged in to {escape(state.target)} as {escape(me.principal)} ({me.role})")
    err.print(f"token stored in {path}")


def whoami(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """Who the current credential names."""
    me = _client(ctx).whoami()
    if _want_json(ctx, json_output):
        _print_json(me)
        return
    out.print(f"{escape(me.principal)} {me.role or ''}".rstrip())


def _user_rows(users: list[User]) -> None:
    table = _table("USER", "ROLE", "GROUPS", "DISABLED", "CREATED", "CREATOR")
    for u in users:
        table.add_row(
            escape(u.id),
            u.role,
            escape(",".join(g.removeprefix("groups/") for g in u.groups) or "-"),
            "yes" if u.disabled else "no",
            _time(u.create_time),
            escape(u.creator or "-"),
        )
    _print_table(table)


def _role_option(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"--role must be one of {', '.join(ROLES)}")
    return role


@user_app.command("create")
def user_create(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(help="1-63 characters of [a-z0-9-].")],
    role: Annotated[str, typer.Option(help="viewer, member or admin.")] = "member",
    group: Annotated[
        list[str] | None, typer.Option("--group", "-g", help="A group it joins (repeat).")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Create a user (then `brinell token create --user ID` gives it a token). Without
    --group it joins the group `default`."""
    user = _client(ctx).users.create(user_id, _role_option(role), group or [])
    if _want_json(ctx, json_output):
        _print_json(user)
    else:
        out.print(f"created user {escape(user.id)} ({user.role})")


@user_app.command("list")
def user_list(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """List users."""
    users = list(_client(ctx).users.list())
    if _want_json(ctx, json_output):
        _print_json(users)
    else:
        _user_rows(users)


@user_app.command("get")
def user_get(ctx: typer.Context, user_id: str, json_output: JsonOpt = False) -> None:
    """Show a user (yourself, unless you are an admin)."""
    user = _client(ctx).users.get(user_id)
    if _want_json(ctx, json_output):
        _print_json(user)
    else:
        _user_rows([user])


@user_app.command("disable")
def user_disable(ctx: typer.Context, user_id: str) -> None:
    """Refuse the user's tokens from now on."""
    user = _client(ctx).users.disable(user_id)
    out.print(f"disabled user {escape(user.id)}")


@user_app.command("enable")
def user_enable(ctx: typer.Context, user_id: str) -> None:
    """Accept the user's (unrevoked) tokens again."""
    user = _client(ctx).users.update(user_id, disabled=False)
    out.print(f"enabled user {escape(user.id)}")


@user_app.command("set-role")
def user_set_role(ctx: typer.Context, user_id: str, role: str) -> None:
    """Change a user's role (viewer, member, admin)."""
    user = _client(ctx).users.update(user_id, role=_role_option(role))
    out.print(f"user {escape(user.id)} is now {user.role}")


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    user: Annotated[
        str | None, typer.Option(help="Whose token (admin; default: yourself).")
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option(
            help="An agent enrollment token for this agent id ('-': bound to the id the "
            "agent first registers under). Admin."
        ),
    ] = None,
    queue: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help="Agent tokens: allowed queue.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="Agent tokens: KEY=VALUE label.")
    ] = None,
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
    ttl: Annotated[
        str | None, typer.Option(help="Lifetime, e.g. 12h or 90d (default: until revoked).")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Create a token and print its secret, once: the server keeps only a hash."""
    new = _client(ctx).tokens.create(
        user=user,
        description=description,
        ttl=_ttl(ttl),
        agent=agent is not None,
        agent_id=agent if agent and agent != "-" else None,
        queues=list(queue or []),
        labels=_kv(label, "--label"),
    )
    if _want_json(ctx, json_output):
        _print_json({"token": new.token, "secret": new.secret})
        return
    err.print(f"created {escape(new.token.name)}; its secret (shown only now):")
    out.print(new.secret)


def _token_rows(tokens: list[Token]) -> None:
    table = _table("TOKEN", "KIND", "FOR", "DESCRIPTION", "CREATED", "EXPIRES", "REVOKED")
    for t in tokens:
        who = t.user or (f"agents/{t.agent_id}" if t.agent_id else "agents/(first id)")
        table.add_row(
            escape(t.id),
            t.kind,
            escape(who),
            escape(t.description or "-"),
            _time(t.create_time),
            _time(t.expire_time),
            _time(t.revoke_time),
        )
    _print_table(table)


@token_app.command("list")
def token_list(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option(help="Only this user's tokens.")] = None,
    json_output: JsonOpt = False,
) -> None:
    """List tokens (yours; an admin's: everyone's). Secrets are never shown again."""
    tokens = list(_client(ctx).tokens.list(user=user))
    if _want_json(ctx, json_output):
        _print_json(tokens)
    else:
        _token_rows(tokens)


@token_app.command("revoke")
def token_revoke(ctx: typer.Context, token_id: str) -> None:
    """Revoke a token at once (an agent using it is disconnected)."""
    token = _client(ctx).tokens.revoke(token_id)
    out.print(f"revoked {escape(token.name)}")


@audit_app.command("list")
def audit_list(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """Who changed what: submits, cancels, deletes, plugin pushes, aliases, users, tokens."""
    events: list[AuditEvent] = list(_client(ctx).audit.list())
    if _want_json(ctx, json_output):
        _print_json(events)
        return
    table = _table("TIME", "ACTOR", "ACTION", "RESOURCE", "DETAIL")
    for e in events:
        table.add_row(
            _time(e.time),
            escape(e.actor),
            escape(e.action),
            escape(e.resource),
            escape(e.detail or "-"),
        )
    _print_table(table)


def _group_rows(groups: list[Group]) -> None:
    table = _table("GROUP", "MEMBERS", "DESCRIPTION", "CREATED")
    for g in groups:
        table.add_row(
            escape(g.id),
            escape(",".join(m.removeprefix("users/") for m in g.members) or "-"),
            escape(g.description or "-"),
            _time(g.create_time),
        )
    _print_table(table)


@group_app.command("create")
def group_create(
    ctx: typer.Context,
    group_id: Annotated[str, typer.Argument(help="1-63 characters of [a-z0-9-].")],
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    json_output: JsonOpt = False,
) -> None:
    """Create a group (then `brinell group add GROUP USER`)."""
    group = _client(ctx).groups.create(group_id, description)
    if _want_json(ctx, json_output):
        _print_json(group)
    else:
        out.print(f"created group {escape(group.id)}")


@group_app.command("list")
def group_list(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """List groups (yours, unless you are an admin)."""
    groups = list(_client(ctx).groups.list())
    if _want_json(ctx, json_output):
        _print_json(groups)
    else:
        _group_rows(groups)


@group_app.command("get")
def group_get(ctx: typer.Context, group_id: str, json_output: JsonOpt = False) -> None:
    """Show a group and its members."""
    group = _client(ctx).groups.get(group_id)
    if _want_json(ctx, json_output):
        _print_json(group)
    else:
        _group_rows([group])


@group_app.command("delete")
def group_delete(ctx: typer.Context, group_id: str) -> None:
    """Delete a group that holds no experiments."""
    _client(ctx).groups.delete(group_id)
    out.print(f"deleted group {escape(group_id)}")


@group_app.command("add")
def group_add(ctx: typer.Context, group_id: str, user_id: str) -> None:
    """Add a user to a group."""
    _client(ctx).groups.add_member(group_id, user_id)
    out.print(f"added {escape(user_id)} to {escape(group_id)}")


@group_app.command("remove")
def group_remove(ctx: typer.Context, group_id: str, user_id: str) -> None:
    """Remove a user from a group."""
    _client(ctx).groups.remove_member(group_id, user_id)
    out.print(f"removed {escape(user_id)} from {escape(group_id)}")
