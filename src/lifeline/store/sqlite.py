"""The SQLite store: the embedded default. One file, WAL, group commit through one writer thread.

Every write is a function run by :class:`WriterThread` inside the batch transaction; every change
after a claim is a compare-and-set on (job id, lease owner) whose row count is checked.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from lifeline.domain import (
    CLAIMABLE_STATES,
    JSON,
    Attempt,
    AttemptOutcome,
    Conflict,
    InvalidTransition,
    Job,
    JobInfo,
    JobState,
    LeaseLost,
    NextJob,
    NotFound,
    Output,
    StoreError,
)
from lifeline.queue import logic
from lifeline.queue.durations import bucket_for
from lifeline.queue.policy import DEFAULT_POLICIES, RetryPolicy
from lifeline.queue.transitions import Action, next_state, sources
from lifeline.store import migrations
from lifeline.store.base import (
    CleanupReport,
    QueueStats,
    RecordingReport,
    RecoveryReport,
    RecoveryStats,
    StageReport,
    Store,
    StoredOutput,
    WorkerRecord,
    dumps_json,
)
from lifeline.store.sqlite_engine import Checkpointer, ReaderPool, Synchronous, WriterThread, open_connection
from lifeline.store.sqlite_health import SQLiteHealthMixin
from lifeline.store.sqlite_recordings import SQLiteRecordingsMixin
from lifeline.store.sqlite_stats import SQLiteStatsMixin
from lifeline.store.sqlite_users import SQLiteUsersMixin

Clock = Callable[[], float]

JOB_COLUMNS = (
    "id, queue, state, priority, run_at, payload, attempts, max_attempts, lost_count, claims,"
    " lease_owner, lease_expires_at, recording_id, user_id, client_id, idempotency_key,"
    " last_error, created_at, updated_at, finished_at"
)

_CLAIMABLE_SQL = ", ".join(f"'{s.value}'" for s in CLAIMABLE_STATES)
# the finished states, spelled exactly as in the partial index jobs_finished (SQLite uses a partial
# index only when the query's WHERE contains the index's WHERE term as written)
_FINISHED = "'completed', 'cancelled', 'dead_letter'"

_INSERT_JOB = (
    "INSERT INTO jobs (queue, state, priority, run_at, payload, max_attempts, recording_id,"
    " user_id, client_id, idempotency_key, created_at, updated_at)"
    " VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_CLAIM = f"""
UPDATE jobs
   SET state = 'processing', attempts = attempts + 1, claims = claims + 1,
       lease_owner = :owner, lease_expires_at = :expires, updated_at = :now
 WHERE id IN (SELECT id FROM jobs
               WHERE queue = :queue AND state IN ({_CLAIMABLE_SQL}) AND run_at <= :now
                 AND NOT EXISTS (SELECT 1 FROM queue_flags WHERE queue = :queue AND paused = 1)
               ORDER BY priority DESC, run_at, id
               LIMIT :limit)
RETURNING {JOB_COLUMNS}
"""

_UPSERT_OUTPUT = """
INSERT INTO outputs (recording_id, stage, idx, data, job_id, revision, updated_at)
VALUES (?, ?, ?, ?, ?, 1, ?)
ON CONFLICT (recording_id, stage, idx) DO UPDATE
   SET data = excluded.data, job_id = excluded.job_id,
       revision = outputs.revision + 1, updated_at = excluded.updated_at
