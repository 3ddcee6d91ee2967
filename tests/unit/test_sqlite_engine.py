"""The SQLite engine: group commit through one writer thread, readers on their own connections."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from lifeline import StoreError
from lifeline.store.sqlite_engine import ReaderPool, WriterThread, open_connection


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "engine.db"
    conn = open_connection(path, "normal")
    conn.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)")
    conn.close()
    return path


def rows(path: Path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")]
    finally:
        conn.close()


def insert(value: int) -> Callable[[sqlite3.Connection], int]:
    def op(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
        return value

    return op


def insert_then_raise(value: int) -> Callable[[sqlite3.Connection], int]:
    def op(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
        raise ValueError(f"op {value} failed after writing")

    return op


class Gate:
    """An operation that holds the writer thread until released, so that the next ones batch up."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: sqlite3.Connection) -> str:
        self.entered.set()
        assert self.release.wait(10)
        return "gate"


async def test_waiting_operations_share_one_transaction_and_fail_alone(db: Path) -> None:
    touched: list[set[str]] = []
    writer = WriterThread(db, "normal", asyncio.get_running_loop(), touched.append)
    try:
        gate = Gate()
        held = writer.submit(gate)
        assert await asyncio.to_thread(gate.entered.wait, 10)

        futures = [
            writer.submit(insert(1), ("a",)),
            writer.submit(insert_then_raise(2), ("never",)),
            writer.submit(insert(3), ("b",)),
            writer.submit(insert(3), ("dup",)),  # a constraint error: a StoreError for this caller only
            writer.submit(insert(4)),
        ]
        gate.release.set()
        assert await held == "gate"
        results = await asyncio.gather(*futures, return_exceptions=True)

        assert results[0] == 1
        assert isinstance(results[1], ValueError)
        assert results[2] == 3
        assert isinstance(results[3], StoreError)
        assert results[4] == 4
        assert rows(db) == [1, 3, 4]  # the failed operations' writes were rolled back, alone
        assert (writer.batches, writer.operations) == (2, 6)  # the gate's commit, then all five in one
        assert touched[-1] == {"a", "b"}  # only committed work wakes waiters
    finally:
        writer.close()


async def test_a_lone_failing_operation_rolls_back(db: Path) -> None:
    writer = WriterThread(db, "normal", asyncio.get_running_loop(), lambda _: None)
    try:
        with pytest.raises(ValueError, match="failed after writing"):
            await writer.submit(insert_then_raise(7))
        assert await writer.submit(insert(8)) == 8
        assert rows(db) == [8]
    finally:
        writer.close()


async def test_a_cancelled_caller_does_not_undo_the_others(db: Path) -> None:
    writer = WriterThread(db, "normal", asyncio.get_running_loop(), lambda _: None)
    try:
        gate = Gate()
        held = writer.submit(gate)
        assert await asyncio.to_thread(gate.entered.wait, 10)
        abandoned = writer.submit(insert(1))
        kept = writer.submit(insert(2))
        abandoned.cancel()
        gate.release.set()
        await held
        assert await kept == 2
        assert rows(db) == [1, 2]  # submitted work is done even if its caller stopped waiting
    finally:
        writer.close()


async def test_close_finishes_submitted_work_then_refuses_more(db: Path) -> None:
    writer = WriterThread(db, "normal", asyncio.get_running_loop(), lambda _: None)
    futures = [writer.submit(insert(i)) for i in range(50)]
    await asyncio.to_thread(writer.close)
    assert await asyncio.gather(*futures) == list(range(50))
    assert rows(db) == list(range(50))
    with pytest.raises(StoreError, match="closed"):
        writer.submit(insert(99))
    writer.close()  # twice is harmless


async def test_readers_see_commits_and_cannot_write(db: Path) -> None:
    writer = WriterThread(db, "normal", asyncio.get_running_loop(), lambda _: None)
    readers = ReaderPool(db, "normal", threads=2)
    try:
        await writer.submit(insert(5))
        assert await readers.run(lambda conn: [r[0] for r in conn.execute("SELECT v FROM t")]) == [5]
        with pytest.raises(StoreError):
            await readers.run(lambda conn: conn.execute("INSERT INTO t (v) VALUES (6)"))
        assert await readers.run(lambda conn: conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 1
    finally:
        readers.close()
        writer.close()


@pytest.mark.parametrize(("level", "pragma"), [("full", 2), ("normal", 1)])
def test_connections_use_wal_and_the_chosen_durability(tmp_path: Path, level: str, pragma: int) -> None:
    conn = open_connection(tmp_path / "p.db", level)  # type: ignore[arg-type]
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == pragma
    finally:
        conn.close()


def abort_transaction(conn: sqlite3.Connection) -> None:
    """What SQLite may do on SQLITE_FULL, SQLITE_IOERR or SQLITE_NOMEM: roll the whole transaction back."""
    conn.execute("ROLLBACK")
    raise sqlite3.OperationalError("database or disk is full")


async def test_an_aborted_transaction_fails_its_batch_and_the_writer_lives_on(db: Path) -> None:
    writer = WriterThread(db, "normal", asyncio.get_running_loop(), lambda _: None)
    try:
        gate = Gate()
        held = writer.submit(gate)
        assert await asyncio.to_thread(gate.entered.wait, 10)
        futures = [writer.submit(insert(1)), writer.submit(abort_transaction), writer.submit(insert(2))]
        gate.release.set()
        assert await held == "gate"
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)
        # the whole transaction is gone, so nobody in it may be told that their work is durable
        assert all(isinstance(r, StoreError) for r in results), results
        assert "disk is full" in str(results[1])
        assert rows(db) == []

        alone = await asyncio.wait_for(
            asyncio.gather(writer.submit(abort_transaction), return_exceptions=True), 10
        )
        assert isinstance(alone[0], StoreError)
        assert await asyncio.wait_for(writer.submit(insert(3)), 10) == 3  # the writer still works
        assert rows(db) == [3]
    finally:
        writer.close()
