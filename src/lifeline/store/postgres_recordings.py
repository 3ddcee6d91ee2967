"""Recordings, their audio and their outputs across recordings, for the PostgreSQL store.

A mixin of :class:`lifeline.store.postgres.PostgresStore`: its writes are operations of the
store's batching writer (group commit), its reads run on the read pool. Each operation raises, if
it must, before it writes (see :mod:`lifeline.store.postgres_engine`).

Writes that depend on what is already there (an audio chunk's size, a recording's jobs) first
lock the recording's row, so that two processes serialise on it and each later statement (READ
COMMITTED: a fresh snapshot per statement) sees what the other committed. Audio goes over the
wire in binary (``%b``, a binary cursor): a page of chunks is tens of megabytes, hex would double it.
Full-text search uses the GIN expression index on ``to_tsvector('simple', data ->> 'text')``.
"""

from __future__ import annotations

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
from lifeline.store.fulltext import query_words
from lifeline.store.postgres_engine import Connection, Tx
from lifeline.store.recording_rows import RECORDING_COLUMNS, bounded, page, recording_from_row

_O_COLUMNS = "o.recording_id, o.stage, o.idx, o.data, o.job_id, o.revision, o.updated_at"
# the indexed expression, spelled exactly as in outputs_text (or the index is not used)
_DOCUMENT = "to_tsvector('simple', o.data ->> 'text')"
# an output's status, spelled exactly as the index outputs_status spells it (sql/postgres/0006)
_STATUS = "COALESCE(o.data ->> 'status', 'open')"

_APPEND_AUDIO = """
WITH old AS (
    SELECT octet_length(pcm) AS size FROM audio_chunks WHERE recording_id = %(rec)s AND seq = %(seq)s
), chunk AS (
    INSERT INTO audio_chunks (recording_id, seq, created_at, pcm)
    VALUES (%(rec)s, %(seq)s, %(now)s, %(pcm)b)
    ON CONFLICT (recording_id, seq) DO UPDATE SET pcm = excluded.pcm, created_at = excluded.created_at
)
UPDATE recordings
   SET audio_bytes = audio_bytes + %(size)s - COALESCE((SELECT size FROM old), 0),
       audio_chunks = audio_chunks + CASE WHEN EXISTS (SELECT 1 FROM old) THEN 0 ELSE 1 END,
       last_audio_at = %(now)s
 WHERE audio_uuid = %(rec)s
"""

_DELETE_RECORDING = """
WITH gone_jobs AS (
    DELETE FROM jobs WHERE recording_id = %(rec)s RETURNING id
), gone_attempts AS (
    DELETE FROM attempts WHERE job_id IN (SELECT id FROM gone_jobs)
), gone_outputs AS (
    DELETE FROM outputs WHERE recording_id = %(rec)s
), gone_audio AS (
    DELETE FROM audio_chunks WHERE recording_id = %(rec)s
)
DELETE FROM recordings WHERE audio_uuid = %(rec)s
"""


def _output(row: Sequence[Any]) -> StoredOutput:
    return StoredOutput(
        row[0],
        row[1],
        int(row[2]),
        row[3],
        None if row[4] is None else int(row[4]),
        int(row[5]),
        float(row[6]),
    )


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
) -> tuple[str, dict[str, Any]]:
    """The statement of :meth:`PostgresRecordingsMixin.search_outputs` and its parameters (a
    query with words; the tests read its plan).

    One user's outputs walk their recordings newest first (``recordings_user``, from ``after``'s
    time on) and each recording's outputs of the stage (and status) in index order
    (``outputs_status``), an incremental sort putting recordings of the same time in order: a page
    reads about a page of rows, wherever it starts. That order is ``created_at DESC`` (nulls
    first), the backward order of the index: with one user's recordings (an inner join of a NOT
    NULL column) there is no null to place.
    """
    if after is not None and query is not None:
        raise ValueError("a search by words is ordered by relevance: page it by offset, not after")
    params: dict[str, Any] = {"stage": stage, "user": user_id, "status": status}
    params["limit"], params["offset"] = page(limit, offset)
    where = ["o.stage = %(stage)s"]
    if user_id is not None:
        where.append("r.user_id = %(user)s")
    if status is not None:
        where.append(f"{_STATUS} = %(status)s")
    if after is not None:
        params |= {"at": after.created_at, "rec": after.recording_id, "idx": after.index}
        rest = "(o.recording_id > %(rec)s OR (o.recording_id = %(rec)s AND o.idx > %(idx)s))"
        if after.created_at is None:  # only outputs whose recording is gone follow
            where.append(f"r.created_at IS NULL AND {rest}")
        else:
            where.append(
                f"(r.created_at < %(at)s OR r.created_at IS NULL OR (r.created_at = %(at)s AND {rest}))"
            )
            if user_id is not None:  # (never NULL then) a bound alone, which recordings_user seeks to
                where.append("r.created_at <= %(at)s")
    join = "JOIN" if user_id is not None else "LEFT JOIN"
    nulls = "" if user_id is not None else " NULLS LAST"
    newest = f"r.created_at DESC{nulls}, o.recording_id, o.idx"
    source = f"outputs o {join} recordings r ON r.audio_uuid = o.recording_id"
    order = newest
    if query is not None:
        # plainto_tsquery: every word required, and no query syntax at all
        params["query"] = query
        source += ", plainto_tsquery('simple', %(query)s) AS q"
        where.insert(0, f"{_DOCUMENT} @@ q")
        order = f"ts_rank({_DOCUMENT}, q) DESC, {newest}"
    sql = (
        f"SELECT {_O_COLUMNS}, r.filename, r.created_at FROM {source}"
        f" WHERE {' AND '.join(where)} ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s"
    )
    return sql, params


