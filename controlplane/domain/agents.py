"""The agents view for clients: the stored agents, overlaid with the live sessions."""

from __future__ import annotations

import functools
from dataclasses import replace

from ..store.db import Database
from ..store.repositories import Agents
from . import names
from .errors import InvalidArgument, NotFound
from .filters import terms
from .models import AgentInfo
from .paging import PageTokens, page_size
from .scheduler import Scheduler


class AgentDirectory:
    def __init__(self, db: Database, scheduler: Scheduler, tokens: PageTokens) -> None:
        self.db = db
        self.scheduler = scheduler
        self.tokens = tokens

    def _live(self, a: AgentInfo) -> AgentInfo:
        session = self.scheduler.sessions.get(a.id)
        if session is None:
            return replace(a, state="DISCONNECTED", running=0)
        return replace(
            a, state="DRAINING" if session.draining else "CONNECTED", running=len(session.running)
        )

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
