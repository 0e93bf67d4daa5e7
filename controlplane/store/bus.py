"""Messages between control-plane replicas on one PostgreSQL, through LISTEN/NOTIFY.

A replica publishes after its transaction committed (a job changed, log lines landed, a job
was queued, a cancel for an agent whose stream another replica holds); every other replica
listening on the channel gets the message and acts on its own in-memory state (wakes its
watchers, followers, dispatcher; puts the cancel on the agent's stream). Messages published
in one loop turn are coalesced, duplicates dropped, and packed into as few notifications as
PostgreSQL's 8000-byte payload allows.

Delivery is at most once: a listener that loses its connection reconnects and then resyncs
(wakes everything once), so nothing waits on a message that was lost meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger("brinell.controlplane.bus")

CHANNEL = "brinell"
MAX_PAYLOAD = 7900  # PostgreSQL refuses payloads of 8000 bytes or more
MAX_BACKOFF = 5.0

Message = tuple[Any, ...]
Handler = Callable[[list[list[Any]]], None]


class LocalBus:
    """One control plane: no one else to tell."""

    peers: set[str]

    def __init__(self) -> None:
        self.peers = set()

    def publish(self, *message: Any) -> None:
        return None

    async def start(self, handler: Handler, resync: Callable[[], None]) -> None:
        return None

    async def stop(self) -> None:
        return None


class PgBus(LocalBus):
    def __init__(self, database_url: str, replica: str) -> None:
        super().__init__()
        url = make_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self.replica = replica
        self._pending: dict[Message, None] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._sender: Any = None
        self.received = 0
        self.sent = 0

    # -- publishing ------------------------------------------------------------------

    def publish(self, *message: Any) -> None:
        """Sends ``message`` (JSON-able values) to the other replicas, soon; a no-op while
        there are none."""
        if not self.peers:
            return
        self._pending[message] = None
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    def _payloads(self, messages: list[Message]) -> list[str]:
        out: list[str] = []
        batch: list[Message] = []
        size = 0
        for m in messages:
            n = len(json.dumps(m, separators=(",", ":")).encode()) + 1
            if n > MAX_PAYLOAD - 64:
                log.warning("bus message too large, dropped: %.80s", m)
                continue
            if batch and size + n > MAX_PAYLOAD - 64:
                out.append(self._encode(batch))
                batch, size = [], 0
            batch.append(m)
            size += n
        if batch:
            out.append(self._encode(batch))
        return out

    def _encode(self, batch: list[Message]) -> str:
        return json.dumps({"r": self.replica, "m": batch}, separators=(",", ":"))

    async def _flush(self) -> None:
        import psycopg

        await asyncio.sleep(0)  # one loop turn for others to join
        while self._pending:
            messages, self._pending = list(self._pending), {}
            for attempt in range(2):
                try:
                    if self._sender is None or self._sender.closed:
                        self._sender = await psycopg.AsyncConnection.connect(
                            self._conninfo, autocommit=True
                        )
                    async with self._sender.cursor() as cur:
                        for payload in self._payloads(messages):
                            await cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                            self.sent += 1
                    break
                except psycopg.Error as exc:
                    with contextlib.suppress(Exception):
                        await self._sender.close()
                    self._sender = None
                    if attempt:
                        # The listeners resync when they reconnect; a live one misses these.
                        log.warning("bus: %d message(s) not sent: %s", len(messages), exc)

    # -- listening -------------------------------------------------------------------

    async def start(self, handler: Handler, resync: Callable[[], None]) -> None:
        ready = asyncio.get_running_loop().create_future()
        self._listener = asyncio.create_task(self._listen(handler, resync, ready), name="bus")
        await ready

    async def _listen(
        self, handler: Handler, resync: Callable[[], None], ready: asyncio.Future[None]
    ) -> None:
        import psycopg

        backoff = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if not ready.done():
                        ready.set_result(None)
                    else:
                        log.info("bus: listening again; resyncing")
                        resync()
                    backoff = 0.2
                    async for n in conn.notifies():
                        self._receive(n.payload, handler)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not ready.done():
                    ready.set_exception(exc)
                    return
                log.warning("bus: listener lost its connection (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _receive(self, payload: str, handler: Handler) -> None:
        try:
            data = json.loads(payload)
            if data.get("r") == self.replica:
                return
            messages = [m for m in data.get("m", []) if isinstance(m, list) and m]
        except (ValueError, AttributeError):
            log.warning("bus: malformed notification ignored: %.80s", payload)
            return
        self.received += 1
        try:
            handler(messages)
        except Exception:
            log.exception("bus: handling %d message(s) failed", len(messages))

    async def stop(self) -> None:
        for task in (self._listener, self._flushing):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._sender is not None:
            with contextlib.suppress(Exception):
                await self._sender.close()
