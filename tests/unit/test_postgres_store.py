"""What only the PostgreSQL store has: concurrent migrations, LISTEN/NOTIFY, batches that survive
a lost connection (and a lost COMMIT), database errors kept to their operation, dead workers.

Each test gets a database cloned from the schema template in the private cluster (tests/pg.py);
locally the module is skipped without PostgreSQL, in CI it fails.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

import lifeline
import pg
from fakes import FakeClock, seeded_rng
from lifeline import AttemptOutcome, JobState, LeaseLost, NextJob, RetryPolicy, StoreError
from lifeline.domain import Conflict
from lifeline.store import migrations
from lifeline.store.postgres import PostgresStore

POLICY = RetryPolicy(max_attempts=3, base_delay=2.0, max_delay=20.0, lease=30.0)


@pytest.fixture
def cluster() -> pg.Cluster:
    return pg.require()


@pytest.fixture
def url(cluster: pg.Cluster, tmp_path: Path) -> Iterator[str]:
    yield cluster.url(pg.database_for(tmp_path))
    pg.drop_database_for(tmp_path)


def make(url: str, clock: FakeClock | None = None, **options: float) -> PostgresStore:
    return PostgresStore(
        url,
        policies={},
        default_policy=POLICY,
        clock=clock or time.time,
        rng=seeded_rng(),
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
async def store(url: str, clock: FakeClock) -> AsyncIterator[PostgresStore]:
    async with make(url, clock) as opened:
        yield opened


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    return int(proc.stdout)


def sql(url: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def terminate_writers(url: str, store: PostgresStore) -> int:
    """Kill the store's writer connection from the server side (what a restart does to it)."""
    writer = store._writer
    conn = None if writer is None else writer._conn
    if conn is None or conn.closed:  # reconnecting right now
        return 0
    return len(sql(url, "SELECT pg_terminate_backend(%s)", conn.info.backend_pid))


# -- migrations -----------------------------------------------------------------------------------


