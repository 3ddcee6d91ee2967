"""Recordings and their audio: rows, chunks written as upserts and read back in pages, idle
recordings that were never handed over, deletion of everything a recording owns, and stages that
replace their outputs as a whole."""

from __future__ import annotations

import asyncio

import pytest

from conformance.backends import NEXT, OTHER, QUEUE, StoreFactory
from conformance.helpers import claim_one
from fakes import FakeClock
from lifeline import JobState, LeaseLost, NextJob, NotFound, Store
from lifeline.domain import Output


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
    assert (row.audio_bytes, row.audio_chunks, row.last_audio_at) == (0, 0, None)

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


# -- deleting a recording -------------------------------------------------------------------------


async def test_deleting_a_recording_removes_everything_it_owns(store: Store, clock: FakeClock) -> None:
    for rec in ("doomed", "kept"):
        await store.add_recording(rec, user_id="u", first_job=NextJob(QUEUE, {"rec": rec}))
        await store.append_audio(rec, 0, pcm(0, 100))
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
