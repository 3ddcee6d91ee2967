"""The thread-based libraries behind one small interface, each configured to the durability asked for.

Every adapter is imported lazily by name (:func:`load`), so that a benchmark process only ever
imports the one library it measures and its peak RSS is that library's.

Durability: every database is in WAL mode, and ``synchronous`` is set to the level asked for on
each connection that writes; :meth:`Adapter.effective` reads it back from the connection so the
report shows what really ran, not what was asked for.
"""

from __future__ import annotations

import abc
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

from common import (
    BUSY_TIMEOUT,
    PRODUCERS,
    QUEUE,
    SQLITE_BATCH,
    Deadline,
    Sync,
    payload_id,
    payload_text,
    pragmas,
)


class Adapter(abc.ABC):
    """One queue library: enqueue, claim, complete, from one process and any number of threads."""

    name: ClassVar[str]
    remaining_sql: ClassVar[str]  # jobs not yet completed (pending or claimed)
    batch: ClassVar[int] = 1  # > 1: enqueue_batch / consume_batch are used instead

    def __init__(self, root: Path, sync: Sync, *, consumer: bool = False) -> None:
        self.root = root
        self.sync = sync
        self.consumer = consumer

    @classmethod
    @abc.abstractmethod
    def db_path(cls, root: Path) -> Path: ...

    @classmethod
    @abc.abstractmethod
    def describe(cls, sync: Sync) -> str:
        """How the durability level was set for this library."""

    @abc.abstractmethod
    def enqueue(self, text: str) -> None: ...

    @abc.abstractmethod
    def claim(self) -> tuple[int, Any] | None:
        """The next job as (payload id, handle for ``complete``), or ``None`` when the queue is empty."""

    @abc.abstractmethod
    def complete(self, handle: Any) -> None: ...

    def enqueue_batch(self, texts: list[str]) -> None:
        for text in texts:
            self.enqueue(text)

    def consume_batch(self) -> list[int]:
        raise NotImplementedError

    @abc.abstractmethod
    def effective(self) -> dict[str, str]: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class PersistQueue(Adapter):
    """persist-queue's ``SQLiteAckQueue``: get() marks the row unacked, ack() marks it acked."""

    name = "persist-queue"
    remaining_sql = "SELECT COUNT(*) FROM ack_queue_default WHERE status < 5"

    def __init__(self, root: Path, sync: Sync, *, consumer: bool = False) -> None:
        super().__init__(root, sync, consumer=consumer)
        from persistqueue import SQLiteAckQueue
        from persistqueue.exceptions import Empty

        self._empty = Empty
        # multithreading=True: one connection for put, one for get, usable from any thread.
        # auto_resume=False in consumers: a second consumer must not hand back the first one's jobs.
        self.q: Any = cast(
            Any,
            SQLiteAckQueue(
                str(root / "pq"), multithreading=True, timeout=BUSY_TIMEOUT, auto_resume=not consumer
            ),
        )
        # persist-queue has no synchronous option: set it on both of its connections.
        connections: list[sqlite3.Connection] = [self.q._putter, self.q._getter]
        for conn in {id(c): c for c in connections}.values():
            conn.execute(f"PRAGMA synchronous={sync.upper()}")

    @classmethod
    def db_path(cls, root: Path) -> Path:
        return root / "pq" / "data.db"

    @classmethod
    def describe(cls, sync: Sync) -> str:
        return (
            "`SQLiteAckQueue(path, multithreading=True, timeout=60)`; WAL is its default; no option for "
            f"`synchronous`, so `PRAGMA synchronous={sync.upper()}` is run on both of its connections "
            "(`_putter`, `_getter`) after construction. Items are pickled (the 200-byte JSON string)."
        )

    def enqueue(self, text: str) -> None:
        self.q.put(text)

    def claim(self) -> tuple[int, Any] | None:
        try:
            item = self.q.get(block=False, raw=True)
        except self._empty:
            return None
        return payload_id(item["data"]), item["pqid"]

    def complete(self, handle: Any) -> None:
        self.q.ack(id=handle)

    def effective(self) -> dict[str, str]:
        return pragmas(self.q._putter)

    def close(self) -> None:
        self.q.close()


