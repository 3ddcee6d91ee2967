"""Lifeline through its public API: ``connect(url)``, ``enqueue``, ``claim``/``claim_many``, ``complete``."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lifeline
from common import BATCH, PRODUCERS, QUEUE, Deadline, Sync, payload, pragmas

PREFILL_CHUNK = 1000
REMAINING_SQL = "SELECT COUNT(*) FROM jobs WHERE state != 'completed'"


def url(db: Path, sync: Sync) -> str:
    return f"sqlite:///{db.resolve()}?synchronous={sync}"


def describe(sync: Sync) -> str:
    return (
        f"`lifeline.connect('sqlite:///path.db?synchronous={sync}')`: WAL always, "
        f"`synchronous={sync.upper()}` on every connection, one writer thread with group commit."
    )


def effective(store: lifeline.Store) -> dict[str, str]:
    """Read back the writer connection's pragmas (a private attribute, read while the writer is idle)."""
    internals: Any = store
    conn: sqlite3.Connection = internals._writer._conn
    return pragmas(conn)


async def enqueue_sequential(store: lifeline.Store, ids: Sequence[int], deadline: Deadline) -> list[int]:
    done: list[int] = []
    for job_id in ids:
        if deadline.passed():
            break
        await store.enqueue(QUEUE, payload(job_id))
        done.append(job_id)
    return done


async def enqueue_concurrent(store: lifeline.Store, ids: Sequence[int], deadline: Deadline) -> list[int]:
    """``PRODUCERS`` asyncio tasks, each awaiting its own enqueues one after the other."""
    done: list[int] = []

    async def producer(mine: Sequence[int]) -> None:
        for job_id in mine:
            if deadline.passed():
                return
            await store.enqueue(QUEUE, payload(job_id))
            done.append(job_id)

    await asyncio.gather(*(producer(ids[k::PRODUCERS]) for k in range(PRODUCERS)))
    return done


async def prefill(store: lifeline.Store, ids: Sequence[int]) -> None:
    for start in range(0, len(ids), PREFILL_CHUNK):
        await store.enqueue_many(QUEUE, [payload(i) for i in ids[start : start + PREFILL_CHUNK]])


async def consume_sequential(
    store: lifeline.Store, worker_id: str, deadline: Deadline, latencies: list[float] | None = None
) -> list[int]:
    """claim, run an empty handler, complete; ``latencies``: claim returned -> complete returned."""
    seen: list[int] = []
    while not deadline.passed():
        job = await store.claim(QUEUE, worker_id=worker_id)
        if job is None:
            break
        claimed = time.perf_counter()
        seen.append(job.payload["id"])
        await store.complete(job)
        if latencies is not None:
            latencies.append(time.perf_counter() - claimed)
    return seen


async def consume_batched(store: lifeline.Store, worker_id: str, deadline: Deadline) -> list[int]:
    """The worker's way: ``claim_many(limit=32)``, then complete the batch with ``asyncio.gather``."""
    seen: list[int] = []
    while not deadline.passed():
        jobs = await store.claim_many(QUEUE, worker_id=worker_id, limit=BATCH)
        if not jobs:
            break
        seen.extend(job.payload["id"] for job in jobs)
        await asyncio.gather(*(store.complete(job) for job in jobs))
    return seen


def commit_batches(store: lifeline.Store) -> tuple[int, int]:
    sqlite_store: Any = store  # SQLiteStore has it; the Store interface does not
    value: tuple[int, int] = sqlite_store.commit_batches
    return value
