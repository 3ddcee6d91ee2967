"""The PostgreSQL store: one Lifeline across many processes and hosts.

The same semantics as :class:`lifeline.store.sqlite.SQLiteStore` (the conformance suite is the
spec), the same pure decisions (:mod:`lifeline.queue.logic`, ``transitions``, ``policy``), and the
same shape: every write is an operation run by the batching :class:`Writer` (group commit); reads
run on a small connection pool, each inside one read-only snapshot.

- A claim is one statement: ``WITH next AS (SELECT … ORDER BY priority DESC, run_at, id LIMIT n
  FOR UPDATE SKIP LOCKED) UPDATE jobs … RETURNING …``, which also writes the attempt rows.
  Workers on other hosts skip each other's rows instead of waiting for them.
- Every change after a claim is a compare-and-set on (id, lease owner, ``processing``) that also
  closes the attempt, in one statement; zero rows raises :class:`LeaseLost`, before anything else
  is written.
- Enqueues ``NOTIFY`` in their transaction; a ``LISTEN`` connection wakes waiting workers. Workers
  still poll, so a lost notification delays a job and never loses it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

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
from lifeline.queue.policy import DEFAULT_POLICIES, RetryPolicy
from lifeline.queue.transitions import Action, next_state, sources
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
from lifeline.store.postgres_engine import (
    Connection,
    Listener,
    Merge,
    Tx,
    Writer,
    apply_migrations,
    connect,
    is_connection_error,
    store_error,
)
from lifeline.store.postgres_health import PostgresHealthMixin
from lifeline.store.postgres_recordings import PostgresRecordingsMixin
from lifeline.store.postgres_stats import PostgresStatsMixin
from lifeline.store.postgres_users import PostgresUsersMixin

Clock = Callable[[], float]

JOB_COLUMNS = (
    "id, queue, state, priority, run_at, payload, attempts, max_attempts, lost_count, claims,"
    " lease_owner, lease_expires_at, recording_id, user_id, client_id, idempotency_key,"
    " last_error, created_at, updated_at, finished_at"
)
_J_COLUMNS = ", ".join("j." + c.strip() for c in JOB_COLUMNS.split(","))
_ATTEMPT_COLUMNS = "job_id, claim, worker_id, started_at, finished_at, outcome, error"


def _in(states: Iterable[JobState]) -> str:
    return ", ".join(f"'{s.value}'" for s in states)


_CLAIMABLE_SQL = _in(CLAIMABLE_STATES)

# -- the SQL of the hot path ----------------------------------------------------------------------

_INSERT_JOB = """
INSERT INTO jobs (queue, state, priority, run_at, payload, max_attempts, recording_id, user_id,
                  client_id, idempotency_key, created_at, updated_at)
