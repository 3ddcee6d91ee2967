"""Group commit and durability: many callers at once, each returning only once its work is durable."""

from __future__ import annotations

import asyncio

from conformance.backends import NEXT, OTHER, QUEUE, StoreFactory
from conformance.helpers import claim_one
from fakes import FakeClock
from lifeline import JobState, LeaseLost, NextJob, Output, Store


async def test_500_concurrent_enqueues_are_distinct_and_durable(open_store: StoreFactory) -> None:
    store = await open_store()
    ids = await asyncio.gather(*(store.enqueue(QUEUE, {"i": i}) for i in range(500)))
    assert len(set(ids)) == 500
    await store.close()

    reopened = await open_store()
    jobs = await reopened.list_jobs(queue=QUEUE, limit=1000)
    assert sorted(j.id for j in jobs) == sorted(ids)
    by_id = {j.id: j.payload["i"] for j in jobs}
    assert [by_id[job_id] for job_id in ids] == list(range(500))  # each caller got its own row


async def test_a_failing_operation_does_not_spoil_its_batch(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.enqueue(QUEUE, {}, recording_id="rec")
    held = await claim_one(store)
    await store.cancel(held.id)  # the worker's claim is now stale

    results = await asyncio.gather(
        *(store.enqueue(OTHER, {"i": i}) for i in range(100)),
        store.complete(held, then=[(NEXT, {})], outputs=[Output("rec", QUEUE, 0, {})]),
        *(store.enqueue(OTHER, {"i": i}) for i in range(100, 200)),
        return_exceptions=True,
    )
    assert isinstance(results[100], LeaseLost)
    ids = results[:100] + results[101:]
    assert all(isinstance(job_id, int) for job_id in ids)
    assert len(set(ids)) == 200
    await store.close()

    reopened = await open_store()
    assert len(await reopened.list_jobs(queue=OTHER, limit=1000)) == 200
    assert await reopened.list_jobs(queue=NEXT) == []
    assert await reopened.get_outputs("rec") == []
    assert (await reopened.get_job(held.id)).job.state is JobState.CANCELLED


async def test_concurrent_claims_never_hand_out_a_job_twice(store: Store) -> None:
    await store.enqueue_many(QUEUE, [{"i": i} for i in range(60)])
    batches = await asyncio.gather(*(store.claim_many(QUEUE, worker_id=f"w{n}", limit=7) for n in range(12)))
    claimed = [job.id for batch in batches for job in batch]
    assert len(claimed) == len(set(claimed)) == 60


async def test_concurrent_completions_with_outputs_and_next_jobs(store: Store) -> None:
    await store.enqueue_many(QUEUE, [{"i": i} for i in range(50)], recording_id="rec")
    jobs = await store.claim_many(QUEUE, worker_id="w", limit=50)
    next_ids = await asyncio.gather(
        *(
            store.complete(
                job,
                then=[NextJob(NEXT, {"from": job.id}, idempotency_key=f"next-{job.id}")],
                outputs=[Output("rec", QUEUE, job.payload["i"], {"job": job.id})],
            )
            for job in jobs
        )
    )
    assert len({ids[0] for ids in next_ids}) == 50
    assert len(await store.get_outputs("rec", QUEUE)) == 50
    assert {j.state for j in await store.list_jobs(queue=QUEUE, limit=100)} == {JobState.COMPLETED}


async def test_a_job_survives_close_and_reopen(open_store: StoreFactory, clock: FakeClock) -> None:
    store = await open_store()
    job_id = await store.enqueue(QUEUE, {"audio": "a.wav"}, priority=4, recording_id="rec")
    await store.add_recording("rec2", user_id="u")
    await store.pause(OTHER, "maintenance")
    await store.close()

    reopened = await open_store()
    job = (await reopened.get_job(job_id)).job
    assert (job.state, job.payload, job.priority, job.recording_id) == (
        JobState.PENDING,
        {"audio": "a.wav"},
        4,
        "rec",
    )
    assert (await reopened.recording_status("rec2")).user_id == "u"
    assert await reopened.paused_queues() == {OTHER: "maintenance"}
    assert (await claim_one(reopened)).id == job_id
