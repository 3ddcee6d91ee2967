"""Is lifeline's memory independent of queue depth? Two roles, each in its own process.

``prefill``: fill a database with ``--count`` pending jobs through ``enqueue_many`` in chunks.
``probe``: open the store, enqueue, claim and complete ``--ops`` jobs one by one, report RSS.
``run.py`` probes an empty database and the prefilled one alternately and compares.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import lifeline
import lifeline_driver as driver
from common import QUEUE, Sync, current_rss_mb, db_bytes, payload, peak_rss_mb

CHUNK = 10_000
SYNC: Sync = "normal"


async def prefill(db: Path, total: int) -> dict[str, Any]:
    start = time.monotonic()
    async with lifeline.connect(driver.url(db, SYNC)) as store:
        for first in range(0, total, CHUNK):
            await store.enqueue_many(QUEUE, [payload(i) for i in range(first, min(total, first + CHUNK))])
    seconds = time.monotonic() - start
    size = db_bytes(db)
    return {
        "jobs": total,
        "seconds": seconds,
        "rate": total / seconds,
        "bytes": size,
        "bytes_per_job": size / total,
    }


async def probe(db: Path, ops: int) -> dict[str, Any]:
    before = current_rss_mb()
    async with lifeline.connect(driver.url(db, SYNC)) as store:
        opened = current_rss_mb()
        for i in range(ops):
            await store.enqueue(QUEUE, payload(10**9 + i))
        seen: list[int] = []
        for _ in range(ops):
            job = await store.claim(QUEUE, worker_id="probe")
            if job is None:
                break
            seen.append(job.payload["id"])
            await store.complete(job)
        after = current_rss_mb()
    return {
        "ops": ops,
        "claimed": len(seen),
        "rss_start_mb": before,
        "rss_open_mb": opened,
        "rss_end_mb": after,
        "rss_peak_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["prefill", "probe"])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.role == "prefill":
        result = asyncio.run(prefill(args.db, args.count))
    else:
        result = asyncio.run(probe(args.db, args.ops))
    args.out.write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
