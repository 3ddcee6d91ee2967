"""What only the SQLite store has: its writer batches, dead processes on this host, migrations."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fakes import FakeClock, seeded_rng
from lifeline import JobState, LeaseLost, Output, RetryPolicy
from lifeline.store import migrations
from lifeline.store.sqlite import SQLiteStore

POLICY = RetryPolicy(max_attempts=3, base_delay=2.0, max_delay=20.0, lease=30.0)


def make(path: Path, clock: FakeClock) -> SQLiteStore:
    return SQLiteStore(path, policies={}, default_policy=POLICY, clock=clock, rng=seeded_rng())


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[SQLiteStore]:
    async with make(tmp_path / "s.db", clock) as opened:
        yield opened


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    return int(proc.stdout)


async def test_a_worker_whose_process_is_gone_loses_its_jobs_at_once(
    store: SQLiteStore, tmp_path: Path
) -> None:
    await store.register_worker("crashed", ["q"])
    await store.register_worker("alive", ["q"])
    crashed_job = await store.enqueue("q", {})
    alive_job = await store.enqueue("q", {})
    assert (await store.claim("q", worker_id="crashed")) is not None
    assert (await store.claim("q", worker_id="alive")) is not None
    assert (await store.recover_expired()).found == 0

    conn = sqlite3.connect(tmp_path / "s.db")  # the crash: the registered process no longer exists
    with conn:
        conn.execute("UPDATE workers SET pid = ? WHERE worker_id = 'crashed'", (dead_pid(),))
    conn.close()

    report = await store.recover_expired()
    assert report.requeued == [crashed_job]
    assert (await store.get_job(crashed_job)).job.state is JobState.RETRY
    assert (await store.get_job(alive_job)).job.state is JobState.PROCESSING


async def test_a_lease_lost_in_a_batch_leaves_the_batch_alone(store: SQLiteStore) -> None:
    await store.enqueue("q", {}, recording_id="rec")
    stale = await store.claim("q", worker_id="w")
    assert stale is not None
    await store.cancel(stale.id)

    writer = store._writer
    assert writer is not None
    release = asyncio.Event()
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def hold(conn: sqlite3.Connection) -> None:  # keeps the writer busy while the others queue up
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(10)

    held = writer.submit(hold)
    await started.wait()
    batches_before = writer.batches
    tasks = [asyncio.ensure_future(store.enqueue("other", {"i": i})) for i in range(20)]
    late = asyncio.ensure_future(
        store.complete(stale, then=[("next", {})], outputs=[Output("rec", "q", 0, {})])
    )
    tasks += [asyncio.ensure_future(store.enqueue("other", {"i": i})) for i in range(20, 40)]
    await asyncio.sleep(0)  # let every task submit its operation
    release.set()
    await held
    ids = await asyncio.gather(*tasks)
    with pytest.raises(LeaseLost):
        await late
    assert writer.batches - batches_before == 2  # the held batch, then all 41 together
    assert len(set(ids)) == 40
    assert len(await store.list_jobs(queue="other", limit=100)) == 40
    assert await store.list_jobs(queue="next") == []
    assert await store.get_outputs("rec") == []


async def test_concurrent_enqueues_share_commits(store: SQLiteStore) -> None:
    batches, operations = store.commit_batches
    await asyncio.gather(*(store.enqueue("q", {}) for _ in range(300)))
    new_batches = store.commit_batches[0] - batches
    assert store.commit_batches[1] - operations == 300
    assert new_batches < 100, new_batches


async def test_cleanup_runs_one_transaction_per_batch(store: SQLiteStore, clock: FakeClock) -> None:
    await store.enqueue_many("q", [{} for _ in range(8)])
    for job in await store.claim_many("q", worker_id="w", limit=8):
        await store.complete(job)
    clock.advance(100)
    before = store.commit_batches
    report = await store.cleanup(completed_older_than=10, batch_size=3)
    assert (report.jobs_deleted, report.attempts_deleted) == (8, 8)
    assert store.commit_batches[1] - before[1] == 3  # batches of 3, 3 and 2


async def test_migrations_apply_once(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "m.db"
    async with make(path, clock):
        pass
    async with make(path, clock):
        pass
    conn = sqlite3.connect(path)
    try:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        assert conn.execute("SELECT COUNT(*) FROM recovery_stats").fetchone()[0] == 1
        conn.isolation_level = None
        assert migrations.apply_sqlite(conn) == []
    finally:
        conn.close()
    assert versions == [m.version for m in migrations.load("sqlite")]
    assert versions[0] == 1


async def test_two_stores_on_one_file_never_share_a_job(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "shared.db"
    async with make(path, clock) as first, make(path, clock) as second:
        await first.enqueue_many("q", [{} for _ in range(40)])
        claims = await asyncio.gather(
            *(s.claim_many("q", worker_id="w", limit=3) for s in (first, second) for _ in range(10))
        )
        ids = [job.id for batch in claims for job in batch]
        assert len(ids) == len(set(ids)) == 40
        tokens = {job.lease_owner for batch in claims for job in batch}
        assert len(tokens) == 14  # one token per claim that found work, never shared across stores


async def test_open_twice_and_close_twice_are_harmless(tmp_path: Path, clock: FakeClock) -> None:
    store = make(tmp_path / "x.db", clock)
    await store.open()
    await store.open()
    job_id = await store.enqueue("q", {})
    await store.close()
    await store.close()
    await store.open()
    assert (await store.get_job(job_id)).job.state is JobState.PENDING
    await store.close()
