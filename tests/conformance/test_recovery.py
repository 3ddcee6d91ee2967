"""Recovery: expired leases, poison jobs, known-dead workers, and stale workers' late writes."""

from __future__ import annotations

import pytest

from conformance.backends import NEXT, OTHER, POLICY, QUEUE
from conformance.helpers import claim_one, state_of
from fakes import FakeClock, seeded_rng
from lifeline import AttemptOutcome, JobState, LeaseLost, Output, Store


async def expire(store: Store, clock: FakeClock, job_id: int) -> None:
    """Let the claim of ``job_id`` expire and run one recovery pass."""
    clock.advance(POLICY.lease + 1)
    report = await store.recover_expired(job_id=job_id)
    assert report.recovered == 1


async def test_an_expired_lease_is_retried_with_the_attempt_counted(store: Store, clock: FakeClock) -> None:
    twin = seeded_rng()
    job_id = await store.enqueue(QUEUE, {})
    await claim_one(store)
    clock.advance(POLICY.lease - 1)
    early = await store.recover_expired()
    assert (early.found, early.recovered) == (0, 0)
    assert await state_of(store, job_id) is JobState.PROCESSING

    clock.advance(1)  # the lease ends now: lease_expires_at <= now
    report = await store.recover_expired()
    assert (report.found, report.requeued, report.escalated) == (1, [job_id], [])
    info = await store.get_job(job_id)
    job = info.job
    assert job.state is JobState.RETRY
    assert (job.attempts, job.lost_count) == (1, 1)
    assert (job.lease_owner, job.lease_expires_at) == (None, None)
    assert job.last_error == "worker lost 1 time"
    assert job.run_at - clock.now == pytest.approx(POLICY.backoff(1, twin))
    assert 0 <= job.run_at - clock.now <= POLICY.backoff_bound(1)
    assert [(a.outcome, a.error, a.finished_at) for a in info.attempts] == [
        (AttemptOutcome.LOST, "worker lost 1 time", clock.now)
    ]
    clock.set(job.run_at)
    again = await claim_one(store, worker_id="w2")
    assert (again.id, again.attempts, again.lost_count) == (job_id, 2, 1)


async def test_a_poison_job_is_dead_lettered(store: Store, clock: FakeClock) -> None:
    job_id = await store.enqueue(QUEUE, {})
    for n in range(1, POLICY.max_attempts + 1):
        clock.advance(POLICY.max_delay)
        await claim_one(store)
        clock.advance(POLICY.lease)
        report = await store.recover_expired()
        if n < POLICY.max_attempts:
            assert report.requeued == [job_id]
        else:
            assert (report.requeued, report.escalated) == ([], [job_id])
    info = await store.get_job(job_id)
    assert info.job.state is JobState.DEAD_LETTER
    assert info.job.last_error == f"worker lost {POLICY.max_attempts} times"
    assert (info.job.attempts, info.job.lost_count) == (POLICY.max_attempts, POLICY.max_attempts)
    assert info.job.finished_at == clock.now
    assert [a.outcome for a in info.attempts] == [AttemptOutcome.LOST] * POLICY.max_attempts
    clock.advance(86_400)
    assert await store.claim(QUEUE, worker_id="w") is None


async def test_the_reason_tells_failures_from_losses(store: Store, clock: FakeClock) -> None:
    job_id = await store.enqueue(QUEUE, {})
    await store.fail(await claim_one(store), "timeout")
    for _ in range(2):
        clock.advance(POLICY.max_delay)
        await claim_one(store)
        clock.advance(POLICY.lease)
        await store.recover_expired()
    job = (await store.get_job(job_id)).job
    assert job.state is JobState.DEAD_LETTER
    assert job.last_error == "worker lost 2 times (3 of 3 attempts used)"


async def test_force_recovers_one_job_before_its_lease_ends(store: Store) -> None:
    a = await store.enqueue(QUEUE, {})
    b = await store.enqueue(QUEUE, {})
    await store.claim_many(QUEUE, worker_id="w", limit=2)
    not_forced = await store.recover_expired(job_id=a)
    assert not_forced.recovered == 0
    report = await store.recover_expired(job_id=a, force=True)
    assert report.requeued == [a]
    assert await state_of(store, a) is JobState.RETRY
    assert await state_of(store, b) is JobState.PROCESSING
    assert (await store.recover_expired(job_id=b + 100, force=True)).found == 0


async def test_force_without_a_job_id_forces_nothing(store: Store) -> None:
    job_id = await store.enqueue(QUEUE, {})
    await claim_one(store)
    assert (await store.recover_expired(force=True)).found == 0
    assert await state_of(store, job_id) is JobState.PROCESSING


async def test_force_never_touches_a_job_that_is_not_processing(store: Store) -> None:
    job_id = await store.enqueue(QUEUE, {})
    report = await store.recover_expired(job_id=job_id, force=True)
    assert report.found == 0
    assert await state_of(store, job_id) is JobState.PENDING


async def test_queue_filter(store: Store, clock: FakeClock) -> None:
    mine = await store.enqueue(QUEUE, {})
    other = await store.enqueue(OTHER, {})
    await claim_one(store, QUEUE)
    await claim_one(store, OTHER)
    clock.advance(POLICY.lease + 1)
    assert (await store.recover_expired(queue=QUEUE)).requeued == [mine]
    assert await state_of(store, other) is JobState.PROCESSING
    assert (await store.recover_expired()).requeued == [other]