VALUES (%s, 'pending', %s, %s, %s::json, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
"""

_INSERT_MANY = """
INSERT INTO jobs (queue, state, priority, run_at, payload, max_attempts, recording_id, user_id,
                  client_id, created_at, updated_at)
SELECT %(queue)s, 'pending', %(priority)s, %(run_at)s, p::json, %(max_attempts)s, %(recording_id)s,
       %(user_id)s, %(client_id)s, %(now)s, %(now)s
  FROM unnest(%(payloads)s::text[]) WITH ORDINALITY AS t(p, n)
 ORDER BY n
RETURNING id
"""

# One statement: pick (skipping rows other workers hold), take, and open the attempts.
_CLAIM = f"""
WITH next AS (
    SELECT id FROM jobs
     WHERE queue = %(queue)s AND state IN ({_CLAIMABLE_SQL}) AND run_at <= %(now)s
       AND NOT EXISTS (SELECT 1 FROM queue_flags f WHERE f.queue = %(queue)s AND f.paused)
     ORDER BY priority DESC, run_at, id
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs j
       SET state = 'processing', attempts = j.attempts + 1, claims = j.claims + 1,
           lease_owner = %(owner)s, lease_expires_at = %(expires)s, updated_at = %(now)s
      FROM next
     WHERE j.id = next.id
    RETURNING {_J_COLUMNS}
), trail AS (
    INSERT INTO attempts (job_id, claim, worker_id, started_at, outcome)
    SELECT id, claims, %(worker)s, %(now)s, 'running' FROM claimed
)
SELECT * FROM claimed
"""

# The compare-and-set every change after a claim goes through: the job's new values (``{set}``)
# only if we still hold it, and the attempt closed, in one statement; ``{more}`` adds writes that
# also happen only if the job was ours (a completion's outputs). Returns 1 or 0 rows changed.
_CAS_END = """
WITH done AS (
    UPDATE jobs SET {set}
     WHERE id = %(id)s AND lease_owner = %(owner)s AND state = 'processing'
    RETURNING id
), closed AS (
    UPDATE attempts a SET finished_at = %(now)s, outcome = %(outcome)s, error = %(error)s
      FROM done
     WHERE a.job_id = done.id AND a.claim = %(claim)s
){more}
SELECT count(*) FROM done
"""

# Outputs as upserts keyed (recording, stage, index), written only if the completion is ours.
_OUTPUTS = """, outputs_written AS (
    INSERT INTO outputs AS o (recording_id, stage, idx, data, job_id, revision, updated_at)
    SELECT t.r, t.s, t.i, t.d::json, done.id, 1, %(now)s
      FROM done, unnest(%(out_recording)s::text[], %(out_stage)s::text[], %(out_index)s::int[],
                        %(out_data)s::text[]) AS t(r, s, i, d)
    ON CONFLICT (recording_id, stage, idx) DO UPDATE
       SET data = excluded.data, job_id = excluded.job_id,
           revision = o.revision + 1, updated_at = excluded.updated_at
)"""

# Outputs of replaced (recording, stage) pairs that this completion did not write, deleted only if
# the completion is ours. A sibling of the upsert: both see the rows as they were before the
# statement, and touch disjoint rows (the written keys are excluded here).
_REPLACE = """, outputs_replaced AS (
    DELETE FROM outputs o
     USING done, unnest(%(rep_recording)s::text[], %(rep_stage)s::text[]) AS p(r, s)
     WHERE o.recording_id = p.r AND o.stage = p.s
       AND NOT EXISTS (SELECT 1
                         FROM unnest(%(out_recording)s::text[], %(out_stage)s::text[], %(out_index)s::int[])
                           AS w(r, s, i)
                        WHERE w.r = o.recording_id AND w.s = o.stage AND w.i = o.idx)
)"""

_COMPLETE_SET = (
    "state = 'completed', lease_owner = NULL, lease_expires_at = NULL,"
    " updated_at = %(now)s, finished_at = %(now)s"
)
_FAIL_SET = (
    "state = %(state)s, run_at = %(run_at)s, last_error = %(error)s, lease_owner = NULL,"
    " lease_expires_at = NULL, updated_at = %(now)s, finished_at = %(finished)s"
)
_GIVE_BACK_SET = (
    "state = 'pending', attempts = attempts - 1, run_at = %(run_at)s, lease_owner = NULL,"
    " lease_expires_at = NULL, updated_at = %(now)s"
)
_LOST_SET = (
    "state = %(state)s, run_at = COALESCE(%(run_at)s, run_at), last_error = %(error)s,"
    " lost_count = lost_count + 1, lease_owner = NULL, lease_expires_at = NULL,"
    " updated_at = %(now)s, finished_at = %(finished)s"
)

_HEARTBEAT = """
UPDATE jobs j SET lease_expires_at = v.expires
  FROM unnest(%s::bigint[], %s::text[], %s::float8[]) AS v(id, owner, expires)
 WHERE j.id = v.id AND j.lease_owner = v.owner AND j.state = 'processing'
RETURNING j.id, j.lease_owner
"""

_RECOVERY_CANDIDATES = f"""
SELECT {_J_COLUMNS}, a.worker_id
  FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id AND a.claim = j.claims
 WHERE j.state = 'processing' {{filters}}
   AND (j.lease_expires_at <= %(now)s OR a.worker_id = ANY(%(dead)s::text[]) OR %(forced)s)
 ORDER BY j.id
   FOR UPDATE OF j SKIP LOCKED
"""


_dumps = dumps_json


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def row_to_job(row: Sequence[Any]) -> Job:
    payload = row[5]
    return Job(
        id=int(row[0]),
        queue=row[1],
        state=JobState(row[2]),
        priority=row[3],
        run_at=float(row[4]),
        payload=json.loads(payload) if isinstance(payload, str) else payload,
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
        job_id=int(row[0]),
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


class PostgresStore(
    PostgresHealthMixin, PostgresUsersMixin, PostgresRecordingsMixin, PostgresStatsMixin, Store
):
    """See :mod:`lifeline.store.base` for what each method promises.

    ``conninfo`` is a libpq URL or key/value string (``postgresql://user:pw@host:5432/db``).
    ``pool_size`` bounds the read connections; writes use one more connection, and waiting
    workers one more (LISTEN). ``reconnect_timeout``: how long an operation waits for a server
    that went away (a restart, a failover) before it raises :class:`StoreError`.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        policies: dict[str, RetryPolicy] | None = None,
        default_policy: RetryPolicy | None = None,
        clock: Clock = time.time,
        rng: random.Random | None = None,
        pool_size: int = 8,
        reconnect_timeout: float = 30.0,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.conninfo = conninfo
        self.policies = dict(DEFAULT_POLICIES if policies is None else policies)
        self.default_policy = default_policy or RetryPolicy()
        self.pool_size = pool_size
        self.reconnect_timeout = reconnect_timeout
        self._clock = clock
        self._rng = rng or random.Random()
        self._writer: Writer | None = None
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._listener: Listener | None = None
        self._waiters: set[tuple[frozenset[str], asyncio.Event]] = set()
        self._tokens = itertools.count(1)
        self._nonce = os.urandom(3).hex()
        self._hostname = socket.gethostname()

    # -- lifecycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._writer is not None:
            return
        deadline = time.monotonic() + self.reconnect_timeout
        conn = await connect(self.conninfo, deadline=deadline)
        try:
            await apply_migrations(conn)
        except BaseException:
            await conn.close()
            raise
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": 10},
            configure=_configure_reader,
            name="lifeline-readers",
        )
        try:
            await pool.open(wait=True, timeout=max(1.0, deadline - time.monotonic()))
        except psycopg.Error as exc:
            await pool.close()
            await conn.close()
            raise StoreError(f"cannot open the read pool: {exc}") from exc
        except BaseException:
            await pool.close()
            await conn.close()
            raise
        self._pool = pool
        self._writer = Writer(
            self.conninfo, conn, on_commit=self._on_commit, reconnect_timeout=self.reconnect_timeout
        )

    async def close(self) -> None:
        writer, pool, listener = self._writer, self._pool, self._listener
        self._writer = None
        self._pool = None
        self._listener = None
        if listener is not None:
            await listener.close()
        if writer is not None:
            await writer.close()
        if pool is not None:
            await pool.close()
        for _, event in list(self._waiters):
            event.set()

    def policy(self, queue: str) -> RetryPolicy:
        return self.policies.get(queue, self.default_policy)

    async def _write(self, fn: Callable[[Tx], Awaitable[Any]], merge: Merge | None = None) -> Any:
        if self._writer is None:
            raise StoreError("the store is not open")
        return await self._writer.submit(fn, merge)

    async def _read(self, fn: Callable[[Connection], Awaitable[Any]]) -> Any:
        """``fn`` on a pooled connection inside one read-only snapshot; a connection that broke
        (a server restart) is replaced and the read run again, for up to ``reconnect_timeout``."""
        deadline: float | None = None
        while True:
            pool = self._pool
            if pool is None:
                raise StoreError("the store is not open")
            try:
                async with pool.connection() as conn, conn.transaction():
                    return await fn(conn)
            except psycopg.Error as exc:
                # a read is safe to run again; a connection that broke is replaced by the pool
                if not (is_connection_error(exc, None) or isinstance(exc, psycopg.OperationalError)):
                    raise store_error(exc) from exc
                now = time.monotonic()
                deadline = now + self.reconnect_timeout if deadline is None else deadline
                if now >= deadline:
                    raise store_error(exc) from exc
            except TimeoutError as exc:  # the pool found no working connection in time
                raise StoreError(f"no database connection: {exc}") from exc
            await asyncio.sleep(0.05)

    @property
    def commit_batches(self) -> tuple[int, int]:
        """(transactions committed, operations in them): how well group commit is batching."""
        if self._writer is None:
            return (0, 0)
        return (self._writer.batches, self._writer.operations)

    # -- wake-ups -------------------------------------------------------------------------------
    def _on_commit(self, queues: set[str]) -> None:
        self._wake(queues)

    def _on_notify(self, queue: str | None) -> None:
        self._wake(None if queue is None else {queue})

    def _wake(self, queues: set[str] | None) -> None:
        for wanted, event in list(self._waiters):
            if queues is None or wanted & queues:
                event.set()

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:  # noqa: ASYNC109
        if self._writer is None:
            raise StoreError("the store is not open")
        if self._listener is None:  # started by the first worker that waits, not by every CLI call
            self._listener = Listener(self.conninfo, self._on_notify)
        entry = (frozenset(queues), asyncio.Event())
        self._waiters.add(entry)
        try:
            await asyncio.wait_for(entry[1].wait(), timeout)
        except TimeoutError:
            return
        finally:
            self._waiters.discard(entry)

    async def listening(self) -> None:
        """Start the LISTEN connection and wait until it is up (tests use it to avoid a race)."""
        if self._listener is None:
            self._listener = Listener(self.conninfo, self._on_notify)
        await self._listener.ready.wait()

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
            now=self._clock(),
        )

        async def op(tx: Tx) -> int:
            return await _insert_job(tx, values)

        # without an idempotency key, concurrent enqueues share one INSERT
        merge = None if idempotency_key is not None else Merge("enqueue", _insert_jobs, values)
        job_id: int = await self._write(op, merge)
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
        if max_attempts is None:
            max_attempts = self.policy(queue).max_attempts
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not payloads:
            return []
        now = self._clock()
        params = {
            "queue": queue,
            "priority": int(priority),
            "run_at": now + max(0.0, delay),
            "max_attempts": max_attempts,
            "recording_id": recording_id,
            "user_id": user_id,
            "client_id": client_id,
            "now": now,
            "payloads": [_dumps(p) for p in payloads],
        }

        async def op(tx: Tx) -> list[int]:
            cur = await tx.execute(_INSERT_MANY, params)
            tx.notify(queue)
            # ids come from one sequence in insertion order, and rows go in in payload order
            return sorted(int(row[0]) for row in await cur.fetchall())

        ids: list[int] = await self._write(op)
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

        async def op(tx: Tx) -> list[Job]:
            now = clock()
            params = {
                "queue": queue,
                "now": now,
                "limit": limit,
                "owner": owner,
                "expires": now + lease_seconds,
                "worker": worker_id,
            }
            cur = await tx.execute(_CLAIM, params)
            jobs = [row_to_job(row) for row in await cur.fetchall()]
            jobs.sort(key=lambda j: (-j.priority, j.run_at, j.id))
            return jobs

        claimed: list[Job] = await self._write(op)
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

        async def op(tx: Tx) -> list[int]:
            now = clock()
            cur = await tx.execute(
                _HEARTBEAT,
                (
                    [job.id for job in held],
                    [job.lease_owner for job in held],
                    [now + seconds for seconds in leases],
                ),
            )
            kept = {(int(row[0]), row[1]) for row in await cur.fetchall()}
            return [job.id for job in held if (job.id, job.lease_owner) not in kept]

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
        # one row per key (a key written twice in one completion keeps the last data)
        keyed = {(o.recording_id, o.stage, o.index): o for o in outputs}
        pairs = list(dict.fromkeys(replace))
        values = {
            "out_recording": [k[0] for k in keyed],
            "out_stage": [k[1] for k in keyed],
            "out_index": [k[2] for k in keyed],
            "out_data": [_dumps(o.data) for o in keyed.values()],
            "rep_recording": [p[0] for p in pairs],
            "rep_stage": [p[1] for p in pairs],
        }
        more = (_OUTPUTS if keyed else "") + (_REPLACE if pairs else "")

        async def op(tx: Tx) -> list[int]:
            await _cas_end(tx, job, _COMPLETE_SET, values, now, AttemptOutcome.COMPLETED, None, more=more)
            return [await _insert_job(tx, row) for row in next_rows]

        merge = None
        if not next_rows and not keyed and not pairs:  # the common case shares one statement with others
            end = _End(
                job, JobState.COMPLETED, None, False, None, 0, now, AttemptOutcome.COMPLETED, None, now, []
            )
            merge = Merge("end", _end_many, end)
        ids: list[int] = await self._write(op, merge)
        return ids

    async def fail(self, job: Job, reason: str, *, permanent: bool = False) -> JobState:
        now = self._clock()
        decision = logic.after_failure(
            job, reason, permanent=permanent, policy=self.policy(job.queue), now=now, rng=self._rng
        )
        finished = now if decision.state is JobState.DEAD_LETTER else None
        run_at = decision.run_at if decision.run_at is not None else job.run_at
        values = {"state": decision.state.value, "run_at": run_at, "finished": finished}

        async def op(tx: Tx) -> JobState:
            await _cas_end(tx, job, _FAIL_SET, values, now, decision.outcome, decision.error)
            tx.notify(job.queue)
            return decision.state

        end = _End(
            job,
            decision.state,
            run_at,
            True,
            decision.error,
            0,
            finished,
            decision.outcome,
            decision.error,
            now,
            decision.state,
            wake=True,
        )
        state: JobState = await self._write(op, Merge("end", _end_many, end))
        return state

    async def defer(self, job: Job, *, seconds: float, reason: str | None = None) -> None:
        next_state(job.state, Action.DEFER)
        await self._give_back(job, seconds, reason, AttemptOutcome.DEFERRED)

    async def release(self, job: Job) -> None:
        next_state(job.state, Action.RELEASE)
        await self._give_back(job, 0.0, "released at shutdown", AttemptOutcome.RELEASED)

    async def _give_back(self, job: Job, seconds: float, reason: str | None, outcome: AttemptOutcome) -> None:
        now = self._clock()
        values = {"run_at": now + max(0.0, seconds)}

        async def op(tx: Tx) -> None:
            await _cas_end(tx, job, _GIVE_BACK_SET, values, now, outcome, reason)
            tx.notify(job.queue)

        end = _End(
            job,
            JobState.PENDING,
            values["run_at"],
            False,
            None,
            -1,
            None,
            outcome,
            reason,
            now,
            None,
            wake=True,
        )
        await self._write(op, Merge("end", _end_many, end))

    # -- operating ------------------------------------------------------------------------------
    async def cancel(self, job_id: int) -> None:
        now = self._clock()
        allowed = _in(sources(Action.CANCEL))

        async def op(tx: Tx) -> None:
            cur = await tx.execute(
                f"UPDATE jobs SET state = 'cancelled', lease_owner = NULL, lease_expires_at = NULL,"
                f" updated_at = %s, finished_at = %s WHERE id = %s AND state IN ({allowed})"
                f" RETURNING claims, queue,"
                f" (SELECT outcome FROM attempts WHERE job_id = jobs.id AND claim = jobs.claims),"
                f" (SELECT started_at FROM attempts WHERE job_id = jobs.id AND claim = jobs.claims)",
                (now, now, job_id),
            )
            row = await cur.fetchone()
            if row is None:
                await _explain_refusal(tx, job_id, Action.CANCEL)
            elif row[2] == AttemptOutcome.RUNNING.value:
                await tx.execute(
                    "UPDATE attempts SET finished_at = %s, outcome = %s, error = %s"
                    " WHERE job_id = %s AND claim = %s",
                    (now, AttemptOutcome.CANCELLED.value, "cancelled", job_id, row[0]),
                )
                tx.metric(row[1], AttemptOutcome.CANCELLED.value, now - float(row[3]))

        await self._write(op)

    async def requeue(self, job_id: int, *, max_attempts: int | None = None) -> None:
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        now = self._clock()
        allowed = _in(sources(Action.REQUEUE))

        async def op(tx: Tx) -> None:
            cur = await tx.execute(
                f"UPDATE jobs SET state = 'pending', attempts = 0, lost_count = 0, run_at = %s,"
                f" max_attempts = COALESCE(%s, max_attempts), updated_at = %s, finished_at = NULL"
                f" WHERE id = %s AND state IN ({allowed}) RETURNING queue",
                (now, max_attempts, now, job_id),
            )
            row = await cur.fetchone()
            if row is None:
                await _explain_refusal(tx, job_id, Action.REQUEUE)
                return
            tx.notify(str(row[0]))

        await self._write(op)

    async def requeue_dead_letters(self, queue: str) -> int:
        now = self._clock()

        async def op(tx: Tx) -> int:
            cur = await tx.execute(
                "UPDATE jobs SET state = 'pending', attempts = 0, lost_count = 0, run_at = %s,"
                " updated_at = %s, finished_at = NULL WHERE queue = %s AND state = 'dead_letter'",
                (now, now, queue),
            )
            tx.notify(queue)
            return int(cur.rowcount)

        count: int = await self._write(op)
        return count

    async def purge_dead_letters(self, queue: str, *, older_than: float = 0.0) -> int:
        cutoff = self._clock() - older_than

        async def op(tx: Tx) -> int:
            cur = await tx.execute(
                "SELECT id FROM jobs WHERE queue = %s AND state = 'dead_letter' AND updated_at <= %s",
                (queue, cutoff),
            )
            ids = [int(r[0]) for r in await cur.fetchall()]
            await _delete_jobs(tx, ids)
            return len(ids)

        count: int = await self._write(op)
        return count

    async def pause(self, queue: str, reason: str | None = None) -> None:
        now = self._clock()

        async def op(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO queue_flags (queue, paused, reason, changed_at) VALUES (%s, TRUE, %s, %s)"
                " ON CONFLICT (queue) DO UPDATE SET paused = TRUE, reason = excluded.reason,"
                " changed_at = excluded.changed_at",
                (queue, reason, now),
            )

        await self._write(op)

    async def resume(self, queue: str) -> None:
        now = self._clock()

        async def op(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO queue_flags (queue, paused, reason, changed_at) VALUES (%s, FALSE, NULL, %s)"
                " ON CONFLICT (queue) DO UPDATE SET paused = FALSE, reason = NULL,"
                " changed_at = excluded.changed_at",
                (queue, now),
            )
            tx.notify(queue)

        await self._write(op)

    async def paused_queues(self) -> dict[str, str | None]:
        async def fn(conn: Connection) -> dict[str, str | None]:
            cur = await conn.execute("SELECT queue, reason FROM queue_flags WHERE paused")
            return {str(r[0]): r[1] for r in await cur.fetchall()}

        result: dict[str, str | None] = await self._read(fn)
        return result

    # -- reading --------------------------------------------------------------------------------
    async def get_job(self, job_id: int) -> JobInfo:
        async def fn(conn: Connection) -> JobInfo:
            cur = await conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,))
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"no job {job_id}")
            cur = await conn.execute(
                f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE job_id = %s ORDER BY claim", (job_id,)
            )
            return JobInfo(row_to_job(row), [_row_to_attempt(a) for a in await cur.fetchall()])

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
                clauses.append(f"{column} = %s")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY id DESC LIMIT %s OFFSET %s"
        params += [max(0, min(limit, 1000)), max(0, offset)]

        async def fn(conn: Connection) -> list[Job]:
            cur = await conn.execute(sql, params)
            return [row_to_job(r) for r in await cur.fetchall()]

        jobs: list[Job] = await self._read(fn)
        return jobs

    async def queue_stats(self, *, user_id: str | None = None) -> dict[str, QueueStats]:
        now = self._clock()
        known = list(self.policies)
        scope, scope_params = ("AND user_id = %s", [user_id]) if user_id is not None else ("", [])

        async def fn(conn: Connection) -> dict[str, QueueStats]:
            counts: dict[str, dict[JobState, int]] = {q: {} for q in known}
            cur = await conn.execute(
                f"SELECT queue, state, COUNT(*) FROM jobs WHERE TRUE {scope} GROUP BY queue, state",
                scope_params,
            )
            for queue, state, n in await cur.fetchall():
                counts.setdefault(queue, {})[JobState(state)] = int(n)
            cur = await conn.execute(
                f"SELECT queue, MIN(updated_at) FILTER (WHERE state IN ({_CLAIMABLE_SQL})),"
                " COUNT(*) FILTER (WHERE state = 'completed' AND updated_at >= %s),"
                " COUNT(*) FILTER (WHERE state = 'completed' AND updated_at >= %s)"
                f" FROM jobs WHERE (state IN ({_CLAIMABLE_SQL})"
                f"                  OR (state = 'completed' AND updated_at >= %s)) {scope}"
                " GROUP BY queue",
                [now - 60, now - 300, now - 300, *scope_params],
            )
            timing = {r[0]: (r[1], int(r[2]), int(r[3])) for r in await cur.fetchall()}
            cur = await conn.execute("SELECT queue, paused, reason FROM queue_flags")
            flags = {q: (bool(p), r) for q, p, r in await cur.fetchall()}
            for q in flags:
                counts.setdefault(q, {})
            result: dict[str, QueueStats] = {}
            for queue, by_state in counts.items():
                oldest, last1, last5 = timing.get(queue, (None, 0, 0))
                paused, reason = flags.get(queue, (False, None))
                result[queue] = QueueStats(
                    queue=queue,
                    counts={s: by_state.get(s, 0) for s in JobState},
                    oldest_pending_age=None if oldest is None else max(0.0, now - float(oldest)),
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
            " WHERE recording_id = %s"
        )
        params: list[Any] = [recording_id]
        if stage is not None:
            sql += " AND stage = %s"
            params.append(stage)
        sql += " ORDER BY stage, idx"

        async def fn(conn: Connection) -> list[StoredOutput]:
            cur = await conn.execute(sql, params)
            return [
                StoredOutput(r[0], r[1], r[2], r[3], None if r[4] is None else int(r[4]), r[5], r[6])
                for r in await cur.fetchall()
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

        async def op(tx: Tx) -> int | None:
            # closed at once if a job already names it (enqueued before its row existed); else
            # the trigger jobs_close_recording closes it with its first job
            cur = await tx.execute(
                "INSERT INTO recordings (audio_uuid, user_id, client_id, created_at, source, device_name,"
                " filename, closed_at) VALUES (%s, %s, %s, %s, %s, %s, %s,"
                " (SELECT MIN(created_at) FROM jobs WHERE recording_id = %s))"
                " ON CONFLICT (audio_uuid) DO NOTHING RETURNING 1",
                (audio_uuid, user_id, client_id, now, source, device_name, filename, audio_uuid),
            )
            if await cur.fetchone() is None:
                raise Conflict(f"recording {audio_uuid} already exists")
            return None if first is None else await _insert_job(tx, first)

        job_id: int | None = await self._write(op)
        return job_id

    async def recording_status(self, audio_uuid: str) -> RecordingReport:
        async def fn(conn: Connection) -> RecordingReport:
            cur = await conn.execute(
                "SELECT user_id, client_id, created_at FROM recordings WHERE audio_uuid = %s", (audio_uuid,)
            )
            rec = await cur.fetchone()
            cur = await conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE recording_id = %s ORDER BY id", (audio_uuid,)
            )
            jobs = [row_to_job(r) for r in await cur.fetchall()]
            if rec is None and not jobs:
                raise NotFound(f"no recording {audio_uuid}")
            cur = await conn.execute(
                "SELECT a.job_id, a.claim, a.worker_id, a.started_at, a.finished_at, a.outcome, a.error"
                " FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.recording_id = %s"
                " ORDER BY a.job_id, a.claim",
                (audio_uuid,),
            )
            attempts: dict[int, list[Attempt]] = {}
            for a in await cur.fetchall():
                attempts.setdefault(int(a[0]), []).append(_row_to_attempt(a))
            stages: dict[str, StageReport] = {}
            for job in jobs:
                stages.setdefault(job.queue, StageReport(job.queue, [])).jobs.append(
                    JobInfo(job, attempts.get(job.id, []))
                )
            errors = [job.last_error for job in jobs if job.last_error]
            user_id, client_id, created = (
                rec if rec is not None else (jobs[0].user_id, jobs[0].client_id, None)
            )
            return RecordingReport(
                audio_uuid=audio_uuid,
                user_id=user_id,
                client_id=client_id,
                created_at=created,
                status=logic.recording_status(job.state for job in jobs),
                stages=stages,
                last_error=errors[-1] if errors else None,
            )

        report: RecordingReport = await self._read(fn)
        return report

    async def client_stats(self, client_id: str, *, user_id: str | None = None) -> dict[JobState, int]:
        if user_id is None:
            return await self._counts("client_id = %s", (client_id,))
        return await self._counts("client_id = %s AND user_id = %s", (client_id, user_id))

    async def user_stats(self, user_id: str) -> dict[JobState, int]:
        return await self._counts("user_id = %s", (user_id,))

    async def _counts(self, where: str, params: tuple[str, ...]) -> dict[JobState, int]:
        async def fn(conn: Connection) -> dict[JobState, int]:
            cur = await conn.execute(f"SELECT state, COUNT(*) FROM jobs WHERE {where} GROUP BY state", params)
            found = {r[0]: int(r[1]) for r in await cur.fetchall()}
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
        filters = ""
        params: dict[str, Any] = {"forced": force and job_id is not None}
        if queue is not None:
            filters += " AND j.queue = %(queue)s"
            params["queue"] = queue
        if job_id is not None:
            filters += " AND j.id = %(job_id)s"
            params["job_id"] = job_id
        candidates_sql = _RECOVERY_CANDIDATES.format(filters=filters)

        async def op(tx: Tx) -> RecoveryReport:
            now = clock()
            dead = await _dead_workers(tx, hostname)
            # rows another process is changing right now are skipped: they are not lost
            cur = await tx.execute(candidates_sql, {**params, "now": now, "dead": sorted(dead)})
            candidates = [row_to_job(row[:-1]) for row in await cur.fetchall()]
            requeued: list[int] = []
            escalated: list[int] = []
            for job in candidates:
                decision = logic.after_lost_lease(job, policy=policy(job.queue), now=now, rng=rng)
                values = {
                    "state": decision.state.value,
                    "run_at": decision.run_at,
                    "finished": now if decision.state is JobState.DEAD_LETTER else None,
                }
                try:
                    await _cas_end(tx, job, _LOST_SET, values, now, decision.outcome, decision.error)
                except LeaseLost:
                    continue
                (escalated if decision.state is JobState.DEAD_LETTER else requeued).append(job.id)
                if decision.state is not JobState.DEAD_LETTER:
                    tx.notify(job.queue)
            report = RecoveryReport(found=len(candidates), requeued=requeued, escalated=escalated)
            await tx.execute(
                "UPDATE recovery_stats SET runs = runs + 1, attempted = attempted + %s,"
                " successful = successful + %s, requeued = requeued + %s, escalated = escalated + %s,"
                " last_run_at = %s, last_recovered = %s WHERE id = 1",
                (report.found, report.recovered, len(requeued), len(escalated), now, report.recovered),
            )
            return report

        report: RecoveryReport = await self._write(op)
        return report

    async def recovery_stats(self, *, user_id: str | None = None) -> RecoveryStats:
        async def fn(conn: Connection) -> RecoveryStats:
            cur = await conn.execute(
                "SELECT runs, attempted, successful, requeued, escalated, last_run_at, last_recovered"
                " FROM recovery_stats WHERE id = 1"
            )
            row = await cur.fetchone()
            if row is None:
                raise StoreError("the recovery_stats row is missing")
            stats = RecoveryStats(*(int(v) if isinstance(v, int) else v for v in row))
            if user_id is None:
                return stats
            # a user's share, counted from their own jobs: lost attempts put back, poison jobs
            cur = await conn.execute(
                "SELECT COALESCE(SUM(lost_count), 0),"
                " COUNT(*) FILTER (WHERE state = 'dead_letter' AND last_error LIKE 'worker lost%%')"
                " FROM jobs WHERE user_id = %s AND lost_count > 0",
                (user_id,),
            )
            counted = await cur.fetchone()
            lost, escalated = (0, 0) if counted is None else (int(counted[0]), int(counted[1]))
            return RecoveryStats(
                runs=stats.runs,
                attempted=lost,
                successful=lost,
                requeued=lost - escalated,
                escalated=escalated,
                last_run_at=stats.last_run_at,
                last_recovered=0,
            )

        stats: RecoveryStats = await self._read(fn)
        return stats

    async def cleanup(self, *, completed_older_than: float, batch_size: int = 1000) -> CleanupReport:
        cutoff = self._clock() - completed_older_than
        jobs_deleted = attempts_deleted = 0
        while True:

            async def op(tx: Tx) -> tuple[int, int]:
                cur = await tx.execute(
                    # a recording's status is derived from its jobs: they stay while it exists
                    "SELECT id FROM jobs WHERE state IN ('completed', 'cancelled') AND updated_at < %s"
                    " AND (recording_id IS NULL"
                    "      OR NOT EXISTS (SELECT 1 FROM recordings WHERE audio_uuid = jobs.recording_id))"
                    " ORDER BY id LIMIT %s",
                    (cutoff, batch_size),
                )
                ids = [int(r[0]) for r in await cur.fetchall()]
                await tx.execute(
                    "DELETE FROM workers WHERE stopped_at IS NOT NULL AND stopped_at < %s", (cutoff,)
                )
                return len(ids), await _delete_jobs(tx, ids)

            n_jobs, n_attempts = await self._write(op)
            jobs_deleted += n_jobs
            attempts_deleted += n_attempts
            if n_jobs < batch_size:
                return CleanupReport(jobs_deleted, attempts_deleted)

    # -- workers --------------------------------------------------------------------------------
    async def register_worker(self, worker_id: str, queues: Sequence[str]) -> None:
        now = self._clock()
        row = (worker_id, self._hostname, os.getpid(), ",".join(queues), now, now)

        async def op(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO workers (worker_id, hostname, pid, queues, started_at, heartbeat_at)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (worker_id) DO UPDATE SET"
                " hostname = excluded.hostname, pid = excluded.pid, queues = excluded.queues,"
                " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, stopped_at = NULL",
                row,
            )

        await self._write(op)

    async def worker_heartbeat(self, worker_id: str) -> None:
        now = self._clock()

        async def op(tx: Tx) -> None:
            await tx.execute("UPDATE workers SET heartbeat_at = %s WHERE worker_id = %s", (now, worker_id))

        await self._write(op)

    async def unregister_worker(self, worker_id: str) -> None:
        now = self._clock()

        async def op(tx: Tx) -> None:
            await tx.execute("UPDATE workers SET stopped_at = %s WHERE worker_id = %s", (now, worker_id))

        await self._write(op)

    async def list_workers(self) -> list[WorkerRecord]:
        async def fn(conn: Connection) -> list[WorkerRecord]:
            cur = await conn.execute(
                "SELECT worker_id, hostname, pid, queues, started_at, heartbeat_at, stopped_at"
                " FROM workers ORDER BY started_at DESC"
            )
            return [
                WorkerRecord(r[0], r[1], r[2], r[3].split(",") if r[3] else [], r[4], r[5], r[6])
                for r in await cur.fetchall()
            ]

        workers: list[WorkerRecord] = await self._read(fn)
        return workers


