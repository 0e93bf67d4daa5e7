"""``client.users``, ``client.groups``, ``client.tokens``, ``client.audit``, ``client.whoami()``.

Roles: ``viewer`` reads, ``member`` also creates experiments, pushes entry points, submits
and cancels its own jobs, ``admin`` does everything (users, tokens, plugins, agents). A
token's secret is returned once, by ``tokens.create``; the server keeps only its hash.
Every experiment belongs to a group: users see (and submit to) the experiments of their
groups; a user created without groups joins ``default``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from google.protobuf import duration_pb2, field_mask_pb2

from brinell.v1 import auth_pb2, auth_service_pb2, auth_service_pb2_grpc

from .client import Client, _name, _pages, _Service
from .errors import InvalidArgumentError
from .types import _time

__all__ = [
    "AuditEvent",
    "Audit",
    "Group",
    "Groups",
    "NewToken",
    "Token",
    "Tokens",
    "User",
    "Users",
    "WhoAmI",
]

ROLES = ("viewer", "member", "admin")


def _role(value: int) -> str:
    return auth_pb2.Role.Name(value).removeprefix("ROLE_").lower()  # type: ignore[arg-type]


def _role_value(role: str) -> auth_pb2.Role.ValueType:
    if role not in ROLES:
        raise InvalidArgumentError(f"role must be one of {', '.join(ROLES)} (got {role!r})")
    return auth_pb2.Role.Value(f"ROLE_{role.upper()}")


@dataclass(frozen=True)
class User:
    name: str
    role: str
    disabled: bool = False
    create_time: datetime | None = None
    creator: str = ""
    #: ``groups/{id}`` of each group it is in.
    groups: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.name.split("/", 1)[1]

    @classmethod
    def from_proto(cls, msg: auth_pb2.User) -> User:
        return cls(
            str(msg.name),
            _role(msg.role),
            bool(msg.disabled),
            _time(msg, "create_time"),
            str(msg.creator),
            tuple(msg.groups),
        )


@dataclass(frozen=True)
class Group:
    """Users who share experiments."""

    name: str
    description: str = ""
    #: ``users/{id}`` of each member.
    members: tuple[str, ...] = ()
    create_time: datetime | None = None
    creator: str = ""

    @property
    def id(self) -> str:
        return self.name.split("/", 1)[1]

    @classmethod
    def from_proto(cls, msg: auth_pb2.Group) -> Group:
        return cls(
            str(msg.name),
            str(msg.description),
            tuple(msg.members),
            _time(msg, "create_time"),
            str(msg.creator),
        )


@dataclass(frozen=True)
class Token:
    """A token's record (never its secret)."""

    name: str
    kind: str  # "user" | "agent"
    user: str = ""
    agent_id: str = ""
    queues: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    create_time: datetime | None = None
    expire_time: datetime | None = None
    revoke_time: datetime | None = None
    creator: str = ""

    @property
    def id(self) -> str:
        return self.name.split("/", 1)[1]

    @property
    def revoked(self) -> bool:
        return self.revoke_time is not None

    @classmethod
    def from_proto(cls, msg: auth_pb2.Token) -> Token:
        return cls(
            str(msg.name),
            "agent" if msg.kind == auth_pb2.TOKEN_KIND_AGENT else "user",
            str(msg.user),
            str(msg.agent_id),
            tuple(msg.queues),
            dict(msg.labels),
            str(msg.description),
            _time(msg, "create_time"),
            _time(msg, "expire_time"),
            _time(msg, "revoke_time"),
            str(msg.creator),
        )


@dataclass(frozen=True)
class NewToken:
    """What ``tokens.create`` returns: the record and the secret, shown only this once."""

    token: Token
    secret: str


@dataclass(frozen=True)
class AuditEvent:
    name: str
    time: datetime | None
    actor: str
    action: str
    resource: str
    detail: str = ""

    @classmethod
    def from_proto(cls, msg: auth_pb2.AuditEvent) -> AuditEvent:
        return cls(
            str(msg.name),
            _time(msg, "time"),
            str(msg.actor),
            str(msg.action),
            str(msg.resource),
            str(msg.detail),
        )


@dataclass(frozen=True)
class WhoAmI:
    principal: str  # users/{id} or agents/{id}
    role: str  # "" for an agent
    token: str = ""


class _Auth(_Service):
    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._stub = auth_service_pb2_grpc.AuthServiceStub(client._channel)


