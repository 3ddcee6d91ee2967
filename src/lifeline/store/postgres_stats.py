"""Throughput over time for the PostgreSQL store.

A mixin of :class:`lifeline.store.postgres.PostgresStore`; reads only, on the read pool.

Both statements walk the partial index ``jobs_finished (queue, state, updated_at)``: the queues
by a loose index scan (a recursive query that seeks the next queue name, one index probe per
queue), then, per queue, one range of the index from the first bucket's start. A completed row's
``updated_at`` is its ``finished_at``: nothing changes a completed row but a requeue, which takes
it out of the index.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from lifeline.queue.policy import RetryPolicy
from lifeline.store.base import Throughput, fill_throughput, throughput_frame
from lifeline.store.postgres_engine import Connection

_FINISHED = "state IN ('completed', 'cancelled', 'dead_letter')"

_THROUGHPUT = f"""
WITH RECURSIVE queues (queue) AS (
    (SELECT queue FROM jobs WHERE {_FINISHED} ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue FROM jobs j WHERE j.{_FINISHED} AND j.queue > q.queue ORDER BY j.queue LIMIT 1)
      FROM queues q WHERE q.queue IS NOT NULL
)
SELECT q.queue, c.b, c.n
  FROM queues q
  CROSS JOIN LATERAL (
      SELECT floor((j.updated_at - %(start)s) / %(bucket)s)::int AS b, count(*)::int AS n
        FROM jobs j
       WHERE j.{_FINISHED} AND j.queue = q.queue AND j.state = 'completed'
         AND j.updated_at >= %(start)s AND j.updated_at < %(end)s
         AND (%(user)s::text IS NULL OR j.user_id = %(user)s::text)
       GROUP BY 1
  ) c
 WHERE q.queue IS NOT NULL
"""


class PostgresStatsMixin:
    if TYPE_CHECKING:  # provided by PostgresStore
        _clock: Callable[[], float]
        policies: dict[str, RetryPolicy]

        def _read(self, fn: Callable[[Connection], Awaitable[Any]]) -> Awaitable[Any]: ...

    async def throughput(
        self, *, since: float, bucket_seconds: int = 60, user_id: str | None = None
    ) -> Throughput:
        start, buckets = throughput_frame(since, bucket_seconds, self._clock())
        known = list(self.policies)
        params = {
            "start": start,
            "bucket": bucket_seconds,
            "end": start + buckets * bucket_seconds,
            "user": user_id,
        }

        async def fn(conn: Connection) -> Throughput:
            rows: list[tuple[str, int, int]] = []
            if buckets:
                cur = await conn.execute(_THROUGHPUT, params)
                rows = [(q, int(b), int(n)) for q, b, n in await cur.fetchall()]
            return fill_throughput(start, bucket_seconds, buckets, known, rows)

        result: Throughput = await self._read(fn)
        return result
