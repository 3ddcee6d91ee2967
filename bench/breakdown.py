"""Where lifeline's time goes in the single-producer enqueue and the sequential claim + complete.

Measured per operation (microseconds), each number the median of ``--repeats`` runs:

* paths: ``store.enqueue``; ``store.claim`` and ``store.complete``, whole; the time the writer
  thread spends inside ``WriterThread._execute`` (instrumented from here: src is untouched); the
  hand-off alone (``await store._write(no-op)``: an empty BEGIN IMMEDIATE/COMMIT plus the two
  thread switches) and a bare thread round trip with no SQLite (a SimpleQueue to a thread and
  ``call_soon_threadsafe`` back, which is what WriterThread does); and the Python run on the
  event loop before the hand-off (``_job_values`` + JSON; ``row_to_job``).
* statements: lifeline's own SQL (imported from ``lifeline.store.sqlite``) run in the calling
  thread on a connection with lifeline's pragmas and schema, each statement timed alone.
* frames: WAL pages written per commit (each is a 4 KiB write; a checkpoint writes them again).
* variants (NORMAL): the same raw SQL with one thing changed, to price an index or a pragma.

``--cprofile`` also prints cProfile statistics of both threads (event loop and writer).

Run: ``.venv/bin/python bench/breakdown.py [--ops 3000] [--repeats 3] [--cprofile] [--json F]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import queue
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lifeline
import lifeline_driver as driver
from common import QUEUE, SYNCS, Sync, median, payload
from lifeline.store import migrations
from lifeline.store import sqlite as lsql
from lifeline.store.sqlite_engine import WriterThread, open_connection

US = 1e6
Numbers = dict[str, float]

_FLAG = "SELECT paused FROM queue_flags WHERE queue = ?"
_ATTEMPT = (
    "INSERT INTO attempts (job_id, claim, worker_id, started_at, outcome) VALUES (?, ?, ?, ?, 'running')"
)
_COMPLETE = (
    "UPDATE jobs SET state = 'completed', lease_owner = NULL, lease_expires_at = NULL,"
    " updated_at = ?, finished_at = ? WHERE id = ? AND lease_owner = ? AND state = 'processing'"
)

# One thing changed at a time, applied to a fresh database with lifeline's schema.
VARIANTS: dict[str, list[str]] = {
    "lifeline schema and pragmas (as shipped)": [],
    "without index jobs_finished": ["DROP INDEX jobs_finished"],
    "without index jobs_leased": ["DROP INDEX jobs_leased"],
    "PRAGMA wal_autocheckpoint=0 (as the writer runs it)": ["PRAGMA wal_autocheckpoint=0"],
}


class WriterTimer:
    """Wraps ``WriterThread._execute`` to add up the writer thread's time (and optionally profile it)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.profile: cProfile.Profile | None = None

    @contextmanager
    def installed(self) -> Iterator[WriterTimer]:
        original = WriterThread._execute
        timer = self

        def timed(writer: WriterThread, ops: list[Any]) -> None:
            start = time.perf_counter()
            if timer.profile is not None:
                timer.profile.enable()
            try:
                original(writer, ops)
            finally:
                if timer.profile is not None:
                    timer.profile.disable()
                timer.seconds += time.perf_counter() - start

        setattr(WriterThread, "_execute", timed)  # noqa: B010
        try:
            yield self
        finally:
            setattr(WriterThread, "_execute", original)  # noqa: B010


def _rows(ops: int, offset: int = 0) -> list[tuple[Any, ...]]:
    """What ``SQLiteStore._job_values`` produces for the benchmark's payloads."""
    store: Any = lifeline.connect("sqlite:///unused.db")
    now = time.time()
    return [
        store._job_values(
            QUEUE,
            payload(offset + i),
            priority=0,
            delay=0.0,
            max_attempts=None,
            recording_id=None,
            user_id=None,
            client_id=None,
            idempotency_key=None,
            now=now,
        )
        for i in range(ops)
    ]


def _connection(db: Path, sync: Sync, setup: list[str] = []) -> sqlite3.Connection:  # noqa: B006
    conn: sqlite3.Connection = open_connection(db, sync)
    migrations.apply_sqlite(conn)
    for statement in setup:
        conn.execute(statement)
    return conn


