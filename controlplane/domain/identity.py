"""Who is calling, and what they may do: users, roles, API tokens, agent credentials.

Tokens are opaque random strings (``brn_`` + 256 random bits) shown once at creation; the
store keeps only their SHA-256. A salted slow hash (bcrypt, argon2) protects low-entropy
passwords against offline guessing; a 256-bit random token cannot be guessed, so a fast hash
is enough and keeps authentication off the hot path's CPU budget.

Authorization is decided here, by role and by resource: the API layer names the kind of
access each RPC needs (``Access``) and asks ``authorize``; the managers check resources
(own jobs, own tokens) with ``may_act_on``.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .errors import DomainError

TOKEN_PREFIX = "brn_"
#: How long an authenticated token is trusted without looking at the store again. A revoke
#: or disable on this server takes effect at once; on another replica within this long.
CACHE_SECONDS = 10.0
MAX_DESCRIPTION = 200
#: Exists from the start; users created without groups join it.
DEFAULT_GROUP = "default"


class Unauthenticated(DomainError):
    """No credential, or one the server does not accept."""


class PermissionDenied(DomainError):
    """A valid credential whose holder may not do this."""


class Role(enum.IntEnum):
    """Each role includes the ones below it."""

    VIEWER = 1
    MEMBER = 2
    ADMIN = 3


class Access(enum.Enum):
    """What an RPC needs; ``authorize`` decides who has it."""

    ANY = "any credential"  # WhoAmI
    SELF = "a user"  # own tokens and user record; resources checked by the manager
    READ = "viewer"
    WRITE = "member"
    ADMIN = "admin"
    CONNECT = "an agent credential or admin"  # AgentService.Connect
    BLOB = "an agent credential or viewer"  # DownloadBlob; the digest checked by the manager


@dataclass(frozen=True)
class User:
    id: str
    role: Role
    disabled: bool
    create_time: datetime
    creator: str = ""
    groups: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"users/{self.id}"


@dataclass(frozen=True)
class Group:
    id: str
    description: str
    members: tuple[str, ...]  # user ids
    create_time: datetime
    creator: str = ""

    @property
    def name(self) -> str:
        return f"groups/{self.id}"


@dataclass(frozen=True)
class Token:
    id: str
    kind: str  # "user" | "agent"
    user_id: str  # user tokens: whom it acts as
    agent_id: str  # agent tokens: the id it registers under ("" until first use)
    queues: tuple[str, ...]
    labels: dict[str, str]
    description: str
    create_time: datetime
    expire_time: datetime | None
    revoke_time: datetime | None
    creator: str = ""

    @property
    def name(self) -> str:
        return f"tokens/{self.id}"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    kind: str  # "user" | "agent"
    id: str  # user id, or agent id ("" for an agent token not yet bound)
    role: Role | None = None  # users only
    token_id: str = ""  # "" for a certificate
    queues: tuple[str, ...] = ()  # agents: the queues it may serve (empty: any)
    labels: dict[str, str] = field(default_factory=dict)  # agents: labels it is given
    groups: frozenset[str] = frozenset()  # users: the groups it is a member of

    @property
    def name(self) -> str:
        return f"users/{self.id}" if self.kind == "user" else f"agents/{self.id}"

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def sees(self, group: str) -> bool:
        """Whether what belongs to ``group`` is visible to this principal."""
        return self.is_admin or group in self.groups

    @property
    def visible_groups(self) -> frozenset[str] | None:
        """The groups whose resources listings show it; None for every group (admins)."""
        return None if self.is_admin else self.groups

    def at_least(self, role: Role) -> bool:
        return self.role is not None and self.role >= role


def authorize(who: Principal, access: Access) -> None:
    """Raises PermissionDenied unless ``who`` has ``access``."""
    if access is Access.ANY:
        return
    if who.kind == "agent":
        if access in (Access.CONNECT, Access.BLOB):
            return
        raise PermissionDenied("an agent credential may only connect and download blobs")
    needed = {
        Access.SELF: Role.VIEWER,
        Access.READ: Role.VIEWER,
        Access.BLOB: Role.VIEWER,
        Access.WRITE: Role.MEMBER,
        Access.ADMIN: Role.ADMIN,
        Access.CONNECT: Role.ADMIN,
    }[access]
    if not who.at_least(needed):
        role = who.role.name.lower() if who.role else "none"
        raise PermissionDenied(f"this needs the {needed.name.lower()} role; {who.name} is {role}")


def may_act_on(who: Principal, creator: str, what: str) -> None:
    """Members act on what they created; admins on anything."""
    if who.is_admin or (creator and creator == who.name and who.at_least(Role.MEMBER)):
        return
    owner = creator or "nobody"
    raise PermissionDenied(f"{what} belongs to {owner}; only its creator or an admin may do this")


def may_see(who: Principal, group: str, what: str) -> None:
    """Users see (and, by role, change) what belongs to their groups; admins everything."""
    if who.sees(group):
        return
    raise PermissionDenied(f"{what} belongs to groups/{group}; {who.name} is not a member of it")


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token_id() -> str:
    return "tok-" + secrets.token_hex(6)


def parse_role(value: str | int) -> Role:
    try:
        return Role[value.upper()] if isinstance(value, str) else Role(value)
    except (KeyError, ValueError):
        raise ValueError(f"unknown role {value!r} (viewer, member, admin)") from None


def check_usable(token: Token, user: User | None, now: datetime) -> Principal:
    """The principal a stored token stands for, or Unauthenticated with why not."""
    if token.revoke_time is not None:
        raise Unauthenticated("the token was revoked")
    if token.expire_time is not None and token.expire_time <= now:
        raise Unauthenticated("the token has expired")
    if token.kind == "agent":
        return Principal("agent", token.agent_id, None, token.id, token.queues, token.labels)
    if user is None:
        raise Unauthenticated("the token's user no longer exists")
    if user.disabled:
        raise Unauthenticated(f"user {user.id!r} is disabled")
    return Principal("user", user.id, user.role, token.id, groups=frozenset(user.groups))


class PrincipalCache:
    """Authenticated tokens by hash, for CACHE_SECONDS; ``clear`` after any revoke or change."""

    def __init__(self, seconds: float = CACHE_SECONDS, size: int = 10_000) -> None:
        self.seconds, self.size = seconds, size
        self._entries: dict[str, tuple[float, datetime | None, Principal]] = {}

    def get(self, digest: str, now: datetime) -> Principal | None:
        hit = self._entries.get(digest)
        if hit is None or time.monotonic() - hit[0] > self.seconds:
            return None
        if hit[1] is not None and hit[1] <= now:  # expired while cached
            del self._entries[digest]
            return None
        return hit[2]

    def put(self, digest: str, who: Principal, expires: datetime | None) -> None:
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[digest] = (time.monotonic(), expires, who)

    def clear(self) -> None:
        self._entries.clear()


def expiry(now: datetime, ttl_s: float) -> datetime | None:
    return now + timedelta(seconds=ttl_s) if ttl_s > 0 else None


#: Records a state change someone caused: (who, action, resource, detail).
AuditFn = Callable[[Principal, str, str, str], Awaitable[None]]
