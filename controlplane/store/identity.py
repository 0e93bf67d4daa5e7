"""Repositories for users, tokens and the audit log (same rules as repositories.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Column, Table, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from ..domain import identity as ident
from ..domain.models import AuditEvent
from .models import AuditEventRow, ExperimentRow, GroupMemberRow, GroupRow, TokenRow, UserRow

T = cast(Table, TokenRow.__table__)
U = cast(Table, UserRow.__table__)
GM = cast(Table, GroupMemberRow.__table__)
_GROUPS_OF = select(GM.c.group_id).where(GM.c.user_id == bindparam("u")).order_by(GM.c.group_id)

# Authentication runs on every call that misses the cache: one indexed lookup, Core only.
_BY_HASH = (
    select(T, U.c.role, U.c.disabled, U.c.create_time.label("user_create_time"))
    .outerjoin(U, U.c.id == T.c.user_id)
    .where(T.c.hash == bindparam("h"))
)


def _user(r: Any, groups: tuple[str, ...]) -> ident.User:
    return ident.User(r.id, ident.Role(r.role), r.disabled, r.create_time, r.creator, groups)


def _groups_of(s: Session, user_id: str) -> tuple[str, ...]:
    return tuple(s.connection().execute(_GROUPS_OF, {"u": user_id}).scalars())


def _memberships(
    s: Session, key: Column[str], value: Column[str], keys: list[str]
) -> dict[str, tuple[str, ...]]:
    """For each of ``keys`` (user or group ids), the sorted other side of its memberships."""
    found: dict[str, list[str]] = {}
    for k, v in s.execute(select(key, value).where(key.in_(keys)).order_by(value)):
        found.setdefault(k, []).append(v)
    return {k: tuple(v) for k, v in found.items()}


def _token(r: Any) -> ident.Token:
    return ident.Token(
        r.id,
        r.kind,
        r.user_id,
        r.agent_id,
        tuple(r.queues),
        dict(r.labels),
        r.description,
        r.create_time,
        r.expire_time,
        r.revoke_time,
        r.creator,
    )


class Users:
    @staticmethod
    def count(s: Session) -> int:
        return int(s.scalar(select(func.count()).select_from(UserRow)) or 0)

    @staticmethod
    def add(s: Session, user: ident.User) -> None:
        s.add(
            UserRow(
                id=user.id,
                role=int(user.role),
                disabled=user.disabled,
                creator=user.creator,
                create_time=user.create_time,
            )
        )
        s.add_all(GroupMemberRow(group_id=g, user_id=user.id) for g in user.groups)
        s.flush()

    @staticmethod
    def get(s: Session, user_id: str) -> ident.User | None:
        row = s.scalar(select(UserRow).where(UserRow.id == user_id))
        return _user(row, _groups_of(s, user_id)) if row else None

    @staticmethod
    def page(s: Session, after_seq: int, limit: int) -> list[tuple[int, ident.User]]:
        rows = s.scalars(
            select(UserRow).where(UserRow.seq > after_seq).order_by(UserRow.seq).limit(limit)
        ).all()
        groups = _memberships(s, GM.c.user_id, GM.c.group_id, [r.id for r in rows])
        return [(r.seq, _user(r, groups.get(r.id, ()))) for r in rows]

    @staticmethod
    def update(
        s: Session, user_id: str, role: ident.Role | None, disabled: bool | None
    ) -> ident.User | None:
        row = s.scalar(select(UserRow).where(UserRow.id == user_id))
        if row is None:
            return None
        if role is not None:
            row.role = int(role)
        if disabled is not None:
            row.disabled = disabled
        s.flush()
        return _user(row, _groups_of(s, user_id))


class Tokens:
    @staticmethod
    def add(s: Session, token: ident.Token, digest: str) -> None:
        s.add(
            TokenRow(
                id=token.id,
                hash=digest,
                kind=token.kind,
                user_id=token.user_id,
                agent_id=token.agent_id,
                queues=list(token.queues),
                labels=token.labels,
                description=token.description,
                creator=token.creator,
                create_time=token.create_time,
                expire_time=token.expire_time,
                revoke_time=None,
            )
        )
        s.flush()

    @staticmethod
    def by_hash(s: Session, digest: str) -> tuple[ident.Token, ident.User | None] | None:
        r = s.connection().execute(_BY_HASH, {"h": digest}).first()
        if r is None:
            return None
        user = (
            ident.User(
                r.user_id,
                ident.Role(r.role),
                r.disabled,
                r.user_create_time,
                groups=_groups_of(s, r.user_id),
            )
            if r.role is not None
            else None
        )
        return _token(r), user

    @staticmethod
    def get(s: Session, token_id: str) -> ident.Token | None:
        row = s.scalar(select(TokenRow).where(TokenRow.id == token_id))
        return _token(row) if row else None

    @staticmethod
    def page(
        s: Session, after_seq: int, limit: int, user_id: str | None
    ) -> list[tuple[int, ident.Token]]:
        q = select(TokenRow).where(TokenRow.seq > after_seq)
        if user_id is not None:
            q = q.where(TokenRow.user_id == user_id)
        rows = s.scalars(q.order_by(TokenRow.seq).limit(limit)).all()
        return [(r.seq, _token(r)) for r in rows]

    @staticmethod
    def revoke(s: Session, token_id: str, now: datetime) -> ident.Token | None:
        s.execute(
            update(TokenRow)
            .where(TokenRow.id == token_id, TokenRow.revoke_time.is_(None))
            .values(revoke_time=now)
        )
        return Tokens.get(s, token_id)

    @staticmethod
    def bind_agent(s: Session, token_id: str, agent_id: str) -> str:
        """Binds an unbound agent token to its first agent id; returns the id it is bound to."""
        s.execute(
            update(TokenRow)
            .where(TokenRow.id == token_id, TokenRow.agent_id == "")
            .values(agent_id=agent_id)
        )
        return str(s.scalar(select(TokenRow.agent_id).where(TokenRow.id == token_id)) or "")


def _group(r: GroupRow, members: tuple[str, ...]) -> ident.Group:
    return ident.Group(r.id, r.description, members, r.create_time, r.creator)


class Groups:
    @staticmethod
    def add(s: Session, group: ident.Group) -> None:
        s.add(
            GroupRow(
                id=group.id,
                description=group.description,
                creator=group.creator,
                create_time=group.create_time,
            )
        )
        s.flush()

    @staticmethod
    def existing(s: Session, group_ids: list[str]) -> set[str]:
        return set(s.scalars(select(GroupRow.id).where(GroupRow.id.in_(group_ids))))

    @staticmethod
    def get(s: Session, group_id: str) -> ident.Group | None:
        row = s.scalar(select(GroupRow).where(GroupRow.id == group_id))
        if row is None:
            return None
        members = _memberships(s, GM.c.group_id, GM.c.user_id, [group_id])
        return _group(row, members.get(group_id, ()))

    @staticmethod
    def page(
        s: Session, after_seq: int, limit: int, user_id: str | None
    ) -> list[tuple[int, ident.Group]]:
        """Groups in creation order, with members; only ``user_id``'s when given."""
        q = select(GroupRow).where(GroupRow.seq > after_seq)
        if user_id is not None:
            q = q.where(GroupRow.id.in_(select(GM.c.group_id).where(GM.c.user_id == user_id)))
        rows = s.scalars(q.order_by(GroupRow.seq).limit(limit)).all()
        members = _memberships(s, GM.c.group_id, GM.c.user_id, [r.id for r in rows])
        return [(r.seq, _group(r, members.get(r.id, ()))) for r in rows]

    @staticmethod
    def experiment_count(s: Session, group_id: str) -> int:
        q = select(func.count()).where(ExperimentRow.group_id == group_id)
        return int(s.scalar(q) or 0)

    @staticmethod
    def delete(s: Session, group_id: str) -> None:
        s.execute(delete(GroupMemberRow).where(GroupMemberRow.group_id == group_id))
        s.execute(delete(GroupRow).where(GroupRow.id == group_id))

    @staticmethod
    def add_member(s: Session, group_id: str, user_id: str) -> None:
        s.execute(insert(GroupMemberRow).values(group_id=group_id, user_id=user_id))

    @staticmethod
    def remove_member(s: Session, group_id: str, user_id: str) -> None:
        s.execute(
            delete(GroupMemberRow).where(
                GroupMemberRow.group_id == group_id, GroupMemberRow.user_id == user_id
            )
        )


class Audit:
    @staticmethod
    def add(s: Session, event: AuditEvent) -> None:
        s.add(
            AuditEventRow(
                time=event.time,
                actor=event.actor,
                action=event.action,
                resource=event.resource,
                detail=event.detail,
            )
        )

    @staticmethod
    def page(s: Session, after_seq: int, limit: int) -> list[AuditEvent]:
        rows = s.scalars(
            select(AuditEventRow)
            .where(AuditEventRow.seq > after_seq)
            .order_by(AuditEventRow.seq)
            .limit(limit)
        ).all()
        return [AuditEvent(r.seq, r.time, r.actor, r.action, r.resource, r.detail) for r in rows]
