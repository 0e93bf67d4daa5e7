"""Users, tokens and the audit log: authentication, bootstrap, and their management."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from brinell.credentials import write_private
from brinell.mlproject import shown

from ..store.db import Database
from ..store.identity import Audit, Groups, Tokens, Users
from ..store.models import utcnow
from . import names
from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from .identity import (
    DEFAULT_GROUP,
    MAX_DESCRIPTION,
    Group,
    PermissionDenied,
    Principal,
    PrincipalCache,
    Role,
    Token,
    Unauthenticated,
    User,
    check_usable,
    expiry,
    new_secret,
    new_token_id,
    token_hash,
)
from .models import AuditEvent
from .paging import PageTokens, page_size

log = logging.getLogger("brinell.controlplane.accounts")

BOOTSTRAP_USER = "admin"
#: Where the first admin's token is written, in the server's data directory.
ADMIN_TOKEN_FILE = "admin.token"
MAX_TOKEN_CHARS = 200
MAX_DETAIL = 200
MAX_GROUPS_PER_USER = 64


class Accounts:
    def __init__(
        self,
        db: Database,
        tokens: PageTokens,
        on_revoke: Callable[[str], None] = lambda token_id: None,
    ) -> None:
        self.db = db
        self.tokens = tokens
        self.cache = PrincipalCache()
        # Told the id of each revoked token (the scheduler ends its agent sessions).
        self.on_revoke = on_revoke

    # ------------------------------------------------------------------ bootstrap

    def bootstrap(self, data_dir: Path, secret: str | None = None) -> Path | None:
        """On first start (no users), creates the admin and writes its token, mode 0600, to
        ``data_dir/admin.token``; returns that path, or None when there were users already.
        ``secret`` (BRINELL_BOOTSTRAP_TOKEN) sets the token instead of a random one, for
        deployments that seed the credential from a secret store."""
        path = data_dir / ADMIN_TOKEN_FILE
        if secret is not None and (len(secret) < 20 or len(secret) > MAX_TOKEN_CHARS):
            raise ValueError("the bootstrap token must be 20-200 characters")
        with self.db.session() as s:
            if Users.count(s):
                return None
            now = utcnow()
            Users.add(s, User(BOOTSTRAP_USER, Role.ADMIN, False, now, groups=(DEFAULT_GROUP,)))
            secret = secret or new_secret()
            token = Token(
                new_token_id(),
                "user",
                BOOTSTRAP_USER,
                "",
                (),
                {},
                "created at first start",
                now,
                None,
                None,
            )
            Tokens.add(s, token, token_hash(secret))
            write_private(path, secret)
        return path

    # ------------------------------------------------------------------ authentication

    async def authenticate(self, secret: str) -> Principal:
        if not secret:
            raise Unauthenticated(
                "a credential is required: send `authorization: Bearer TOKEN` (brinell login)"
            )
        if len(secret) > MAX_TOKEN_CHARS:
            raise Unauthenticated("the token is not valid")
        digest = token_hash(secret)
        now = utcnow()
        hit = self.cache.get(digest, now)
        if hit is not None:
            return hit
        found = await self.db.run(lambda s: Tokens.by_hash(s, digest))
        if found is None:
            raise Unauthenticated("the token is not valid")
        who = check_usable(found[0], found[1], now)
        self.cache.put(digest, who, found[0].expire_time)
        return who

    async def bind_agent(self, who: Principal, agent_id: str) -> Principal:
        """The agent principal an agent token stands for once it registers as ``agent_id``:
        an unbound token is bound to it (and keeps it); a bound one must match."""
        bound = who.id
        if not bound:
            bound = await self.db.run(lambda s: Tokens.bind_agent(s, who.token_id, agent_id))
            self.cache.clear()
        return Principal(who.kind, bound, who.role, who.token_id, who.queues, who.labels)

    # ------------------------------------------------------------------ users

    async def create_user(
        self, by: Principal, user_id: str, role: Role, groups: tuple[str, ...] = ()
    ) -> User:
        """A new user, in ``groups`` (names or ids; none: the default group)."""
        names.check_id(user_id, "user", field="user_id")
        if len(groups) > MAX_GROUPS_PER_USER:
            raise InvalidArgument(f"at most {MAX_GROUPS_PER_USER} groups", field="groups")
        ids = tuple(dict.fromkeys(names.group_id(g, "groups") for g in groups)) or (DEFAULT_GROUP,)
        user = User(user_id, role, False, utcnow(), by.name, ids)

        def add(s: Session) -> None:
            missing = set(ids) - Groups.existing(s, list(ids))
            if missing:
                raise NotFound(f"group {shown(min(missing))} not found")
            Users.add(s, user)

        try:
            await self.db.run(add)
        except IntegrityError:
            raise AlreadyExists(f"user {shown(user_id)} already exists") from None
        detail = f"role {role.name.lower()}, groups {', '.join(ids)}"
        await self.audit(by, "user.create", user.name, detail)
        return user

    async def get_user(self, by: Principal, name: str) -> User:
        """Admins see any user; others only themselves (anyone else is NOT_FOUND to them)."""
        user_id = names.parse(name, "users", "user")
        visible = by.is_admin or (by.kind == "user" and user_id == by.id)
        user = await self.db.run(lambda s: Users.get(s, user_id)) if visible else None
        if user is None:
            raise NotFound(f"user {shown(user_id)} not found")
        return user

    async def users(self, size: int, token: str) -> tuple[list[User], str]:
        after = self.tokens.decode("users", token) or 0
        n = page_size(size)
        rows = await self.db.run(lambda s: Users.page(s, after, n + 1))
        nxt = self.tokens.encode("users", rows[n - 1][0]) if len(rows) > n else ""
        return [u for _, u in rows[:n]], nxt

    async def update_user(
        self, by: Principal, name: str, role: Role | None, disabled: bool | None
    ) -> User:
        user_id = names.parse(name, "users", "user", field="user.name")
        if user_id == by.id and (disabled or (role is not None and role is not Role.ADMIN)):
            raise InvalidArgument(
                "an admin cannot disable or demote itself (another admin can)", field="user"
            )
        user = await self.db.run(lambda s: Users.update(s, user_id, role, disabled))
        if user is None:
            raise NotFound(f"user {shown(user_id)} not found")
        self.cache.clear()
        changes = [f"role {role.name.lower()}"] if role else []
        if disabled is not None:
            changes.append("disabled" if disabled else "enabled")
        await self.audit(by, "user.update", user.name, ", ".join(changes))
        return user

    # ------------------------------------------------------------------ tokens

    async def create_token(
        self,
        by: Principal,
        kind: str,
        user_name: str,
        agent_id: str,
        queues: list[str],
        labels: dict[str, str],
        description: str,
        ttl_s: float,
    ) -> tuple[Token, str]:
        problems = names.text_problems(
            description, "description", MAX_DESCRIPTION, field="description"
        )
        if ttl_s < 0:
            problems.append(("ttl", "ttl must not be negative"))
        user_id = ""
        if kind == "agent":
            if not by.is_admin:
                raise PermissionDenied("only an admin may create agent tokens")
            if agent_id:
                try:
                    names.check_id(agent_id, "agent", names.AGENT_ID_RE, field="agent_id")
                except InvalidArgument as exc:
                    problems += exc.violations
            for q in queues:
                if not names.QUEUE_RE.match(q):
                    problems.append(("queues", f"queue {shown(q)} is invalid"))
            problems += names.label_problems(labels, field="labels")
        else:
            if agent_id or queues or labels:
                problems.append(("agent_id", "agent_id, queues and labels are for agent tokens"))
            user_id = names.parse(user_name, "users", "user", field="user") if user_name else by.id
            if user_id != by.id and not by.is_admin:
                raise PermissionDenied("only an admin may create tokens for another user")
        if problems:
            raise InvalidArgument.of(problems)
        if kind == "user" and await self.db.run(lambda s: Users.get(s, user_id)) is None:
            raise NotFound(f"user {shown(user_id)} not found")
        now = utcnow()
        token = Token(
            new_token_id(),
            kind,
            user_id,
            agent_id,
            tuple(queues),
            dict(labels),
            description,
            now,
            expiry(now, ttl_s),
            None,
            by.name,
        )
        secret = new_secret()
        await self.db.run(lambda s: Tokens.add(s, token, token_hash(secret)))
        target = f"agents/{agent_id}" if kind == "agent" and agent_id else f"users/{user_id}"
        await self.audit(by, "token.create", token.name, f"{kind} token for {target}")
        return token, secret

    async def list_tokens(
        self, by: Principal, size: int, page_token: str, user_name: str
    ) -> tuple[list[Token], str]:
        user_id = names.parse(user_name, "users", "user", field="user") if user_name else None
        if not by.is_admin:
            if user_id not in (None, by.id):
                raise PermissionDenied("only an admin may list another user's tokens")
            user_id = by.id
        query = f"tokens:{user_id or ''}"
        after = self.tokens.decode(query, page_token) or 0
        n = page_size(size)
        rows = await self.db.run(lambda s: Tokens.page(s, after, n + 1, user_id))
        nxt = self.tokens.encode(query, rows[n - 1][0]) if len(rows) > n else ""
        return [t for _, t in rows[:n]], nxt

    async def revoke_token(self, by: Principal, name: str) -> Token:
        token_id = names.parse(name, "tokens", "token", names.TOKEN_ID_RE)
        token = await self.db.run(lambda s: Tokens.get(s, token_id))
        if token is None or (not by.is_admin and token.user_id != by.id):
            raise NotFound(f"token {shown(token_id)} not found")
        revoked = await self.db.run(lambda s: Tokens.revoke(s, token_id, utcnow()))
        assert revoked is not None
        self.cache.clear()
        self.on_revoke(token_id)
        await self.audit(by, "token.revoke", token.name)
        return revoked

    # ------------------------------------------------------------------ groups

    async def create_group(self, by: Principal, gid: str, description: str) -> Group:
        names.check_id(gid, "group", field="group_id")
        if problems := names.text_problems(
            description, "description", MAX_DESCRIPTION, field="description"
        ):
            raise InvalidArgument.of(problems)
        group = Group(gid, description, (), utcnow(), by.name)
        try:
            await self.db.run(lambda s: Groups.add(s, group))
        except IntegrityError:
            raise AlreadyExists(f"group {shown(gid)} already exists") from None
        await self.audit(by, "group.create", group.name)
        return group

    async def get_group(self, by: Principal, name: str) -> Group:
        """Admins see any group; others the groups they are in (others are NOT_FOUND)."""
        gid = names.group_id(name)
        group = await self.db.run(lambda s: Groups.get(s, gid)) if by.sees(gid) else None
        if group is None:
            raise NotFound(f"group {shown(gid)} not found")
        return group

    async def groups(self, by: Principal, size: int, token: str) -> tuple[list[Group], str]:
        user_id = None if by.is_admin else by.id
        query = f"groups:{user_id or ''}"
        after = self.tokens.decode(query, token) or 0
        n = page_size(size)
        rows = await self.db.run(lambda s: Groups.page(s, after, n + 1, user_id))
        nxt = self.tokens.encode(query, rows[n - 1][0]) if len(rows) > n else ""
        return [g for _, g in rows[:n]], nxt

    async def delete_group(self, by: Principal, name: str) -> None:
        gid = names.group_id(name)

        def apply(s: Session) -> None:
            if Groups.get(s, gid) is None:
                raise NotFound(f"group {shown(gid)} not found")
            count = Groups.experiment_count(s, gid)
            if count:
                raise FailedPrecondition(
                    f"group {shown(gid)} holds {count} experiments; it cannot be deleted"
                )
            Groups.delete(s, gid)

        await self.db.run(apply)
        self.cache.clear()
        await self.audit(by, "group.delete", f"groups/{gid}")

    async def set_member(self, by: Principal, group: str, user: str, member: bool) -> Group:
        gid = names.group_id(group, "group")
        uid = names.parse(user, "users", "user", field="user")

        def apply(s: Session) -> Group:
            found_user = Users.get(s, uid)
            if found_user is None:
                raise NotFound(f"user {shown(uid)} not found")
            if Groups.get(s, gid) is None:
                raise NotFound(f"group {shown(gid)} not found")
            if not member:
                Groups.remove_member(s, gid, uid)
            elif gid not in found_user.groups:
                if len(found_user.groups) >= MAX_GROUPS_PER_USER:
                    raise FailedPrecondition(
                        f"user {shown(uid)} is in {MAX_GROUPS_PER_USER} groups already"
                    )
                Groups.add_member(s, gid, uid)
            found = Groups.get(s, gid)
            assert found is not None
            return found

        try:
            result = await self.db.run(apply)
        except IntegrityError:  # added at the same moment by another call: the same outcome
            result = await self.get_group(by, gid)
        self.cache.clear()
        action = "group.member.add" if member else "group.member.remove"
        await self.audit(by, action, f"groups/{gid}", f"users/{uid}")
        return result

    # ------------------------------------------------------------------ audit

    async def audit(self, by: Principal, action: str, resource: str, detail: str = "") -> None:
        event = AuditEvent(0, utcnow(), by.name, action, resource[:255], detail[:MAX_DETAIL])
        await self.db.batch(lambda s: Audit.add(s, event))

    async def audit_events(self, size: int, token: str) -> tuple[list[AuditEvent], str]:
        after = self.tokens.decode("audit", token) or 0
        n = page_size(size)
        rows = await self.db.run(lambda s: Audit.page(s, after, n + 1))
        nxt = self.tokens.encode("audit", rows[n - 1].seq) if len(rows) > n else ""
        return rows[:n], nxt