# -- helpers run inside the writer's transaction ----------------------------------------------


async def _configure_reader(conn: Connection) -> None:
    await conn.set_read_only(True)
    await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)


async def _insert_job(tx: Tx, values: tuple[Any, ...]) -> int:
    """Insert one job; with an idempotency key already used, the first job's id."""
    cur = await tx.execute(_INSERT_JOB, values)
    row = await cur.fetchone()
    if row is None:  # the key is taken (possibly by a transaction that committed meanwhile)
        cur = await tx.execute("SELECT id FROM jobs WHERE idempotency_key = %s", (values[8],))
        row = await cur.fetchone()
        if row is None:
            raise StoreError(f"idempotency key {values[8]!r} conflicted but its job is gone")
        return int(row[0])
    tx.notify(values[0])
    return int(row[0])


_INSERT_JOBS = """
INSERT INTO jobs (queue, state, priority, run_at, payload, max_attempts, recording_id, user_id,
                  client_id, created_at, updated_at)
SELECT q, 'pending', pr, ra, p::json, ma, rec, usr, cli, ts, ts
  FROM unnest(%s::text[], %s::int[], %s::float8[], %s::text[], %s::int[], %s::text[], %s::text[],
              %s::text[], %s::float8[]) WITH ORDINALITY AS t(q, pr, ra, p, ma, rec, usr, cli, ts, n)
 ORDER BY n
RETURNING id
"""


