"""Every store operation obeys the transition table in ``lifeline.queue.transitions``.

For each state a job can be in, each operation either moves it to the state the table lists or
is refused (``InvalidTransition``, or ``LeaseLost`` for a worker whose claim is over) and changes
nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from conformance.backends import QUEUE
from conformance.helpers import job_in_state
from fakes import FakeClock
from lifeline import InvalidTransition, Job, JobState, LeaseLost, Store
from lifeline.queue.transitions import TRANSITIONS, Action, sources

ALL_STATES = list(JobState)

WorkerOp = Callable[[Store, Job], Awaitable[object]]

WORKER_OPS: dict[Action, WorkerOp] = {
    Action.COMPLETE: lambda store, job: store.complete(job),
    Action.FAIL_TRANSIENT: lambda store, job: store.fail(job, "transient"),
    Action.FAIL_PERMANENT: lambda store, job: store.fail(job, "permanent", permanent=True),
    Action.DEFER: lambda store, job: store.defer(job, seconds=1),
    Action.RELEASE: lambda store, job: store.release(job),
}


async def _snapshot(store: Store, job_id: int) -> tuple[Job, list[object]]:
    info = await store.get_job(job_id)
    return info.job, list(info.attempts)


@pytest.mark.parametrize("state", ALL_STATES)
async def test_claim(store: Store, clock: FakeClock, state: JobState) -> None:
    job_id, _ = await job_in_state(store, clock, state)
    clock.advance(3600)  # past any backoff
    before = await _snapshot(store, job_id)
    claimed = await store.claim(QUEUE, worker_id="w")
    if state in sources(Action.CLAIM):
        assert claimed is not None
        assert claimed.id == job_id
        assert claimed.state is TRANSITIONS[(state, Action.CLAIM)]
    else:
        assert claimed is None
        assert await _snapshot(store, job_id) == before


@pytest.mark.parametrize("state", ALL_STATES)
@pytest.mark.parametrize("action", [Action.CANCEL, Action.REQUEUE])
async def test_operator_actions(store: Store, clock: FakeClock, state: JobState, action: Action) -> None:
    job_id, _ = await job_in_state(store, clock, state)
    before = await _snapshot(store, job_id)
    run = store.cancel if action is Action.CANCEL else store.requeue
    if (state, action) in TRANSITIONS:
        await run(job_id)
        job = (await store.get_job(job_id)).job
        assert job.state is TRANSITIONS[(state, action)]
        assert job.lease_owner is None
    else:
        with pytest.raises(InvalidTransition):
            await run(job_id)
        assert await _snapshot(store, job_id) == before


@pytest.mark.parametrize("state", [s for s in ALL_STATES if s is not JobState.PENDING])
@pytest.mark.parametrize("action", list(WORKER_OPS))
async def test_worker_actions_with_the_claim_snapshot(
    store: Store, clock: FakeClock, state: JobState, action: Action
) -> None:
    """The worker's own snapshot: allowed while it holds the job, ``LeaseLost`` after."""
    job_id, held = await job_in_state(store, clock, state)
    assert held is not None
    before = await _snapshot(store, job_id)
    if state is JobState.PROCESSING:
        await WORKER_OPS[action](store, held)
        assert (await store.get_job(job_id)).job.state is TRANSITIONS[(state, action)]
    else:
        with pytest.raises(LeaseLost):
            await WORKER_OPS[action](store, held)
        assert await _snapshot(store, job_id) == before


@pytest.mark.parametrize("state", [s for s in ALL_STATES if s is not JobState.PROCESSING])
@pytest.mark.parametrize("action", list(WORKER_OPS))
async def test_worker_actions_on_a_job_not_being_processed(
    store: Store, clock: FakeClock, state: JobState, action: Action
) -> None:
    """A snapshot that is not ``processing`` (read with get_job) cannot complete, fail or defer."""
    job_id, _ = await job_in_state(store, clock, state)
    before = await _snapshot(store, job_id)
    job = before[0]
    with pytest.raises(InvalidTransition):
        await WORKER_OPS[action](store, job)
    assert await _snapshot(store, job_id) == before


async def test_exhaust_and_lease_expired_follow_the_table(store: Store, clock: FakeClock) -> None:
    job_id, held = await job_in_state(store, clock, JobState.PROCESSING)
    assert held is not None
    report = await store.recover_expired(job_id=job_id, force=True)
    assert report.requeued == [job_id]
    assert (await store.get_job(job_id)).job.state is TRANSITIONS[(JobState.PROCESSING, Action.LEASE_EXPIRED)]

    last = await store.enqueue(QUEUE, {}, max_attempts=1)
    clock.advance(3600)
    while (job := await store.claim(QUEUE, worker_id="w")) is not None and job.id != last:
        await store.complete(job)
    assert job is not None
    assert await store.fail(job, "timeout") is TRANSITIONS[(JobState.PROCESSING, Action.EXHAUST)]
