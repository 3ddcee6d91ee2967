"""Throughput over time for the SQLite store.

A mixin of :class:`lifeline.store.sqlite.SQLiteStore`; reads only, on the store's readers.

Every statement walks the partial index ``jobs_finished (queue, state, updated_at)`` and spells
its WHERE term exactly as the index does (SQLite uses a partial index only then). A completed
row's ``updated_at`` is its ``finished_at``: nothing changes a completed row but a requeue, which
takes it out of the index. The queues are found by a loose scan (one index seek per queue), and
each queue's completions since the first bucket are one range of the index.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from lifeline.queue.policy import RetryPolicy
from lifeline.store.base import Throughput, fill_throughput, throughput_frame

# spelled exactly as in the partial index jobs_finished
_FINISHED = "state IN ('completed', 'cancelled', 'dead_letter')"

_FIRST_QUEUE = f"SELECT MIN(queue) FROM jobs WHERE {_FINISHED}"
_NEXT_QUEUE = f"SELECT MIN(queue) FROM jobs WHERE {_FINISHED} AND queue > ?"
# (updated_at - start) is never negative here, so CAST truncates exactly as floor would
_BUCKETS = (
    "SELECT CAST((updated_at - :start) / :bucket AS INTEGER) AS b, COUNT(*) FROM jobs"
    f" WHERE {_FINISHED} AND queue = :queue AND state = 'completed'"
    " AND updated_at >= :start AND updated_at < :end{scope} GROUP BY b"
)


class SQLiteStatsMixin:
    if TYPE_CHECKING:  # provided by SQLiteStore
        _clock: Callable[[], float]
        policies: dict[str, RetryPolicy]

        def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Awaitable[Any]: ...

    async def throughput(
        self, *, since: float, bucket_seconds: int = 60, user_id: str | None = None
    ) -> Throughput:
        start, buckets = throughput_frame(since, bucket_seconds, self._clock())
        known = list(self.policies)
        sql = _BUCKETS.format(scope="" if user_id is None else " AND user_id = :user")
        params = {
            "start": start,
            "bucket": bucket_seconds,
            "end": start + buckets * bucket_seconds,
            "user": user_id,
        }

        def fn(conn: sqlite3.Connection) -> Throughput:
            rows: list[tuple[str, int, int]] = []
            if buckets:
                queue = conn.execute(_FIRST_QUEUE).fetchone()[0]
                while queue is not None:
                    rows += [(queue, b, n) for b, n in conn.execute(sql, params | {"queue": queue})]
                    queue = conn.execute(_NEXT_QUEUE, (queue,)).fetchone()[0]
            return fill_throughput(start, bucket_seconds, buckets, known, rows)

        result: Throughput = await self._read(fn)
        return result
