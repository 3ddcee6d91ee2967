"""Small steps the conformance tests share: put a job into a given state, read it back."""

from __future__ import annotations

from conformance.backends import QUEUE
from fakes import FakeClock
from lifeline import Job, JobState, Store


async def state_of(store: Store, job_id: int) -> JobState:
    return (await store.get_job(job_id)).job.state


async def claim_one(store: Store, queue: str = QUEUE, worker_id: str = "worker-1") -> Job:
    job = await store.claim(queue, worker_id=worker_id)
    assert job is not None, f"nothing claimable on {queue}"
    return job


async def job_in_state(
    store: Store, clock: FakeClock, state: JobState, *, queue: str = QUEUE
) -> tuple[int, Job | None]:
    """A fresh job moved to ``state`` through the public API.

    Returns its id and the snapshot its last worker holds (``None`` if it was never claimed).
    """
    job_id = await store.enqueue(queue, {"state": state.value}, max_attempts=3)
    if state is JobState.PENDING:
        return job_id, None
    job = await claim_one(store, queue)
    assert job.id == job_id
    if state is JobState.COMPLETED:
        await store.complete(job)
    elif state is JobState.FAILED:
        assert await store.fail(job, "flaky") is JobState.FAILED
    elif state is JobState.RETRY:
        report = await store.recover_expired(job_id=job_id, force=True)
        assert report.requeued == [job_id]
    elif state is JobState.DEAD_LETTER:
        assert await store.fail(job, "broken", permanent=True) is JobState.DEAD_LETTER
    elif state is JobState.CANCELLED:
        await store.cancel(job_id)
    assert await state_of(store, job_id) is state
    return job_id, job