"""

_INSERT_ATTEMPT = (
    "INSERT INTO attempts (job_id, claim, worker_id, started_at, outcome) VALUES (?, ?, ?, ?, 'running')"
)
_CLOSE_ATTEMPT = "UPDATE attempts SET finished_at = ?, outcome = ?, error = ? WHERE job_id = ? AND claim = ?"


def _in(states: Iterable[JobState]) -> str:
    return ", ".join(f"'{s.value}'" for s in states)


_dumps = dumps_json


def _float(value: Any) -> float | None:
    # ``UPDATE ... RETURNING`` hands back REAL values that SQLite stored as integers (1000.0 is
    # kept as 1000) without the column's REAL affinity, so a claimed job would carry ints.
    return None if value is None else float(value)


def row_to_job(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        queue=row[1],
        state=JobState(row[2]),
        priority=row[3],
        run_at=float(row[4]),
        payload=json.loads(row[5]),
        attempts=row[6],
        max_attempts=row[7],
        lost_count=row[8],
        claims=row[9],
        lease_owner=row[10],
        lease_expires_at=_float(row[11]),
        recording_id=row[12],
        user_id=row[13],
        client_id=row[14],
        idempotency_key=row[15],
        last_error=row[16],
        created_at=float(row[17]),
        updated_at=float(row[18]),
        finished_at=_float(row[19]),
    )


def _row_to_attempt(row: Sequence[Any]) -> Attempt:
    return Attempt(
        job_id=row[0],
        claim=row[1],
        worker_id=row[2],
        started_at=row[3],
        finished_at=row[4],
        outcome=AttemptOutcome(row[5]),
        error=row[6],
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SQLiteStore(SQLiteHealthMixin, SQLiteUsersMixin, SQLiteRecordingsMixin, SQLiteStatsMixin, Store):
    """See :mod:`lifeline.store.base` for what each method promises."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "full",
        policies: dict[str, RetryPolicy] | None = None,
        default_policy: RetryPolicy | None = None,
        clock: Clock = time.time,
        rng: random.Random | None = None,
        reader_threads: int = 2,
    ) -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        self.path = Path(path)
        self.synchronous: Synchronous = synchronous
        self.policies = dict(DEFAULT_POLICIES if policies is None else policies)
        self.default_policy = default_policy or RetryPolicy()
        self._clock = clock
        self._rng = rng or random.Random()
        self._reader_threads = reader_threads
        self._writer: WriterThread | None = None
        self._readers: ReaderPool | None = None
        self._checkpointer: Checkpointer | None = None
        self._wakeup: asyncio.Event | None = None
        self._tokens = itertools.count(1)
        self._nonce = os.urandom(3).hex()
        self._hostname = socket.gethostname()

    # -- lifecycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._writer is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._migrate)
        loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._writer = WriterThread(self.path, self.synchronous, loop, self._on_commit)
        self._readers = ReaderPool(self.path, self.synchronous, self._reader_threads)
        self._checkpointer = Checkpointer(self.path, self.synchronous)

    def _migrate(self) -> None:
        conn = open_connection(self.path, self.synchronous)
        try:
            migrations.apply_sqlite(conn)
        finally:
            conn.close()

    async def close(self) -> None:
        writer, readers = self._writer, self._readers
        checkpointer, self._checkpointer = self._checkpointer, None
        self._writer = self._readers = None
        if writer is not None:
            await asyncio.to_thread(writer.close)
        if readers is not None:
            await asyncio.to_thread(readers.close)
        if checkpointer is not None:
            await asyncio.to_thread(checkpointer.close)

    def policy(self, queue: str) -> RetryPolicy:
        return self.policies.get(queue, self.default_policy)

    def _write(self, fn: Callable[[sqlite3.Connection], Any], notify: tuple[str, ...] = ()) -> Any:
        if self._writer is None:
            raise StoreError("the store is not open")
        return self._writer.submit(fn, notify)

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._readers is None:
            raise StoreError("the store is not open")
        return await self._readers.run(fn)

    def _on_commit(self, queues: set[str]) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = asyncio.Event()

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:  # noqa: ASYNC109
        event = self._wakeup
        if event is None:
            raise StoreError("the store is not open")
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return

    @property
    def commit_batches(self) -> tuple[int, int]:
        """(transactions committed, operations in them): how well group commit is batching."""
        if self._writer is None:
            return (0, 0)
        return (self._writer.batches, self._writer.operations)

    # -- producing ------------------------------------------------------------------------------
    async def enqueue(
        self,
        queue: str,
        payload: JSON,
        *,
        priority: int = 0,
        delay: float = 0.0,
        max_attempts: int | None = None,
        recording_id: str | None = None,
        user_id: str | None = None,
        client_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        now = self._clock()
        values = self._job_values(
            queue,
            payload,
            priority=priority,
            delay=delay,
            max_attempts=max_attempts,
            recording_id=recording_id,
            user_id=user_id,
            client_id=client_id,
            idempotency_key=idempotency_key,
            now=now,
        )

        def op(conn: sqlite3.Connection) -> int:
            return _insert_job(conn, values, idempotency_key)

        job_id: int = await self._write(op, (queue,))
        return job_id

    async def enqueue_many(
        self,
        queue: str,
        payloads: Sequence[JSON],
        *,
        priority: int = 0,
        delay: float = 0.0,
        max_attempts: int | None = None,
        recording_id: str | None = None,
        user_id: str | None = None,
        client_id: str | None = None,
    ) -> list[int]:
        now = self._clock()
        rows = [
            self._job_values(
                queue,
                payload,
                priority=priority,
                delay=delay,
                max_attempts=max_attempts,
                recording_id=recording_id,
                user_id=user_id,
                client_id=client_id,
                idempotency_key=None,
                now=now,
            )
            for payload in payloads
        ]

        def op(conn: sqlite3.Connection) -> list[int]:
            return [_insert_job(conn, values, None) for values in rows]

        ids: list[int] = await self._write(op, (queue,))
        return ids

    # -- consuming ------------------------------------------------------------------------------
    async def claim(self, queue: str, *, worker_id: str, lease: float | None = None) -> Job | None:
        jobs = await self.claim_many(queue, worker_id=worker_id, limit=1, lease=lease)
        return jobs[0] if jobs else None

    async def claim_many(
        self, queue: str, *, worker_id: str, limit: int, lease: float | None = None
    ) -> list[Job]:
        if limit < 1:
            return []
        lease_seconds = self.policy(queue).lease if lease is None else lease
        owner = f"{worker_id}#{self._nonce}{next(self._tokens)}"
        clock = self._clock

        def op(conn: sqlite3.Connection) -> list[Any]:
            now = clock()
            params = {
                "owner": owner,
                "expires": now + lease_seconds,
                "now": now,
                "queue": queue,
                "limit": limit,
            }
            rows = conn.execute(_CLAIM, params).fetchall()
            if len(rows) == 1:
                conn.execute(_INSERT_ATTEMPT, (rows[0][0], rows[0][9], worker_id, now))
            elif rows:
                conn.executemany(_INSERT_ATTEMPT, [(row[0], row[9], worker_id, now) for row in rows])
            return rows

        # rows become jobs here, on the event loop, not on the writer thread every write waits for
        claimed = [row_to_job(row) for row in await self._write(op)]
        claimed.sort(key=lambda j: (-j.priority, j.run_at, j.id))
        return claimed

    async def heartbeat(self, job: Job, *, lease: float | None = None) -> None:
        lost = await self.heartbeat_many([job], lease=lease)
        if lost:
            raise LeaseLost(f"job {job.id} is no longer held by {job.lease_owner}")

    async def heartbeat_many(self, jobs: Iterable[Job], *, lease: float | None = None) -> list[int]:
        held = list(jobs)
        if not held:
            return []
        clock = self._clock
        leases = [self.policy(job.queue).lease if lease is None else lease for job in held]

        def op(conn: sqlite3.Connection) -> list[int]:
            now = clock()
            lost: list[int] = []
            for job, seconds in zip(held, leases, strict=True):
                cur = conn.execute(
                    "UPDATE jobs SET lease_expires_at = ?"
                    " WHERE id = ? AND lease_owner = ? AND state = 'processing'",
                    (now + seconds, job.id, job.lease_owner),
                )
                if cur.rowcount != 1:
                    lost.append(job.id)
            return lost

        lost_ids: list[int] = await self._write(op)
        return lost_ids

    async def complete(
        self,
        job: Job,
        *,
        then: Sequence[tuple[str, JSON] | NextJob] = (),
        outputs: Sequence[Output] = (),
        replace: Sequence[tuple[str, str]] = (),
    ) -> list[int]:
        next_state(job.state, Action.COMPLETE)  # a snapshot that is not processing was never ours
        now = self._clock()
        next_rows = [self._next_job_values(item, job, now) for item in then]
        next_keys = [row[8] for row in next_rows]
        output_rows = [(o.recording_id, o.stage, o.index, _dumps(o.data), job.id, now) for o in outputs]
        # per replaced (recording, stage): the indexes this completion keeps (a JSON list)
        replaced = [
            (
                rec,
                stage,
                _dumps(sorted({o.index for o in outputs if (o.recording_id, o.stage) == (rec, stage)})),
            )
            for rec, stage in dict.fromkeys(replace)
        ]

        def op(conn: sqlite3.Connection) -> list[int]:
            _cas(
                conn,
                job,
                "state = 'completed', lease_owner = NULL, lease_expires_at = NULL,"
                " updated_at = ?, finished_at = ?",
                (now, now),
            )
            _end_attempt(
                conn, job.queue, job.id, job.claims, job.updated_at, now, AttemptOutcome.COMPLETED, None
            )
            if output_rows:
                conn.executemany(_UPSERT_OUTPUT, output_rows)
            if replaced:
                conn.executemany(
                    "DELETE FROM outputs WHERE recording_id = ? AND stage = ?"
                    " AND idx NOT IN (SELECT value FROM json_each(?))",
                    replaced,
                )
            return [_insert_job(conn, row, key) for row, key in zip(next_rows, next_keys, strict=True)]

        notify = tuple({row[0] for row in next_rows})
        ids: list[int] = await self._write(op, notify)
        return ids

    async def fail(self, job: Job, reason: str, *, permanent: bool = False) -> JobState:
        now = self._clock()
        decision = logic.after_failure(
            job, reason, permanent=permanent, policy=self.policy(job.queue), now=now, rng=self._rng
        )
        finished = now if decision.state is JobState.DEAD_LETTER else None
        run_at = decision.run_at if decision.run_at is not None else job.run_at

        def op(conn: sqlite3.Connection) -> JobState:
            _cas(
                conn,
                job,
                "state = ?, run_at = ?, last_error = ?, lease_owner = NULL, lease_expires_at = NULL,"
                " updated_at = ?, finished_at = ?",
                (decision.state.value, run_at, decision.error, now, finished),
            )
            _end_attempt(
                conn, job.queue, job.id, job.claims, job.updated_at, now, decision.outcome, decision.error
            )
            return decision.state

        state: JobState = await self._write(op, (job.queue,))
        return state

    async def defer(self, job: Job, *, seconds: float, reason: str | None = None) -> None:
        next_state(job.state, Action.DEFER)
        await self._give_back(job, seconds, reason, AttemptOutcome.DEFERRED)

    async def release(self, job: Job) -> None:
        next_state(job.state, Action.RELEASE)
        await self._give_back(job, 0.0, "released at shutdown", AttemptOutcome.RELEASED)

    async def _give_back(self, job: Job, seconds: float, reason: str | None, outcome: AttemptOutcome) -> None:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> None:
            _cas(
                conn,
                job,
                "state = 'pending', attempts = attempts - 1, run_at = ?, lease_owner = NULL,"
                " lease_expires_at = NULL, updated_at = ?",
                (now + max(0.0, seconds), now),
            )
            _end_attempt(conn, job.queue, job.id, job.claims, job.updated_at, now, outcome, reason)

        await self._write(op, (job.queue,))

    # -- operating ------------------------------------------------------------------------------
    async def cancel(self, job_id: int) -> None:
        now = self._clock()
        allowed = _in(sources(Action.CANCEL))

        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                f"UPDATE jobs SET state = 'cancelled', lease_owner = NULL, lease_expires_at = NULL,"
                f" updated_at = ?, finished_at = ? WHERE id = ? AND state IN ({allowed})"
                f" RETURNING claims,"
                f" (SELECT outcome FROM attempts WHERE job_id = jobs.id AND claim = jobs.claims),"
                f" queue, (SELECT started_at FROM attempts WHERE job_id = jobs.id AND claim = jobs.claims)",
                (now, now, job_id),
            ).fetchone()
            if row is None:
                _explain_refusal(conn, job_id, Action.CANCEL)
            elif row[1] == AttemptOutcome.RUNNING.value:
                _end_attempt(conn, row[2], job_id, row[0], row[3], now, AttemptOutcome.CANCELLED, "cancelled")

        await self._write(op)

    async def requeue(self, job_id: int, *, max_attempts: int | None = None) -> None:
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        now = self._clock()
        allowed = _in(sources(Action.REQUEUE))

        def op(conn: sqlite3.Connection) -> str:
            row = conn.execute(
                f"UPDATE jobs SET state = 'pending', attempts = 0, lost_count = 0, run_at = ?,"
                f" max_attempts = COALESCE(?, max_attempts), updated_at = ?, finished_at = NULL"
                f" WHERE id = ? AND state IN ({allowed}) RETURNING queue",
                (now, max_attempts, now, job_id),
            ).fetchone()
            if row is None:
                _explain_refusal(conn, job_id, Action.REQUEUE)
            return str(row[0])

        await self._write(op)
        await self._nudge()

    async def requeue_dead_letters(self, queue: str) -> int:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE jobs SET state = 'pending', attempts = 0, lost_count = 0, run_at = ?,"
                " updated_at = ?, finished_at = NULL WHERE queue = ? AND state = 'dead_letter'",
                (now, now, queue),
            )
            return int(cur.rowcount)

        count: int = await self._write(op, (queue,))
        return count

    async def purge_dead_letters(self, queue: str, *, older_than: float = 0.0) -> int:
        cutoff = self._clock() - older_than

        def op(conn: sqlite3.Connection) -> int:
            ids = [
                r[0]
                for r in conn.execute(
                    f"SELECT id FROM jobs WHERE state IN ({_FINISHED}) AND queue = ?"
                    " AND state = 'dead_letter' AND updated_at <= ?",
                    (queue, cutoff),
                )
            ]
            _delete_jobs(conn, ids)
            return len(ids)

        count: int = await self._write(op)
        return count

    async def pause(self, queue: str, reason: str | None = None) -> None:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO queue_flags (queue, paused, reason, changed_at) VALUES (?, 1, ?, ?)"
                " ON CONFLICT (queue) DO UPDATE SET paused = 1, reason = excluded.reason,"
                " changed_at = excluded.changed_at",
                (queue, reason, now),
            )

        await self._write(op)

    async def resume(self, queue: str) -> None:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO queue_flags (queue, paused, reason, changed_at) VALUES (?, 0, NULL, ?)"
                " ON CONFLICT (queue) DO UPDATE SET paused = 0, reason = NULL,"
                " changed_at = excluded.changed_at",
                (queue, now),
            )

        await self._write(op, (queue,))

    async def paused_queues(self) -> dict[str, str | None]:
        def fn(conn: sqlite3.Connection) -> dict[str, str | None]:
            return dict(conn.execute("SELECT queue, reason FROM queue_flags WHERE paused = 1").fetchall())

        result: dict[str, str | None] = await self._read(fn)
        return result

    async def _nudge(self) -> None:
        self._on_commit(set())

    # -- reading --------------------------------------------------------------------------------
    async def get_job(self, job_id: int) -> JobInfo:
        def fn(conn: sqlite3.Connection) -> JobInfo:
            row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no job {job_id}")
            attempts = [
                _row_to_attempt(a)
                for a in conn.execute(
                    "SELECT job_id, claim, worker_id, started_at, finished_at, outcome, error"
                    " FROM attempts WHERE job_id = ? ORDER BY claim",
                    (job_id,),
                )
            ]
            return JobInfo(row_to_job(row), attempts)

        info: JobInfo = await self._read(fn)
        return info

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        recording_id: str | None = None,
        user_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Job]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("queue", queue),
            ("state", state.value if state is not None else None),
            ("recording_id", recording_id),
            ("user_id", user_id),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY id DESC LIMIT ? OFFSET ?"
        params += [max(0, min(limit, 1000)), max(0, offset)]

        def fn(conn: sqlite3.Connection) -> list[Job]:
            return [row_to_job(r) for r in conn.execute(sql, params)]

        jobs: list[Job] = await self._read(fn)
        return jobs

    async def queue_stats(self, *, user_id: str | None = None) -> dict[str, QueueStats]:
        now = self._clock()
        known = list(self.policies)
        scope, scope_params = ("AND user_id = ?", [user_id]) if user_id is not None else ("", [])
        waiting = _in(CLAIMABLE_STATES)

        def fn(conn: sqlite3.Connection) -> dict[str, QueueStats]:
            counts: dict[str, dict[JobState, int]] = {q: {} for q in known}
            if user_id is None:
                # one query per partial index, each WHERE written exactly as the index's own
                rows = [
                    *conn.execute(
                        f"SELECT queue, state, COUNT(*) FROM jobs WHERE state IN ({waiting})"
                        " GROUP BY queue, state"
                    ),
                    *conn.execute(
                        "SELECT queue, 'processing', COUNT(*) FROM jobs WHERE state = 'processing'"
                        " GROUP BY queue"
                    ),
                    *conn.execute(
                        f"SELECT queue, state, COUNT(*) FROM jobs WHERE state IN ({_FINISHED})"
                        " GROUP BY queue, state"
                    ),
                ]
            else:
                rows = conn.execute(
                    "SELECT queue, state, COUNT(*) FROM jobs WHERE user_id = ? GROUP BY queue, state",
                    (user_id,),
                ).fetchall()
            for queue, state, n in rows:
                counts.setdefault(queue, {})[JobState(state)] = n
            flags = {
                q: (bool(p), r) for q, p, r in conn.execute("SELECT queue, paused, reason FROM queue_flags")
            }
            for q in flags:
                counts.setdefault(q, {})
            result: dict[str, QueueStats] = {}
            for queue, by_state in counts.items():
                full = {s: by_state.get(s, 0) for s in JobState}
                oldest = conn.execute(
                    f"SELECT MIN(updated_at) FROM jobs WHERE queue = ? AND state IN ({waiting}) {scope}",
                    [queue, *scope_params],
                ).fetchone()[0]
                last1, last5 = conn.execute(
                    "SELECT COUNT(*) FILTER (WHERE updated_at >= ?), COUNT(*) FROM jobs"
                    f" WHERE state IN ({_FINISHED}) AND queue = ? AND state = 'completed'"
                    f" AND updated_at >= ? {scope}",
                    [now - 60, queue, now - 300, *scope_params],
                ).fetchone()
                paused, reason = flags.get(queue, (False, None))
                result[queue] = QueueStats(
                    queue=queue,
                    counts=full,
                    oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
                    paused=paused,
                    pause_reason=reason,
                    completed_last_minute=last1,
                    completed_last_5_minutes=last5,
                )
            return result

        stats: dict[str, QueueStats] = await self._read(fn)
        return stats

    async def get_outputs(self, recording_id: str, stage: str | None = None) -> list[StoredOutput]:
        sql = (
            "SELECT recording_id, stage, idx, data, job_id, revision, updated_at FROM outputs"
            " WHERE recording_id = ?"
        )
        params: list[Any] = [recording_id]
        if stage is not None:
            sql += " AND stage = ?"
            params.append(stage)
        sql += " ORDER BY stage, idx"

        def fn(conn: sqlite3.Connection) -> list[StoredOutput]:
            return [
                StoredOutput(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6])
                for r in conn.execute(sql, params)
            ]

        result: list[StoredOutput] = await self._read(fn)
        return result

    # -- tracker --------------------------------------------------------------------------------
    async def add_recording(
        self,
        audio_uuid: str,
        *,
        user_id: str | None = None,
        client_id: str | None = None,
        first_job: NextJob | None = None,
        source: str = "api",
        device_name: str | None = None,
        filename: str | None = None,
    ) -> int | None:
        now = self._clock()
        first = (
            None
            if first_job is None
            else self._job_values(
                first_job.queue,
                first_job.payload,
                priority=first_job.priority,
                delay=first_job.delay,
                max_attempts=None,
                recording_id=audio_uuid,
                user_id=user_id,
                client_id=client_id,
                idempotency_key=first_job.idempotency_key,
                now=now,
            )
        )

        def op(conn: sqlite3.Connection) -> int | None:
            try:
                # closed at once if a job already names it (enqueued before its row existed);
                # else the trigger jobs_close_recording closes it with its first job
                conn.execute(
                    "INSERT INTO recordings (audio_uuid, user_id, client_id, created_at, source,"
                    " device_name, filename, closed_at) VALUES (?, ?, ?, ?, ?, ?, ?,"
                    " (SELECT MIN(created_at) FROM jobs WHERE recording_id = ?))",
                    (audio_uuid, user_id, client_id, now, source, device_name, filename, audio_uuid),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"recording {audio_uuid} already exists") from None
            return None if first is None else _insert_job(conn, first, first[8])

        notify = () if first_job is None else (first_job.queue,)
        job_id: int | None = await self._write(op, notify)
        return job_id

    async def recording_status(self, audio_uuid: str) -> RecordingReport:
        def fn(conn: sqlite3.Connection) -> RecordingReport:
            rec = conn.execute(
                "SELECT user_id, client_id, created_at FROM recordings WHERE audio_uuid = ?", (audio_uuid,)
            ).fetchone()
            jobs = [
                row_to_job(r)
                for r in conn.execute(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE recording_id = ? ORDER BY id", (audio_uuid,)
                )
            ]
            if rec is None and not jobs:
                raise NotFound(f"no recording {audio_uuid}")
            attempts: dict[int, list[Attempt]] = {}
            for a in conn.execute(
                "SELECT a.job_id, a.claim, a.worker_id, a.started_at, a.finished_at, a.outcome, a.error"
                " FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.recording_id = ?"
                " ORDER BY a.job_id, a.claim",
                (audio_uuid,),
            ):
                attempts.setdefault(a[0], []).append(_row_to_attempt(a))
            stages: dict[str, StageReport] = {}
            for job in jobs:
                stages.setdefault(job.queue, StageReport(job.queue, [])).jobs.append(
                    JobInfo(job, attempts.get(job.id, []))
                )
            states = [job.state for job in jobs]
            errors = [job.last_error for job in jobs if job.last_error]
            user_id, client_id, created = (
                rec if rec is not None else (jobs[0].user_id, jobs[0].client_id, None)
            )
            return RecordingReport(
                audio_uuid=audio_uuid,
                user_id=user_id,
                client_id=client_id,
                created_at=created,
                status=logic.recording_status(states),
                stages=stages,
                last_error=errors[-1] if errors else None,
            )

        report: RecordingReport = await self._read(fn)
        return report

    async def client_stats(self, client_id: str, *, user_id: str | None = None) -> dict[JobState, int]:
        if user_id is None:
            return await self._counts("client_id = ?", (client_id,))
        return await self._counts("client_id = ? AND user_id = ?", (client_id, user_id))

    async def user_stats(self, user_id: str) -> dict[JobState, int]:
        return await self._counts("user_id = ?", (user_id,))

    async def _counts(self, where: str, params: tuple[str, ...]) -> dict[JobState, int]:
        def fn(conn: sqlite3.Connection) -> dict[JobState, int]:
            sql = f"SELECT state, COUNT(*) FROM jobs WHERE {where} GROUP BY state"
            found = dict(conn.execute(sql, params))
            return {s: found.get(s.value, 0) for s in JobState}

        counts: dict[JobState, int] = await self._read(fn)
        return counts

    # -- recovery and retention -----------------------------------------------------------------
    async def recover_expired(
        self, *, queue: str | None = None, job_id: int | None = None, force: bool = False
    ) -> RecoveryReport:
        clock = self._clock
        hostname = self._hostname
        policy = self.policy
        rng = self._rng

        def op(conn: sqlite3.Connection) -> RecoveryReport:
            now = clock()
            dead = _dead_workers(conn, hostname)
            candidates: dict[int, Job] = {}
            filters: list[str] = ["j.state = 'processing'"]
            params: list[Any] = []
            if queue is not None:
                filters.append("j.queue = ?")
                params.append(queue)
            if job_id is not None:
                filters.append("j.id = ?")
                params.append(job_id)
            rows = conn.execute(
                f"SELECT {', '.join('j.' + c.strip() for c in JOB_COLUMNS.split(','))}, a.worker_id"
                " FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id AND a.claim = j.claims"
                f" WHERE {' AND '.join(filters)}",
                params,
            ).fetchall()
            for row in rows:
                job = row_to_job(row[:-1])
                expired = job.lease_expires_at is not None and job.lease_expires_at <= now
                if expired or row[-1] in dead or (force and job_id is not None):
                    candidates[job.id] = job
            requeued: list[int] = []
            escalated: list[int] = []
            for job in candidates.values():
                decision = logic.after_lost_lease(job, policy=policy(job.queue), now=now, rng=rng)
                finished = now if decision.state is JobState.DEAD_LETTER else None
                cur = conn.execute(
                    "UPDATE jobs SET state = ?, run_at = COALESCE(?, run_at), last_error = ?,"
                    " lost_count = lost_count + 1, lease_owner = NULL, lease_expires_at = NULL,"
                    " updated_at = ?, finished_at = ?"
                    " WHERE id = ? AND lease_owner = ? AND state = 'processing'",
                    (
                        decision.state.value,
                        decision.run_at,
                        decision.error,
                        now,
                        finished,
                        job.id,
                        job.lease_owner,
                    ),
                )
                if cur.rowcount != 1:
                    continue
                _end_attempt(
                    conn, job.queue, job.id, job.claims, job.updated_at, now, decision.outcome, decision.error
                )
                (escalated if decision.state is JobState.DEAD_LETTER else requeued).append(job.id)
            report = RecoveryReport(found=len(candidates), requeued=requeued, escalated=escalated)
            conn.execute(
                "UPDATE recovery_stats SET runs = runs + 1, attempted = attempted + ?,"
                " successful = successful + ?, requeued = requeued + ?, escalated = escalated + ?,"
                " last_run_at = ?, last_recovered = ? WHERE id = 1",
                (report.found, report.recovered, len(requeued), len(escalated), now, report.recovered),
            )
            return report

        report: RecoveryReport = await self._write(op)
        if report.requeued:
            await self._nudge()
        return report

    async def recovery_stats(self, *, user_id: str | None = None) -> RecoveryStats:
        def fn(conn: sqlite3.Connection) -> RecoveryStats:
            row = conn.execute(
                "SELECT runs, attempted, successful, requeued, escalated, last_run_at, last_recovered"
                " FROM recovery_stats WHERE id = 1"
            ).fetchone()
            stats = RecoveryStats(*row)
            if user_id is None:
                return stats
            # a user's share, counted from their own jobs: lost attempts put back, poison jobs
            lost, escalated = conn.execute(
                "SELECT COALESCE(SUM(lost_count), 0),"
                " COUNT(*) FILTER (WHERE state = 'dead_letter' AND last_error LIKE 'worker lost%')"
                " FROM jobs WHERE user_id = ? AND lost_count > 0",
                (user_id,),
            ).fetchone()
            return RecoveryStats(
                runs=stats.runs,
                attempted=int(lost),
                successful=int(lost),
                requeued=int(lost) - int(escalated),
                escalated=int(escalated),
                last_run_at=stats.last_run_at,
                last_recovered=0,
            )

        stats: RecoveryStats = await self._read(fn)
        return stats

    async def cleanup(self, *, completed_older_than: float, batch_size: int = 1000) -> CleanupReport:
        cutoff = self._clock() - completed_older_than
        jobs_deleted = attempts_deleted = 0
        while True:

            def op(conn: sqlite3.Connection) -> tuple[int, int]:
                ids = [
                    r[0]
                    for r in conn.execute(
                        # a recording's status is derived from its jobs: they stay while it exists
                        f"SELECT id FROM jobs WHERE state IN ({_FINISHED})"
                        " AND state IN ('completed', 'cancelled') AND updated_at < ?"
                        " AND (recording_id IS NULL"
                        "      OR NOT EXISTS (SELECT 1 FROM recordings WHERE audio_uuid = jobs.recording_id))"
                        " LIMIT ?",
                        (cutoff, batch_size),
                    )
                ]
                conn.execute("DELETE FROM workers WHERE stopped_at IS NOT NULL AND stopped_at < ?", (cutoff,))
                return len(ids), _delete_jobs(conn, ids)

            n_jobs, n_attempts = await self._write(op)
            jobs_deleted += n_jobs
            attempts_deleted += n_attempts
            if n_jobs < batch_size:
                return CleanupReport(jobs_deleted, attempts_deleted)

    # -- workers --------------------------------------------------------------------------------
    async def register_worker(self, worker_id: str, queues: Sequence[str]) -> None:
        now = self._clock()
        row = (worker_id, self._hostname, os.getpid(), ",".join(queues), now, now)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO workers (worker_id, hostname, pid, queues, started_at, heartbeat_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (worker_id) DO UPDATE SET"
                " hostname = excluded.hostname, pid = excluded.pid, queues = excluded.queues,"
                " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, stopped_at = NULL",
                row,
            )

        await self._write(op)

    async def worker_heartbeat(self, worker_id: str) -> None:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE workers SET heartbeat_at = ? WHERE worker_id = ?", (now, worker_id))

        await self._write(op)

    async def unregister_worker(self, worker_id: str) -> None:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE workers SET stopped_at = ? WHERE worker_id = ?", (now, worker_id))

        await self._write(op)

    async def list_workers(self) -> list[WorkerRecord]:
        def fn(conn: sqlite3.Connection) -> list[WorkerRecord]:
            return [
                WorkerRecord(r[0], r[1], r[2], r[3].split(",") if r[3] else [], r[4], r[5], r[6])
                for r in conn.execute(
                    "SELECT worker_id, hostname, pid, queues, started_at, heartbeat_at, stopped_at"
                    " FROM workers ORDER BY started_at DESC"
                )
            ]

        workers: list[WorkerRecord] = await self._read(fn)
        return workers


