"""The PostgreSQL engine: a batching writer (group commit), a LISTEN connection, migrations.

Why a batching writer, when PostgreSQL takes many writers at once: a commit costs a WAL flush and
every statement a round trip. One writer task per process takes every write waiting at that moment
and runs them in one transaction on its own connection, so concurrent claims, completions and
enqueues share one commit (group commit), exactly like the SQLite writer thread. Several processes
(and hosts) each have their own writer; the database serialises them with row locks, and claims
skip each other's rows (``FOR UPDATE SKIP LOCKED``).

A batch is run optimistically, without a savepoint per operation: every operation is written so
that it raises (``LeaseLost``, ``NotFound``, ``InvalidTransition``, ``Conflict``) before it writes
anything. Only a database error (a unique violation, a deadlock) spoils the transaction; the batch
is then rolled back and run again with each operation inside its own SAVEPOINT, so the failure
stays with the operation that caused it.

Connections break (a server restart, a failover). Before COMMIT, a broken batch is simply run again
on a new connection. A connection lost *during* COMMIT leaves the outcome unknown: the writer asks
the server about the transaction id it noted just before (``txid_status``) and either delivers the
results (committed) or runs the batch again (aborted). Callers see a delay, never a duplicate and
never a lost write; only after ``reconnect_timeout`` without a server do they get ``StoreError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import TupleRow

from lifeline.domain import StoreError
from lifeline.queue.durations import bucket_for
from lifeline.store import migrations

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = psycopg.AsyncConnection[TupleRow]
Cursor = psycopg.AsyncCursor[TupleRow]

CHANNEL = "lifeline_jobs"
MIGRATION_LOCK = 0x4C6966656C696E65  # "Lifeline": the advisory lock migrations run under
_MAX_BATCH = 512
_OP_RETRIES = 3  # a deadlock or serialisation failure of one operation is retried this often

# Written once per batch: the batch's attempt metrics (summed, in key order so that two processes
# take the row locks in the same order), its wake-ups, and the transaction id to ask about if the
# connection is lost during COMMIT.
_FINISH = """
WITH metrics AS (
    INSERT INTO attempt_metrics AS m (queue, outcome, bucket, count, duration_sum)
    SELECT q, o, b, c, d
      FROM unnest(%(queues)s::text[], %(outcomes)s::text[], %(buckets)s::int[],
                  %(counts)s::bigint[], %(sums)s::float8[]) AS t(q, o, b, c, d)
     ORDER BY q, o, b
    ON CONFLICT (queue, outcome, bucket) DO UPDATE
       SET count = m.count + excluded.count, duration_sum = m.duration_sum + excluded.duration_sum
    RETURNING 1
), wakeups AS (
    SELECT pg_notify(%(channel)s, w) FROM unnest(%(wake)s::text[]) AS w
)
SELECT txid_current_if_assigned(), (SELECT count(*) FROM metrics), (SELECT count(*) FROM wakeups)
"""


def is_connection_error(exc: BaseException, conn: Connection | None) -> bool:
    """The error means the connection is gone (not that the statement was wrong)."""
    if conn is not None and (conn.broken or conn.closed):
        return True
    if isinstance(exc, pg_errors.AdminShutdown | pg_errors.CrashShutdown | pg_errors.CannotConnectNow):
        return True
    return isinstance(exc, psycopg.OperationalError) and getattr(exc, "sqlstate", None) is None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, pg_errors.DeadlockDetected | pg_errors.SerializationFailure)


# What a server says when it refuses *us* (waiting will not help); anything else (no answer, a
# server starting up, in recovery, shutting down, out of connection slots) is worth waiting for.
_REFUSED = (
    "does not exist",
    "authentication failed",
    "no pg_hba.conf entry",
    "permission denied",
    "not permitted to log in",
    "invalid",
)


def _transient_connect_error(exc: psycopg.Error) -> bool:
    """Worth trying again: a server that is down, restarting, recovering or full.

    A wrong password, a missing database or a refused client is not: it fails at once."""
    state: str | None = exc.sqlstate
    if state is not None:
        return state.startswith(("08", "57", "53"))
    text = str(exc)
    # libpq reports the server's refusal of a connection as text: "... FATAL:  <reason>"
    return "FATAL:" not in text or not any(reason in text for reason in _REFUSED)


async def connect(conninfo: str, *, deadline: float | None, what: str = "PostgreSQL") -> Connection:
    """A new autocommit connection; transient failures are retried until ``deadline`` (monotonic)."""
    delay = 0.05
    while True:
        try:
            conn: Connection = await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, connect_timeout=10
            )
            return conn
        except psycopg.Error as exc:
            if not _transient_connect_error(exc):
                raise StoreError(f"cannot connect to {what}: {_first_line(exc)}") from exc
            if deadline is None or time.monotonic() >= deadline:
                raise StoreError(f"cannot connect to {what} (gave up waiting): {_first_line(exc)}") from exc
            log.warning("cannot connect to %s (%s); retrying", what, _first_line(exc))
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(1.0, delay * 2)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def store_error(exc: BaseException) -> BaseException:
    """What a caller gets for ``exc``: database errors become :class:`StoreError`."""
    if isinstance(exc, psycopg.Error):
        error = StoreError(_first_line(exc))
        error.__cause__ = exc
        return error
    return exc


# -- migrations -----------------------------------------------------------------------------------


async def apply_migrations(conn: Connection) -> list[int]:
    """Apply what is missing, each migration in its own transaction, under an advisory lock.

    Safe when several processes on several hosts start at once: the first takes the lock and
    migrates; the others wait for it and then find nothing to do.
    """
    applied: list[int] = []
    await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
        )
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {int(row[0]) for row in await cur.fetchall()}
        for migration in migrations.load("postgres"):
            if migration.version in done:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql.encode())  # a script: no parameters
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, time.time()),
                    )
            except psycopg.Error as exc:
                raise StoreError(
                    f"migration {migration.version} ({migration.name}) failed: {_first_line(exc)}"
                ) from exc
            applied.append(migration.version)
    finally:
        if not conn.broken:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied


# -- the writer -----------------------------------------------------------------------------------


class Tx:
    """What one write operation sees: the batch's connection, plus what it leaves for the batch
    to do once before COMMIT (count attempt metrics, wake up workers)."""

    __slots__ = ("conn", "metrics", "wake")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.metrics: list[tuple[str, str, int, float]] = []
        self.wake: set[str] = set()

    async def execute(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> Cursor:
        return await self.conn.execute(query, params)

    def metric(self, queue: str, outcome: str, duration: float) -> None:
        """Count an ended attempt (written with the batch, in this transaction)."""
        self.metrics.append((queue, outcome, bucket_for(duration), max(0.0, duration)))

    def notify(self, *queues: str) -> None:
        """Wake workers of these queues, in every process, once this transaction commits."""
        self.wake.update(queues)


Operation = Callable[[Tx], Awaitable[Any]]

# Runs many operations of one kind as one statement: given each operation's Tx and argument, it
# returns each one's result, or the exception that operation raises (having written nothing).
MergedRun = Callable[[list[tuple[Tx, Any]]], Awaitable[list[Any]]]


@dataclass(frozen=True, slots=True)
class Merge:
    """How an operation can share one statement with others of its kind in the same batch.

    The hot path is many small writes of a few kinds (enqueues, completions): a batch of them costs
    one statement per kind instead of one per operation. ``key`` names the kind; ``run`` is the
    same function for every operation of a key. Alone, or when a batch is run again with a
    savepoint per operation, the operation runs its own ``fn`` instead.
    """

    key: str
    run: MergedRun
    arg: Any


@dataclass(slots=True)
class _Op:
    fn: Operation
    future: asyncio.Future[Any]
    merge: Merge | None = None


@dataclass(slots=True)
class _Done:
    op: _Op
    result: Any = None
    error: BaseException | None = None
    tx: Tx | None = None


@dataclass(slots=True)
class _Batch:
    done: list[_Done] = field(default_factory=list)


class _Broken(Exception):
    """The connection broke while the batch ran; ``in_doubt`` if COMMIT had been sent."""

    def __init__(
        self,
        cause: BaseException,
        *,
        xid: int | None = None,
        in_doubt: bool = False,
        done: list[_Done] | None = None,
    ) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.xid = xid
        self.in_doubt = in_doubt
        self.done = done or []  # the results, valid if the in-doubt COMMIT turns out committed


class _Spoiled(Exception):
    """A database error aborted the optimistic transaction: run the batch again, isolated."""


class Writer:
    """Runs write operations in batches: one transaction, one COMMIT per batch."""

    def __init__(
        self,
        conninfo: str,
        conn: Connection,
        *,
        on_commit: Callable[[set[str]], None],
        reconnect_timeout: float,
    ) -> None:
        self._conninfo = conninfo
        self._conn: Connection | None = conn
        self._on_commit = on_commit
        self._reconnect_timeout = reconnect_timeout
        self._inbox: asyncio.Queue[_Op | None] = asyncio.Queue()
        self._closed = False
        self._task = asyncio.create_task(self._run(), name="lifeline-postgres-writer")
        self.batches = 0
        self.operations = 0
        self.reconnects = 0
        self.in_doubt = 0  # commits whose answer was lost and whose outcome was looked up

    def submit(self, fn: Operation, merge: Merge | None = None) -> asyncio.Future[Any]:
        if self._closed:
            raise StoreError("the store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(_Op(fn, future, merge))
        return future

    async def close(self) -> None:
        """Finish every submitted operation, then stop and close the connection."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put_nowait(None)
        await self._task
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    # -- the task -------------------------------------------------------------------------------
    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._inbox.get()
            if first is None:
                break
            ops = [first]
            while len(ops) < _MAX_BATCH and not self._inbox.empty():
                item = self._inbox.get_nowait()
                if item is None:
                    stopping = True
                    break
                ops.append(item)
            ops = [op for op in ops if not op.future.done()]  # cancelled by their callers
            if not ops:
                continue
            try:
                done = await self._execute(ops)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # the task must not die: every later caller would wait
                if isinstance(exc, StoreError):
                    log.error("a write batch failed: %s", exc)
                else:
                    log.exception("a write batch failed")
                error = exc if isinstance(exc, StoreError) else StoreError(f"the write batch failed: {exc}")
                done = [_Done(op, error=error) for op in ops]
            self._deliver(done)

    async def _execute(self, ops: list[_Op]) -> list[_Done]:
        """Run the batch until it is committed (or every operation has its error)."""
        isolate = False
        deadline: float | None = None
        while True:
            conn = self._conn
            if conn is None or conn.broken or conn.closed:
                if deadline is None:
                    deadline = time.monotonic() + self._reconnect_timeout
                conn = await self._reconnect(deadline)
            try:
                return await self._attempt(conn, ops, isolate=isolate)
            except _Spoiled:
                isolate = True
            except _Broken as broken:
                if deadline is None:
                    deadline = time.monotonic() + self._reconnect_timeout
                log.warning("PostgreSQL connection lost (%s); reconnecting", _first_line(broken.cause))
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.close()
                    self._conn = None
                if broken.in_doubt:
                    self.in_doubt += 1
                    conn = await self._reconnect(deadline)
                    status = await self._commit_status(broken.xid, deadline)
                    if status == "committed":
                        self.batches += 1
                        self.operations += len(ops)
                        return broken.done
                    log.warning("the batch's transaction %s was %s; running it again", broken.xid, status)

    async def _reconnect(self, deadline: float) -> Connection:
        conn = await connect(self._conninfo, deadline=deadline)
        self._conn = conn
        self.reconnects += 1
        return conn

    async def _commit_status(self, xid: int | None, deadline: float) -> str:
        """``committed`` or ``aborted``: what became of a transaction whose COMMIT got no answer."""
        if xid is None:  # nothing was written: nothing to lose, nothing to duplicate
            return "committed"
        while True:
            conn = self._conn
            if conn is None or conn.broken or conn.closed:
                conn = await self._reconnect(deadline)
            try:
                cur = await conn.execute("SELECT txid_status(%s)", (xid,))
                row = await cur.fetchone()
            except psycopg.Error as exc:
                if not is_connection_error(exc, conn) or time.monotonic() >= deadline:
                    raise StoreError(f"cannot learn the outcome of a commit: {_first_line(exc)}") from exc
                continue
            status = None if row is None else row[0]
            if status == "committed":
                return "committed"
            if status in ("aborted", None):
                return "aborted"
            if time.monotonic() >= deadline:  # still in progress on a backend that lost us
                raise StoreError(f"transaction {xid} is still in progress; its outcome is unknown")
            await asyncio.sleep(0.05)

    async def _attempt(self, conn: Connection, ops: list[_Op], *, isolate: bool) -> list[_Done]:
        batch = _Batch()
        single = len(ops) == 1
        try:
            await conn.execute("BEGIN")
            rest = ops if isolate or single else await self._merged(conn, ops, batch)
            for op in rest:
                if single or not isolate:
                    tx = Tx(conn)
                    try:
                        batch.done.append(_Done(op, await op.fn(tx), tx=tx))
                    except psycopg.Error as exc:
                        if is_connection_error(exc, conn):
                            raise
                        if not single:
                            raise _Spoiled from exc
                        await conn.execute("ROLLBACK")
                        return [_Done(op, error=store_error(exc))]
                    except Exception as exc:  # raised before the operation wrote anything
                        batch.done.append(_Done(op, error=exc))
                    continue
                batch.done.append(await self._isolated(conn, op))
            totals = _sum_metrics(d.tx.metrics for d in batch.done if d.tx is not None)
            wake = sorted({q for d in batch.done if d.tx is not None for q in d.tx.wake})
            cur = await conn.execute(
                _FINISH,
                {
                    "queues": [k[0] for k in totals],
                    "outcomes": [k[1] for k in totals],
                    "buckets": [k[2] for k in totals],
                    "counts": [v[0] for v in totals.values()],
                    "sums": [v[1] for v in totals.values()],
                    "channel": CHANNEL,
                    "wake": wake,
                },
            )
            row = await cur.fetchone()
            xid = None if row is None or row[0] is None else int(row[0])
        except psycopg.Error as exc:
            if is_connection_error(exc, conn):
                raise _Broken(exc) from exc
            with contextlib.suppress(psycopg.Error):
                await conn.execute("ROLLBACK")
            if isolate or single:
                error = store_error(exc)
                return [_Done(d.op, error=error) for d in batch.done]
            raise _Spoiled from exc
        except _Spoiled:
            with contextlib.suppress(psycopg.Error):
                await conn.execute("ROLLBACK")
            if conn.broken:
                raise _Broken(StoreError("connection lost during rollback")) from None
            raise
        try:
            await self._commit(conn)
        except psycopg.Error as exc:
            if is_connection_error(exc, conn):
                raise _Broken(exc, xid=xid, in_doubt=True, done=batch.done) from exc
            error = StoreError(f"commit failed: {_first_line(exc)}")
            return [_Done(d.op, error=error) for d in batch.done]
        self.batches += 1
        self.operations += len(ops)
        return batch.done

    async def _merged(self, conn: Connection, ops: list[_Op], batch: _Batch) -> list[_Op]:
        """Run the operations that can share a statement with others of their kind (each kind
        with at least two in the batch); returns the rest."""
        groups: dict[str, list[_Op]] = {}
        for op in ops:
            if op.merge is not None:
                groups.setdefault(op.merge.key, []).append(op)
        merged = {id(op) for members in groups.values() if len(members) > 1 for op in members}
        if not merged:
            return ops
        for members in groups.values():
            if len(members) < 2:
                continue
            merges = [op.merge for op in members if op.merge is not None]
            txs = [Tx(conn) for _ in members]
            try:
                outcomes = await merges[0].run([(tx, m.arg) for tx, m in zip(txs, merges, strict=True)])
            except psycopg.Error as exc:
                if is_connection_error(exc, conn):
                    raise
                raise _Spoiled from exc
            for op, tx, outcome in zip(members, txs, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    batch.done.append(_Done(op, error=outcome))
                else:
                    batch.done.append(_Done(op, outcome, tx=tx))
        return [op for op in ops if id(op) not in merged]

    async def _commit(self, conn: Connection) -> None:
        await conn.execute("COMMIT")

    async def _isolated(self, conn: Connection, op: _Op) -> _Done:
        """One operation inside its own SAVEPOINT: its failure leaves the batch alone."""
        for attempt in itertools.count(1):
            tx = Tx(conn)
            await conn.execute("SAVEPOINT op")
            try:
                result = await op.fn(tx)
            except psycopg.Error as exc:
                if is_connection_error(exc, conn):
                    raise
                await conn.execute("ROLLBACK TO SAVEPOINT op")
                await conn.execute("RELEASE SAVEPOINT op")
                if _retryable(exc) and attempt < _OP_RETRIES:
                    continue
                return _Done(op, error=store_error(exc))
            except Exception as exc:
                await conn.execute("ROLLBACK TO SAVEPOINT op")
                await conn.execute("RELEASE SAVEPOINT op")
                return _Done(op, error=exc)
            await conn.execute("RELEASE SAVEPOINT op")
            return _Done(op, result, tx=tx)
        raise AssertionError("unreachable")

    def _deliver(self, done: list[_Done]) -> None:
        touched: set[str] = set()
        for item in done:
            future = item.op.future
            if future.done():
                continue
            if item.error is None:
                future.set_result(item.result)
                if item.tx is not None:
                    touched.update(item.tx.wake)
            else:
                future.set_exception(item.error)
        if touched:
            self._on_commit(touched)


def _sum_metrics(
    groups: Iterable[list[tuple[str, str, int, float]]],
) -> dict[tuple[str, str, int], tuple[int, float]]:
    totals: dict[tuple[str, str, int], tuple[int, float]] = {}
    for metrics in groups:
        for queue, outcome, bucket, duration in metrics:
            count, total = totals.get((queue, outcome, bucket), (0, 0.0))
            totals[(queue, outcome, bucket)] = (count + 1, total + duration)
    return dict(sorted(totals.items()))


# -- wake-ups -------------------------------------------------------------------------------------


class Listener:
    """One connection that LISTENs for enqueues from every process; reconnects on its own.

    A notification only shortens a wait: workers also poll, so one lost while this connection was
    down delays a job by at most the poll interval and never loses it.
    """

    def __init__(self, conninfo: str, on_notify: Callable[[str | None], None]) -> None:
        self._conninfo = conninfo
        self._on_notify = on_notify
        self.ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="lifeline-postgres-listener")

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                conn = await connect(self._conninfo, deadline=None, what="PostgreSQL (LISTEN)")
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.ready.set()
                    delay = 0.05
                    self._on_notify(None)  # anything sent while we were not listening
                    async for note in conn.notifies():
                        self._on_notify(note.payload or None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.ready.clear()
                log.warning("LISTEN connection lost (%s); polling until it is back", _first_line(exc))
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
