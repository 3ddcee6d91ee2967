"""Retention: old completed and cancelled jobs go, with their attempts; dead letters stay."""

from __future__ import annotations

import pytest

import lifeline
from conformance.backends import OTHER, QUEUE
from conformance.helpers import claim_one, job_in_state
from fakes import FakeClock
from lifeline import JobState, NotFound, Store


async def test_cleanup_deletes_old_finished_jobs_in_batches(store: Store, clock: FakeClock) -> None:
    old_completed = [(await job_in_state(store, clock, JobState.COMPLETED))[0] for _ in range(5)]
    old_cancelled = [(await job_in_state(store, clock, JobState.CANCELLED))[0] for _ in range(2)]
    never_claimed = await store.enqueue(QUEUE, {})
    await store.cancel(never_claimed)
    kept = {
        (await job_in_state(store, clock, JobState.DEAD_LETTER, queue=OTHER))[0],
        (await job_in_state(store, clock, JobState.FAILED, queue=OTHER))[0],
        (await job_in_state(store, clock, JobState.RETRY, queue=OTHER))[0],
    }
    waiting = await store.enqueue(OTHER, {}, delay=10_000)
    clock.advance(1000)
    recent = (await job_in_state(store, clock, JobState.COMPLETED))[0]
    clock.advance(10)

    report = await store.cleanup(completed_older_than=500, batch_size=3)
    assert report.jobs_deleted == 8
    assert report.attempts_deleted == 7  # one claim each; the never-claimed job had none
    for job_id in [*old_completed, *old_cancelled, never_claimed]:
        with pytest.raises(NotFound):
            await store.get_job(job_id)
    remaining = {j.id for j in await store.list_jobs()}
    assert remaining == kept | {waiting, recent}
    assert len((await store.get_job(recent)).attempts) == 1

    again = await store.cleanup(completed_older_than=500, batch_size=3)
    assert (again.jobs_deleted, again.attempts_deleted) == (0, 0)
    everything = await store.cleanup(completed_older_than=0)
    assert everything.jobs_deleted == 1  # the recent one, now older than zero seconds


async def test_cleanup_keeps_a_job_that_finished_within_the_age(store: Store, clock: FakeClock) -> None:
    job_id = await store.enqueue(QUEUE, {})
    clock.advance(10_000)  # created long ago ...
    await store.complete(await claim_one(store))  # ... but finished just now
    assert (await store.cleanup(completed_older_than=60)).jobs_deleted == 0
    assert (await store.get_job(job_id)).job.state is JobState.COMPLETED


async def test_cleanup_keeps_the_jobs_of_a_recording_that_still_exists(
    store: Store, clock: FakeClock
) -> None:
    # a recording's status is derived from its jobs, so deleting them would make it look new
    await store.add_recording("kept-rec", first_job=lifeline.NextJob(QUEUE, {}))
    orphan = await store.enqueue(QUEUE, {}, recording_id="gone-rec")
    for _ in range(2):
        await store.complete(await claim_one(store))
    clock.advance(1000)
    report = await store.cleanup(completed_older_than=500)
    assert report.jobs_deleted == 1
    with pytest.raises(NotFound):
        await store.get_job(orphan)
    status = await store.recording_status("kept-rec")
    assert status.status is lifeline.RecordingStatus.COMPLETED