async def _insert_jobs(items: list[tuple[Tx, Any]]) -> list[Any]:
    """Many enqueues (without idempotency keys) as one INSERT; each gets its own id."""
    rows: list[tuple[Any, ...]] = [values for _, values in items]
    columns = (0, 1, 2, 3, 4, 5, 6, 7, 9)  # queue … client_id, created_at (= updated_at)
    params = [[row[c] for row in rows] for c in columns]
    cur = await items[0][0].execute(_INSERT_JOBS, params)
    # one sequence, rows inserted in order: the ids, sorted, are the rows' ids in order
    ids = sorted(int(r[0]) for r in await cur.fetchall())
    for (tx, values), _ in zip(items, ids, strict=True):
        tx.notify(values[0])
    return list(ids)


@dataclass(frozen=True, slots=True)
class _End:
    """The end of one attempt, as :func:`_end_many` writes it (complete, fail, defer, release)."""

    job: Job
    state: JobState
    run_at: float | None  # None: keep
    set_error: bool
    error: str | None
    attempts_delta: int  # -1 refunds the attempt
    finished_at: float | None
    outcome: AttemptOutcome
    attempt_error: str | None
    now: float
    result: Any
    wake: bool = False


_END_MANY = """
WITH v AS (
    SELECT * FROM unnest(%(n)s::int[], %(id)s::bigint[], %(owner)s::text[], %(claim)s::int[],
                         %(state)s::text[], %(run_at)s::float8[], %(set_error)s::bool[], %(error)s::text[],
                         %(delta)s::int[], %(finished)s::float8[], %(outcome)s::text[],
                         %(attempt_error)s::text[], %(now)s::float8[])
        AS v(n, id, owner, claim, state, run_at, set_error, error, delta, finished, outcome,
             attempt_error, now)
), done AS (
    UPDATE jobs j
       SET state = v.state, run_at = COALESCE(v.run_at, j.run_at),
           last_error = CASE WHEN v.set_error THEN v.error ELSE j.last_error END,
           attempts = j.attempts + v.delta, lease_owner = NULL, lease_expires_at = NULL,
           updated_at = v.now, finished_at = v.finished
      FROM v
     WHERE j.id = v.id AND j.lease_owner = v.owner AND j.state = 'processing'
    RETURNING v.n, v.id, v.claim, v.outcome, v.attempt_error, v.now
), closed AS (
    UPDATE attempts a SET finished_at = d.now, outcome = d.outcome, error = d.attempt_error
      FROM done d
     WHERE a.job_id = d.id AND a.claim = d.claim
)
SELECT n FROM done
"""