class Huey(Adapter):
    """huey's ``SqliteStorage`` used directly: ``enqueue(bytes)`` and ``dequeue()``.

    ``dequeue`` deletes the row in the same transaction that reads it: there is no acknowledgement
    (a consumer that dies after dequeue loses the job), so "complete" costs nothing here.
    """

    name = "huey"
    remaining_sql = "SELECT COUNT(*) FROM task"

    def __init__(self, root: Path, sync: Sync, *, consumer: bool = False) -> None:
        super().__init__(root, sync, consumer=consumer)
        from huey.storage import SqliteStorage

        # fsync=True is huey's own switch for synchronous=FULL (fsync=False would be OFF).
        self.storage = SqliteStorage(
            name=QUEUE,
            filename=str(self.db_path(root)),
            timeout=BUSY_TIMEOUT,
            journal_mode="wal",
            fsync=True if sync == "full" else None,
        )
        if sync == "normal":
            # huey offers only FULL (fsync=True) or OFF (fsync=False): NORMAL is set on its connection.
            with self.storage.lock:
                self.storage.conn.execute("PRAGMA synchronous=NORMAL")

    @classmethod
    def db_path(cls, root: Path) -> Path:
        return root / "huey.db"

    @classmethod
    def describe(cls, sync: Sync) -> str:
        if sync == "full":
            return (
                "`SqliteStorage(journal_mode='wal', fsync=True, timeout=60)` (huey's `fsync=True` is FULL)."
            )
        return (
            "`SqliteStorage(journal_mode='wal', timeout=60)`, then `PRAGMA synchronous=NORMAL` on "
            "`storage.conn` (huey's `fsync` option offers only FULL or OFF)."
        )

    def enqueue(self, text: str) -> None:
        self.storage.enqueue(text.encode())

    def claim(self) -> tuple[int, Any] | None:
        data = self.storage.dequeue()
        if data is None:
            return None
        return payload_id(bytes(data)), None

    def complete(self, handle: Any) -> None:
        return None

    def effective(self) -> dict[str, str]:
        with self.storage.lock:
            return pragmas(self.storage.conn)

    def close(self) -> None:
        self.storage.close()


class LiteQueue(Adapter):
    """litequeue: ``put``, ``pop`` (UPDATE ... RETURNING under BEGIN IMMEDIATE), ``done``."""

    name = "litequeue"
    remaining_sql = "SELECT COUNT(*) FROM Queue WHERE status IN (0, 1)"

    def __init__(self, root: Path, sync: Sync, *, consumer: bool = False) -> None:
        super().__init__(root, sync, consumer=consumer)
        from litequeue import LiteQueue as Queue

        self.q = Queue(str(self.db_path(root)), timeout=BUSY_TIMEOUT)
        if sync == "full":
            # litequeue always sets WAL + NORMAL in its constructor: FULL is set afterwards.
            self.q.conn.execute("PRAGMA synchronous=FULL")

    @classmethod
    def db_path(cls, root: Path) -> Path:
        return root / "litequeue.db"

    @classmethod
    def describe(cls, sync: Sync) -> str:
        if sync == "normal":
            return "`LiteQueue(path, timeout=60)`: WAL and NORMAL are what its constructor sets."
        return (
            "`LiteQueue(path, timeout=60)` (sets WAL + NORMAL), then `PRAGMA synchronous=FULL` on `q.conn`."
        )

    def enqueue(self, text: str) -> None:
        self.q.put(text)

    def claim(self) -> tuple[int, Any] | None:
        message = self.q.pop()
        if message is None:
            return None
        return payload_id(message.data), message.message_id

    def complete(self, handle: Any) -> None:
        self.q.done(handle)

    def effective(self) -> dict[str, str]:
        return pragmas(self.q.conn)

    def close(self) -> None:
        self.q.close()


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, state INTEGER NOT NULL DEFAULT 0,"
    " payload TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (id) WHERE state = 0",
)
_CLAIM_ONE = (
    "UPDATE jobs SET state = 1 WHERE id = (SELECT id FROM jobs WHERE state = 0 ORDER BY id LIMIT 1)"
    " RETURNING id, payload"
)
_CLAIM_MANY = (
    "UPDATE jobs SET state = 1 WHERE id IN (SELECT id FROM jobs WHERE state = 0 ORDER BY id LIMIT ?)"
    " RETURNING id, payload"
)


