"""Engine, the one transaction boundary, and migrations.

All database work runs on a worker thread so the gRPC event loop never blocks. SQLite gets
a single worker (one writer anyway, and no lock contention); PostgreSQL a small pool.

Small writes on the hot path (submits, attempt reports, log batches, heartbeats) go through
``batch``: a group commit. Operations that arrive while a transaction is in flight are
applied together in the next one, so under load one commit and one thread hop serve many
operations, while a lone operation still commits at once (no timer, no added latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from ..domain.errors import DomainError

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_size=8, max_overflow=4, pool_pre_ping=True)


# Alembic's migration context is a process-wide global: two migrations at once (ours and
# MLflow's store set-up, or two control planes in one test process) would cross wires and
# run one's revisions on the other's connection.
ALEMBIC_LOCK = threading.Lock()


def migrate(engine: Engine) -> None:
    """Brings the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with ALEMBIC_LOCK, engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(
            max_workers=1 if self.is_sqlite else 8, thread_name_prefix="db"
        )
        self._pending: list[tuple[Callable[[Session], Any], asyncio.Future[Any]]] = []
        self._flushing = False

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """The transaction boundary: commits on success, rolls back on error."""
        with self._sessions() as s, s.begin():
            yield s

    def _in_session(self, fn: Callable[[Session], T]) -> T:
        with self.session() as s:
            return fn(s)

    async def run(self, fn: Callable[[Session], T]) -> T:
        """Runs ``fn`` in one transaction on a database worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._in_session, fn))

    async def batch(self, fn: Callable[[Session], T]) -> T:
        """Runs ``fn`` in a transaction shared with the other operations pending now.

        ``fn`` may raise a DomainError only before it writes anything: such an error is
        handed to its caller and the others commit. Any other error rolls the shared
        transaction back, and each operation is then retried in a transaction of its own.
        """
        return await self.enqueue(fn)

    def enqueue(self, fn: Callable[[Session], T]) -> asyncio.Future[T]:
        """``batch`` without waiting: operations apply in the order they were enqueued, so a
        caller can pipeline several (an agent's RUNNING then SUCCEEDED) and still keep order.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((fn, future))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush)  # one loop turn for others to join this batch
        return future

    def _flush(self) -> None:
        ops, self._pending = self._pending, []
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, self._apply, [fn for fn, _ in ops])

        def deliver(f: asyncio.Future[list[tuple[bool, Any]]]) -> None:
            outcomes = f.result() if not f.exception() else [(False, f.exception())] * len(ops)
            for (_, fut), (ok, value) in zip(ops, outcomes, strict=True):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            if self._pending:
                self._flush()
            else:
                self._flushing = False

        done.add_done_callback(deliver)

    def _apply(self, fns: list[Callable[[Session], Any]]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self.session() as s:
                for fn in fns:
                    try:
                        outcomes.append((True, fn(s)))
                    except DomainError as exc:
                        outcomes.append((False, exc))
            return outcomes
        except Exception as exc:
            if len(fns) == 1:
                return [(False, exc)]
        outcomes = []
        for fn in fns:
            try:
                outcomes.append((True, self._in_session(fn)))
            except Exception as exc:
                outcomes.append((False, exc))
        return outcomes

    def migrate(self) -> None:
        migrate(self.engine)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()