async def test_many_processes_may_migrate_one_empty_database_at_once(cluster: pg.Cluster) -> None:
    name = cluster.create_database("t_concurrent_migrations")
    try:
        url = cluster.url(name)
        stores = [make(url) for _ in range(6)]
        await asyncio.gather(*(s.open() for s in stores))  # six at once, one advisory lock
        for s in stores:
            await s.close()
        versions = [r[0] for r in sql(url, "SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [m.version for m in migrations.load("postgres")]
        assert sql(url, "SELECT COUNT(*) FROM recovery_stats") == [(1,)]
    finally:
        cluster.drop_database(name)


def test_the_postgres_schema_has_every_table_of_the_sqlite_schema() -> None:
    def tables(dialect: str) -> set[str]:
        found: set[str] = set()
        for migration in migrations.load(dialect):
            for line in migration.sql.splitlines():
                if line.startswith("CREATE TABLE "):
                    found.add(line.split()[2])
        return found

    assert tables("postgres") == tables("sqlite")
    assert [m.version for m in migrations.load("postgres")] == [m.version for m in migrations.load("sqlite")]


# -- wake-ups -------------------------------------------------------------------------------------


async def test_an_enqueue_in_another_process_wakes_a_waiting_worker(url: str) -> None:
    async with make(url) as waiting, make(url) as producing:
        await waiting.listening()
        started = time.monotonic()
        waiter = asyncio.ensure_future(waiting.wait_for_jobs(["q"], 30))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await producing.enqueue("q", {})
        await asyncio.wait_for(waiter, 10)
        assert time.monotonic() - started < 10  # woken by NOTIFY, not by its 30 s timeout


async def test_a_notification_for_another_queue_does_not_wake(url: str) -> None:
    async with make(url) as waiting, make(url) as producing:
        await waiting.listening()
        waiter = asyncio.ensure_future(waiting.wait_for_jobs(["q"], 30))
        await producing.enqueue("elsewhere", {})
        await asyncio.sleep(0.3)  # the notification for "elsewhere" has long arrived
        assert not waiter.done()
        await producing.enqueue("q", {})
        await asyncio.wait_for(waiter, 10)


# -- batches --------------------------------------------------------------------------------------


async def test_concurrent_writes_share_commits(store: PostgresStore) -> None:
    batches, operations = store.commit_batches
    await asyncio.gather(*(store.enqueue("q", {}) for _ in range(300)))
    assert store.commit_batches[1] - operations == 300
    assert store.commit_batches[0] - batches < 100


async def test_merged_attempt_ends_are_each_a_compare_and_set(store: PostgresStore, clock: FakeClock) -> None:
    """Completions, failures, deferrals and releases of one batch share one UPDATE; each is still
    its own compare-and-set: the ones whose job was taken away get LeaseLost and write nothing."""
    await store.enqueue_many("q", [{} for _ in range(40)])
    jobs = await store.claim_many("q", worker_id="w", limit=40)
    stale = jobs[::8]
    for job in stale:
        await store.cancel(job.id)
    clock.advance(2)
    calls = []
    for i, job in enumerate(jobs):
        kind = i % 4
        if kind == 0:
            calls.append(store.complete(job))
        elif kind == 1:
            calls.append(store.fail(job, "flaky"))
        elif kind == 2:
            calls.append(store.defer(job, seconds=5, reason="breaker open"))
        else:
            calls.append(store.release(job))
    batches_before = store.commit_batches[0]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert store.commit_batches[0] - batches_before <= 2  # one UPDATE for all forty, in one or two commits
    lost = {job.id for job, result in zip(jobs, results, strict=True) if isinstance(result, LeaseLost)}
    assert lost == {job.id for job in stale}
    for i, job in enumerate(jobs):
        info = await store.get_job(job.id)
        if job.id in lost:
            assert info.job.state is JobState.CANCELLED
            assert info.attempts[-1].outcome is AttemptOutcome.CANCELLED
            continue
        expected = [JobState.COMPLETED, JobState.FAILED, JobState.PENDING, JobState.PENDING][i % 4]
        assert info.job.state is expected
        assert info.job.lease_owner is None
        assert info.job.attempts == (0 if i % 4 >= 2 else 1)
        assert info.attempts[-1].finished_at == clock.now
        assert info.attempts[-1].duration == 2.0
        assert info.job.last_error == ("flaky" if i % 4 == 1 else None)
        assert info.job.finished_at == (clock.now if i % 4 == 0 else None)
    counted = {m.outcome: m.count for m in await store.attempt_metrics()}
    # the stale ones were all completions (every eighth job): cancelled, not completed
    assert counted == {"completed": 5, "failed": 10, "deferred": 10, "released": 10, "cancelled": 5}


async def test_a_database_error_stays_with_its_operation(store: PostgresStore) -> None:
    """An integer out of range spoils the optimistic transaction; the batch is run again with a
    savepoint per operation, and only the bad operation fails."""
    await store.add_recording("taken")
    results = await asyncio.gather(
        *(store.enqueue("q", {"i": i}) for i in range(50)),
        store.enqueue("q", {"bad": True}, priority=2**40),
        store.add_recording("taken", first_job=NextJob("q", {"orphan": True})),
        *(store.enqueue("q", {"i": i}) for i in range(50, 100)),
        return_exceptions=True,
    )
    assert isinstance(results[50], StoreError)
    assert isinstance(results[51], Conflict)
    ids = results[:50] + results[52:]
    assert all(isinstance(i, int) for i in ids)
    assert len(set(ids)) == 100
    jobs = await store.list_jobs(queue="q", limit=1000)
    assert sorted(j.payload["i"] for j in jobs) == list(range(100))


async def test_a_lost_connection_is_replaced_and_nothing_is_lost_or_doubled(url: str) -> None:
    """The writer's connection is killed again and again while enqueues run. Every enqueue returns
    a distinct id, and the table holds exactly those rows: a batch cut off before COMMIT ran again,
    a batch cut off *during* COMMIT was looked up (txid_status), never run twice."""
    async with make(url) as store:
        kills = 0

        async def chaos() -> None:
            nonlocal kills
            rng = seeded_rng()
            while kills < 10:
                await asyncio.sleep(rng.uniform(0.005, 0.05))
                kills += await asyncio.to_thread(terminate_writers, url, store)

        killer = asyncio.ensure_future(chaos())
        ids: list[int] = []
        n = 0
        while not killer.done() or n < 2000:
            assert n < 200_000, "the killer never got its kills in"
            # single enqueues (each its own statement) and merged ones (one INSERT for many)
            chunk = [store.enqueue("q", {"n": i}) for i in range(n, n + 100)]
            ids += await asyncio.gather(*chunk)
            n += 100
        await killer
        writer = store._writer
        assert writer is not None
        assert writer.reconnects >= 5
        assert len(set(ids)) == n
        rows = sql(url, "SELECT id, (payload->>'n')::int FROM jobs ORDER BY id")
        assert sorted(r[0] for r in rows) == sorted(ids)
        assert sorted(r[1] for r in rows) == list(range(n))


async def test_the_store_rides_out_a_server_restart(url: str, cluster: pg.Cluster) -> None:
    async with make(url) as store:
        await store.listening()
        first = await store.enqueue("q", {})
        await asyncio.to_thread(cluster.restart, "immediate")
        second = await store.enqueue("q", {})  # the writer reconnects
        assert [j.id for j in await store.list_jobs(queue="q")] == [second, first]  # the pool too
        jobs = await store.claim_many("q", worker_id="w", limit=5)
        assert len(jobs) == 2
        waiter = asyncio.ensure_future(store.wait_for_jobs(["q"], 30))
        await asyncio.sleep(0.1)
        async with make(url) as other:
            await other.enqueue("q", {})
        await asyncio.wait_for(waiter, 10)  # the LISTEN connection came back too


async def test_an_unreachable_server_raises_after_the_reconnect_timeout(cluster: pg.Cluster) -> None:
    store = make(f"postgresql://postgres@127.0.0.1:{pg.free_port()}/nothing", reconnect_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot connect"):
        await store.open()
    assert time.monotonic() - started < 5


async def test_a_wrong_database_fails_at_once(cluster: pg.Cluster) -> None:
    store = make(cluster.url("no_such_database"), reconnect_timeout=30)
    started = time.monotonic()
    with pytest.raises(StoreError, match="no_such_database"):
        await store.open()
    assert time.monotonic() - started < 5  # not retried: waiting would not help


# -- workers and claims ---------------------------------------------------------------------------


async def test_a_worker_whose_process_is_gone_loses_its_jobs_at_once(store: PostgresStore, url: str) -> None:
    await store.register_worker("crashed", ["q"])
    await store.register_worker("alive", ["q"])
    crashed_job = await store.enqueue("q", {})
    alive_job = await store.enqueue("q", {})
    assert (await store.claim("q", worker_id="crashed")) is not None
    assert (await store.claim("q", worker_id="alive")) is not None
    assert (await store.recover_expired()).found == 0

    sql(url, "UPDATE workers SET pid = %s WHERE worker_id = 'crashed'", dead_pid())
    report = await store.recover_expired()
    assert report.requeued == [crashed_job]
    assert (await store.get_job(crashed_job)).job.state is JobState.RETRY
    assert (await store.get_job(alive_job)).job.state is JobState.PROCESSING


async def test_a_worker_on_another_host_is_left_to_its_lease(store: PostgresStore, url: str) -> None:
    await store.register_worker("remote", ["q"])
    job_id = await store.enqueue("q", {})
    assert (await store.claim("q", worker_id="remote")) is not None
    sql(url, "UPDATE workers SET hostname = 'elsewhere', pid = %s", dead_pid())
    assert (await store.recover_expired()).found == 0  # its pid means nothing here
    assert (await store.get_job(job_id)).job.state is JobState.PROCESSING


async def test_stores_in_many_processes_never_share_a_job(url: str) -> None:
    stores = [make(url) for _ in range(4)]
    for s in stores:
        await s.open()
    try:
        await stores[0].enqueue_many("q", [{} for _ in range(400)])
        claims = await asyncio.gather(
            *(s.claim_many("q", worker_id=f"w{i}", limit=7) for i, s in enumerate(stores) for _ in range(20))
        )
        ids = [job.id for batch in claims for job in batch]
        assert len(ids) == len(set(ids)) == 400
    finally:
        for s in stores:
            await s.close()


async def test_a_claim_skips_rows_another_transaction_holds(store: PostgresStore, url: str) -> None:
    first, second = await store.enqueue_many("q", [{}, {}])
    with psycopg.connect(url) as conn:  # another host, in the middle of its own claim
        conn.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (first,))
        job = await asyncio.wait_for(store.claim("q", worker_id="w"), 5)  # no wait for the lock
        assert job is not None
        assert job.id == second
        conn.rollback()


async def test_connect_builds_a_postgres_store(url: str) -> None:
    store = lifeline.connect(url, policies={"q": POLICY})
    assert isinstance(store, PostgresStore)
    assert store.policy("q") is POLICY
    async with store:
        assert await store.enqueue("q", {"k": 1}) == 1


@pytest.mark.parametrize("committed", [True, False])
async def test_a_commit_whose_answer_is_lost_is_looked_up_not_guessed(
    url: str, committed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dies around COMMIT. If the transaction committed, the callers get their
    results (running the batch again would enqueue every job twice); if it did not, the batch is
    run again (returning would lose every job)."""
    async with make(url) as store:
        writer = store._writer
        assert writer is not None
        real_commit = writer._commit
        calls = 0

        async def lose_the_answer(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
            nonlocal calls
            calls += 1
            if calls > 1:
                return await real_commit(conn)
            if committed:
                await real_commit(conn)
            await conn.close()
            raise psycopg.OperationalError("server closed the connection unexpectedly")

        monkeypatch.setattr(writer, "_commit", lose_the_answer)
        ids = await asyncio.gather(*(store.enqueue("q", {"n": n}) for n in range(20)))
        assert writer.in_doubt == 1
        assert calls >= (1 if committed else 2)
        rows = sql(url, "SELECT id FROM jobs ORDER BY id")
        assert sorted(ids) == [r[0] for r in rows]
        assert len(rows) == 20
