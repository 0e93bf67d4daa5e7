"""The store on SQLite and PostgreSQL: migrations match the models; compare-and-set holds."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from brinell.controlplane.domain.models import Job
from brinell.controlplane.domain.states import JobState
from brinell.controlplane.store.db import Database
from brinell.controlplane.store.models import Base, EntryPointRow, ExperimentRow, utcnow
from brinell.controlplane.store.repositories import Jobs, Logs


def test_migrations_match_models(database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    db.migrate()  # idempotent
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    db.close()
    assert diff == [], diff


def _job(job_id: str) -> Job:
    now = utcnow()
    return Job(
        id=job_id,
        experiment_id="e",
        entry_point_id="p",
        digest="sha256:x",
        entry="main",
        parameters={},
        queue="default",
        selector={},
        state=JobState.QUEUED,
        state_reason="",
        timeout_s=0,
        max_attempts=3,
        attempt=0,
        agent_id="",
        mlflow_run_id="",
        exit_code=None,
        cancel_requested=False,
        version=1,
        create_time=now,
        start_time=None,
        end_time=None,
        update_time=now,
    )


def test_compare_and_set_and_log_dedup(database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    now = utcnow()
    with db.session() as s:
        s.add(
            ExperimentRow(
                id="e",
                description="",
                labels={},
                mlflow_experiment_id="",
                create_time=now,
                update_time=now,
            )
        )
        s.add(
            EntryPointRow(
                id="p",
                description="",
                latest_digest="sha256:x",
                revision_count=0,
                create_time=now,
                update_time=now,
            )
        )
        s.flush()
        Jobs.add(s, _job("0000000000000001"), "h")
    with db.session() as s:
        won = Jobs.compare_and_set(
            s, "0000000000000001", [JobState.QUEUED], {"state": "ASSIGNED", "attempt": 1}, attempt=0
        )
        assert won is not None and won.state == JobState.ASSIGNED and won.version == 2
    with db.session() as s:
        # A second claimer with the same stale view loses.
        assert (
            Jobs.compare_and_set(
                s,
                "0000000000000001",
                [JobState.QUEUED],
                {"state": "ASSIGNED", "attempt": 1},
                attempt=0,
            )
            is None
        )
    with db.session() as s:
        t = utcnow()
        assert Logs.append(s, "0000000000000001", 1, [(1, 1, "a", t), (2, 1, "b", t)]) == 2
        assert Logs.append(s, "0000000000000001", 1, [(2, 1, "b", t), (3, 2, "c", t)]) == 1
        # Lines are fenced by the job's attempt: none for one it has not reached ...
        assert Logs.append(s, "0000000000000001", 2, [(1, 1, "early", t)]) == 0
        requeued = {"state": "ASSIGNED", "attempt": 2}
        assert Jobs.compare_and_set(s, "0000000000000001", [JobState.ASSIGNED], requeued)
        assert Logs.append(s, "0000000000000001", 2, [(1, 1, "retry", t)]) == 1
        # ... nor for one it has moved past.
        assert Logs.append(s, "0000000000000001", 1, [(4, 1, "stale", t)]) == 0
    with db.session() as s:
        lines = Logs.read(s, "0000000000000001", 0, 10)
        assert [(ln.offset, ln.attempt, ln.sequence, ln.text) for ln in lines] == [
            (0, 1, 1, "a"),
            (1, 1, 2, "b"),
            (2, 1, 3, "c"),
            (3, 2, 1, "retry"),
        ]
        assert [ln.text for ln in Logs.read(s, "0000000000000001", 2, 1)] == ["c"]
    db.close()
