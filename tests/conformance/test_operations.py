"""What operators do: cancel, requeue, requeue and purge dead letters."""

from __future__ import annotations

import pytest

from conformance.backends import OTHER, POLICY, QUEUE
from conformance.helpers import claim_one, job_in_state, state_of
from fakes import FakeClock
from lifeline import AttemptOutcome, InvalidTransition, JobState, LeaseLost, NotFound, Store


async def test_cancel_a_pending_job(store: Store, clock: FakeClock) -> None:
    job_id = await store.enqueue(QUEUE, {})
    await store.cancel(job_id)
    job = (await store.get_job(job_id)).job
    assert (job.state, job.finished_at) == (JobState.CANCELLED, clock.now)
    assert await store.claim(QUEUE, worker_id="w") is None


async def test_cancel_a_running_job_ends_its_attempt_and_its_lease(store: Store) -> None:
    job_id = await store.enqueue(QUEUE, {}, recording_id="rec")
    job = await claim_one(store)
    await store.cancel(job_id)
    info = await store.get_job(job_id)
    assert info.job.state is JobState.CANCELLED
    assert info.job.lease_owner is None
    assert [(a.outcome, a.error) for a in info.attempts] == [(AttemptOutcome.CANCELLED, "cancelled")]
    with pytest.raises(LeaseLost):
        await store.complete(job)
    assert (await store.get_job(job_id)) == info


async def test_cancel_refuses_finished_jobs(store: Store, clock: FakeClock) -> None:
    for state in (JobState.COMPLETED, JobState.DEAD_LETTER, JobState.CANCELLED):
        job_id, _ = await job_in_state(store, clock, state)
        with pytest.raises(InvalidTransition):
            await store.cancel(job_id)
        assert await state_of(store, job_id) is state
    with pytest.raises(NotFound):
        await store.cancel(424242)


async def test_requeue_with_new_max_attempts(store: Store, clock: FakeClock) -> None:
    job_id = await store.enqueue(QUEUE, {}, max_attempts=1)
    await claim_one(store)
    clock.advance(POLICY.lease)
    assert (await store.recover_expired()).escalated == [job_id]
    dead = (await store.get_job(job_id)).job
    assert (dead.state, dead.attempts, dead.lost_count) == (JobState.DEAD_LETTER, 1, 1)

    clock.advance(100)
    await store.requeue(job_id, max_attempts=5)
    job = (await store.get_job(job_id)).job
    assert (job.state, job.attempts, job.lost_count, job.max_attempts) == (JobState.PENDING, 0, 0, 5)
    assert (job.run_at, job.finished_at) == (clock.now, None)
    claimed = await claim_one(store)
    assert (claimed.id, claimed.attempts, claimed.max_attempts) == (job_id, 1, 5)
    assert await store.fail(claimed, "again") is JobState.FAILED  # 1 of 5: retried, not dead


async def test_requeue_keeps_max_attempts_unless_told(store: Store, clock: FakeClock) -> None:
    job_id, _ = await job_in_state(store, clock, JobState.FAILED)
    await store.requeue(job_id)
    job = (await store.get_job(job_id)).job
    assert (job.state, job.attempts, job.max_attempts, job.run_at) == (JobState.PENDING, 0, 3, clock.now)
    assert (await claim_one(store)).id == job_id  # no backoff left to wait out


async def test_requeue_refuses_a_bad_max_attempts(store: Store, clock: FakeClock) -> None:
    job_id, _ = await job_in_state(store, clock, JobState.DEAD_LETTER)
    with pytest.raises(ValueError, match="max_attempts"):
        await store.requeue(job_id, max_attempts=0)
    assert await state_of(store, job_id) is JobState.DEAD_LETTER


async def test_requeue_refuses_live_and_completed_jobs(store: Store, clock: FakeClock) -> None:
    for state in (JobState.PENDING, JobState.PROCESSING, JobState.COMPLETED):
        job_id, _ = await job_in_state(store, clock, state, queue=f"q-{state.value}")
        with pytest.raises(InvalidTransition):
            await store.requeue(job_id)
        assert await state_of(store, job_id) is state
    with pytest.raises(NotFound):
        await store.requeue(424242)


async def test_requeue_dead_letters_of_one_queue(store: Store, clock: FakeClock) -> None:
    dead = [(await job_in_state(store, clock, JobState.DEAD_LETTER))[0] for _ in range(3)]
    other_dead, _ = await job_in_state(store, clock, JobState.DEAD_LETTER, queue=OTHER)
    completed, _ = await job_in_state(store, clock, JobState.COMPLETED)
    assert await store.requeue_dead_letters(QUEUE) == 3
    for job_id in dead:
        job = (await store.get_job(job_id)).job
        assert (job.state, job.attempts, job.finished_at) == (JobState.PENDING, 0, None)
    assert await state_of(store, other_dead) is JobState.DEAD_LETTER
    assert await state_of(store, completed) is JobState.COMPLETED
    assert await store.requeue_dead_letters(QUEUE) == 0
    assert sorted(j.id for j in await store.claim_many(QUEUE, worker_id="w", limit=10)) == dead


async def test_purge_dead_letters_by_age(store: Store, clock: FakeClock) -> None:
    old, _ = await job_in_state(store, clock, JobState.DEAD_LETTER)
    clock.advance(100)
    young, _ = await job_in_state(store, clock, JobState.DEAD_LETTER)
    other, _ = await job_in_state(store, clock, JobState.DEAD_LETTER, queue=OTHER)
    failed, _ = await job_in_state(store, clock, JobState.FAILED)
    assert await store.purge_dead_letters(QUEUE, older_than=50) == 1
    with pytest.raises(NotFound):
        await store.get_job(old)
    assert await state_of(store, young) is JobState.DEAD_LETTER
    assert await store.purge_dead_letters(QUEUE) == 1
    with pytest.raises(NotFound):
        await store.get_job(young)
    assert await state_of(store, other) is JobState.DEAD_LETTER
    assert await state_of(store, failed) is JobState.FAILED
    assert await store.purge_dead_letters(QUEUE) == 0
