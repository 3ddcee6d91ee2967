"""Recordings and their audio: rows, chunks written as upserts and read back in pages, idle
recordings that were never handed over, deletion of everything a recording owns, and stages that
replace their outputs as a whole."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import psycopg
import pytest

import lifeline
import pg
from conformance.backends import NEXT, OTHER, QUEUE, StoreFactory, store_url
from conformance.helpers import claim_one, migrate_postgres_below, migrate_sqlite_below
from fakes import FakeClock
from lifeline import JobState, LeaseLost, NextJob, NotFound, Store
from lifeline.domain import Conflict, Output
from lifeline.store.base import RecordingTotals


def pcm(seq: int, size: int) -> bytes:
    """A chunk whose bytes say which chunk it is (a mix-up between chunks cannot pass)."""
    return bytes((seq * 7 + i) % 251 for i in range(size))


async def run_stage(
    store: Store,
    outputs: list[Output],
    *,
    replace: list[tuple[str, str]] | None = None,
    queue: str = QUEUE,
) -> int:
    """Enqueue, claim and complete one job that writes ``outputs``; returns the job id."""
    job_id = await store.enqueue(queue, {})
    job = await claim_one(store, queue)
    assert job.id == job_id
    await store.complete(job, outputs=outputs, replace=replace or [])
    return job_id


def memories(rec: str, *texts: str, stage: str = "memory") -> list[Output]:
    return [Output(rec, stage, i, {"text": t}) for i, t in enumerate(texts)]


async def keys(store: Store, rec: str, stage: str | None = None) -> list[tuple[str, int, object]]:
    return [(o.stage, o.index, o.data) for o in await store.get_outputs(rec, stage)]


# -- recording rows -------------------------------------------------------------------------------


async def test_a_recording_keeps_where_it_came_from(store: Store, clock: FakeClock) -> None:
    await store.add_recording(
        "up", user_id="u", client_id="u-phone", source="upload", device_name="phone", filename="a.wav"
    )
    row = await store.get_recording("up")
    assert (row.audio_uuid, row.user_id, row.client_id, row.created_at) == ("up", "u", "u-phone", clock.now)
    assert (row.source, row.device_name, row.filename) == ("upload", "phone", "a.wav")
    assert (row.audio_bytes, row.audio_chunks, row.last_audio_at, row.closed_at) == (0, 0, None, None)

    await store.add_recording("plain")
    row = await store.get_recording("plain")
    assert (row.source, row.device_name, row.filename, row.user_id) == ("api", None, None, None)


async def test_an_unknown_recording_is_not_found(store: Store) -> None:
    await store.add_recording("known")
    with pytest.raises(NotFound):
        await store.get_recording("unknown")


async def test_recordings_are_listed_newest_first_and_per_user(store: Store, clock: FakeClock) -> None:
    for n in range(5):
        await store.add_recording(f"rec-{n}", user_id="alice" if n % 2 == 0 else "bob")
        clock.advance(1)
    assert [r.audio_uuid for r in await store.list_recordings()] == [f"rec-{n}" for n in (4, 3, 2, 1, 0)]
    assert [r.audio_uuid for r in await store.list_recordings(user_id="alice")] == ["rec-4", "rec-2", "rec-0"]
    assert [r.audio_uuid for r in await store.list_recordings(user_id="bob")] == ["rec-3", "rec-1"]
    assert await store.list_recordings(user_id="carol") == []
    page = await store.list_recordings(limit=2, offset=1)
    assert [r.audio_uuid for r in page] == ["rec-3", "rec-2"]
    assert await store.count_recordings() == 5
    assert await store.count_recordings(user_id="alice") == 3
    assert await store.count_recordings(user_id="carol") == 0


# -- audio ----------------------------------------------------------------------------------------


async def test_audio_round_trips_across_pages_in_order(store: Store, clock: FakeClock) -> None:
    await store.add_recording("rec", source="stream")
    sizes = {seq: 32000 + seq for seq in range(7)}
    for seq in (3, 0, 6, 1, 5, 2, 4):  # arrival order does not matter, seq does
        clock.advance(1)
        await store.append_audio("rec", seq, pcm(seq, sizes[seq]))
    pages: list[list[tuple[int, bytes]]] = []
    after = -1
    while page := await store.read_audio("rec", after_seq=after, limit=3):
        pages.append(page)
        after = page[-1][0]
    assert [[seq for seq, _ in page] for page in pages] == [[0, 1, 2], [3, 4, 5], [6]]
    assert all(data == pcm(seq, sizes[seq]) for page in pages for seq, data in page)
    row = await store.get_recording("rec")
    assert (row.audio_chunks, row.audio_bytes) == (7, sum(sizes.values()))
    assert row.last_audio_at == clock.now
    assert row.duration_seconds == pytest.approx(sum(sizes.values()) / 32000)


async def test_a_rewritten_chunk_replaces_the_old_one_and_its_size(store: Store, clock: FakeClock) -> None:
    await store.add_recording("rec")
    await store.append_audio("rec", 0, pcm(0, 1000))
    await store.append_audio("rec", 1, pcm(1, 500))
    clock.advance(5)
    await store.append_audio("rec", 1, pcm(9, 300))  # a retried write, different bytes and size
    await store.append_audio("rec", 1, pcm(9, 300))  # and the same again
    assert await store.read_audio("rec") == [(0, pcm(0, 1000)), (1, pcm(9, 300))]
    row = await store.get_recording("rec")
    assert (row.audio_chunks, row.audio_bytes, row.last_audio_at) == (2, 1300, clock.now)
    await store.append_audio("rec", 0, pcm(0, 4000))  # a chunk may also grow
    assert (await store.get_recording("rec")).audio_bytes == 4300


async def test_large_chunks_of_an_upload_round_trip(store: Store) -> None:
    await store.add_recording("big", source="upload")
    for seq in range(4):
        await store.append_audio("big", seq, pcm(seq, 320_000))
    first = await store.read_audio("big", limit=2)
    rest = await store.read_audio("big", after_seq=first[-1][0], limit=64)
    assert [seq for seq, _ in first + rest] == [0, 1, 2, 3]
    assert all(data == pcm(seq, 320_000) for seq, data in first + rest)
    assert (await store.get_recording("big")).audio_bytes == 1_280_000


async def test_concurrent_writers_keep_the_counters_true(open_store: StoreFactory) -> None:
    """Two stores (two processes' writers) rewriting the same chunks at once: the counters
    always describe exactly the chunks that are stored."""
    first, second = await open_store(), await open_store()
    await first.add_recording("rec")
    await asyncio.gather(
        *(
            writer.append_audio("rec", seq % 8, pcm(seq, 100 + 37 * seq + 500 * n))
            for seq in range(24)
            for n, writer in enumerate((first, second))
        )
    )
    stored = await first.read_audio("rec", limit=100)
    assert [seq for seq, _ in stored] == list(range(8))
    row = await second.get_recording("rec")
    assert (row.audio_chunks, row.audio_bytes) == (8, sum(len(data) for _, data in stored))


async def test_audio_of_an_unknown_recording_is_refused_and_kept_nowhere(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.append_audio("ghost", 0, b"\x00\x01" * 10)
    await store.add_recording("ghost")  # created afterwards: the refused chunk is not there
    assert await store.read_audio("ghost") == []
    assert (await store.get_recording("ghost")).audio_chunks == 0


async def test_audio_of_one_recording_is_not_another_ones(store: Store) -> None:
    await store.add_recording("a")
    await store.add_recording("b")
    await store.append_audio("a", 0, b"aa")
    await store.append_audio("b", 0, b"bbbb")
    await store.append_audio("b", 1, b"bb")
    assert await store.read_audio("a") == [(0, b"aa")]
    assert await store.read_audio("b", after_seq=0) == [(1, b"bb")]
    assert await store.read_audio("nobody") == []


async def test_chunk_sizes_are_told_without_the_audio(store: Store) -> None:
    """What seeking needs: each chunk's size, in seq order, whatever the arrival order, with gaps
    in the seqs, after rewrites, for small stream chunks and large (compressible) upload ones."""
    await store.add_recording("rec", source="stream")
    await store.add_recording("other")
    await store.append_audio("other", 0, pcm(0, 77))
    sizes = {5: 320_000, 0: 32_000, 2: 1, 3: 4001, 9: 2}
    for seq, size in sizes.items():
        await store.append_audio("rec", seq, pcm(seq, size))
    await store.append_audio("rec", 3, pcm(3, 600))  # rewritten, smaller
    await store.append_audio("rec", 0, pcm(0, 65_536))  # rewritten, larger
    expected = [(0, 65_536), (2, 1), (3, 600), (5, 320_000), (9, 2)]
    assert await store.audio_chunk_sizes("rec") == expected
    # the sizes are those of the chunks read_audio returns, and add up to the recording's bytes
    assert [(seq, len(data)) for seq, data in await store.read_audio("rec")] == expected
    assert (await store.get_recording("rec")).audio_bytes == sum(size for _, size in expected)
    assert await store.audio_chunk_sizes("other") == [(0, 77)]
    assert await store.audio_chunk_sizes("nobody") == []
    await store.delete_recording("rec")
    assert await store.audio_chunk_sizes("rec") == []


# -- unfinished recordings ------------------------------------------------------------------------


async def test_unfinished_recordings_are_idle_ones_without_any_job(store: Store, clock: FakeClock) -> None:
    start = clock.now
    await store.add_recording("handed-over", first_job=NextJob(QUEUE, {}))
    await store.add_recording("quiet-since-creation")
    clock.advance(10)
    await store.add_recording("stream", source="stream")
    await store.append_audio("stream", 0, b"\x00" * 64)
    clock.advance(10)
    await store.add_recording("stream-alive", source="stream")
    clock.advance(5)
    await store.append_audio("stream-alive", 0, b"\x00" * 64)  # audio at start + 25

    async def unfinished(idle_before: float, limit: int = 100) -> list[str]:
        return [r.audio_uuid for r in await store.unfinished_recordings(idle_before=idle_before, limit=limit)]

    # oldest first by their last audio (or their creation when they have none)
    assert await unfinished(start + 100) == ["quiet-since-creation", "stream", "stream-alive"]
    assert await unfinished(start + 100, limit=2) == ["quiet-since-creation", "stream"]
    assert await unfinished(start + 10) == ["quiet-since-creation"]  # "stream" spoke at exactly +10
    assert await unfinished(start + 10.5) == ["quiet-since-creation", "stream"]
    assert await unfinished(start) == []
    # once a recording has a job of any state it is handed over, for good
    job_id = await store.enqueue(QUEUE, {}, recording_id="stream")
    await store.cancel(job_id)
    assert await unfinished(start + 100) == ["quiet-since-creation", "stream-alive"]
    row = (await store.unfinished_recordings(idle_before=start + 100))[1]
    assert (row.source, row.audio_chunks, row.last_audio_at) == ("stream", 1, start + 25)


# -- closed recordings ----------------------------------------------------------------------------


async def clear_closed_at(factory: StoreFactory, rec: str) -> None:
    """Clear ``closed_at`` behind the store's back, through a connection of its own: a recording
    that has a job but is not closed (which the store never leaves), so that a path inserting a
    job for a recording that already has one can be seen closing it."""
    url = store_url(factory.backend, factory.location)

    def run() -> None:
        if factory.backend == "sqlite":
            conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
            try:
                conn.execute("UPDATE recordings SET closed_at = NULL WHERE audio_uuid = ?", (rec,))
            finally:
                conn.close()
        else:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("UPDATE recordings SET closed_at = NULL WHERE audio_uuid = %s", (rec,))

    await asyncio.to_thread(run)


async def by_enqueue(store: Store, rec: str) -> None:
    await store.enqueue(QUEUE, {}, recording_id=rec)


async def by_idempotent_enqueue(store: Store, rec: str) -> None:
    await store.enqueue(QUEUE, {}, recording_id=rec, idempotency_key=f"close:{rec}")


async def by_enqueue_many(store: Store, rec: str) -> None:
    await store.enqueue_many(QUEUE, [{}, {}], recording_id=rec)


async def by_concurrent_enqueues(store: Store, rec: str) -> None:
    """Enqueues that the writer merges into one multi-row INSERT (PostgreSQL) or one batch."""
    await asyncio.gather(*(store.enqueue(QUEUE, {"n": n}, recording_id=rec) for n in range(5)))


async def by_first_job(store: Store, rec: str) -> None:
    await store.delete_recording(rec)
    await store.add_recording(rec, first_job=NextJob(QUEUE, {}))


async def by_next_job(store: Store, rec: str, factory: StoreFactory, clock: FakeClock) -> None:
    """complete(then=): the parent job closes the recording first, so that is undone by hand."""
    await store.enqueue(OTHER, {}, recording_id=rec)
    parent = await claim_one(store, OTHER)
    await clear_closed_at(factory, rec)
    assert (await store.get_recording(rec)).closed_at is None
    clock.advance(2)
    await store.complete(parent, then=[NextJob(NEXT, {})])


CLOSERS = {
    "enqueue": by_enqueue,
    "enqueue-idempotent": by_idempotent_enqueue,
    "enqueue_many": by_enqueue_many,
    "enqueue-merged": by_concurrent_enqueues,
    "add_recording-first_job": by_first_job,
}


@pytest.mark.parametrize("path", [*CLOSERS, "complete-then"])
async def test_every_path_that_inserts_a_job_closes_its_recording(
    open_store: StoreFactory, clock: FakeClock, path: str
) -> None:
    store = await open_store()
    start = clock.now
    await store.add_recording("rec", source="stream")
    await store.add_recording("bystander", source="stream")
    clock.advance(5)
    if path == "complete-then":
        await by_next_job(store, "rec", open_store, clock)
    else:
        await CLOSERS[path](store, "rec")
    closed_at = clock.now
    assert closed_at > start
    assert (await store.get_recording("rec")).closed_at == closed_at
    assert [r.audio_uuid for r in await store.unfinished_recordings(idle_before=closed_at + 100)] == [
        "bystander"
    ]
    # later jobs of the recording, and jobs without one, change nothing
    clock.advance(5)
    await store.enqueue(QUEUE, {}, recording_id="rec")
    await store.enqueue(QUEUE, {})
    assert (await store.get_recording("rec")).closed_at == closed_at
    assert (await store.get_recording("bystander")).closed_at is None
    assert [(r.audio_uuid, r.closed_at) for r in await store.list_recordings()] == [
        ("rec", closed_at),
        ("bystander", None),
    ]


async def test_a_recording_stays_closed_when_all_its_jobs_are_deleted(store: Store, clock: FakeClock) -> None:
    """A purge of dead letters must not make a finished recording unfinished: the sweeper would
    re-close (re-transcribe) the stream, or delete the upload and its audio."""
    for rec, source in (("dead-stream", "stream"), ("dead-upload", "upload")):
        await store.add_recording(rec, source=source)
        await store.append_audio(rec, 0, pcm(0, 640))
    clock.advance(1)
    closed_at = clock.now
    job_ids = [
        await store.enqueue(queue, {}, recording_id=rec, idempotency_key=f"close:{rec}")
        for queue, rec in ((QUEUE, "dead-stream"), (OTHER, "dead-upload"))
    ]
    for queue in (QUEUE, OTHER):
        dead = await claim_one(store, queue)
        assert await store.fail(dead, "no speech model", permanent=True) is JobState.DEAD_LETTER
    clock.advance(100)

    assert await store.purge_dead_letters(QUEUE) == 1
    assert await store.purge_dead_letters(OTHER) == 1
    for job_id in job_ids:
        with pytest.raises(NotFound):
            await store.get_job(job_id)
    assert await store.list_jobs(recording_id="dead-stream") == []
    assert await store.list_jobs(recording_id="dead-upload") == []

    assert await store.unfinished_recordings(idle_before=clock.now + 1000) == []
    for rec in ("dead-stream", "dead-upload"):
        row = await store.get_recording(rec)
        assert (row.closed_at, row.audio_chunks) == (closed_at, 1)
        with pytest.raises(Conflict):
            await store.append_audio(rec, 1, pcm(1, 64))
    # deleting the recording itself does end it: one created again under its id starts unclosed
    await store.delete_recording("dead-stream")
    await store.add_recording("dead-stream", source="stream")
    assert (await store.get_recording("dead-stream")).closed_at is None
    assert [r.audio_uuid for r in await store.unfinished_recordings(idle_before=clock.now + 1)] == [
        "dead-stream"
    ]


async def test_a_job_enqueued_before_its_recording_closes_it_at_creation(
    store: Store, clock: FakeClock
) -> None:
    first = clock.now
    await store.enqueue(QUEUE, {}, recording_id="early")
    clock.advance(3)
    await store.enqueue(QUEUE, {}, recording_id="early")
    clock.advance(3)
    await store.add_recording("early", source="stream")
    assert (await store.get_recording("early")).closed_at == first
    assert await store.unfinished_recordings(idle_before=clock.now + 100) == []


async def test_the_audio_of_a_closed_recording_is_final(store: Store, clock: FakeClock) -> None:
    await store.add_recording("rec", source="stream")
    await store.append_audio("rec", 0, pcm(0, 640))
    await store.append_audio("rec", 1, pcm(1, 320))
    await store.enqueue(QUEUE, {}, recording_id="rec", idempotency_key="close:rec")
    clock.advance(1)
    with pytest.raises(Conflict):
        await store.append_audio("rec", 2, pcm(2, 320))  # a new chunk
    with pytest.raises(Conflict):
        await store.append_audio("rec", 1, pcm(9, 640))  # a rewrite of one
    assert await store.read_audio("rec") == [(0, pcm(0, 640)), (1, pcm(1, 320))]
    row = await store.get_recording("rec")
    assert (row.audio_chunks, row.audio_bytes, row.last_audio_at) == (2, 960, clock.now - 1)
    with pytest.raises(NotFound):  # an unknown one is still not found
        await store.append_audio("ghost", 0, pcm(0, 2))


# -- deleting a recording -------------------------------------------------------------------------


async def test_deleting_a_recording_removes_everything_it_owns(store: Store, clock: FakeClock) -> None:
    for rec in ("doomed", "kept"):
        await store.add_recording(rec, user_id="u")
        await store.append_audio(rec, 0, pcm(0, 100))
        await store.enqueue(QUEUE, {"rec": rec}, recording_id=rec, user_id="u")
    done = await claim_one(store)
    assert done.recording_id == "doomed"
    await store.complete(
        done,
        outputs=[*memories("doomed", "I like tea"), Output("doomed", "transcript", 0, {"text": "hi"})],
        then=[NextJob(NEXT, {})],
    )
    running = await claim_one(store, NEXT)  # a worker is still busy with the doomed recording
    other = await claim_one(store)
    await store.complete(other, outputs=memories("kept", "I like tea"))
    doomed_jobs = [j.id for j in await store.list_jobs(recording_id="doomed")]
    assert len(doomed_jobs) == 2

    await store.delete_recording("doomed")

    with pytest.raises(NotFound):
        await store.get_recording("doomed")
    with pytest.raises(NotFound):
        await store.recording_status("doomed")
    assert await store.list_jobs(recording_id="doomed") == []
    for job_id in doomed_jobs:
        with pytest.raises(NotFound):
            await store.get_job(job_id)
    assert await store.get_outputs("doomed") == []
    assert await store.read_audio("doomed") == []
    assert [o.recording_id for o in await store.search_outputs("memory", query="tea")] == ["kept"]
    # the worker that was still running finds its lease gone and writes nothing
    with pytest.raises(LeaseLost):
        await store.complete(running, outputs=memories("doomed", "late"), then=[NextJob(OTHER, {})])
    assert await store.get_outputs("doomed") == []
    assert await store.list_jobs(queue=OTHER) == []
    # the other recording is untouched
    assert (await store.get_recording("kept")).audio_chunks == 1
    assert await store.read_audio("kept") == [(0, pcm(0, 100))]
    assert len(await store.get_outputs("kept")) == 1
    assert (await store.recording_status("kept")).stages[QUEUE].state is JobState.COMPLETED
    assert await store.count_recordings() == 1
    # and it can be created again from scratch
    await store.add_recording("doomed")
    assert (await store.get_recording("doomed")).audio_bytes == 0


async def test_deleting_an_unknown_recording_is_not_found(store: Store) -> None:
    await store.add_recording("known", first_job=NextJob(QUEUE, {}))
    with pytest.raises(NotFound):
        await store.delete_recording("unknown")
    await store.delete_recording("known")
    with pytest.raises(NotFound):
        await store.delete_recording("known")


async def test_retention_still_works_after_deletions(store: Store, clock: FakeClock) -> None:
    await store.add_recording("gone", first_job=NextJob(QUEUE, {}))
    await store.complete(await claim_one(store))
    await store.delete_recording("gone")
    loose = await store.enqueue(QUEUE, {})
    await store.complete(await claim_one(store))
    clock.advance(100)
    report = await store.cleanup(completed_older_than=10)
    assert (report.jobs_deleted, report.attempts_deleted) == (1, 1)
    with pytest.raises(NotFound):
        await store.get_job(loose)


# -- outputs replaced as a whole ------------------------------------------------------------------


async def test_a_rerun_with_fewer_outputs_leaves_no_stale_ones(store: Store) -> None:
    await run_stage(
        store,
        memories("rec", "one", "two", "three")
        + memories("rec", "keep", stage="action_item")
        + memories("other", "a", "b"),
    )
    await run_stage(store, memories("rec", "ONE"), replace=[("rec", "memory")])
    assert await keys(store, "rec") == [("action_item", 0, {"text": "keep"}), ("memory", 0, {"text": "ONE"})]
    assert [o.revision for o in await store.get_outputs("rec", "memory")] == [2]
    assert len(await store.get_outputs("other")) == 2  # another recording's outputs of that stage stay


async def test_a_rerun_that_finds_nothing_removes_all_of_the_pair(store: Store) -> None:
    await run_stage(store, memories("rec", "one", "two") + memories("rec", "t", stage="transcript"))
    await run_stage(store, [], replace=[("rec", "memory")])
    assert await keys(store, "rec") == [("transcript", 0, {"text": "t"})]


async def test_replace_keeps_exactly_the_indexes_written(store: Store) -> None:
    await run_stage(store, memories("rec", "a", "b", "c", "d") + memories("rec2", "x", "y"))
    # not only a prefix: any index not written goes; several pairs in one completion
    await run_stage(
        store,
        [Output("rec", "memory", 2, {"text": "C"}), Output("rec2", "memory", 1, {"text": "Y"})],
        replace=[("rec", "memory"), ("rec2", "memory"), ("rec", "memory")],
    )
    assert await keys(store, "rec") == [("memory", 2, {"text": "C"})]
    assert await keys(store, "rec2") == [("memory", 1, {"text": "Y"})]


async def test_outputs_without_replace_are_still_only_upserts(store: Store) -> None:
    await run_stage(store, memories("rec", "one", "two"))
    await run_stage(store, memories("rec", "ONE"))
    assert await keys(store, "rec") == [("memory", 0, {"text": "ONE"}), ("memory", 1, {"text": "two"})]


async def test_a_lost_lease_replaces_nothing(store: Store) -> None:
    await run_stage(store, memories("rec", "one", "two", "three"))
    await store.enqueue(QUEUE, {})
    job = await claim_one(store)
    await store.recover_expired(job_id=job.id, force=True)
    with pytest.raises(LeaseLost):
        await store.complete(job, outputs=memories("rec", "ONE"), replace=[("rec", "memory")])
    with pytest.raises(LeaseLost):
        await store.complete(job, replace=[("rec", "memory")])
    assert [o.data for o in await store.get_outputs("rec")] == [{"text": t} for t in ("one", "two", "three")]
    assert [o.revision for o in await store.get_outputs("rec")] == [1, 1, 1]


# -- recordings from before closed_at existed ------------------------------------------------------

_OLD_RECORDINGS = [  # audio_uuid, source, created_at, audio_bytes, audio_chunks, last_audio_at
    ("handed-over", "stream", 1.0, 640, 1, 2.0),
    ("cut-stream", "stream", 1.5, 640, 1, 3.0),
    ("quiet", "api", 2.5, 0, 0, None),
]
_OLD_JOBS = [  # queue, state, payload, max_attempts, recording_id, created_at, updated_at
    ("chunk", "completed", "{}", 3, "handed-over", 5.0, 6.0),
    ("transcription", "dead_letter", "{}", 3, "handed-over", 7.0, 8.0),
    ("chunk", "pending", "{}", 3, None, 4.0, 4.0),
]


async def _check_upgraded(url: str) -> None:
    async with lifeline.connect(url) as store:
        closed = {r.audio_uuid: r.closed_at for r in await store.list_recordings()}
        assert closed == {"handed-over": 5.0, "cut-stream": None, "quiet": None}  # by its oldest job
        unfinished = await store.unfinished_recordings(idle_before=1e12)
        assert [r.audio_uuid for r in unfinished] == ["quiet", "cut-stream"]  # by idle time (2.5, 3.0)
        # the trigger is there: a purge now leaves the recording closed
        assert await store.purge_dead_letters("transcription") == 1
        assert (await store.get_recording("handed-over")).closed_at == 5.0
        with pytest.raises(Conflict):
            await store.append_audio("handed-over", 1, pcm(1, 64))
        await store.append_audio("cut-stream", 1, pcm(1, 64))
        await store.enqueue("chunk", {}, recording_id="cut-stream", idempotency_key="close:cut-stream")
        assert (await store.get_recording("cut-stream")).closed_at is not None
        assert [r.audio_uuid for r in await store.unfinished_recordings(idle_before=1e12)] == ["quiet"]


async def test_sqlite_recordings_from_before_the_upgrade_are_closed_by_their_jobs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate_sqlite_below(conn, 5)
        conn.executemany(
            "INSERT INTO recordings (audio_uuid, source, created_at, audio_bytes, audio_chunks,"
            " last_audio_at) VALUES (?, ?, ?, ?, ?, ?)",
            _OLD_RECORDINGS,
        )
        conn.executemany(
            "INSERT INTO jobs (queue, state, payload, max_attempts, recording_id, created_at, updated_at,"
            " run_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
            _OLD_JOBS,
        )
    finally:
        conn.close()
    await _check_upgraded(f"sqlite:///{path}")


async def test_postgres_recordings_from_before_the_upgrade_are_closed_by_their_jobs(tmp_path: Path) -> None:
    cluster = pg.require()
    name = "t_old_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:20]
    cluster.create_database(name)  # empty: migrated below to version 4 only
    try:
        url = cluster.url(name)

        def prepare() -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                migrate_postgres_below(conn, 5)
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO recordings (audio_uuid, source, created_at, audio_bytes, audio_chunks,"
                        " last_audio_at) VALUES (%s, %s, %s, %s, %s, %s)",
                        _OLD_RECORDINGS,
                    )
                    cur.executemany(
                        "INSERT INTO jobs (queue, state, payload, max_attempts, recording_id, created_at,"
                        " updated_at, run_at) VALUES (%s, %s, %s::json, %s, %s, %s, %s, 0)",
                        _OLD_JOBS,
                    )

        await asyncio.to_thread(prepare)
        await _check_upgraded(url)
    finally:
        cluster.drop_database(name)


# -- totals (the metrics) ---------------------------------------------------------------------------


async def test_recording_totals_count_sources_open_recordings_and_stored_audio(store: Store) -> None:
    assert await store.recording_totals() == RecordingTotals(by_source={}, open=0, audio_bytes=0)
    await store.add_recording("upload-1", source="upload")
    await store.append_audio("upload-1", 0, pcm(0, 32_000))
    await store.append_audio("upload-1", 1, pcm(1, 16_000))
    await store.enqueue(QUEUE, {}, recording_id="upload-1")  # handed over: closed
    await store.add_recording("upload-2", source="upload", first_job=NextJob(QUEUE, {}))  # closed at once
    await store.add_recording("live", source="stream")
    await store.append_audio("live", 0, pcm(2, 8_000))
    await store.append_audio("live", 0, pcm(2, 4_000))  # a rewritten chunk counts at its new size
    await store.add_recording("by-code")
    await store.enqueue(QUEUE, {})  # a job of no recording closes none

    totals = await store.recording_totals()
    assert totals == RecordingTotals(
        by_source={"upload": 2, "stream": 1, "api": 1}, open=2, audio_bytes=52_000
    )
    assert totals.audio_seconds == 52_000 / 32_000

    await store.delete_recording("upload-1")
    await store.enqueue(QUEUE, {}, recording_id="live")  # the stream ended and was handed over
    assert await store.recording_totals() == RecordingTotals(
        by_source={"upload": 1, "stream": 1, "api": 1}, open=1, audio_bytes=4_000
    )