class PlainSqlite(Adapter):
    """Plain ``sqlite3``, one transaction per operation: the physical limit of one commit per call.

    One connection shared by all threads behind a lock (as huey does). Claim is one atomic
    ``UPDATE ... RETURNING`` (an autocommit statement takes the write lock before it reads).
    """

    name = "sqlite3 (txn/op)"
    remaining_sql = "SELECT COUNT(*) FROM jobs WHERE state != 2"

    def __init__(self, root: Path, sync: Sync, *, consumer: bool = False) -> None:
        super().__init__(root, sync, consumer=consumer)
        self.conn = sqlite3.connect(
            str(self.db_path(root)), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT
        )
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={sync.upper()}")
        if not consumer:
            for statement in _SCHEMA:
                self.conn.execute(statement)
        self.lock = threading.Lock()

    @classmethod
    def db_path(cls, root: Path) -> Path:
        return root / "plain.db"

    @classmethod
    def describe(cls, sync: Sync) -> str:
        return (
            f"`sqlite3.connect(isolation_level=None)`, `PRAGMA journal_mode=WAL`, "
            f"`PRAGMA synchronous={sync.upper()}`; table `jobs(id, state, payload)` with a partial index "
            "on pending rows."
        )

    def enqueue(self, text: str) -> None:
        with self.lock:
            self.conn.execute("INSERT INTO jobs (payload) VALUES (?)", (text,))

    def claim(self) -> tuple[int, Any] | None:
        with self.lock:
            row = self.conn.execute(_CLAIM_ONE).fetchone()
        if row is None:
            return None
        return payload_id(row[1]), row[0]

    def complete(self, handle: Any) -> None:
        with self.lock:
            self.conn.execute("UPDATE jobs SET state = 2 WHERE id = ?", (handle,))

    def effective(self) -> dict[str, str]:
        with self.lock:
            return pragmas(self.conn)

    def close(self) -> None:
        self.conn.close()


class PlainSqliteBatched(PlainSqlite):
    """Plain ``sqlite3`` with 100 operations per transaction: what one fsync per 100 jobs buys."""

    name = "sqlite3 (txn/100)"
    batch = SQLITE_BATCH

    @classmethod
    def db_path(cls, root: Path) -> Path:
        return root / "plain100.db"

    @classmethod
    def describe(cls, sync: Sync) -> str:
        return (
            PlainSqlite.describe(sync) + f" {SQLITE_BATCH} inserts per transaction (executemany); a consume "
            f"transaction claims {SQLITE_BATCH} jobs in one UPDATE ... RETURNING and completes them."
        )

    def enqueue_batch(self, texts: list[str]) -> None:
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany("INSERT INTO jobs (payload) VALUES (?)", [(t,) for t in texts])
            self.conn.execute("COMMIT")

    def consume_batch(self) -> list[int]:
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            rows = self.conn.execute(_CLAIM_MANY, (self.batch,)).fetchall()
            ids = [payload_id(payload) for _, payload in rows]  # the "handler" runs inside the txn
            self.conn.executemany("UPDATE jobs SET state = 2 WHERE id = ?", [(row[0],) for row in rows])
            self.conn.execute("COMMIT")
        return ids


ADAPTERS: dict[str, type[Adapter]] = {
    "persist-queue": PersistQueue,
    "huey": Huey,
    "litequeue": LiteQueue,
    "sqlite-op": PlainSqlite,
    "sqlite-batch": PlainSqliteBatched,
}


def load(key: str) -> type[Adapter]:
    return ADAPTERS[key]


# -- drivers ----------------------------------------------------------------------------------


def enqueue_sequential(adapter: Adapter, ids: Sequence[int], deadline: Deadline) -> list[int]:
    """One producer calling enqueue and waiting for each call (or for each batch of ``batch``)."""
    done: list[int] = []
    step = adapter.batch
    for start in range(0, len(ids), step):
        if deadline.passed():
            break
        chunk = ids[start : start + step]
        if step == 1:
            adapter.enqueue(payload_text(chunk[0]))
        else:
            adapter.enqueue_batch([payload_text(i) for i in chunk])
        done.extend(chunk)
    return done


def enqueue_threads(adapter: Adapter, ids: Sequence[int], deadline: Deadline) -> list[int]:
    """``PRODUCERS`` threads sharing the adapter, each enqueueing its share one call at a time."""
    results: list[list[int]] = [[] for _ in range(PRODUCERS)]
    errors: list[BaseException] = []
    start = threading.Barrier(PRODUCERS)

    def producer(k: int) -> None:
        try:
            start.wait()
            results[k] = enqueue_sequential(adapter, ids[k::PRODUCERS], deadline)
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(PRODUCERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [job_id for part in results for job_id in part]


def consume(adapter: Adapter, deadline: Deadline) -> list[int]:
    """Claim and complete (empty handler) until the queue is empty or the deadline passes."""
    seen: list[int] = []
    while not deadline.passed():
        if adapter.batch > 1:
            ids = adapter.consume_batch()
            if not ids:
                break
            seen.extend(ids)
            continue
        claimed = adapter.claim()
        if claimed is None:
            break
        job_id, handle = claimed
        seen.append(job_id)
        adapter.complete(handle)
    return seen