async def _end_many(items: list[tuple[Tx, Any]]) -> list[Any]:
    """Many attempt ends as one statement: each a compare-and-set of its own, ``LeaseLost`` (and
    nothing written) for those whose job is no longer held."""
    ends: list[_End] = [end for _, end in items]
    params = {
        "n": list(range(len(ends))),
        "id": [e.job.id for e in ends],
        "owner": [e.job.lease_owner for e in ends],
        "claim": [e.job.claims for e in ends],
        "state": [e.state.value for e in ends],
        "run_at": [e.run_at for e in ends],
        "set_error": [e.set_error for e in ends],
        "error": [e.error for e in ends],
        "delta": [e.attempts_delta for e in ends],
        "finished": [e.finished_at for e in ends],
        "outcome": [e.outcome.value for e in ends],
        "attempt_error": [e.attempt_error for e in ends],
        "now": [e.now for e in ends],
    }
    cur = await items[0][0].execute(_END_MANY, params)
    ended = {int(r[0]) for r in await cur.fetchall()}
    results: list[Any] = []
    for n, (tx, end) in enumerate(items):
        if n not in ended:
            results.append(LeaseLost(f"job {end.job.id} is no longer held by {end.job.lease_owner}"))
            continue
        tx.metric(end.job.queue, end.outcome.value, end.now - end.job.updated_at)
        if end.wake:
            tx.notify(end.job.queue)
        results.append(end.result)
    return results