class Clock:
    """Adds up the time of named steps."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._last = time.perf_counter()

    def start(self) -> None:
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.totals[name] = self.totals.get(name, 0.0) + now - self._last
        self._last = now

    def per_op(self, ops: int) -> Numbers:
        return {name: seconds / ops * US for name, seconds in self.totals.items()}


def raw_sql(db: Path, sync: Sync, ops: int, setup: list[str] = []) -> Numbers:  # noqa: B006
    """Lifeline's statements for enqueue, claim and complete, each timed, in this thread."""
    conn = _connection(db, sync, setup)
    rows = _rows(ops)
    enq, cc = Clock(), Clock()
    for row in rows:
        enq.start()
        conn.execute("BEGIN IMMEDIATE")
        enq.lap("enqueue: BEGIN IMMEDIATE")
        conn.execute(lsql._INSERT_JOB, row)
        enq.lap("enqueue: INSERT INTO jobs")
        conn.execute("COMMIT")
        enq.lap("enqueue: COMMIT")
    for i in range(ops):
        now = time.time()
        owner = f"w#{i}"
        cc.start()
        conn.execute("BEGIN IMMEDIATE")
        cc.lap("claim: BEGIN IMMEDIATE")
        conn.execute(_FLAG, (QUEUE,)).fetchone()
        cc.lap("claim: SELECT paused FROM queue_flags")
        params = {"owner": owner, "expires": now + 300, "now": now, "queue": QUEUE, "limit": 1}
        job = conn.execute(lsql._CLAIM, params).fetchall()[0]
        cc.lap("claim: UPDATE jobs ... RETURNING (_CLAIM)")
        conn.executemany(_ATTEMPT, [(job[0], job[9], "w", now)])
        cc.lap("claim: INSERT INTO attempts (executemany)")
        conn.execute("COMMIT")
        cc.lap("claim: COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        cc.lap("complete: BEGIN IMMEDIATE")
        cur = conn.execute(_COMPLETE, (now, now, job[0], owner))
        assert cur.rowcount == 1
        cc.lap("complete: UPDATE jobs (_cas)")
        conn.execute(lsql._CLOSE_ATTEMPT, (now, "completed", None, job[0], job[9]))
        cc.lap("complete: UPDATE attempts (_CLOSE_ATTEMPT)")
        conn.execute("COMMIT")
        cc.lap("complete: COMMIT")
    conn.close()
    result = enq.per_op(ops)
    result["enqueue: total"] = sum(enq.totals.values()) / ops * US
    result.update(cc.per_op(ops))
    result["claim+complete: total"] = sum(cc.totals.values()) / ops * US
    return result


def wal_frames(db: Path, ops: int) -> Numbers:
    """WAL pages written per commit, counted with the automatic checkpoint off."""
    conn = _connection(db, "normal", ["PRAGMA wal_autocheckpoint=0"])

    def frames() -> float:
        logged = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return float(logged) / ops

    frames()
    for row in _rows(ops):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(lsql._INSERT_JOB, row)
        conn.execute("COMMIT")
    result = {"enqueue": frames()}
    claimed = []
    for i in range(ops):
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_FLAG, (QUEUE,)).fetchone()
        params = {"owner": f"w#{i}", "expires": now + 300, "now": now, "queue": QUEUE, "limit": 1}
        job = conn.execute(lsql._CLAIM, params).fetchall()[0]
        conn.executemany(_ATTEMPT, [(job[0], job[9], "w", now)])
        conn.execute("COMMIT")
        claimed.append((job[0], job[9], f"w#{i}"))
    result["claim"] = frames()
    for job_id, claim, owner in claimed:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_COMPLETE, (now, now, job_id, owner))
        conn.execute(lsql._CLOSE_ATTEMPT, (now, "completed", None, job_id, claim))
        conn.execute("COMMIT")
    result["complete"] = frames()
    conn.close()
    plain = sqlite3.connect(str(db.with_name("plain.db")), isolation_level=None)
    plain.execute("PRAGMA journal_mode=WAL")
    plain.execute("PRAGMA wal_autocheckpoint=0")
    plain.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT)")
    plain.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for i in range(ops):
        plain.execute("INSERT INTO t (payload) VALUES (?)", (json.dumps(payload(i)),))
    result["plain sqlite3 insert (for scale)"] = (
        float(plain.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]) / ops
    )
    plain.close()
    return result