class Users(_Auth):
    """``client.users`` (admin, except ``get`` of yourself)."""

    def create(self, id: str, role: str = "member", groups: list[str] | None = None) -> User:
        """A new user in ``groups`` (ids or ``groups/{id}``; none: ``default``)."""
        request = auth_service_pb2.CreateUserRequest(
            user_id=id,
            role=_role_value(role),
            groups=[_name(g, "groups", "group") for g in groups or []],
        )
        return User.from_proto(self._unary(self._stub.CreateUser, request).user)

    def get(self, id_or_name: str) -> User:
        request = auth_service_pb2.GetUserRequest(name=_name(id_or_name, "users", "user"))
        return User.from_proto(self._unary(self._stub.GetUser, request).user)

    def list(self, page_size: int | None = None) -> Iterator[User]:
        def fetch(token: str) -> tuple[list[User], str]:
            request = auth_service_pb2.ListUsersRequest(page_size=page_size or 0, page_token=token)
            response = self._unary(self._stub.ListUsers, request)
            return [User.from_proto(u) for u in response.users], str(response.next_page_token)

        return _pages(fetch)

    def update(
        self, id_or_name: str, *, role: str | None = None, disabled: bool | None = None
    ) -> User:
        paths = [p for p, v in (("role", role), ("disabled", disabled)) if v is not None]
        request = auth_service_pb2.UpdateUserRequest(
            user=auth_pb2.User(
                name=_name(id_or_name, "users", "user"),
                role=_role_value(role) if role is not None else auth_pb2.ROLE_UNSPECIFIED,
                disabled=bool(disabled),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )
        return User.from_proto(self._unary(self._stub.UpdateUser, request).user)

    def disable(self, id_or_name: str) -> User:
        """Refuses the user's tokens from now on (``update(..., disabled=False)`` undoes it)."""
        return self.update(id_or_name, disabled=True)


class Groups(_Auth):
    """``client.groups``: who sees which experiments (changes: admin)."""

    def create(self, id: str, description: str = "") -> Group:
        request = auth_service_pb2.CreateGroupRequest(group_id=id, description=description)
        return Group.from_proto(self._unary(self._stub.CreateGroup, request).group)

    def get(self, id_or_name: str) -> Group:
        request = auth_service_pb2.GetGroupRequest(name=_name(id_or_name, "groups", "group"))
        return Group.from_proto(self._unary(self._stub.GetGroup, request).group)

    def list(self, page_size: int | None = None) -> Iterator[Group]:
        """Every group (an admin), or the groups you are in."""

        def fetch(token: str) -> tuple[list[Group], str]:
            request = auth_service_pb2.ListGroupsRequest(page_size=page_size or 0, page_token=token)
            response = self._unary(self._stub.ListGroups, request)
            return [Group.from_proto(g) for g in response.groups], str(response.next_page_token)

        return _pages(fetch)

    def delete(self, id_or_name: str) -> None:
        """Deletes a group that holds no experiments."""
        request = auth_service_pb2.DeleteGroupRequest(name=_name(id_or_name, "groups", "group"))
        self._unary(self._stub.DeleteGroup, request)

    def add_member(self, group: str, user: str) -> Group:
        request = auth_service_pb2.AddGroupMemberRequest(
            group=_name(group, "groups", "group"), user=_name(user, "users", "user")
        )
        return Group.from_proto(self._unary(self._stub.AddGroupMember, request).group)

    def remove_member(self, group: str, user: str) -> Group:
        request = auth_service_pb2.RemoveGroupMemberRequest(
            group=_name(group, "groups", "group"), user=_name(user, "users", "user")
        )
        return Group.from_proto(self._unary(self._stub.RemoveGroupMember, request).group)


class Tokens(_Auth):
    """``client.tokens``: your own tokens (an admin's: anyone's, and agent tokens)."""

    def create(
        self,
        *,
        user: str | None = None,
        description: str = "",
        ttl: timedelta | float | None = None,
        agent_id: str | None = None,
        agent: bool = False,
        queues: list[str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> NewToken:
        """A user token (for ``user``, default yourself) or, with ``agent=True`` or an
        ``agent_id``, an agent enrollment token: the agent's credential, bound to that id
        (or to the first id it registers under), and to ``queues`` / ``labels`` if given."""
        is_agent = agent or agent_id is not None or bool(queues) or bool(labels)
        ttl_s = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
        request = auth_service_pb2.CreateTokenRequest(
            kind=auth_pb2.TOKEN_KIND_AGENT if is_agent else auth_pb2.TOKEN_KIND_USER,
            user=_name(user, "users", "user") if user else "",
            agent_id=agent_id or "",
            queues=list(queues or []),
            labels=dict(labels or {}),
            description=description,
        )
        if ttl_s:
            request.ttl.CopyFrom(duration_pb2.Duration(seconds=int(ttl_s)))
        response = self._unary(self._stub.CreateToken, request)
        return NewToken(Token.from_proto(response.token), str(response.secret))

    def list(self, user: str | None = None, page_size: int | None = None) -> Iterator[Token]:
        def fetch(token: str) -> tuple[list[Token], str]:
            request = auth_service_pb2.ListTokensRequest(
                page_size=page_size or 0,
                page_token=token,
                user=_name(user, "users", "user") if user else "",
            )
            response = self._unary(self._stub.ListTokens, request)
            return [Token.from_proto(t) for t in response.tokens], str(response.next_page_token)

        return _pages(fetch)

    def revoke(self, id_or_name: str) -> Token:
        request = auth_service_pb2.RevokeTokenRequest(name=_name(id_or_name, "tokens", "token"))
        return Token.from_proto(self._unary(self._stub.RevokeToken, request).token)


class Audit(_Auth):
    """``client.audit``: who changed what (admin)."""

    def list(self, page_size: int | None = None) -> Iterator[AuditEvent]:
        def fetch(token: str) -> tuple[list[AuditEvent], str]:
            request = auth_service_pb2.ListAuditEventsRequest(
                page_size=page_size or 0, page_token=token
            )
            response = self._unary(self._stub.ListAuditEvents, request)
            return [AuditEvent.from_proto(e) for e in response.events], str(
                response.next_page_token
            )

        return _pages(fetch)

    def whoami(self) -> WhoAmI:
        response = self._unary(self._stub.WhoAmI, auth_service_pb2.WhoAmIRequest())
        role = _role(response.role) if response.role else ""
        return WhoAmI(str(response.principal), role, str(response.token))
