"""Recordings, their audio and their outputs across recordings, for the SQLite store.

A mixin of :class:`lifeline.store.sqlite.SQLiteStore`: its writes run on the store's writer
thread (each inside the batch transaction, so an audio chunk shares the group commit with
everything else), its reads on the reader pool. Audio is kept as chunks keyed (recording, seq)
and read back a page at a time, so a one-hour recording is never loaded whole by the store.
Full-text search uses the contentless FTS5 table ``outputs_fts``, kept in step with ``outputs``
by triggers (see ``sql/sqlite/0004_audio_outputs.sql``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from lifeline.domain import JSON, Conflict, NotFound
from lifeline.store.base import (
    FoundOutput,
    OutputKey,
    RecordingRow,
    RecordingTotals,
    StoredOutput,
    dumps_json,
)
from lifeline.store.fulltext import fts5_match, query_words
from lifeline.store.recording_rows import RECORDING_COLUMNS, bounded, page, recording_from_row

_O_COLUMNS = "o.recording_id, o.stage, o.idx, o.data, o.job_id, o.revision, o.updated_at"
# an output's status, spelled exactly as the index outputs_status spells it (sql/sqlite/0006)
_STATUS = "COALESCE(json_extract(o.data, '$.status'), 'open')"


def _output(row: Sequence[Any]) -> StoredOutput:
    return StoredOutput(row[0], row[1], int(row[2]), json.loads(row[3]), row[4], int(row[5]), float(row[6]))


def _found(row: Sequence[Any]) -> FoundOutput:
    return FoundOutput.of(_output(row), row[7], None if row[8] is None else float(row[8]))


def search_sql(
    stage: str,
    *,
    user_id: str | None,
    query: str | None,
    status: str | None,
    after: OutputKey | None,
    limit: int,
    offset: int,
) -> tuple[str, list[Any]]:
    """The statement of :meth:`SQLiteRecordingsMixin.search_outputs` and its arguments (a query
    with words; the tests read its plan).

    One user's outputs walk their recordings newest first (``recordings_user``, from ``after``'s
    time on), and each recording's outputs of the stage (and status) in index order
    (``outputs_status``): a page reads about a page of rows, wherever it starts. CROSS JOIN fixes
    that order, which the planner cannot know is the selective one.
    """
    if after is not None and query is not None:
        raise ValueError("a search by words is ordered by relevance: page it by offset, not after")
    where = ["o.stage = ?"]
    args: list[Any] = [stage]
    if user_id is not None:
        where.append("r.user_id = ?")
        args.append(user_id)
    if status is not None:
        where.append(f"{_STATUS} = ?")  # spelled exactly as in the index outputs_status
        args.append(status)
    if after is not None:
        rest = "(o.recording_id > ? OR (o.recording_id = ? AND o.idx > ?))"
        rest_args = [after.recording_id, after.recording_id, after.index]
        if after.created_at is None:  # only outputs whose recording is gone follow
            where.append(f"r.created_at IS NULL AND {rest}")
            args += rest_args
        else:
            where.append(f"(r.created_at < ? OR r.created_at IS NULL OR (r.created_at = ? AND {rest}))")
            args += [after.created_at, after.created_at, *rest_args]
            if user_id is not None:  # (never NULL then) a bound alone, which recordings_user seeks to
                where.append("r.created_at <= ?")
                args.append(after.created_at)
    newest = "r.created_at DESC NULLS LAST, o.recording_id, o.idx"
    if query is None:
        source = (
            "recordings r CROSS JOIN outputs o ON o.recording_id = r.audio_uuid"
            if user_id is not None
            else "outputs o LEFT JOIN recordings r ON r.audio_uuid = o.recording_id"
        )
        order = newest
    else:
        join = "JOIN" if user_id is not None else "LEFT JOIN"
        source = (
            f"outputs_fts JOIN outputs o ON o.id = outputs_fts.rowid {join} recordings r"
            " ON r.audio_uuid = o.recording_id"
        )
        where.insert(0, "outputs_fts MATCH ?")
        args.insert(0, fts5_match(query_words(query)))
        order = f"bm25(outputs_fts), {newest}"
    sql = (
        f"SELECT {_O_COLUMNS}, r.filename, r.created_at FROM {source}"
        f" WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ? OFFSET ?"
    )
    return sql, [*args, *page(limit, offset)]


class SQLiteRecordingsMixin:
    if TYPE_CHECKING:  # provided by SQLiteStore
        _clock: Callable[[], float]

        def _write(self, fn: Callable[[sqlite3.Connection], Any], notify: tuple[str, ...] = ()) -> Any: ...

        def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Awaitable[Any]: ...

    # -- recordings -----------------------------------------------------------------------------
    async def get_recording(self, audio_uuid: str) -> RecordingRow:
        def fn(conn: sqlite3.Connection) -> RecordingRow:
            row = conn.execute(
                f"SELECT {RECORDING_COLUMNS} FROM recordings WHERE audio_uuid = ?", (audio_uuid,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no recording {audio_uuid}")
            return recording_from_row(row)

        found: RecordingRow = await self._read(fn)
        return found

    async def list_recordings(
        self, *, user_id: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[RecordingRow]:
        where, params = ("WHERE user_id = ?", [user_id]) if user_id is not None else ("", [])
        sql = (
            f"SELECT {RECORDING_COLUMNS} FROM recordings {where}"
            " ORDER BY created_at DESC, audio_uuid DESC LIMIT ? OFFSET ?"
        )
        args = [*params, *page(limit, offset)]

        def fn(conn: sqlite3.Connection) -> list[RecordingRow]:
            return [recording_from_row(r) for r in conn.execute(sql, args)]

        rows: list[RecordingRow] = await self._read(fn)
        return rows

    async def count_recordings(self, *, user_id: str | None = None) -> int:
        def fn(conn: sqlite3.Connection) -> int:
            if user_id is None:
                return int(conn.execute("SELECT COUNT(*) FROM recordings").fetchone()[0])
            return int(
                conn.execute("SELECT COUNT(*) FROM recordings WHERE user_id = ?", (user_id,)).fetchone()[0]
            )

        count: int = await self._read(fn)
        return count

    async def unfinished_recordings(self, *, idle_before: float, limit: int = 100) -> list[RecordingRow]:
        # walks the partial index recordings_unclosed (only unclosed recordings are in it) from
        # the oldest; the WHERE spells its predicate and its expression exactly as the index does
        sql = (
            f"SELECT {RECORDING_COLUMNS} FROM recordings"
            " WHERE closed_at IS NULL AND COALESCE(last_audio_at, created_at) < ?"
            " ORDER BY COALESCE(last_audio_at, created_at), audio_uuid LIMIT ?"
        )
        args = (idle_before, bounded(limit))

        def fn(conn: sqlite3.Connection) -> list[RecordingRow]:
            return [recording_from_row(r) for r in conn.execute(sql, args)]

        rows: list[RecordingRow] = await self._read(fn)
        return rows

    async def delete_recording(self, audio_uuid: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if conn.execute("DELETE FROM recordings WHERE audio_uuid = ?", (audio_uuid,)).rowcount != 1:
                raise NotFound(f"no recording {audio_uuid}")
            # the jobs go, so a worker still running one fails its compare-and-set: LeaseLost
            conn.execute(
                "DELETE FROM attempts WHERE job_id IN (SELECT id FROM jobs WHERE recording_id = ?)",
                (audio_uuid,),
            )
            conn.execute("DELETE FROM jobs WHERE recording_id = ?", (audio_uuid,))
            conn.execute("DELETE FROM outputs WHERE recording_id = ?", (audio_uuid,))  # triggers: FTS
            conn.execute("DELETE FROM audio_chunks WHERE recording_id = ?", (audio_uuid,))

        await self._write(op)

    # -- audio ----------------------------------------------------------------------------------
    async def append_audio(self, audio_uuid: str, seq: int, pcm: bytes) -> None:
        if seq < 0:
            raise ValueError("seq must not be negative")
        now = self._clock()
        size = len(pcm)

        def op(conn: sqlite3.Connection) -> None:
            # length() of a blob reads its size from the record header, not the blob itself
            old = conn.execute(
                "SELECT length(pcm) FROM audio_chunks WHERE recording_id = ? AND seq = ?", (audio_uuid, seq)
            ).fetchone()
            cur = conn.execute(
                "UPDATE recordings SET audio_bytes = audio_bytes + ?, audio_chunks = audio_chunks + ?,"
                " last_audio_at = ? WHERE audio_uuid = ? AND closed_at IS NULL",
                (size - (0 if old is None else int(old[0])), 1 if old is None else 0, now, audio_uuid),
            )
            if cur.rowcount != 1:  # nothing written yet
                row = conn.execute("SELECT closed_at FROM recordings WHERE audio_uuid = ?", (audio_uuid,))
                if row.fetchone() is None:
                    raise NotFound(f"no recording {audio_uuid}")
                raise Conflict(f"recording {audio_uuid} is closed: its audio can no longer change")
            conn.execute(
                "INSERT INTO audio_chunks (recording_id, seq, created_at, pcm) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (recording_id, seq) DO UPDATE SET pcm = excluded.pcm,"
                " created_at = excluded.created_at",
                (audio_uuid, seq, now, pcm),
            )

        await self._write(op)

    async def read_audio(
        self, audio_uuid: str, *, after_seq: int = -1, limit: int = 64
    ) -> list[tuple[int, bytes]]:
        args = (audio_uuid, after_seq, bounded(limit))

        def fn(conn: sqlite3.Connection) -> list[tuple[int, bytes]]:
            return [
                (int(seq), bytes(pcm))
                for seq, pcm in conn.execute(
                    "SELECT seq, pcm FROM audio_chunks WHERE recording_id = ? AND seq > ?"
                    " ORDER BY seq LIMIT ?",
                    args,
                )
            ]

        chunks: list[tuple[int, bytes]] = await self._read(fn)
        return chunks

    # -- outputs across recordings --------------------------------------------------------------
    async def search_outputs(
        self,
        stage: str,
        *,
        user_id: str | None = None,
        query: str | None = None,
        status: str | None = None,
        after: OutputKey | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[FoundOutput]:
        if query is not None and not query_words(query):
            return []
        sql, args = search_sql(
            stage, user_id=user_id, query=query, status=status, after=after, limit=limit, offset=offset
        )

        def fn(conn: sqlite3.Connection) -> list[FoundOutput]:
            return [_found(r) for r in conn.execute(sql, args)]

        found: list[FoundOutput] = await self._read(fn)
        return found

    async def get_output(self, recording_id: str, stage: str, index: int) -> StoredOutput:
        def fn(conn: sqlite3.Connection) -> StoredOutput:
            row = conn.execute(
                f"SELECT {_O_COLUMNS} FROM outputs o WHERE recording_id = ? AND stage = ? AND idx = ?",
                (recording_id, stage, index),
            ).fetchone()
            if row is None:
                raise NotFound(f"no output {recording_id}/{stage}/{index}")
            return _output(row)

        found: StoredOutput = await self._read(fn)
        return found

    async def update_output(self, recording_id: str, stage: str, index: int, data: JSON) -> StoredOutput:
        now = self._clock()
        text = dumps_json(data)

        def op(conn: sqlite3.Connection) -> StoredOutput:
            row = conn.execute(
                "UPDATE outputs SET data = ?, revision = revision + 1, updated_at = ?"
                " WHERE recording_id = ? AND stage = ? AND idx = ?"
                " RETURNING recording_id, stage, idx, data, job_id, revision, updated_at",
                (text, now, recording_id, stage, index),
            ).fetchone()
            if row is None:
                raise NotFound(f"no output {recording_id}/{stage}/{index}")
            return _output(row)

        updated: StoredOutput = await self._write(op)
        return updated

    async def delete_output(self, recording_id: str, stage: str, index: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "DELETE FROM outputs WHERE recording_id = ? AND stage = ? AND idx = ?",
                (recording_id, stage, index),
            )
            if cur.rowcount != 1:
                raise NotFound(f"no output {recording_id}/{stage}/{index}")

        await self._write(op)

    # -- totals ---------------------------------------------------------------------------------
    async def recording_totals(self) -> RecordingTotals:
        # one pass over the recordings: per source, how many, how many still open, their audio
        sql = (
            "SELECT source, COUNT(*), COALESCE(SUM(CASE WHEN closed_at IS NULL THEN 1 ELSE 0 END), 0),"
            " COALESCE(SUM(audio_bytes), 0) FROM recordings GROUP BY source"
        )

        def fn(conn: sqlite3.Connection) -> RecordingTotals:
            by_source: dict[str, int] = {}
            still_open = audio_bytes = 0
            for source, count, unclosed, stored in conn.execute(sql):
                by_source[str(source)] = int(count)
                still_open += int(unclosed)
                audio_bytes += int(stored)
            return RecordingTotals(by_source=by_source, open=still_open, audio_bytes=audio_bytes)

        totals: RecordingTotals = await self._read(fn)
        return totals

    async def audio_chunk_sizes(self, audio_uuid: str) -> list[tuple[int, int]]:
        # length() of a blob is read from the record's header: the blob's overflow pages (all of
        # a 32 kB chunk but its first 4 kB) are not read
        def fn(conn: sqlite3.Connection) -> list[tuple[int, int]]:
            return [
                (int(seq), int(size))
                for seq, size in conn.execute(
                    "SELECT seq, length(pcm) FROM audio_chunks WHERE recording_id = ? ORDER BY seq",
                    (audio_uuid,),
                )
            ]

        sizes: list[tuple[int, int]] = await self._read(fn)
        return sizes