async def bare_handoff(ops: int) -> float:
    """A SimpleQueue to a thread and ``call_soon_threadsafe`` back: WriterThread without SQLite."""
    loop = asyncio.get_running_loop()
    inbox: queue.SimpleQueue[asyncio.Future[None] | None] = queue.SimpleQueue()

    def run() -> None:
        while (future := inbox.get()) is not None:
            loop.call_soon_threadsafe(future.set_result, None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    start = time.perf_counter()
    for _ in range(ops):
        future: asyncio.Future[None] = loop.create_future()
        inbox.put(future)
        await future
    seconds = time.perf_counter() - start
    inbox.put(None)
    thread.join()
    return seconds / ops * US


async def store_paths(
    db: Path, sync: Sync, ops: int, timer: WriterTimer, loop_profile: cProfile.Profile | None
) -> Numbers:
    out: Numbers = {}
    async with lifeline.connect(driver.url(db, sync)) as store:
        writer: Any = store
        noop: Callable[[sqlite3.Connection], None] = lambda conn: None  # noqa: E731
        start = time.perf_counter()
        for _ in range(ops):
            await writer._write(noop)
        out["hand-off: await store._write(no-op)"] = (time.perf_counter() - start) / ops * US

        if loop_profile is not None:
            loop_profile.enable()
        timer.seconds = 0.0
        start = time.perf_counter()
        for i in range(ops):
            await store.enqueue(QUEUE, payload(i))
        out["enqueue: store.enqueue"] = (time.perf_counter() - start) / ops * US
        out["enqueue: of which in the writer thread"] = timer.seconds / ops * US

        timer.seconds = 0.0
        claim_s = complete_s = 0.0
        for _ in range(ops):
            t0 = time.perf_counter()
            job = await store.claim(QUEUE, worker_id="w")
            t1 = time.perf_counter()
            assert job is not None
            await store.complete(job)
            claim_s += t1 - t0
            complete_s += time.perf_counter() - t1
        if loop_profile is not None:
            loop_profile.disable()
        out["claim: store.claim"] = claim_s / ops * US
        out["complete: store.complete"] = complete_s / ops * US
        out["claim+complete: of which in the writer thread"] = timer.seconds / ops * US

    rows = [(i, json.dumps(payload(i))) for i in range(ops)]
    start = time.perf_counter()
    _rows(ops)
    out["prep: _job_values + JSON encode (event loop)"] = (time.perf_counter() - start) / ops * US
    claimed = [
        (
            i,
            QUEUE,
            "processing",
            0,
            1.0,
            text,
            1,
            3,
            0,
            1,
            "w#1",
            2.0,
            None,
            None,
            None,
            None,
            None,
            1.0,
            1.0,
            None,
        )
        for i, text in rows
    ]
    start = time.perf_counter()
    for row in claimed:
        lsql.row_to_job(row)
    out["prep: row_to_job incl. JSON decode (writer thread)"] = (time.perf_counter() - start) / ops * US
    out["bare hand-off: thread round trip, no SQLite"] = await bare_handoff(ops)
    return out


def _median_of(runs: list[Numbers]) -> Numbers:
    return {key: median([run[key] for run in runs]) for key in runs[0]}


def measure(ops: int, repeats: int, profile: bool) -> tuple[dict[str, Any], str]:
    work = Path(tempfile.mkdtemp(prefix="lifeline-breakdown-"))
    text = ""
    result: dict[str, Any] = {"ops": ops, "repeats": repeats, "paths": {}, "statements": {}, "variants": {}}
    try:
        timer = WriterTimer()
        with timer.installed():
            for sync in SYNCS:
                paths: list[Numbers] = []
                statements: list[Numbers] = []
                for r in range(repeats):
                    loop_profile = cProfile.Profile() if profile and r == 0 else None
                    timer.profile = cProfile.Profile() if profile and r == 0 else None
                    paths.append(
                        asyncio.run(store_paths(work / f"s{sync}{r}.db", sync, ops, timer, loop_profile))
                    )
                    statements.append(raw_sql(work / f"r{sync}{r}.db", sync, ops))
                    if loop_profile is not None and timer.profile is not None:
                        for title, prof in (
                            ("event loop thread", loop_profile),
                            ("writer thread", timer.profile),
                        ):
                            buf = io.StringIO()
                            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(16)
                            text += f"\n===== {sync}: {title}, {ops} enqueues + {ops} claim/complete =====\n"
                            text += buf.getvalue()
                result["paths"][sync] = _median_of(paths)
                result["statements"][sync] = _median_of(statements)
        for name, setup in VARIANTS.items():
            runs = [
                raw_sql(work / f"v{len(result['variants'])}-{r}.db", "normal", ops, setup)
                for r in range(repeats)
            ]
            totals = _median_of(runs)
            result["variants"][name] = {
                "enqueue": totals["enqueue: total"],
                "claim+complete": totals["claim+complete: total"],
            }
        result["frames"] = wal_frames(work / "frames.db", ops)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result, text


def render(result: dict[str, Any]) -> str:
    lines = [f"{'µs per operation':<58} {'NORMAL':>8} {'FULL':>8}"]
    for section in ("paths", "statements"):
        for key in result[section]["normal"]:
            normal, full = result[section]["normal"][key], result[section]["full"][key]
            lines.append(f"{key:<58} {normal:>8.1f} {full:>8.1f}")
        lines.append("")
    lines.append(f"{'raw SQL at NORMAL, µs per job':<58} {'enqueue':>8} {'cl+comp':>8}")
    for name, values in result["variants"].items():
        lines.append(f"{name:<58} {values['enqueue']:>8.1f} {values['claim+complete']:>8.1f}")
    lines.append("")
    for key, value in result["frames"].items():
        lines.append(f"WAL pages per commit, {key:<36} {value:>8.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    result, text = measure(args.ops, args.repeats, args.cprofile)
    if text:
        print(text)
    print(render(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
