"""Queue statistics: counts per state, oldest waiting job, throughput, pause flag, per-user scope."""

from __future__ import annotations

from conformance.backends import OTHER, POLICY, QUEUE
from conformance.helpers import claim_one
from fakes import FakeClock
from lifeline import JobState, Store


def zeros() -> dict[JobState, int]:
    return dict.fromkeys(JobState, 0)


async def test_empty_store(store: Store) -> None:
    stats = await store.queue_stats()
    assert set(stats) >= {QUEUE, OTHER}  # the configured queues are always listed
    for queue_stats in stats.values():
        assert queue_stats.counts == zeros()
        assert queue_stats.total == 0
        assert queue_stats.oldest_pending_age is None
        assert (queue_stats.paused, queue_stats.pause_reason) == (False, None)
        assert (queue_stats.completed_last_minute, queue_stats.completed_last_5_minutes) == (0, 0)


async def test_counts_ages_and_throughput(store: Store, clock: FakeClock) -> None:
    start = clock.now
    await store.enqueue_many(QUEUE, [{} for _ in range(6)], user_id="alice")
    await store.enqueue(QUEUE, {}, user_id="bob")
    await store.enqueue(OTHER, {}, user_id="bob")
    clock.advance(30)
    jobs = await store.claim_many(QUEUE, worker_id="w", limit=5)
    await store.complete(jobs[0])
    await store.complete(jobs[1])
    await store.fail(jobs[2], "flaky")
    await store.fail(jobs[3], "bad", permanent=True)  # jobs[4] stays processing
    clock.advance(15)

    stats = await store.queue_stats()
    work = stats[QUEUE]
    assert work.queue == QUEUE
    assert work.counts == zeros() | {
        JobState.PENDING: 2,
        JobState.PROCESSING: 1,
        JobState.COMPLETED: 2,
        JobState.FAILED: 1,
        JobState.DEAD_LETTER: 1,
    }
    assert work.total == 7
    assert work.oldest_pending_age == clock.now - start == 45
    assert (work.completed_last_minute, work.completed_last_5_minutes) == (2, 2)
    assert stats[OTHER].counts == zeros() | {JobState.PENDING: 1}

    clock.advance(60)
    work = (await store.queue_stats())[QUEUE]
    assert (work.completed_last_minute, work.completed_last_5_minutes) == (0, 2)
    clock.advance(300)
    work = (await store.queue_stats())[QUEUE]
    assert (work.completed_last_minute, work.completed_last_5_minutes) == (0, 0)


async def test_oldest_pending_age_follows_the_oldest_waiting_job(store: Store, clock: FakeClock) -> None:
    await store.enqueue(QUEUE, {})
    clock.advance(10)
    await store.enqueue(QUEUE, {})
    clock.advance(5)
    assert (await store.queue_stats())[QUEUE].oldest_pending_age == 15
    await store.complete(await claim_one(store))
    assert (await store.queue_stats())[QUEUE].oldest_pending_age == 5
    await store.complete(await claim_one(store))
    assert (await store.queue_stats())[QUEUE].oldest_pending_age is None


async def test_retry_states_count_as_waiting(store: Store, clock: FakeClock) -> None:
    await store.enqueue(QUEUE, {})
    await claim_one(store)
    clock.advance(POLICY.lease)
    await store.recover_expired()
    stats = (await store.queue_stats())[QUEUE]
    assert stats.counts[JobState.RETRY] == 1
    assert stats.oldest_pending_age == 0


async def test_pause_shows_with_its_reason(store: Store) -> None:
    await store.pause(QUEUE, "provider outage")
    await store.pause("unconfigured", None)
    stats = await store.queue_stats()
    assert (stats[QUEUE].paused, stats[QUEUE].pause_reason) == (True, "provider outage")
    assert (stats["unconfigured"].paused, stats["unconfigured"].pause_reason) == (True, None)
    assert stats[OTHER].paused is False
    await store.resume(QUEUE)
    assert (await store.queue_stats())[QUEUE].paused is False


async def test_stats_scoped_to_one_user(store: Store, clock: FakeClock) -> None:
    await store.enqueue_many(QUEUE, [{}, {}], user_id="alice")
    clock.advance(20)
    await store.enqueue(QUEUE, {}, user_id="bob")
    await store.enqueue(OTHER, {}, user_id="bob")
    clock.advance(5)
    await store.complete(await claim_one(store))  # one of alice's

    alice = await store.queue_stats(user_id="alice")
    assert alice[QUEUE].counts == zeros() | {JobState.PENDING: 1, JobState.COMPLETED: 1}
    assert alice[QUEUE].oldest_pending_age == 25
    assert alice[QUEUE].completed_last_minute == 1
    assert alice[OTHER].counts == zeros()
    bob = await store.queue_stats(user_id="bob")
    assert bob[QUEUE].counts == zeros() | {JobState.PENDING: 1}
    assert bob[QUEUE].oldest_pending_age == 5
    assert bob[QUEUE].completed_last_minute == 0
    assert bob[OTHER].counts == zeros() | {JobState.PENDING: 1}
    assert (await store.queue_stats(user_id="carol"))[QUEUE].total == 0