# -- helpers run inside the writer's transaction ----------------------------------------------


def _insert_job(conn: sqlite3.Connection, values: tuple[Any, ...], idempotency_key: str | None) -> int:
    if idempotency_key is not None:
        row = conn.execute("SELECT id FROM jobs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
        if row is not None:
            return int(row[0])
    cur = conn.execute(_INSERT_JOB, values)
    assert cur.lastrowid is not None
    return cur.lastrowid


def _end_attempt(
    conn: sqlite3.Connection,
    queue: str,
    job_id: int,
    claim: int,
    started_at: float,
    now: float,
    outcome: AttemptOutcome,
    error: str | None,
) -> None:
    """Close the attempt row and count it in the metrics, in the caller's transaction."""
    conn.execute(_CLOSE_ATTEMPT, (now, outcome.value, error, job_id, claim))
    duration = max(0.0, now - started_at)
    conn.execute(
        "INSERT INTO attempt_metrics (queue, outcome, bucket, count, duration_sum) VALUES (?, ?, ?, 1, ?)"
        " ON CONFLICT (queue, outcome, bucket) DO UPDATE SET count = count + 1,"
        " duration_sum = duration_sum + excluded.duration_sum",
        (queue, outcome.value, bucket_for(duration), duration),
    )


def _cas(conn: sqlite3.Connection, job: Job, assignments: str, params: tuple[Any, ...]) -> None:
    """Change a job we hold; :class:`LeaseLost` if someone else changed it first."""
    cur = conn.execute(
        f"UPDATE jobs SET {assignments} WHERE id = ? AND lease_owner = ? AND state = 'processing'",
        (*params, job.id, job.lease_owner),
    )
    if cur.rowcount != 1:
        raise LeaseLost(f"job {job.id} is no longer held by {job.lease_owner}")


def _explain_refusal(conn: sqlite3.Connection, job_id: int, action: Action) -> None:
    row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise NotFound(f"no job {job_id}")
    raise InvalidTransition(f"cannot {action.value} job {job_id}: it is {row[0]}")


def _delete_jobs(conn: sqlite3.Connection, ids: list[int]) -> int:
    if not ids:
        return 0
    params = [(i,) for i in ids]
    attempts = conn.executemany("DELETE FROM attempts WHERE job_id = ?", params).rowcount
    conn.executemany("DELETE FROM jobs WHERE id = ?", params)
    return int(attempts)


def _dead_workers(conn: sqlite3.Connection, hostname: str) -> set[str]:
    """Workers known to be gone: stopped cleanly, or on this host with no such process."""
    dead: set[str] = set()
    for worker_id, host, pid, stopped in conn.execute(
        "SELECT worker_id, hostname, pid, stopped_at FROM workers"
    ):
        if stopped is not None or (host == hostname and pid != os.getpid() and not _pid_alive(pid)):
            dead.add(worker_id)
    return dead
