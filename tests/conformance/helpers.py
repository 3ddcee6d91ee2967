"""Small steps the conformance tests share: put a job into a given state, read it back."""

from __future__ import annotations

import sqlite3

import psycopg

from conformance.backends import QUEUE
from fakes import FakeClock
from lifeline import Job, JobState, Store
from lifeline.store import migrations


async def state_of(store: Store, job_id: int) -> JobState:
    return (await store.get_job(job_id)).job.state


async def claim_one(store: Store, queue: str = QUEUE, worker_id: str = "worker-1") -> Job:
    job = await store.claim(queue, worker_id=worker_id)
    assert job is not None, f"nothing claimable on {queue}"
    return job


async def job_in_state(
    store: Store, clock: FakeClock, state: JobState, *, queue: str = QUEUE
) -> tuple[int, Job | None]:
    """A fresh job moved to ``state`` through the public API.

    Returns its id and the snapshot its last worker holds (``None`` if it was never claimed).
    """
    job_id = await store.enqueue(queue, {"state": state.value}, max_attempts=3)
    if state is JobState.PENDING:
        return job_id, None
    job = await claim_one(store, queue)
    assert job.id == job_id
    if state is JobState.COMPLETED:
        await store.complete(job)
    elif state is JobState.FAILED:
        assert await store.fail(job, "flaky") is JobState.FAILED
    elif state is JobState.RETRY:
        report = await store.recover_expired(job_id=job_id, force=True)
        assert report.requeued == [job_id]
    elif state is JobState.DEAD_LETTER:
        assert await store.fail(job, "broken", permanent=True) is JobState.DEAD_LETTER
    elif state is JobState.CANCELLED:
        await store.cancel(job_id)
    assert await state_of(store, job_id) is state
    return job_id, job


def migrate_sqlite_below(conn: sqlite3.Connection, version: int) -> None:
    """Bring an empty SQLite database to the schema before migration ``version``, as an older
    Lifeline left it (for upgrade tests: the next open applies the rest)."""
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)")
    for migration in migrations.load("sqlite"):
        if migration.version < version:
            conn.executescript(migration.sql)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, 0)", (migration.version, migration.name)
            )


def migrate_postgres_below(conn: psycopg.Connection, version: int) -> None:
    """The same for an empty PostgreSQL database (an autocommit connection)."""
    conn.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at DOUBLE PRECISION NOT NULL)"
    )
    for migration in migrations.load("postgres"):
        if migration.version < version:
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations VALUES (%s, %s, 0)", (migration.version, migration.name)
            )
