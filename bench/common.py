"""Shared by every benchmark process: payloads, phase results, RSS and on-disk size helpers."""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

Sync = Literal["normal", "full"]
SYNCS: tuple[Sync, ...] = ("normal", "full")

PAYLOAD_BYTES = 200
QUEUE = "bench"
BUSY_TIMEOUT = 60.0  # seconds; every library gets the same lock wait
PRODUCERS = 32
BATCH = 32  # lifeline's worker: claim_many(limit=32), then complete the batch concurrently
SQLITE_BATCH = 100  # plain sqlite3, batched: operations per transaction

BENCH_DIR = Path(__file__).resolve().parent


_HEAD = len('{"id":,"pad":""}')


def _pad(job_id: int) -> str:
    return "x" * (PAYLOAD_BYTES - _HEAD - len(str(job_id)))


def payload(job_id: int) -> dict[str, Any]:
    """A JSON object whose compact encoding is exactly ``PAYLOAD_BYTES`` long (cheap to build)."""
    return {"id": job_id, "pad": _pad(job_id)}


def payload_text(job_id: int) -> str:
    """``payload(job_id)`` encoded as compact JSON, built without the encoder."""
    return f'{{"id":{job_id},"pad":"{_pad(job_id)}"}}'


def payload_id(text: str | bytes) -> int:
    value: int = json.loads(text)["id"]
    return value


class PhaseResult(TypedDict):
    jobs: int
    seconds: float
    rate: float
    capped: bool


def phase(jobs: int, seconds: float, capped: bool) -> PhaseResult:
    return {
        "jobs": jobs,
        "seconds": seconds,
        "rate": jobs / seconds if seconds > 0 else 0.0,
        "capped": capped,
    }


class OnceResult(TypedDict):
    enqueued: int
    processed: int
    unique: int
    duplicates: int
    remaining: int
    missing: int


def exactly_once(enqueued_ids: set[int], processed: Sequence[int], remaining: int) -> OnceResult:
    """Duplicates: ids processed more than once. Missing: enqueued, never processed, no longer queued."""
    unique = set(processed)
    stray = unique - enqueued_ids
    return {
        "enqueued": len(enqueued_ids),
        "processed": len(processed),
        "unique": len(unique),
        "duplicates": len(processed) - len(unique) + len(stray),
        "remaining": remaining,
        "missing": max(0, len(enqueued_ids) - len(unique & enqueued_ids) - remaining),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024.0 * 1024.0)


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def db_bytes(path: Path) -> int:
    """The database file plus its WAL, after a TRUNCATE checkpoint (the -shm index is not counted)."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def count(path: Path, sql: str) -> int:
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT)
    try:
        value: int = conn.execute(sql).fetchone()[0]
        return value
    finally:
        conn.close()


def pragmas(conn: sqlite3.Connection) -> dict[str, str]:
    """The journal mode and synchronous level a connection really runs with."""
    names = {0: "off", 1: "normal", 2: "full", 3: "extra"}
    mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    level = int(conn.execute("PRAGMA synchronous").fetchone()[0])
    return {"journal_mode": mode, "synchronous": names.get(level, str(level))}


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class Deadline:
    """Stop a phase after ``cap`` seconds (``None``: no cap)."""

    def __init__(self, cap: float | None, start: float | None = None) -> None:
        self.start = time.monotonic() if start is None else start
        self.at = None if cap is None else self.start + cap
        self.hit = False

    def passed(self) -> bool:
        if self.at is not None and time.monotonic() >= self.at:
            self.hit = True
        return self.hit
