"""Every measurement of one library at one durability level, in this (fresh) process.

Phases, each on a fresh database file and each stopping at ``--jobs`` jobs or after ``--cap``
seconds, whichever comes first:

* A: ``enqueue_1`` (one producer awaiting each call), then the bytes on disk per pending job,
  then ``consume_1`` (one consumer: claim, empty handler, complete) on what was enqueued.
* B: ``enqueue_32`` (32 concurrent producers), then ``consume_2``: two consumer processes
  drain it, and every processed payload id is compared with what was enqueued.
* Lifeline only, C and D: the worker's way of consuming (``claim_many(limit=32)`` then the
  completions with ``asyncio.gather``), with one consumer and with two consumer processes,
  on a queue filled by ``enqueue_many`` (not timed).

The result is one JSON document written to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    Deadline,
    OnceResult,
    PhaseResult,
    Sync,
    count,
    db_bytes,
    exactly_once,
    median,
    peak_rss_mb,
    percentile,
    phase,
)

LIFELINE = "lifeline"


class Consumers:
    """Two consumer processes started together; the phase is timed from ``go`` to the last one done."""

    def __init__(self, lib: str, sync: Sync, root: Path, mode: str, cap: float | None) -> None:
        self.lib, self.sync, self.root, self.mode, self.cap = lib, sync, root, mode, cap

    def run(self) -> tuple[PhaseResult, list[int], list[float]]:
        outs = [self.root / f"consumer{k}.json" for k in range(2)]
        procs = []
        for k, out in enumerate(outs):
            cmd = [
                sys.executable,
                str(BENCH_DIR / "consumer.py"),
                f"--lib={self.lib}",
                f"--sync={self.sync}",
                f"--root={self.root}",
                f"--mode={self.mode}",
                f"--worker=consumer{k}",
                f"--out={out}",
            ]
            if self.cap is not None:
                cmd.append(f"--cap={self.cap}")
            procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                for other in procs:
                    other.kill()
                raise RuntimeError(f"a {self.lib} consumer did not start (said {line!r})")
        go = time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            if proc.wait() != 0:
                raise RuntimeError(f"a {self.lib} consumer failed with exit code {proc.returncode}")
        reports: list[dict[str, Any]] = [json.loads(out.read_text(encoding="utf-8")) for out in outs]
        ids = [job_id for report in reports for job_id in report["ids"]]
        elapsed = max(report["end"] for report in reports) - go
        capped = any(report["capped"] for report in reports)
        rss = [float(report["rss_peak_mb"]) for report in reports]
        return phase(len(set(ids)), elapsed, capped), ids, rss


class Run:
    def __init__(self, lib: str, sync: Sync, jobs: int, cap: float | None, work: Path) -> None:
        self.lib, self.sync, self.jobs, self.cap, self.work = lib, sync, jobs, cap, work
        self.result: dict[str, Any] = {
            "lib": lib,
            "sync": sync,
            "jobs": jobs,
            "cap": cap,
            "phases": {},
            "once": {},
            "group_commit": {},
        }
        self.consumer_rss: list[float] = []

    def fresh(self, name: str) -> Path:
        root = self.work / f"{self.lib}-{self.sync}-{name}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        return root

    def record(self, name: str, result: PhaseResult) -> None:
        self.result["phases"][name] = result

    def check(self, name: str, enqueued: list[int], seen: list[int], db: Path, remaining_sql: str) -> None:
        once: OnceResult = exactly_once(set(enqueued), seen, count(db, remaining_sql))
        self.result["once"][name] = once

    def two_consumers(
        self, name: str, root: Path, mode: str, enqueued: list[int], db: Path, sql: str
    ) -> None:
        result, seen, rss = Consumers(self.lib, self.sync, root, mode, self.cap).run()
        self.record(name, result)
        self.check(name, enqueued, seen, db, sql)
        self.consumer_rss.extend(rss)

    def finish(self, out: Path) -> None:
        self.result["rss_peak_mb"] = peak_rss_mb()
        self.result["consumer_rss_peak_mb"] = max(self.consumer_rss) if self.consumer_rss else None
        out.write_text(json.dumps(self.result, indent=1), encoding="utf-8")

    # -- thread-based libraries -----------------------------------------------------------------
    def threaded(self) -> None:
        import adapters

        cls = adapters.load(self.lib)
        self.result["name"] = cls.name
        self.result["describe"] = cls.describe(self.sync)
        n = self.jobs

        root = self.fresh("a")
        db = cls.db_path(root)
        adapter = cls(root, self.sync)
        self.result["effective"] = adapter.effective()
        deadline = Deadline(self.cap)
        enqueued = adapters.enqueue_sequential(adapter, range(n), deadline)
        self.record("enqueue_1", phase(len(enqueued), time.monotonic() - deadline.start, deadline.hit))
        adapter.close()
        self.result["bytes_per_job"] = db_bytes(db) / max(1, len(enqueued))
        self.result["bytes_jobs"] = len(enqueued)
        adapter = cls(root, self.sync)
        deadline = Deadline(self.cap)
        seen = adapters.consume(adapter, deadline)
        self.record("consume_1", phase(len(seen), time.monotonic() - deadline.start, deadline.hit))
        adapter.close()
        self.check("consume_1", enqueued, seen, db, cls.remaining_sql)
        shutil.rmtree(root)

        root = self.fresh("b")
        db = cls.db_path(root)
        adapter = cls(root, self.sync)
        deadline = Deadline(self.cap)
        enqueued = adapters.enqueue_threads(adapter, range(n, 2 * n), deadline)
        self.record("enqueue_32", phase(len(enqueued), time.monotonic() - deadline.start, deadline.hit))
        adapter.close()
        self.two_consumers("consume_2", root, "seq", enqueued, db, cls.remaining_sql)
        shutil.rmtree(root)

    # -- lifeline -------------------------------------------------------------------------------
    async def lifeline(self) -> None:
        import lifeline
        import lifeline_driver as driver

        self.result["name"] = LIFELINE
        self.result["module"] = str(Path(lifeline.__file__).parent)
        self.result["describe"] = driver.describe(self.sync)
        sql = driver.REMAINING_SQL
        n = self.jobs

        root = self.fresh("a")
        db = root / "lifeline.db"
        async with lifeline.connect(driver.url(db, self.sync)) as store:
            self.result["effective"] = driver.effective(store)
            deadline = Deadline(self.cap)
            enqueued = await driver.enqueue_sequential(store, range(n), deadline)
            self.record("enqueue_1", phase(len(enqueued), time.monotonic() - deadline.start, deadline.hit))
        self.result["bytes_per_job"] = db_bytes(db) / max(1, len(enqueued))
        self.result["bytes_jobs"] = len(enqueued)
        latencies: list[float] = []
        async with lifeline.connect(driver.url(db, self.sync)) as store:
            deadline = Deadline(self.cap)
            seen = await driver.consume_sequential(store, "consumer", deadline, latencies)
            self.record("consume_1", phase(len(seen), time.monotonic() - deadline.start, deadline.hit))
        self.check("consume_1", enqueued, seen, db, sql)
        ms = [s * 1000.0 for s in latencies]
        self.result["latency_ms"] = {
            "median": median(ms),
            "p90": percentile(ms, 0.90),
            "p99": percentile(ms, 0.99),
            "n": len(ms),
        }
        shutil.rmtree(root)

        root = self.fresh("b")
        db = root / "lifeline.db"
        async with lifeline.connect(driver.url(db, self.sync)) as store:
            deadline = Deadline(self.cap)
            enqueued = await driver.enqueue_concurrent(store, range(n, 2 * n), deadline)
            self.record("enqueue_32", phase(len(enqueued), time.monotonic() - deadline.start, deadline.hit))
            txns, ops = driver.commit_batches(store)
            self.result["group_commit"]["enqueue_32"] = ops / max(1, txns)
        self.two_consumers("consume_2", root, "seq", enqueued, db, sql)
        shutil.rmtree(root)

        root = self.fresh("c")
        db = root / "lifeline.db"
        ids = list(range(2 * n, 3 * n))
        async with lifeline.connect(driver.url(db, self.sync)) as store:
            await driver.prefill(store, ids)
        async with lifeline.connect(driver.url(db, self.sync)) as store:
            deadline = Deadline(self.cap)
            seen = await driver.consume_batched(store, "consumer", deadline)
            self.record("consume_1_batch", phase(len(seen), time.monotonic() - deadline.start, deadline.hit))
            txns, ops = driver.commit_batches(store)
            self.result["group_commit"]["consume_1_batch"] = ops / max(1, txns)
        self.check("consume_1_batch", ids, seen, db, sql)
        shutil.rmtree(root)

        root = self.fresh("d")
        db = root / "lifeline.db"
        ids = list(range(3 * n, 4 * n))
        async with lifeline.connect(driver.url(db, self.sync)) as store:
            await driver.prefill(store, ids)
        self.two_consumers("consume_2_batch", root, "batch", ids, db, sql)
        shutil.rmtree(root)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", required=True)
    parser.add_argument("--sync", choices=["normal", "full"], required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--cap", type=float, default=None)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sync: Sync = "full" if args.sync == "full" else "normal"
    run = Run(args.lib, sync, args.jobs, args.cap, args.work)
    if args.lib == LIFELINE:
        asyncio.run(run.lifeline())
    else:
        run.threaded()
    run.finish(args.out)


if __name__ == "__main__":
    main()
