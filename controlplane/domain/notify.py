"""Change notification for watchers and log followers (no polling).

A waiter takes the job's current event *before* reading the database, then waits on it;
``notify`` swaps in a fresh event and sets the old one, so no change can slip between a
read and the wait. Other replicas on the same database hear of it through the bus.
"""

from __future__ import annotations

import asyncio

from ..store.bus import LocalBus


class Notifier:
    def __init__(self, bus: LocalBus | None = None) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.bus = bus or LocalBus()

    def event(self, key: str) -> asyncio.Event:
        ev = self._events.get(key)
        if ev is None:
            ev = self._events[key] = asyncio.Event()
        return ev

    def notify(self, key: str) -> None:
        """``key`` changed (committed): wake its waiters here and on the other replicas."""
        self.notify_here(key)
        self.bus.publish("job", key)

    def notify_here(self, key: str) -> None:
        ev = self._events.pop(key, None)
        if ev is not None:
            ev.set()

    def notify_all(self) -> None:
        events, self._events = self._events, {}
        for ev in events.values():
            ev.set()