async def test_recovery_stats_count_every_pass(store: Store, clock: FakeClock) -> None:
    empty = await store.recovery_stats()
    assert (empty.runs, empty.attempted, empty.successful, empty.requeued, empty.escalated) == (0, 0, 0, 0, 0)
    assert (empty.last_run_at, empty.last_recovered) == (None, 0)

    await store.enqueue(QUEUE, {})
    await store.enqueue(QUEUE, {}, max_attempts=1)
    await store.claim_many(QUEUE, worker_id="w", limit=2)
    await store.recover_expired()  # nothing expired yet
    clock.advance(POLICY.lease + 1)
    await store.recover_expired()  # one requeued, one escalated (its only attempt is used)
    stats = await store.recovery_stats()
    assert (stats.runs, stats.attempted, stats.successful, stats.requeued, stats.escalated) == (2, 2, 2, 1, 1)
    assert (stats.last_run_at, stats.last_recovered) == (clock.now, 2)
    clock.advance(5)
    await store.recover_expired()
    stats = await store.recovery_stats()
    assert (stats.runs, stats.last_run_at, stats.last_recovered) == (3, clock.now, 0)


# -- workers known to be dead ---------------------------------------------------------------------


async def test_a_stopped_workers_jobs_are_recovered_at_once(store: Store) -> None:
    await store.register_worker("w-dead", [QUEUE])
    await store.register_worker("w-live", [QUEUE])
    dead_job = await store.enqueue(QUEUE, {})
    live_job = await store.enqueue(QUEUE, {})
    await claim_one(store, worker_id="w-dead")
    await claim_one(store, worker_id="w-live")
    assert (await store.recover_expired()).found == 0  # both alive, leases not expired

    await store.unregister_worker("w-dead")
    report = await store.recover_expired()
    assert report.requeued == [dead_job]
    assert await state_of(store, dead_job) is JobState.RETRY
    assert await state_of(store, live_job) is JobState.PROCESSING
    workers = {w.worker_id: w for w in await store.list_workers()}
    assert workers["w-dead"].stopped_at is not None
    assert workers["w-live"].stopped_at is None


async def test_worker_registry(store: Store, clock: FakeClock) -> None:
    await store.register_worker("w1", [QUEUE, OTHER])
    started = clock.now
    clock.advance(10)
    await store.worker_heartbeat("w1")
    [worker] = await store.list_workers()
    assert (worker.worker_id, worker.queues, worker.started_at, worker.heartbeat_at) == (
        "w1",
        [QUEUE, OTHER],
        started,
        clock.now,
    )
    assert worker.pid > 0
    assert worker.hostname
    await store.unregister_worker("w1")
    assert (await store.list_workers())[0].stopped_at == clock.now
    clock.advance(1)
    await store.register_worker("w1", [QUEUE])  # a restart under the same id
    [worker] = await store.list_workers()
    assert (worker.stopped_at, worker.queues, worker.started_at) == (None, [QUEUE], clock.now)


# -- compare-and-set: a stale worker writes nothing -----------------------------------------------


async def test_a_stale_workers_late_writes_raise_lease_lost(store: Store, clock: FakeClock) -> None:
    job_id = await store.enqueue(QUEUE, {}, recording_id="rec")
    stale = await claim_one(store, worker_id="slow")
    await expire(store, clock, job_id)
    clock.advance(POLICY.max_delay)
    fresh = await claim_one(store, worker_id="fast")
    assert fresh.id == job_id
    before = await store.get_job(job_id)

    with pytest.raises(LeaseLost):
        await store.complete(stale, then=[(NEXT, {})], outputs=[Output("rec", QUEUE, 0, {"late": True})])
    with pytest.raises(LeaseLost):
        await store.fail(stale, "late failure")
    with pytest.raises(LeaseLost):
        await store.fail(stale, "late failure", permanent=True)
    with pytest.raises(LeaseLost):
        await store.heartbeat(stale)
    with pytest.raises(LeaseLost):
        await store.defer(stale, seconds=1)
    with pytest.raises(LeaseLost):
        await store.release(stale)
    assert await store.heartbeat_many([stale, fresh]) == [stale.id]

    after = await store.get_job(job_id)
    assert after.job.state is JobState.PROCESSING
    assert after.job.lease_owner == fresh.lease_owner
    assert after.attempts == before.attempts
    assert await store.get_outputs("rec") == []
    assert await store.list_jobs(queue=NEXT) == []

    await store.complete(fresh, then=[(NEXT, {})], outputs=[Output("rec", QUEUE, 0, {"late": False})])
    assert [o.data for o in await store.get_outputs("rec")] == [{"late": False}]
    assert len(await store.list_jobs(queue=NEXT)) == 1


async def test_a_stale_worker_cannot_touch_a_recovered_job_waiting_for_retry(
    store: Store, clock: FakeClock
) -> None:
    job_id = await store.enqueue(QUEUE, {})
    stale = await claim_one(store)
    await expire(store, clock, job_id)
    before = await store.get_job(job_id)
    with pytest.raises(LeaseLost):
        await store.complete(stale)
    with pytest.raises(LeaseLost):
        await store.fail(stale, "x")
    assert await store.get_job(job_id) == before


async def test_a_recovery_that_races_with_completion_changes_nothing(store: Store, clock: FakeClock) -> None:
    job_id = await store.enqueue(QUEUE, {})
    job = await claim_one(store)
    await store.complete(job)
    clock.advance(POLICY.lease + 1)
    report = await store.recover_expired(job_id=job_id, force=True)
    assert report.recovered == 0
    assert await state_of(store, job_id) is JobState.COMPLETED
