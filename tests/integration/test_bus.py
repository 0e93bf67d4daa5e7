"""The replicas' bus on a real PostgreSQL: messages cross, are coalesced and packed under
NOTIFY's payload limit, a replica ignores its own, and a listener whose connection was killed
reconnects and resyncs (store/bus.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg

from brinell.controlplane.store.bus import MAX_PAYLOAD, PgBus
from tests.conftest import fresh_pg_database


def test_payloads_stay_under_the_limit_and_keep_every_message() -> None:
    bus = PgBus("postgresql://nobody@127.0.0.1:1/none", "r1")
    messages = [("job", f"{i:016x}") for i in range(2000)]
    payloads = bus._payloads(messages)
    assert len(payloads) > 1
    assert all(len(p.encode()) < MAX_PAYLOAD for p in payloads)
    got = [tuple(m) for p in payloads for m in json.loads(p)["m"]]
    assert got == messages
    assert bus._payloads([("cancel", "x" * 9000)]) == []  # too large: dropped, not sent


def test_replicas_hear_each_other_not_themselves_and_resync_after_a_lost_connection(
    postgres_url: str,
) -> None:
    url = fresh_pg_database(postgres_url)
    asyncio.run(_exchange(url))


async def _exchange(url: str) -> None:
    heard: dict[str, list[Any]] = {"a": [], "b": []}
    resyncs = {"a": 0, "b": 0}
    buses = {name: PgBus(url, f"replica-{name}") for name in ("a", "b")}
    for name, bus in buses.items():

        def resync(name: str = name) -> None:
            resyncs[name] += 1

        await bus.start(heard[name].extend, resync)
    a, b = buses["a"], buses["b"]
    a.peers, b.peers = {"replica-b"}, {"replica-a"}
    try:
        for i in range(300):  # one loop turn: coalesced into a few notifications
            a.publish("job", f"{i:016x}")
        a.publish("wake")
        a.publish("wake")  # a duplicate in the same turn is sent once
        b.publish("cancel", "agent-1", "0123456789abcdef", 2, "stop")
        await _until(lambda: len(heard["b"]) == 301 and len(heard["a"]) == 1)
        assert heard["b"][:300] == [["job", f"{i:016x}"] for i in range(300)]
        assert heard["b"][300] == ["wake"]
        assert heard["a"] == [["cancel", "agent-1", "0123456789abcdef", 2, "stop"]]
        assert 1 < a.sent < 300  # packed
        await asyncio.sleep(0.3)
        assert len(heard["b"]) == 301  # nothing twice, and A heard nothing of its own

        # Kill B's listening connection: B reconnects, resyncs, and hears again.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
            )
        await _until(lambda: resyncs["b"] >= 1 and resyncs["a"] >= 1, timeout=15)
        a.publish("wake")
        await _until(lambda: heard["b"][-1:] == [["wake"]] and len(heard["b"]) == 302)

        # No peers: nothing is sent at all.
        a.peers = set()
        before = a.sent
        a.publish("wake")
        await asyncio.sleep(0.3)
        assert a.sent == before
    finally:
        for bus in buses.values():
            await bus.stop()


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
