"""The agents view for clients: the stored agents, overlaid with the live sessions."""

from __future__ import annotations

import functools
from dataclasses import replace

from brinell.mlproject import shown

from ..store.db import Database
from ..store.repositories import Agents, Blobs
from . import names
from .accounts import Accounts
from .errors import InvalidArgument, NotFound
from .filters import terms
from .identity import PermissionDenied, Principal
from .models import AgentInfo, AttemptRef
from .paging import PageTokens, page_size
from .scheduler import AgentSession, Scheduler

MAX_QUEUES = 32
MAX_RUNNING = 10_000
MAX_HOSTNAME = 255
MAX_GPUS = 64
# The longest drain an admin may ask for (a week).
MAX_DRAIN_SECONDS = 7 * 24 * 3600


def check_registration(info: AgentInfo, running: int) -> None:
    """Bounds what an agent may register with (each problem reported, values cut short)."""
    problems: list[tuple[str, str]] = []
    if len(info.hostname) > MAX_HOSTNAME:
        problems.append(("register.hostname", f"hostname is over {MAX_HOSTNAME} characters"))
    problems += names.label_problems(info.labels, field="register.labels")
    if len(info.queues) > MAX_QUEUES:
        problems.append(("register.queues", f"at most {MAX_QUEUES} queues"))
    problems += [
        ("register.queues", f"queue {shown(q)} is invalid")
        for q in info.queues
        if not names.QUEUE_RE.match(q)
    ]
    if len(info.version) > 64 or len(info.executor) > 32:
        problems.append(("register.version", "version (64) or executor (32) is too long"))
    if running > MAX_RUNNING:
        problems.append(("register.running", f"at most {MAX_RUNNING} running attempts"))
    if info.capacity.slots < 0 or info.capacity.slots > 10_000:
        problems.append(("register.capacity.slots", "slots must be 0-10000"))
    gpus = info.capacity.gpus
    if len(gpus) > MAX_GPUS:
        problems.append(("register.capacity.gpus", f"at most {MAX_GPUS} GPUs"))
    elif len({g.uuid for g in gpus}) != len(gpus) or any(
        not g.uuid or len(g.uuid) > 64 or len(g.model) > 128 for g in gpus
    ):
        problems.append(
            (
                "register.capacity.gpus",
                "each GPU needs a distinct UUID of at most 64 characters (model: 128)",
            )
        )
    if problems:
        raise InvalidArgument.of(problems)


def admit(info: AgentInfo, who: Principal) -> AgentInfo:
    """What ``who`` may register as: an agent credential only under its own id and queues,
    with its labels; an admin as anything."""
    if who.kind != "agent":
        return info
    if who.id != info.id:
        raise PermissionDenied(f"this credential is for agent {who.id!r}, not {shown(info.id)}")
    extra = sorted(set(info.queues) - set(who.queues)) if who.queues else []
    if extra:
        raise PermissionDenied(
            f"this credential may serve queues {', '.join(who.queues)}, not {', '.join(extra)}"
        )
    return replace(info, labels={**info.labels, **who.labels})


class AgentDirectory:
    def __init__(
        self, db: Database, scheduler: Scheduler, tokens: PageTokens, accounts: Accounts
    ) -> None:
        self.db = db
        self.scheduler = scheduler
        self.tokens = tokens
        self.accounts = accounts

    async def may_download(self, who: Principal, digest: str) -> None:
        """Agents download what their active assignments reference (the entry point and the
        pinned plugins); users what belongs to an entry point revision or plugin version (all
        of which a viewer may read); admins anything. Otherwise NOT_FOUND, which says nothing
        about whether the blob exists."""
        if who.is_admin:
            return
        if who.kind == "agent":
            allowed = await self.db.run(lambda s: Blobs.assigned_to(s, who.id, digest))
        else:
            allowed = await self.db.run(lambda s: Blobs.published(s, digest))
        if not allowed:
            raise NotFound(f"blob {digest} not found")

    async def connect(
        self, who: Principal, info: AgentInfo, running: list[AttemptRef]
    ) -> AgentSession:
        """Opens the agent's session, if its credential allows this registration."""
        check_registration(info, len(running))
        if who.kind == "agent" and not who.id:  # an unbound token binds to its first id
            who = await self.accounts.bind_agent(who, info.id)
        info = admit(info, who)
        return await self.scheduler.register(info, running, who.token_id or who.name)

    def _live(self, a: AgentInfo) -> AgentInfo:
        """The agent as the replica holding its stream sees it: this one's live session,
        or what another live replica stored."""
        session = self.scheduler.sessions.get(a.id)
        if session is not None:
            return replace(
                a,
                state="DRAINING" if session.draining else "CONNECTED",
                running=len(session.running),
                replica=self.scheduler.replica,
            )
        if a.state != "DISCONNECTED" and a.replica in self.scheduler.live - {
            self.scheduler.replica
        }:
            return a
        return replace(a, state="DISCONNECTED", running=0)

    async def drain(self, name: str, deadline: float, reason: str) -> AgentInfo:
        agent_id = names.agent_id(name)
        if deadline < 0 or deadline > MAX_DRAIN_SECONDS:
            raise InvalidArgument(
                f"deadline must be between 0 and {MAX_DRAIN_SECONDS} s", field="deadline"
            )
        if len(reason) > 500:
            raise InvalidArgument("reason is at most 500 characters", field="reason")
        found = await self.get(f"agents/{agent_id}")
        self.scheduler.drain(found, deadline, reason or "drained by an admin")
        return replace(found, state="DRAINING")

    async def get(self, name: str) -> AgentInfo:
        agent_id = names.agent_id(name)
        a = await self.db.run(lambda s: Agents.get(s, agent_id))
        if a is None:
            raise NotFound(f"agent {agent_id!r} not found")
        return self._live(a)

    async def page(self, size: int, token: str, filter_text: str) -> tuple[list[AgentInfo], str]:
        wanted = terms(filter_text, {"state", "queue"}, label_prefix=True)
        query = "agents:" + " ".join(sorted(filter_text.split()))
        after = self.tokens.decode(query, token) or ""
        if not isinstance(after, str):
            raise InvalidArgument("page_token is invalid", field="page_token")
        n = page_size(size)

        def keep(a: AgentInfo) -> bool:
            for key, value in wanted:
                if key == "state" and a.state != value.upper().removeprefix("AGENT_STATE_"):
                    return False
                if key == "queue" and value not in a.queues:
                    return False
                if key.startswith("labels.") and a.labels.get(key[7:]) != value:
                    return False
            return True

        out: list[AgentInfo] = []
        cursor = after
        while len(out) <= n:
            batch: list[AgentInfo] = await self.db.run(
                functools.partial(Agents.page, after_id=cursor, limit=500, state=None)
            )
            if not batch:
                break
            for a in batch:
                cursor = a.id
                live = self._live(a)
                if keep(live):
                    out.append(live)
                    if len(out) > n:
                        break
        nxt = self.tokens.encode(query, out[n - 1].id) if len(out) > n else ""
        return out[:n], nxt
