"""The SQLite engine: one writer thread with group commit, and a small pool of reader threads.

Why a writer thread: SQLite allows one writer at a time, and a commit at ``synchronous=FULL``
costs an fsync. Every write is a small function submitted to one thread, which takes all the
functions waiting at that moment, runs each inside its own SAVEPOINT in one transaction, commits
once and only then resolves the callers' futures. Concurrent enqueues and completions therefore
share one fsync, and each caller still returns only after its own work is durable. A function that
raises rolls back to its savepoint alone; the others in the batch are unaffected.

Readers run on their own connections (WAL lets them read while the writer writes), so a slow
statistics query never blocks the event loop or the writer.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from lifeline.domain import StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")
Synchronous = Literal["full", "normal"]

_MAX_BATCH = 1024
_WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes the WAL file is truncated to after it is reset


def open_connection(path: Path, synchronous: Synchronous) -> sqlite3.Connection:
    """A connection with the pragmas every Lifeline connection needs."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=60.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    conn.execute("PRAGMA busy_timeout=60000")
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


@dataclass(slots=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    notify: tuple[str, ...] = ()


@dataclass(slots=True)
class _Batch:
    done: list[tuple[_Op, Any, BaseException | None]] = field(default_factory=list)


_STOP = object()


class WriterThread:
    """Runs write functions in batches, one transaction and one commit per batch."""

    def __init__(
        self,
        path: Path,
        synchronous: Synchronous,
        loop: asyncio.AbstractEventLoop,
        on_commit: Callable[[set[str]], None],
    ) -> None:
        self._conn = open_connection(path, synchronous)
        # checkpoints run on the Checkpointer's thread, not inside this thread's commits, where
        # every thousandth commit would otherwise stall every caller waiting on it
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
        self._loop = loop
        self._on_commit = on_commit
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="lifeline-sqlite-writer", daemon=True)
        self._closed = False
        self.batches = 0
        self.operations = 0
        self._thread.start()

    def submit(
        self, fn: Callable[[sqlite3.Connection], T], notify: tuple[str, ...] = ()
    ) -> asyncio.Future[T]:
        if self._closed:
            raise StoreError("the store is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._inbox.put(_Op(fn, future, notify))
        return future

    def close(self) -> None:
        """Finish every submitted function, then stop the thread and close the connection."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put(_STOP)
        self._thread.join()
        self._conn.close()

    # -- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._inbox.get()
            if first is _STOP:
                break
            ops: list[_Op] = [first]
            while len(ops) < _MAX_BATCH:
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                ops.append(item)
            self._execute(ops)

    def _execute(self, ops: list[_Op]) -> None:
        try:
            self._execute_batch(ops)
        except BaseException as exc:  # the thread must not die: every later caller would wait forever
            log.exception("a write batch failed")
            if self._conn.in_transaction:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("rollback after a failed batch failed")
            error = exc if isinstance(exc, StoreError) else StoreError(f"the write batch failed: {exc}")
            self._deliver([(op, None, error) for op in ops])

    def _execute_batch(self, ops: list[_Op]) -> None:
        batch = _Batch()
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._deliver([(op, None, StoreError(f"cannot start a transaction: {exc}")) for op in ops])
            return
        single = len(ops) == 1
        for op in ops:
            if single:
                try:
                    batch.done.append((op, op.fn(conn), None))
                except BaseException as exc:  # the caller gets it; the transaction is rolled back
                    batch.done.append((op, None, exc))
                    if conn.in_transaction:  # SQLite may have rolled it back already (disk full, I/O)
                        conn.execute("ROLLBACK")
                    self._deliver(batch.done)
                    return
                continue
            conn.execute("SAVEPOINT op")
            try:
                result = op.fn(conn)
            except BaseException as exc:
                if not conn.in_transaction:
                    # SQLite rolled back the whole transaction, the work of the operations before
                    # this one included: the whole batch fails (see _execute).
                    raise StoreError(f"the transaction was aborted: {exc}") from exc
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                batch.done.append((op, None, exc))
            else:
                conn.execute("RELEASE op")
                batch.done.append((op, result, None))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rollback after a failed commit failed")
            error = StoreError(f"commit failed: {exc}")
            self._deliver([(op, None, error) for op, _, _ in batch.done])
            return
        self.batches += 1
        self.operations += len(ops)
        self._deliver(batch.done)

    def _deliver(self, done: list[tuple[_Op, Any, BaseException | None]]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._resolve, done)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            log.debug("event loop closed before %d results were delivered", len(done))

    def _resolve(self, done: list[tuple[_Op, Any, BaseException | None]]) -> None:
        touched: set[str] = set()
        for op, result, error in done:
            if op.future.done():  # cancelled by its caller
                continue
            if error is None:
                op.future.set_result(result)
                touched.update(op.notify)
            elif isinstance(error, sqlite3.Error):
                op.future.set_exception(StoreError(str(error)))
            else:
                op.future.set_exception(error)
        if touched:
            self._on_commit(touched)


class Checkpointer:
    """Copies the WAL back into the database in the background (PASSIVE: never blocks writers).

    Every process with a store runs one; when several processes share a file, whichever comes first
    does the work and the others find nothing to copy.
    """

    def __init__(self, path: Path, synchronous: Synchronous, interval: float = 1.0) -> None:
        self._conn = open_connection(path, synchronous)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lifeline-sqlite-checkpoint", daemon=True)
        self.checkpoints = 0
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.checkpoint()

    def checkpoint(self) -> None:
        try:
            _, frames, _ = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            log.warning("WAL checkpoint failed; retrying in %.0f s", self._interval, exc_info=True)
            return
        if frames > 0:
            self.checkpoints += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.checkpoint()
        self._conn.close()


class ReaderPool:
    """Read-only work on per-thread connections, each function inside one read transaction."""

    def __init__(self, path: Path, synchronous: Synchronous, threads: int = 2) -> None:
        self._path = path
        self._synchronous = synchronous
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lifeline-sqlite-reader")

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = open_connection(self._path, self._synchronous)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection()
        conn.execute("BEGIN")
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc
        finally:
            conn.execute("COMMIT")

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, fn)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
