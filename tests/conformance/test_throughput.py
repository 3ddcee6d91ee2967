"""Throughput over time: completed jobs per queue per time bucket, from the finished jobs."""

from __future__ import annotations

import pytest

from conformance.backends import NEXT, OTHER, QUEUE
from conformance.helpers import claim_one, job_in_state
from fakes import START, FakeClock
from lifeline import JobState, Store
from lifeline.store.base import MAX_THROUGHPUT_BUCKETS

MINUTE = 60
# the fake clock starts 40 s into a minute: the first bucket begins before ``since``
FIRST_MINUTE = START - START % MINUTE


async def complete_one(store: Store, queue: str = QUEUE, user_id: str | None = None) -> None:
    await store.enqueue(queue, {}, user_id=user_id)
    await store.complete(await claim_one(store, queue))


async def test_empty_store_lists_every_configured_queue_with_zeros(store: Store, clock: FakeClock) -> None:
    result = await store.throughput(since=clock.now - 3600)
    assert result.bucket_seconds == MINUTE
    assert result.start == FIRST_MINUTE - 3600
    assert result.buckets == 61  # 60 whole minutes and the one now is in
    assert set(result.counts) == {QUEUE, OTHER, NEXT}
    assert all(series == [0] * 61 for series in result.counts.values())
    assert result.bucket_starts()[-1] == FIRST_MINUTE


async def test_completions_land_in_their_buckets_per_queue(store: Store, clock: FakeClock) -> None:
    since = clock.now
    await complete_one(store)  # 1_000_000: bucket 0 (999_960 ..)
    await complete_one(store, OTHER)
    clock.set(FIRST_MINUTE + MINUTE)  # exactly on a boundary: the later bucket
    await complete_one(store)
    await complete_one(store)
    clock.advance(59.5)  # still bucket 1
    await complete_one(store)
    clock.advance(2 * MINUTE)  # bucket 3; bucket 2 stays empty
    await complete_one(store, OTHER)
    await complete_one(store, "unconfigured")

    result = await store.throughput(since=since)
    assert result.start == FIRST_MINUTE
    assert result.buckets == 4
    assert result.counts[QUEUE] == [1, 3, 0, 0]
    assert result.counts[OTHER] == [1, 0, 0, 1]
    assert result.counts[NEXT] == [0, 0, 0, 0]
    assert result.counts["unconfigured"] == [0, 0, 0, 1]
    assert result.points(QUEUE) == [
        (FIRST_MINUTE, 1),
        (FIRST_MINUTE + 60, 3),
        (FIRST_MINUTE + 120, 0),
        (FIRST_MINUTE + 180, 0),
    ]

    # a later window drops what finished before its first bucket; wider buckets add up
    later = await store.throughput(since=FIRST_MINUTE + MINUTE)
    assert later.start == FIRST_MINUTE + MINUTE
    assert (later.counts[QUEUE], later.counts[OTHER]) == ([3, 0, 0], [0, 0, 1])
    wide = await store.throughput(since=since, bucket_seconds=3600)
    hour = START - START % 3600
    assert (wide.start, wide.buckets) == (hour, 1)
    assert (wide.counts[QUEUE], wide.counts[OTHER]) == ([4], [2])


async def test_only_completions_count(store: Store, clock: FakeClock) -> None:
    since = clock.now
    for state in (JobState.PROCESSING, JobState.DEAD_LETTER, JobState.COMPLETED, JobState.FAILED):
        await job_in_state(store, clock, state)  # the failed one waits for its retry: pending
    cancelled = await store.enqueue(QUEUE, {})
    await store.cancel(cancelled)
    running = await store.enqueue(OTHER, {})
    await claim_one(store, OTHER)
    await store.cancel(running)

    stats = (await store.queue_stats())[QUEUE]
    assert (stats.counts[JobState.CANCELLED], stats.counts[JobState.DEAD_LETTER]) == (1, 1)
    assert (await store.queue_stats())[OTHER].counts[JobState.CANCELLED] == 1
    result = await store.throughput(since=since)
    assert result.counts[QUEUE] == [1]
    assert result.counts[OTHER] == [0]


async def test_scoped_to_one_user(store: Store, clock: FakeClock) -> None:
    since = clock.now
    await complete_one(store, user_id="alice")
    await complete_one(store, user_id="bob")
    await complete_one(store)  # nobody's
    clock.advance(MINUTE)
    await complete_one(store, OTHER, user_id="bob")
    await complete_one(store, OTHER, user_id="bob")

    everyone = await store.throughput(since=since)
    assert (everyone.counts[QUEUE], everyone.counts[OTHER]) == ([3, 0], [0, 2])
    alice = await store.throughput(since=since, user_id="alice")
    assert (alice.counts[QUEUE], alice.counts[OTHER]) == ([1, 0], [0, 0])
    bob = await store.throughput(since=since, user_id="bob")
    assert (bob.counts[QUEUE], bob.counts[OTHER]) == ([1, 0], [0, 2])
    carol = await store.throughput(since=since, user_id="carol")
    assert set(carol.counts) == {QUEUE, OTHER, NEXT}
    assert all(series == [0, 0] for series in carol.counts.values())


async def test_since_in_the_future_has_no_buckets(store: Store, clock: FakeClock) -> None:
    await complete_one(store)
    result = await store.throughput(since=clock.now + 3 * MINUTE)
    assert result.buckets == 0
    assert result.counts[QUEUE] == []


@pytest.mark.parametrize("bucket", [0, -60])
async def test_bucket_must_be_positive(store: Store, clock: FakeClock, bucket: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        await store.throughput(since=clock.now - 3600, bucket_seconds=bucket)


async def test_bucket_count_is_bounded(store: Store, clock: FakeClock) -> None:
    await store.throughput(since=clock.now - (MAX_THROUGHPUT_BUCKETS - 1) * 1, bucket_seconds=1)
    with pytest.raises(ValueError, match="at most"):
        await store.throughput(since=clock.now - MAX_THROUGHPUT_BUCKETS, bucket_seconds=1)