class PostgresRecordingsMixin:
    if TYPE_CHECKING:  # provided by PostgresStore
        _clock: Callable[[], float]

        def _write(self, fn: Callable[[Tx], Awaitable[Any]]) -> Awaitable[Any]: ...

        def _read(self, fn: Callable[[Connection], Awaitable[Any]]) -> Awaitable[Any]: ...

    # -- recordings -----------------------------------------------------------------------------
    async def get_recording(self, audio_uuid: str) -> RecordingRow:
        async def fn(conn: Connection) -> RecordingRow:
            cur = await conn.execute(
                f"SELECT {RECORDING_COLUMNS} FROM recordings WHERE audio_uuid = %s", (audio_uuid,)
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"no recording {audio_uuid}")
            return recording_from_row(row)

        found: RecordingRow = await self._read(fn)
        return found

    async def list_recordings(
        self, *, user_id: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[RecordingRow]:
        where, params = ("WHERE user_id = %s", [user_id]) if user_id is not None else ("", [])
        sql = (
            f"SELECT {RECORDING_COLUMNS} FROM recordings {where}"
            " ORDER BY created_at DESC, audio_uuid DESC LIMIT %s OFFSET %s"
        )
        args = [*params, *page(limit, offset)]

        async def fn(conn: Connection) -> list[RecordingRow]:
            cur = await conn.execute(sql, args)
            return [recording_from_row(r) for r in await cur.fetchall()]

        rows: list[RecordingRow] = await self._read(fn)
        return rows

    async def count_recordings(self, *, user_id: str | None = None) -> int:
        async def fn(conn: Connection) -> int:
            if user_id is None:
                cur = await conn.execute("SELECT COUNT(*) FROM recordings")
            else:
                cur = await conn.execute("SELECT COUNT(*) FROM recordings WHERE user_id = %s", (user_id,))
            row = await cur.fetchone()
            return 0 if row is None else int(row[0])

        count: int = await self._read(fn)
        return count

    async def unfinished_recordings(self, *, idle_before: float, limit: int = 100) -> list[RecordingRow]:
        # walks the partial index recordings_unclosed (only unclosed recordings are in it) from
        # the oldest; the WHERE spells its predicate and its expression exactly as the index does
        sql = (
            f"SELECT {RECORDING_COLUMNS} FROM recordings"
            " WHERE closed_at IS NULL AND COALESCE(last_audio_at, created_at) < %s"
            " ORDER BY COALESCE(last_audio_at, created_at), audio_uuid LIMIT %s"
        )
        args = (idle_before, bounded(limit))

        async def fn(conn: Connection) -> list[RecordingRow]:
            cur = await conn.execute(sql, args)
            return [recording_from_row(r) for r in await cur.fetchall()]

        rows: list[RecordingRow] = await self._read(fn)
        return rows

    async def delete_recording(self, audio_uuid: str) -> None:
        async def op(tx: Tx) -> None:
            await _lock_recording(tx, audio_uuid)
            # wait for completions of its jobs in flight elsewhere: once they commit, the next
            # statement's snapshot sees their outputs and next jobs, and deletes those too
            await tx.execute("SELECT id FROM jobs WHERE recording_id = %s FOR UPDATE", (audio_uuid,))
            await tx.execute(_DELETE_RECORDING, {"rec": audio_uuid})

        await self._write(op)

    # -- audio ----------------------------------------------------------------------------------
    async def append_audio(self, audio_uuid: str, seq: int, pcm: bytes) -> None:
        if seq < 0:
            raise ValueError("seq must not be negative")
        params = {"rec": audio_uuid, "seq": seq, "now": self._clock(), "pcm": pcm, "size": len(pcm)}

        async def op(tx: Tx) -> None:
            # the lock serialises with the trigger that closes the recording (its first job): the
            # chunk either commits before the close, or sees closed_at and writes nothing
            if await _lock_recording(tx, audio_uuid) is not None:
                raise Conflict(f"recording {audio_uuid} is closed: its audio can no longer change")
            await tx.execute(_APPEND_AUDIO, params)

        await self._write(op)

    async def read_audio(
        self, audio_uuid: str, *, after_seq: int = -1, limit: int = 64
    ) -> list[tuple[int, bytes]]:
        args = (audio_uuid, after_seq, bounded(limit))

        async def fn(conn: Connection) -> list[tuple[int, bytes]]:
            async with conn.cursor(binary=True) as cur:
                await cur.execute(
                    "SELECT seq, pcm FROM audio_chunks WHERE recording_id = %s AND seq > %s"
                    " ORDER BY seq LIMIT %s",
                    args,
                )
                return [(int(seq), bytes(pcm)) for seq, pcm in await cur.fetchall()]

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
        if query is not None and not query_words(query):  # plainto_tsquery would find no lexeme
            return []
        sql, params = search_sql(
            stage, user_id=user_id, query=query, status=status, after=after, limit=limit, offset=offset
        )

        async def fn(conn: Connection) -> list[FoundOutput]:
            cur = await conn.execute(sql, params)
            return [_found(r) for r in await cur.fetchall()]

        found: list[FoundOutput] = await self._read(fn)
        return found

    async def get_output(self, recording_id: str, stage: str, index: int) -> StoredOutput:
        async def fn(conn: Connection) -> StoredOutput:
            cur = await conn.execute(
                f"SELECT {_O_COLUMNS} FROM outputs o WHERE recording_id = %s AND stage = %s AND idx = %s",
                (recording_id, stage, index),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"no output {recording_id}/{stage}/{index}")
            return _output(row)

        found: StoredOutput = await self._read(fn)
        return found

    async def update_output(self, recording_id: str, stage: str, index: int, data: JSON) -> StoredOutput:
        params = (dumps_json(data), self._clock(), recording_id, stage, index)

        async def op(tx: Tx) -> StoredOutput:
            cur = await tx.execute(
                "UPDATE outputs SET data = %s::json, revision = revision + 1, updated_at = %s"
                " WHERE recording_id = %s AND stage = %s AND idx = %s"
                " RETURNING recording_id, stage, idx, data, job_id, revision, updated_at",
                params,
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"no output {recording_id}/{stage}/{index}")
            return _output(row)

        updated: StoredOutput = await self._write(op)
        return updated

    async def delete_output(self, recording_id: str, stage: str, index: int) -> None:
        async def op(tx: Tx) -> None:
            cur = await tx.execute(
                "DELETE FROM outputs WHERE recording_id = %s AND stage = %s AND idx = %s",
                (recording_id, stage, index),
            )
            if cur.rowcount != 1:
                raise NotFound(f"no output {recording_id}/{stage}/{index}")

        await self._write(op)

    # -- totals ---------------------------------------------------------------------------------
    async def recording_totals(self) -> RecordingTotals:
        # one pass over the recordings: per source, how many, how many still open, their audio
        sql = (
            "SELECT source, COUNT(*), COUNT(*) FILTER (WHERE closed_at IS NULL),"
            " COALESCE(SUM(audio_bytes), 0) FROM recordings GROUP BY source"
        )

        async def fn(conn: Connection) -> RecordingTotals:
            by_source: dict[str, int] = {}
            still_open = audio_bytes = 0
            cur = await conn.execute(sql)
            for source, count, unclosed, stored in await cur.fetchall():
                by_source[str(source)] = int(count)
                still_open += int(unclosed)
                audio_bytes += int(stored)
            return RecordingTotals(by_source=by_source, open=still_open, audio_bytes=audio_bytes)

        totals: RecordingTotals = await self._read(fn)
        return totals

    async def audio_chunk_sizes(self, audio_uuid: str) -> list[tuple[int, int]]:
        # octet_length() of a TOASTed bytea is read from its TOAST pointer: the value is not fetched
        async def fn(conn: Connection) -> list[tuple[int, int]]:
            cur = await conn.execute(
                "SELECT seq, octet_length(pcm) FROM audio_chunks WHERE recording_id = %s ORDER BY seq",
                (audio_uuid,),
            )
            return [(int(seq), int(size)) for seq, size in await cur.fetchall()]

        sizes: list[tuple[int, int]] = await self._read(fn)
        return sizes


async def _lock_recording(tx: Tx, audio_uuid: str) -> float | None:
    """Lock the recording's row and return its ``closed_at``; :class:`NotFound` (nothing written)
    if there is none."""
    cur = await tx.execute("SELECT closed_at FROM recordings WHERE audio_uuid = %s FOR UPDATE", (audio_uuid,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no recording {audio_uuid}")
    return None if row[0] is None else float(row[0])