async def _cas_end(
    tx: Tx,
    job: Job,
    assignments: str,
    values: dict[str, Any],
    now: float,
    outcome: AttemptOutcome,
    error: str | None,
    *,
    more: str = "",
) -> None:
    """Change a job we hold and close its attempt; :class:`LeaseLost` (nothing written) if
    someone else changed it first."""
    params = {
        **values,
        "id": job.id,
        "owner": job.lease_owner,
        "claim": job.claims,
        "now": now,
        "outcome": outcome.value,
        "error": error,
    }
    cur = await tx.execute(_CAS_END.format(set=assignments, more=more), params)
    row = await cur.fetchone()
    if row is None or row[0] != 1:
        raise LeaseLost(f"job {job.id} is no longer held by {job.lease_owner}")
    tx.metric(job.queue, outcome.value, now - job.updated_at)


async def _explain_refusal(tx: Tx, job_id: int, action: Action) -> None:
    cur = await tx.execute("SELECT state FROM jobs WHERE id = %s", (job_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no job {job_id}")
    raise InvalidTransition(f"cannot {action.value} job {job_id}: it is {row[0]}")


async def _delete_jobs(tx: Tx, ids: list[int]) -> int:
    if not ids:
        return 0
    cur = await tx.execute("DELETE FROM attempts WHERE job_id = ANY(%s::bigint[])", (ids,))
    attempts = cur.rowcount
    await tx.execute("DELETE FROM jobs WHERE id = ANY(%s::bigint[])", (ids,))
    return int(attempts)


async def _dead_workers(tx: Tx, hostname: str) -> set[str]:
    """Workers known to be gone: stopped cleanly, or on this host with no such process."""
    cur = await tx.execute("SELECT worker_id, hostname, pid, stopped_at FROM workers")
    dead: set[str] = set()
    for worker_id, host, pid, stopped in await cur.fetchall():
        if stopped is not None or (host == hostname and pid != os.getpid() and not _pid_alive(pid)):
            dead.add(worker_id)
    return dead
