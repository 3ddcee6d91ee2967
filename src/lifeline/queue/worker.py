"""The worker: claims jobs, runs their handlers, heartbeats their leases, hands results over.

A handler is an async function of the job. It returns a :class:`JobResult` (outputs to write and
next jobs to enqueue, both in the completing transaction) or ``None``, and says how it failed by
the type of exception it raises: :class:`TransientError` (retry with backoff),
:class:`PermanentError` (dead-letter now), :class:`DependencyUnavailable` (put back, no attempt
spent), :class:`JobCancelled` (nothing left to do: cancelled). Any other exception is an
unexpected bug in the handler and counts as transient, so that a crash of the code is retried a
bounded number of times and then dead-lettered with its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from lifeline.domain import (
    JSON,
    DependencyUnavailable,
    InvalidTransition,
    Job,
    JobCancelled,
    LeaseLost,
    NextJob,
    NotFound,
    Output,
    PermanentError,
    StoreError,
    TransientError,
)
from lifeline.store.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobResult:
    """What a handler hands over: outputs (upserts) and the next stages' jobs.

    ``replace`` lists ``(recording_id, stage)`` pairs whose outputs ``outputs`` replace as a whole:
    the store deletes, in the completing transaction, every output of such a pair that is not
    rewritten (a re-run that finds fewer memories leaves no stale ones behind).
    """

    outputs: Sequence[Output] = ()
    then: Sequence[tuple[str, JSON] | NextJob] = ()
    replace: Sequence[tuple[str, str]] = ()


Handler = Callable[[Job], Awaitable[JobResult | None]]

# Asked before each claim: a reason why ``queue`` must not be claimed now (a service its stage
# needs is down), or ``None``. Jobs of a gated queue wait without spending attempts.
Gate = Callable[[str], Awaitable[str | None]]


@dataclass(slots=True)
class WorkerStats:
    """What one worker did; counters only, for logs and tests."""

    claimed: int = 0
    completed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    deferred: int = 0
    released: int = 0
    cancelled: int = 0
    lost: int = 0
    by_queue: dict[str, int] = field(default_factory=dict)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Runs the handlers of its queues with at most ``concurrency`` jobs in flight.

    ``run(burst=True)`` drains the queues and returns once nothing is claimable and nothing is in
    flight (for tests and batch use). Otherwise it runs until :meth:`stop`: it then stops
    claiming, gives in-flight jobs ``shutdown_timeout`` seconds to finish, and hands the rest back
    to the queue with their attempt refunded.
    """

    def __init__(
        self,
        store: Store,
        handlers: Mapping[str, Handler],
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 4,
        worker_id: str | None = None,
        lease: float | None = None,
        heartbeat_interval: float | None = None,
        poll_interval: float = 1.0,
        shutdown_timeout: float = 30.0,
        gate: Gate | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.store = store
        self.handlers = dict(handlers)
        self.queues = list(queues) if queues is not None else list(self.handlers)
        if not self.queues:
            raise ValueError("a worker needs at least one queue with a handler")
        missing = [q for q in self.queues if q not in self.handlers]
        if missing:
            raise ValueError(f"no handler for queues {missing}")
        self.concurrency = concurrency
        self.worker_id = worker_id or new_worker_id()
        self.lease = lease
        self.heartbeat_interval = heartbeat_interval
        self.poll_interval = poll_interval
        self.shutdown_timeout = shutdown_timeout
        self.gate = gate
        self.stats = WorkerStats()
        self._inflight: dict[int, tuple[Job, asyncio.Task[None]]] = {}
        self._stopping = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._next_queue = 0

    def stop(self) -> None:
        """Ask for a graceful stop (safe to call from a signal handler on the loop)."""
        self._stopping.set()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def run(self, *, burst: bool = False) -> WorkerStats:
        await self.store.register_worker(self.worker_id, self.queues)
        heartbeats = asyncio.create_task(self._heartbeat_loop(), name=f"heartbeat {self.worker_id}")
        try:
            await self._claim_loop(burst)
        finally:
            await self._drain()
            heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeats
            await self.store.unregister_worker(self.worker_id)
        return self.stats

    # -- claiming -------------------------------------------------------------------------------
    async def _claim_loop(self, burst: bool) -> None:
        failures = 0
        while not self._stopping.is_set():
            free = self.concurrency - len(self._inflight)
            # a job in flight while we look may hand over a next stage's job right after: a burst
            # run may end only after a claim that found nothing while nothing was running
            busy = bool(self._inflight)
            try:
                claimed = await self._claim(free) if free > 0 else 0
            except StoreError as exc:
                # the database is unreachable (a restart, a failover): in-flight jobs go on, and
                # claiming resumes once it answers again; a burst run reports it instead
                if burst:
                    raise
                failures += 1
                delay = min(30.0, self.poll_interval * 2 ** min(failures - 1, 8))
                log.warning("claiming failed (%s); trying again in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            failures = 0
            if claimed:
                continue
            if burst and not busy and not self._inflight:
                return
            await self._wait(poll=free > 0)

    async def _claim(self, free: int) -> int:
        """Claim up to ``free`` jobs, visiting the queues round-robin so none starves."""
        total = 0
        for offset in range(len(self.queues)):
            if free - total <= 0:
                break
            queue = self.queues[(self._next_queue + offset) % len(self.queues)]
            if self.gate is not None and await self.gate(queue) is not None:
                continue
            jobs = await self.store.claim_many(
                queue, worker_id=self.worker_id, limit=free - total, lease=self.lease
            )
            for job in jobs:
                self._start(job)
            total += len(jobs)
        self._next_queue = (self._next_queue + 1) % len(self.queues)
        return total

    async def _wait(self, *, poll: bool) -> None:
        """Sleep until a slot frees up, new work may have arrived, or a stop is asked for."""
        self._slot_free.clear()
        waiters: list[asyncio.Future[object]] = [
            asyncio.ensure_future(self._slot_free.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        ]
        if poll:
            waiters.append(asyncio.ensure_future(self.store.wait_for_jobs(self.queues, self.poll_interval)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    # -- running --------------------------------------------------------------------------------
    def _start(self, job: Job) -> None:
        self.stats.claimed += 1
        self.stats.by_queue[job.queue] = self.stats.by_queue.get(job.queue, 0) + 1
        task = asyncio.create_task(self._run_job(job), name=f"job {job.id}")
        self._inflight[job.id] = (job, task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        for job_id, (_, running) in list(self._inflight.items()):
            if running is task:
                del self._inflight[job_id]
                break
        self._slot_free.set()

    async def _run_job(self, job: Job) -> None:
        handler = self.handlers[job.queue]
        try:
            try:
                result = await handler(job)
            except asyncio.CancelledError:
                await asyncio.shield(self._give_back(job))
                raise
            except DependencyUnavailable as exc:
                await self.store.defer(job, seconds=exc.retry_after, reason=str(exc))
                self.stats.deferred += 1
            except PermanentError as exc:
                await self.store.fail(job, str(exc) or type(exc).__name__, permanent=True)
                self.stats.dead_lettered += 1
            except JobCancelled as exc:
                log.info("job %s of %s cancelled: %s", job.id, job.queue, exc)
                await self._cancel(job)
            except TransientError as exc:
                await self._fail(job, str(exc) or type(exc).__name__)
            except Exception as exc:  # a bug in the handler: retried, then dead-lettered
                log.warning("handler for job %s raised %s", job.id, type(exc).__name__, exc_info=True)
                await self._fail(job, f"{type(exc).__name__}: {exc}")
            else:
                result = result or JobResult()
                await self.store.complete(
                    job, then=result.then, outputs=result.outputs, replace=result.replace
                )
                self.stats.completed += 1
        except LeaseLost:
            self.stats.lost += 1
            log.warning("job %s: lease lost before its result was recorded; the result is discarded", job.id)
        except StoreError as exc:
            # not recorded: the job stays processing until its lease expires (or this worker is
            # known to be gone), and the recovery manager hands it out again
            log.error("job %s: its result could not be recorded (%s); it will be recovered", job.id, exc)

    async def _fail(self, job: Job, reason: str) -> None:
        state = await self.store.fail(job, reason)
        if state.value == "dead_letter":
            self.stats.dead_lettered += 1
        else:
            self.stats.failed += 1

    async def _cancel(self, job: Job) -> None:
        # the operator's cancel, which does not check this worker's lease: if the lease was lost
        # and another worker runs the job, that run is cancelled too, which is what it would have
        # come to anyway (the handler cancels only when the job's recording is gone for good)
        try:
            await self.store.cancel(job.id)
        except (NotFound, InvalidTransition):
            # deleted with its recording meanwhile, or no longer ours: nothing left to cancel
            self.stats.lost += 1
        else:
            self.stats.cancelled += 1

    async def _give_back(self, job: Job) -> None:
        try:
            await self.store.release(job)
            self.stats.released += 1
        except LeaseLost:
            self.stats.lost += 1

    # -- leases ---------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_every())
            jobs = [job for job, _ in self._inflight.values()]
            try:
                lost = await self.store.heartbeat_many(jobs, lease=self.lease)
                await self.store.worker_heartbeat(self.worker_id)
            except Exception:
                log.exception("heartbeat failed; retrying at the next interval")
                continue
            for job_id in lost:
                entry = self._inflight.get(job_id)
                if entry is not None:
                    log.warning("job %s: lease lost (recovered elsewhere); abandoning it", job_id)
                    entry[1].cancel()

    def _heartbeat_every(self) -> float:
        """A third of the shortest lease, so two heartbeats can be missed before it expires."""
        if self.heartbeat_interval is not None:
            return self.heartbeat_interval
        if self.lease is not None:
            shortest = self.lease
        else:
            shortest = min(self.store.policy(q).lease for q in self.queues)
        return max(0.05, shortest / 3)

    # -- shutdown -------------------------------------------------------------------------------
    async def _drain(self) -> None:
        if not self._inflight:
            return
        tasks = [task for _, task in self._inflight.values()]
        _, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
