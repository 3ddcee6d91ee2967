"""A worker rides out a database that stops answering for a while (a restart, a failover).

The store raises :class:`StoreError` once it gives up waiting for its server; the worker's claim
loop must log, back off and claim again, not die, and a result it could not record is left for
recovery instead of killing the worker.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import lifeline
from lifeline.domain import Job, StoreError
from lifeline.queue.policy import RetryPolicy
from lifeline.queue.worker import JobResult, Worker

FAST = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0, lease=30.0)


def store_at(tmp_path: Path) -> lifeline.Store:
    return lifeline.connect(f"sqlite:///{tmp_path}/w.db?synchronous=normal", default_policy=FAST)


async def test_claiming_resumes_after_the_store_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done: list[int] = []

    async def handler(job: Job) -> JobResult:
        done.append(job.payload["n"])
        return JobResult()

    async with store_at(tmp_path) as store:
        await store.enqueue_many("q", [{"n": n} for n in range(5)])
        real_claim = store.claim_many
        outage = 3

        async def flaky(*args: Any, **kwargs: Any) -> list[Job]:
            nonlocal outage
            if outage:
                outage -= 1
                raise StoreError("cannot connect to PostgreSQL (gave up waiting)")
            return await real_claim(*args, **kwargs)

        monkeypatch.setattr(store, "claim_many", flaky)
        worker = Worker(store, {"q": handler}, poll_interval=0.01)
        running = asyncio.ensure_future(worker.run())
        for _ in range(500):
            if len(done) == 5:
                break
            await asyncio.sleep(0.01)
        worker.stop()
        stats = await asyncio.wait_for(running, 10)
        assert outage == 0
        assert sorted(done) == list(range(5))
        assert stats.completed == 5


async def test_a_burst_run_reports_an_unreachable_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def handler(job: Job) -> None:
        return None

    async with store_at(tmp_path) as store:

        async def down(*args: Any, **kwargs: Any) -> list[Job]:
            raise StoreError("down")

        monkeypatch.setattr(store, "claim_many", down)
        with pytest.raises(StoreError):
            await Worker(store, {"q": handler}).run(burst=True)


async def test_a_result_that_cannot_be_recorded_does_not_kill_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def handler(job: Job) -> None:
        return None

    async with store_at(tmp_path) as store:
        first = await store.enqueue("q", {})
        second = await store.enqueue("q", {})
        real_complete = store.complete
        failures = [first]

        async def complete(job: Job, **kwargs: Any) -> list[int]:
            if job.id in failures:
                failures.remove(job.id)
                raise StoreError("connection lost")
            return await real_complete(job, **kwargs)

        monkeypatch.setattr(store, "complete", complete)
        stats = await Worker(store, {"q": handler}, concurrency=1).run(burst=True)
        assert stats.completed == 1
        assert (await store.get_job(second)).job.state is lifeline.JobState.COMPLETED
        # the first waits, still processing, for recovery to hand it out again
        assert (await store.get_job(first)).job.state is lifeline.JobState.PROCESSING
        assert (await store.recover_expired(job_id=first, force=True)).requeued == [first]
