"""The tracker: a recording's status is derived from its jobs; counts per client and per user."""

from __future__ import annotations

import asyncio

import pytest

from conformance.backends import NEXT, OTHER, POLICY, QUEUE
from conformance.helpers import claim_one
from fakes import FakeClock
from lifeline import JobState, LifelineError, NextJob, NotFound, RecordingStatus, Store
from lifeline.domain import Conflict


async def test_an_unknown_recording_is_not_found_never_completed(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.recording_status("no-such-recording")
    await store.add_recording("known")
    with pytest.raises(NotFound):
        await store.recording_status("no-such-recording")


async def test_a_recording_without_jobs_is_pending(store: Store, clock: FakeClock) -> None:
    assert await store.add_recording("rec", user_id="u", client_id="c") is None
    report = await store.recording_status("rec")
    assert report.status is RecordingStatus.PENDING
    assert (report.audio_uuid, report.user_id, report.client_id, report.created_at) == (
        "rec",
        "u",
        "c",
        clock.now,
    )
    assert report.stages == {}
    assert report.last_error is None


async def test_add_recording_writes_its_first_job_in_the_same_transaction(store: Store) -> None:
    job_id = await store.add_recording(
        "rec", user_id="u", client_id="c", first_job=NextJob(QUEUE, {"audio": "rec"}, priority=3)
    )
    assert job_id is not None
    job = (await store.get_job(job_id)).job
    assert (job.queue, job.payload, job.priority, job.state) == (QUEUE, {"audio": "rec"}, 3, JobState.PENDING)
    assert (job.recording_id, job.user_id, job.client_id) == ("rec", "u", "c")


async def test_a_duplicate_recording_is_refused_and_writes_nothing(store: Store) -> None:
    await store.add_recording("rec", user_id="u")
    with pytest.raises(LifelineError):
        await store.add_recording("rec", user_id="intruder", first_job=NextJob(QUEUE, {}))
    assert (await store.recording_status("rec")).user_id == "u"
    assert await store.list_jobs() == []


async def test_status_follows_the_pipeline(store: Store, clock: FakeClock) -> None:
    async def status() -> RecordingStatus:
        return (await store.recording_status("rec")).status

    await store.add_recording("rec", first_job=NextJob(QUEUE, {}))
    assert await status() is RecordingStatus.PENDING
    job = await claim_one(store)
    assert await status() is RecordingStatus.PROCESSING
    await store.complete(job, then=[(NEXT, {}), (OTHER, {})])
    assert await status() is RecordingStatus.PENDING  # the next stages wait
    nxt = await claim_one(store, NEXT)
    assert await status() is RecordingStatus.PROCESSING
    assert await store.fail(nxt, "llm timeout") is JobState.FAILED
    assert await status() is RecordingStatus.FAILED
    await store.complete(await claim_one(store, OTHER))
    assert await status() is RecordingStatus.FAILED
    clock.advance(POLICY.max_delay)
    await store.complete(await claim_one(store, NEXT))
    report = await store.recording_status("rec")
    assert report.status is RecordingStatus.COMPLETED
    assert set(report.stages) == {QUEUE, NEXT, OTHER}
    assert report.stages[NEXT].state is JobState.COMPLETED
    assert [a.error for a in report.stages[NEXT].jobs[0].attempts] == ["llm timeout", None]
    assert report.last_error == "llm timeout"


async def test_a_dead_letter_anywhere_wins(store: Store) -> None:
    await store.add_recording("rec", first_job=NextJob(QUEUE, {}))
    await store.complete(await claim_one(store), then=[(NEXT, {}), (OTHER, {})])
    await claim_one(store, OTHER)  # still processing
    await store.fail(await claim_one(store, NEXT), "empty transcript", permanent=True)
    report = await store.recording_status("rec")
    assert report.status is RecordingStatus.DEAD_LETTER
    assert report.last_error == "empty transcript"


async def test_only_cancelled_jobs_mean_cancelled(store: Store) -> None:
    job_id = await store.add_recording("rec", first_job=NextJob(QUEUE, {}))
    assert job_id is not None
    await store.cancel(job_id)
    assert (await store.recording_status("rec")).status is RecordingStatus.CANCELLED


async def test_jobs_without_a_recording_row_still_report(store: Store) -> None:
    await store.enqueue(QUEUE, {}, recording_id="orphan", user_id="u", client_id="c")
    report = await store.recording_status("orphan")
    assert report.status is RecordingStatus.PENDING
    assert (report.user_id, report.client_id, report.created_at) == ("u", "c", None)


async def test_client_and_user_stats_count_jobs_by_state(store: Store) -> None:
    await store.enqueue_many(QUEUE, [{}, {}, {}], user_id="alice", client_id="phone")
    await store.enqueue(QUEUE, {}, user_id="alice", client_id="watch")
    await store.enqueue(QUEUE, {}, user_id="bob", client_id="phone-bob")
    first = await claim_one(store)
    second = await claim_one(store)
    await store.complete(first)
    await store.fail(second, "bad", permanent=True)

    expected_phone = dict.fromkeys(JobState, 0) | {
        JobState.PENDING: 1,
        JobState.COMPLETED: 1,
        JobState.DEAD_LETTER: 1,
    }
    assert await store.client_stats("phone") == expected_phone
    assert await store.user_stats("alice") == expected_phone | {JobState.PENDING: 2}
    assert await store.user_stats("bob") == dict.fromkeys(JobState, 0) | {JobState.PENDING: 1}
    assert await store.user_stats("nobody") == dict.fromkeys(JobState, 0)


async def test_recordings_are_added_concurrently(store: Store) -> None:
    ids = await asyncio.gather(
        *(store.add_recording(f"rec-{i}", first_job=NextJob(QUEUE, {"i": i})) for i in range(40))
    )
    assert len(set(ids)) == 40
    for i in (0, 39):
        assert (await store.recording_status(f"rec-{i}")).status is RecordingStatus.PENDING


async def test_every_job_of_a_stage_counts(store: Store) -> None:
    """Two jobs in one stage: the recording is not completed while either still waits."""
    await store.add_recording("rec")
    await store.enqueue(QUEUE, {"part": 1}, recording_id="rec")
    await store.enqueue(QUEUE, {"part": 2}, recording_id="rec")
    await store.complete(await claim_one(store))
    report = await store.recording_status("rec")
    assert [info.job.state for info in report.stages[QUEUE].jobs] == [JobState.COMPLETED, JobState.PENDING]
    assert report.stages[QUEUE].state is JobState.PENDING  # the newest job of the stage
    assert report.status is RecordingStatus.PENDING


async def test_a_recording_id_is_taken_once(store: Store) -> None:
    await store.add_recording("twice")
    with pytest.raises(Conflict):
        await store.add_recording("twice")
