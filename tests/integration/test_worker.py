"""The worker loop driven as a user drives it: handlers, outcomes, burst mode, shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import lifeline
from lifeline.domain import (
    DependencyUnavailable,
    Job,
    JobState,
    Output,
    PermanentError,
    TransientError,
)
from lifeline.queue.policy import RetryPolicy
from lifeline.queue.worker import JobResult, Worker

FAST = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0, lease=30.0)


def store_at(tmp_path: Path, **policies: RetryPolicy) -> lifeline.Store:
    return lifeline.connect(
        f"sqlite:///{tmp_path}/w.db?synchronous=normal", policies=policies or None, default_policy=FAST
    )


async def test_burst_runs_a_pipeline_of_handlers_to_completion(tmp_path: Path) -> None:
    async def first(job: Job) -> JobResult:
        n = job.payload["n"]
        return JobResult(
            outputs=[Output(f"r{n}", "first", 0, {"double": n * 2})],
            then=[("second", {"n": n})],
        )

    async def second(job: Job) -> JobResult:
        n = job.payload["n"]
        return JobResult(outputs=[Output(f"r{n}", "second", 0, {"square": n * n})])

    async with store_at(tmp_path) as store:
        for n in range(20):
            await store.enqueue("first", {"n": n}, recording_id=f"r{n}")
        stats = await Worker(store, {"first": first, "second": second}, concurrency=5).run(burst=True)
        assert stats.completed == 40
        for n in range(20):
            outputs = {o.stage: o.data for o in await store.get_outputs(f"r{n}")}
            assert outputs == {"first": {"double": n * 2}, "second": {"square": n * n}}
            report = await store.recording_status(f"r{n}")
            assert report.status is lifeline.RecordingStatus.COMPLETED


async def test_each_kind_of_failure_gets_its_own_answer(tmp_path: Path) -> None:
    calls: dict[str, int] = {}

    async def handler(job: Job) -> None:
        kind = job.payload["kind"]
        calls[kind] = calls.get(kind, 0) + 1
        if kind == "permanent":
            raise PermanentError("undecodable audio")
        if kind == "transient":
            raise TransientError("connection refused")
        if kind == "bug":
            raise KeyError("oops")
        if kind == "down" and calls[kind] < 3:
            raise DependencyUnavailable("asr breaker open", retry_after=0.0)

    async with store_at(tmp_path) as store:
        ids = {k: await store.enqueue("q", {"kind": k}) for k in ("permanent", "transient", "bug", "down")}
        await Worker(store, {"q": handler}).run(burst=True)
        permanent = (await store.get_job(ids["permanent"])).job
        assert permanent.state is JobState.DEAD_LETTER
        assert permanent.last_error == "undecodable audio"
        assert calls["permanent"] == 1
        transient = (await store.get_job(ids["transient"])).job
        assert transient.state is JobState.DEAD_LETTER
        assert calls["transient"] == 3
        assert "attempts exhausted" in (transient.last_error or "")
        bug = (await store.get_job(ids["bug"])).job
        assert bug.state is JobState.DEAD_LETTER
        assert "KeyError" in (bug.last_error or "")
        down = await store.get_job(ids["down"])
        assert down.job.state is JobState.COMPLETED
        assert down.job.attempts == 1  # two deferrals cost no attempt
        assert [a.outcome.value for a in down.attempts] == ["deferred", "deferred", "completed"]


async def test_stop_finishes_short_jobs_and_releases_long_ones(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def handler(job: Job) -> None:
        started.set()
        await asyncio.sleep(job.payload["sleep"])

    async with store_at(tmp_path) as store:
        short = await store.enqueue("q", {"sleep": 0.05})
        long = await store.enqueue("q", {"sleep": 60})
        worker = Worker(store, {"q": handler}, concurrency=2, shutdown_timeout=0.5)
        running = asyncio.create_task(worker.run())
        await started.wait()
        await asyncio.sleep(0.01)
        worker.stop()
        stats = await asyncio.wait_for(running, 10)
        assert (await store.get_job(short)).job.state is JobState.COMPLETED
        released = await store.get_job(long)
        assert released.job.state is JobState.PENDING
        assert released.job.attempts == 0
        assert released.attempts[-1].outcome.value == "released"
        assert stats.released == 1
        workers = await store.list_workers()
        assert workers[0].stopped_at is not None


async def test_heartbeats_keep_a_long_job_leased(tmp_path: Path) -> None:
    async def handler(job: Job) -> None:
        await asyncio.sleep(0.6)

    async with store_at(tmp_path) as store:
        job_id = await store.enqueue("q", {})
        worker = Worker(store, {"q": handler}, lease=0.3, heartbeat_interval=0.05)
        running = asyncio.create_task(worker.run(burst=True))
        await asyncio.sleep(0.4)
        # past the original lease: without heartbeats recovery would take the job away
        report = await store.recover_expired()
        assert report.found == 0
        await running
        assert (await store.get_job(job_id)).job.state is JobState.COMPLETED


async def test_a_job_whose_lease_was_taken_away_is_abandoned(tmp_path: Path) -> None:
    gate = asyncio.Event()

    async def handler(job: Job) -> JobResult:
        await gate.wait()
        return JobResult(outputs=[Output("r", "s", 0, {"late": True})])

    async with store_at(tmp_path) as store:
        job_id = await store.enqueue("q", {})
        worker = Worker(store, {"q": handler}, heartbeat_interval=3600)
        running = asyncio.create_task(worker.run(burst=True))
        while worker.in_flight == 0:
            await asyncio.sleep(0.01)
        await store.recover_expired(job_id=job_id, force=True)
        gate.set()
        stats = await asyncio.wait_for(running, 10)
        assert stats.lost == 1
        outputs = await store.get_outputs("r")
        assert [o.revision for o in outputs] == [1]  # the late result was discarded, the re-run wrote once
        info = await store.get_job(job_id)
        # recovered once (worker lost), then claimed again by the same worker and completed
        assert info.job.state is JobState.COMPLETED
        assert [a.outcome.value for a in info.attempts] == ["lost", "completed"]


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_priorities_are_served_first(tmp_path: Path, concurrency: int) -> None:
    order: list[int] = []

    async def handler(job: Job) -> None:
        order.append(job.payload["p"])

    async with store_at(tmp_path) as store:
        for p in [0, 5, 1, 9, 3]:
            await store.enqueue("q", {"p": p}, priority=p)
        await Worker(store, {"q": handler}, concurrency=concurrency).run(burst=True)
        assert order == [9, 5, 3, 1, 0]
