"""In-process change notification for watchers and log followers (no polling).

A waiter takes the job's current event *before* reading the database, then waits on it;
``notify`` swaps in a fresh event and sets the old one, so no change can slip between a
read and the wait.
"""

from __future__ import annotations

import asyncio


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, key: str) -> asyncio.Event:
        ev = self._events.get(key)
        if ev is None:
            ev = self._events[key] = asyncio.Event()
        return ev

    def notify(self, key: str) -> None:
        ev = self._events.pop(key, None)
        if ev is not None:
            ev.set()

    def notify_all(self) -> None:
        events, self._events = self._events, {}
        for ev in events.values():
            ev.set()
