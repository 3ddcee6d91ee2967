"""The pipeline API over conversations whose stages ran (outputs written through the store's own
``complete``, as the stage handlers write them): listing, details, audio, deletes, reprocessing,
memories and action items, and ownership (somebody else's id is a 404)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from lifeline import audio
from lifeline.api import routes_pipeline
from lifeline.domain import JobState, NextJob, Output
from lifeline.store.base import FoundOutput, OutputKey, RecordingReport, Store

from .audio_helpers import pcm16, tone
from .conftest import Api


async def run_stage(
    store: Store, queue: str, outputs: list[Output], then: list[tuple[str, dict[str, Any]]]
) -> None:
    job = await store.claim(queue, worker_id="test")
    assert job is not None
    await store.complete(job, outputs=outputs, then=then)


async def seed(
    store: Store,
    audio_uuid: str,
    user_id: str,
    *,
    text: str,
    memories: list[str],
    actions: list[str],
    seconds: float = 1.0,
) -> None:
    """A conversation as the four stages leave it."""
    await store.add_recording(
        audio_uuid, user_id=user_id, client_id="c-phone", source="upload", filename=f"{audio_uuid}.wav"
    )
    await store.append_audio(audio_uuid, 0, pcm16(tone(seconds)))
    await store.enqueue(
        "chunk", {}, recording_id=audio_uuid, user_id=user_id, idempotency_key=f"close:{audio_uuid}"
    )
    chunk = {"duration_seconds": seconds, "bytes": int(seconds * 32000), "chunks": 1, "speech": True}
    await run_stage(store, "chunk", [Output(audio_uuid, "chunk", 0, chunk)], [("transcription", {})])
    transcript = {
        "text": text,
        "segments": [{"start": 0.0, "end": seconds, "text": text}],
        "duration_seconds": seconds,
        "provider": "test",
    }
    await run_stage(
        store,
        "transcription",
        [Output(audio_uuid, "transcription", 0, transcript)],
        [("memory", {}), ("action_item", {})],
    )
    await run_stage(
        store,
        "memory",
        [
            Output(audio_uuid, "memory", i, {"text": m, "category": "preference", "point_id": None})
            for i, m in enumerate(memories)
        ],
        [],
    )
    await run_stage(
        store,
        "action_item",
        [
            Output(
                audio_uuid,
                "action_item",
                i,
                {"text": a, "assignee": None, "due": "Friday", "status": "open", "at_seconds": 0.5},
            )
            for i, a in enumerate(actions)
        ],
        [],
    )


@pytest.fixture
async def users(api: Api) -> dict[str, Any]:
    alice_id, alice = await api.new_user("alice@example.com")
    bob_id, bob = await api.new_user("bob@example.com")
    store = api.ctx.store
    await seed(
        store,
        "a-1",
        alice_id,
        text="I love hiking in the mountains.",
        memories=["I love hiking in the mountains"],
        actions=[],
    )
    await seed(
        store,
        "a-2",
        alice_id,
        text="Remind me to call the dentist by Friday. I enjoy cooking Italian food.",
        memories=["I enjoy cooking Italian food"],
        actions=["call the dentist", "buy flowers"],
    )
    await seed(
        store,
        "b-1",
        bob_id,
        text="My brother Peter lives in Chicago.",
        memories=["My brother Peter lives in Chicago"],
        actions=["send the papers"],
    )
    return {"alice": alice, "bob": bob, "admin": await api.admin(), "alice_id": alice_id}


async def test_conversations_are_listed_newest_first_and_only_ones_own(
    api: Api, users: dict[str, Any]
) -> None:
    r = await api.client.get("/api/conversations", headers=users["alice"])
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["total"] == 2
    assert page["limit"] == 50
    assert page["offset"] == 0
    assert [c["audio_uuid"] for c in page["items"]] == ["a-2", "a-1"]
    first = page["items"][0]
    assert first["status"] == "completed"
    assert first["source"] == "upload"
    assert first["filename"] == "a-2.wav"
    assert first["stages"] == {
        "chunk": "completed",
        "transcription": "completed",
        "memory": "completed",
        "action_item": "completed",
    }
    assert first["transcript_preview"].startswith("Remind me to call the dentist")
    assert first["duration_seconds"] == pytest.approx(1.0)
    r = await api.client.get("/api/conversations", params={"limit": 1, "offset": 1}, headers=users["alice"])
    assert [c["audio_uuid"] for c in r.json()["items"]] == ["a-1"]
    assert r.json()["total"] == 2
    r = await api.client.get("/api/conversations", headers=users["admin"])
    assert r.json()["total"] == 3


async def test_a_conversation_in_detail(api: Api, users: dict[str, Any]) -> None:
    r = await api.client.get("/api/conversations/a-2", headers=users["alice"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["transcript"]["text"].startswith("Remind me")
    assert body["transcript"]["segments"] == [{"start": 0.0, "end": 1.0, "text": body["transcript"]["text"]}]
    assert [m["id"] for m in body["memories"]] == ["a-2:0"]
    assert body["memories"][0]["category"] == "preference"
    assert [(a["id"], a["text"], a["status"], a["due"]) for a in body["action_items"]] == [
        ("a-2:0", "call the dentist", "open", "Friday"),
        ("a-2:1", "buy flowers", "open", "Friday"),
    ]
    assert [j["queue"] for j in body["jobs"]] == ["chunk", "transcription", "memory", "action_item"]
    assert all(
        j["state"] == "completed" and j["attempt_history"][0]["outcome"] == "completed" for j in body["jobs"]
    )


async def test_somebody_elses_conversation_is_404_everywhere(api: Api, users: dict[str, Any]) -> None:
    alice = users["alice"]
    for method, path in [
        ("GET", "/api/conversations/b-1"),
        ("GET", "/api/conversations/b-1/audio"),
        ("DELETE", "/api/conversations/b-1"),
        ("POST", "/api/conversations/b-1/reprocess?from=memory"),
        ("DELETE", "/api/memories/b-1:0"),
        ("GET", "/api/conversations/nope"),
        ("DELETE", "/api/memories/nope"),
    ]:
        r = await api.client.request(method, path, headers=alice)
        assert r.status_code == 404, (method, path, r.text)
    r = await api.client.patch("/api/action-items/b-1:0", json={"status": "done"}, headers=alice)
    assert r.status_code == 404
    # nothing of bob's changed, and the superuser sees it
    r = await api.client.get("/api/conversations/b-1", headers=users["admin"])
    assert r.status_code == 200
    assert r.json()["action_items"][0]["status"] == "open"
    assert len(r.json()["jobs"]) == 4


async def test_audio_download(api: Api, users: dict[str, Any]) -> None:
    r = await api.client.get("/api/conversations/a-1/audio", headers=users["alice"])
    assert r.status_code == 200
    assert r.content == audio.to_wav(pcm16(tone(1.0)))


async def test_delete_a_conversation_and_everything_derived(api: Api, users: dict[str, Any]) -> None:
    alice = users["alice"]
    r = await api.client.delete("/api/conversations/a-2", headers=alice)
    assert r.status_code == 204
    assert (await api.client.get("/api/conversations/a-2", headers=alice)).status_code == 404
    assert (await api.client.delete("/api/conversations/a-2", headers=alice)).status_code == 404
    memories = (await api.client.get("/api/memories", headers=alice)).json()["items"]
    assert [m["id"] for m in memories] == ["a-1:0"]
    assert (await api.client.get("/api/action-items", headers=alice)).json()["items"] == []
    assert await api.ctx.store.list_jobs(recording_id="a-2") == []


async def test_reprocess_from_a_stage(api: Api, users: dict[str, Any]) -> None:
    alice = users["alice"]
    r = await api.client.post("/api/conversations/a-1/reprocess", params={"from": "memory"}, headers=alice)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["audio_uuid"] == "a-1"
    assert body["stage"] == "memory"
    job = (await api.ctx.store.get_job(body["job_id"])).job
    assert (job.queue, job.recording_id, job.state) == ("memory", "a-1", JobState.PENDING)
    r = await api.client.post("/api/conversations/a-1/reprocess", params={"from": "memory"}, headers=alice)
    assert r.status_code == 409  # already queued
    r = await api.client.post(
        "/api/conversations/a-1/reprocess", params={"from": "transcription"}, headers=alice
    )
    assert r.status_code == 202
    assert r.json()["stage"] == "transcription"
    r = await api.client.get("/api/conversations/a-1", headers=alice)
    assert r.json()["stages"]["transcription"] == "pending"
    assert r.json()["status"] == "pending"
    assert r.json()["transcript"] is not None  # earlier outputs are kept
    r = await api.client.post("/api/conversations/a-1/reprocess", params={"from": "chunk"}, headers=alice)
    assert r.status_code == 422


async def test_reprocess_needs_what_the_stage_reads(api: Api, users: dict[str, Any]) -> None:
    store = api.ctx.store
    await store.add_recording("raw", user_id=users["alice_id"], source="stream")
    for stage in ("transcription", "memory", "action_item"):
        r = await api.client.post(
            "/api/conversations/raw/reprocess", params={"from": stage}, headers=users["alice"]
        )
        assert r.status_code == 409, (stage, r.text)
    r = await api.client.get("/api/conversations/raw", headers=users["alice"])
    assert r.json()["status"] == "open"
    assert r.json()["transcript"] is None


async def test_memories_search_and_delete(api: Api, users: dict[str, Any]) -> None:
    alice = users["alice"]
    r = await api.client.get("/api/memories", headers=alice)
    assert [m["id"] for m in r.json()["items"]] == ["a-2:0", "a-1:0"]
    r = await api.client.get("/api/memories", params={"q": "hiking"}, headers=alice)
    assert [m["text"] for m in r.json()["items"]] == ["I love hiking in the mountains"]
    r = await api.client.get("/api/memories", params={"q": "Chicago"}, headers=alice)
    assert r.json()["items"] == []  # bob's
    r = await api.client.get("/api/memories", params={"q": "Chicago"}, headers=users["admin"])
    assert [m["id"] for m in r.json()["items"]] == ["b-1:0"]
    assert (await api.client.delete("/api/memories/a-1:0", headers=alice)).status_code == 204
    assert (await api.client.delete("/api/memories/a-1:0", headers=alice)).status_code == 404
    assert (await api.client.delete("/api/memories/a-1:x", headers=alice)).status_code == 404
    r = await api.client.get("/api/memories", headers=alice)
    assert [m["id"] for m in r.json()["items"]] == ["a-2:0"]


async def test_action_items_filter_and_update(api: Api, users: dict[str, Any]) -> None:
    alice = users["alice"]
    r = await api.client.get("/api/action-items", params={"status": "open"}, headers=alice)
    assert [a["id"] for a in r.json()["items"]] == ["a-2:0", "a-2:1"]
    r = await api.client.patch(
        "/api/action-items/a-2:0", json={"status": "done", "assignee": "me"}, headers=alice
    )
    assert r.status_code == 200, r.text
    assert r.json() | {"updated_at": 0} == {
        "id": "a-2:0",
        "audio_uuid": "a-2",
        "filename": "a-2.wav",
        "text": "call the dentist",
        "assignee": "me",
        "due": "Friday",
        "status": "done",
        "at_seconds": 0.5,
        "updated_at": 0,
    }
    r = await api.client.get("/api/action-items", params={"status": "open"}, headers=alice)
    assert [a["id"] for a in r.json()["items"]] == ["a-2:1"]
    r = await api.client.get("/api/action-items", params={"status": "done"}, headers=alice)
    assert [a["id"] for a in r.json()["items"]] == ["a-2:0"]
    r = await api.client.get("/api/action-items", params={"status": "open", "offset": 1}, headers=alice)
    assert r.json()["items"] == []
    r = await api.client.patch("/api/action-items/a-2:0", json={"status": "maybe"}, headers=alice)
    assert r.status_code == 422
    r = await api.client.patch("/api/action-items/a-2:7", json={"status": "done"}, headers=alice)
    assert r.status_code == 404
    r = await api.client.get("/api/action-items", headers=users["bob"])
    assert [a["id"] for a in r.json()["items"]] == ["b-1:0"]


async def test_every_route_needs_a_login(api: Api, users: dict[str, Any]) -> None:
    for method, path in [
        ("GET", "/api/conversations"),
        ("GET", "/api/conversations/a-1"),
        ("GET", "/api/conversations/a-1/audio"),
        ("DELETE", "/api/conversations/a-1"),
        ("GET", "/api/memories"),
        ("GET", "/api/action-items"),
    ]:
        assert (await api.client.request(method, path)).status_code == 401, path
    assert await api.ctx.store.count_recordings() == 3


async def test_a_recording_made_by_code_without_jobs(api: Api, users: dict[str, Any]) -> None:
    await api.ctx.store.add_recording(
        "coded", user_id=users["alice_id"], first_job=NextJob("transcription", {}), source="api"
    )
    r = await api.client.get("/api/conversations/coded", headers=users["alice"])
    assert r.json()["status"] == "pending"
    assert r.json()["stages"]["chunk"] is None
    assert (await api.client.get("/api/conversations/coded/audio", headers=users["alice"])).status_code == 404


# -- reprocess: a double click --------------------------------------------------------------------


async def test_two_reprocess_requests_at_once_queue_one_job(
    api: Api, users: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both requests read the recording's state before either queues (a barrier holds each one
    after its read until the other has read too): both find the stage idle, and still one job
    is queued, whose id both answers carry."""
    store, alice = api.ctx.store, users["alice"]
    before = {j.id for j in await store.list_jobs(recording_id="a-1", queue="memory")}
    both_read = asyncio.Barrier(2)
    read_state = store.recording_status

    async def read_then_wait(audio_uuid: str) -> RecordingReport:
        report = await read_state(audio_uuid)
        await asyncio.wait_for(both_read.wait(), timeout=10)
        return report

    monkeypatch.setattr(store, "recording_status", read_then_wait)
    answers = await asyncio.gather(
        *(
            api.client.post("/api/conversations/a-1/reprocess", params={"from": "memory"}, headers=alice)
            for _ in range(2)
        )
    )
    assert [r.status_code for r in answers] == [202, 202], [r.text for r in answers]
    assert answers[0].json()["job_id"] == answers[1].json()["job_id"]
    new = [j for j in await store.list_jobs(recording_id="a-1", queue="memory") if j.id not in before]
    assert [j.id for j in new] == [answers[0].json()["job_id"]]
    assert new[0].state == JobState.PENDING
    monkeypatch.undo()

    # once that job is done, the stage can be run again: a new job (the key moved on)
    job = await store.claim("memory", worker_id="test")
    assert job is not None
    assert job.id == new[0].id
    await store.complete(job)
    again = await api.client.post(
        "/api/conversations/a-1/reprocess", params={"from": "memory"}, headers=alice
    )
    assert again.status_code == 202, again.text
    assert again.json()["job_id"] not in {*before, new[0].id}


async def test_reprocess_after_the_stages_dead_letters_were_purged(api: Api, users: dict[str, Any]) -> None:
    """Purging dead letters deletes some of the stage's finished jobs: the next reprocess must
    still queue a new job, not find the key of an old one (a key made of a count of finished
    jobs would come back to one already used)."""
    store, alice = api.ctx.store, users["alice"]

    async def reprocess_and_run(*, fail: bool) -> int:
        r = await api.client.post(
            "/api/conversations/a-1/reprocess", params={"from": "memory"}, headers=alice
        )
        assert r.status_code == 202, r.text
        job = await store.claim("memory", worker_id="test")
        assert job is not None
        assert job.id == r.json()["job_id"]
        if fail:
            assert await store.fail(job, "the LLM answered nonsense", permanent=True) == JobState.DEAD_LETTER
        else:
            await store.complete(job)
        return job.id

    dead = await reprocess_and_run(fail=True)
    done = await reprocess_and_run(fail=False)
    assert await store.purge_dead_letters("memory") == 1
    assert dead not in {j.id for j in await store.list_jobs(recording_id="a-1", queue="memory")}
    r = await api.client.post("/api/conversations/a-1/reprocess", params={"from": "memory"}, headers=alice)
    assert r.status_code == 202, r.text
    assert r.json()["job_id"] not in {dead, done}
    assert (await store.get_job(r.json()["job_id"])).job.state == JobState.PENDING


# -- pages ----------------------------------------------------------------------------------------


async def test_pages_say_whether_more_follow(api: Api, users: dict[str, Any]) -> None:
    alice = users["alice"]
    r = await api.client.get("/api/conversations", params={"limit": 1}, headers=alice)
    assert (r.json()["total"], r.json()["has_more"]) == (2, True)
    r = await api.client.get("/api/conversations", params={"limit": 1, "offset": 1}, headers=alice)
    assert (r.json()["total"], r.json()["has_more"]) == (2, False)

    r = await api.client.get("/api/memories", params={"limit": 1}, headers=alice)
    body = r.json()
    assert (body["limit"], body["offset"], body["has_more"]) == (1, 0, True)
    assert [m["id"] for m in body["items"]] == ["a-2:0"]
    r = await api.client.get("/api/memories", params={"limit": 1, "offset": 1}, headers=alice)
    assert ([m["id"] for m in r.json()["items"]], r.json()["has_more"]) == (["a-1:0"], False)
    r = await api.client.get("/api/memories", params={"limit": 2}, headers=alice)
    assert (len(r.json()["items"]), r.json()["has_more"]) == (2, False)

    r = await api.client.get("/api/action-items", params={"limit": 1}, headers=alice)
    body = r.json()
    assert ([a["id"] for a in body["items"]], body["has_more"]) == (["a-2:0"], True)
    r = await api.client.get(
        "/api/action-items", params={"limit": 1, "cursor": body["next_cursor"]}, headers=alice
    )
    body = r.json()
    assert ([a["id"] for a in body["items"]], body["has_more"], body["next_cursor"]) == (
        ["a-2:1"],
        False,
        None,
    )
    r = await api.client.get("/api/action-items", params={"status": "done"}, headers=alice)
    assert r.json() | {"items": None} == {
        "items": None,
        "limit": 50,
        "offset": 0,
        "cursor": None,
        "has_more": False,
        "next_cursor": None,
    }


async def test_memories_and_action_items_name_their_recordings_file_and_when_they_changed(
    api: Api, users: dict[str, Any]
) -> None:
    alice = users["alice"]
    store = api.ctx.store
    await seed(store, "third", users["alice_id"], text="x", memories=["a memory"], actions=["a thing"])
    memories = (await api.client.get("/api/memories", headers=alice)).json()["items"]
    assert {m["audio_uuid"]: m["filename"] for m in memories} == {
        "third": "third.wav",
        "a-2": "a-2.wav",
        "a-1": "a-1.wav",
    }
    items = (await api.client.get("/api/action-items", params={"status": "open"}, headers=alice)).json()
    assert {a["id"]: a["filename"] for a in items["items"]} == {
        "third:0": "third.wav",
        "a-2:0": "a-2.wav",
        "a-2:1": "a-2.wav",
    }
    detail = (await api.client.get("/api/conversations/a-2", headers=alice)).json()
    assert {m["filename"] for m in detail["memories"] + detail["action_items"]} == {"a-2.wav"}
    # the lists read the filenames with the items, in one store call: no read per recording
    calls: list[str] = []
    get_recording, search_outputs = store.get_recording, store.search_outputs

    async def counted_get(audio_uuid: str) -> Any:
        calls.append("get_recording")
        return await get_recording(audio_uuid)

    async def counted_search(stage: str, **kwargs: Any) -> Any:
        calls.append("search_outputs")
        return await search_outputs(stage, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "get_recording", counted_get)
        patch.setattr(store, "search_outputs", counted_search)
        assert (await api.client.get("/api/memories", headers=alice)).json()["items"] == memories
        listed = await api.client.get("/api/action-items", params={"status": "open"}, headers=alice)
        assert listed.json()["items"] == items["items"]
    assert calls == ["search_outputs", "search_outputs"]
    assert "created_at" not in memories[0]
    # the time is when the item was last written: an edit moves it
    [before] = [a for a in items["items"] if a["id"] == "a-2:1"]
    stored = await store.get_output("a-2", "action_item", 1)
    assert before["updated_at"] == stored.updated_at
    await asyncio.sleep(0.01)
    r = await api.client.patch("/api/action-items/a-2:1", json={"text": "buy tulips"}, headers=alice)
    assert r.json()["updated_at"] > before["updated_at"]
    assert r.json()["updated_at"] == (await store.get_output("a-2", "action_item", 1)).updated_at


async def test_a_memory_of_a_recording_without_a_file_name(api: Api, users: dict[str, Any]) -> None:
    store = api.ctx.store
    await store.add_recording(
        "live", user_id=users["alice_id"], source="stream", first_job=NextJob("memory", {})
    )
    job = await store.claim("memory", worker_id="test")
    assert job is not None
    await store.complete(job, outputs=[Output("live", "memory", 0, {"text": "streamed thought"})])
    r = await api.client.get("/api/memories", params={"q": "streamed"}, headers=users["alice"])
    assert [(m["id"], m["filename"]) for m in r.json()["items"]] == [("live:0", None)]


async def many_action_items(store: Store, user_id: str, count: int) -> list[FoundOutput]:
    """A recording with ``count`` action items, every third one done; all of the user's items,
    in the order the API lists them."""
    await seed(
        store, "many", user_id, text="a busy day", memories=[], actions=[f"task {i}" for i in range(count)]
    )
    for i in range(0, count, 3):
        item = await store.get_output("many", "action_item", i)
        await store.update_output("many", "action_item", i, {**item.data, "status": "done"})
    return await store.search_outputs("action_item", user_id=user_id, limit=1000)


async def test_paging_by_status_with_the_cursor_reads_from_where_the_last_page_ended(
    api: Api, users: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, alice = api.ctx.store, users["alice"]
    everything = await many_action_items(store, users["alice_id"], 700)
    reads: list[tuple[dict[str, Any], int]] = []  # (arguments, rows returned) of each store read
    search = store.search_outputs

    async def counted(stage: str, **kwargs: Any) -> list[FoundOutput]:
        found = await search(stage, **kwargs)
        reads.append((kwargs, len(found)))
        return found

    monkeypatch.setattr(store, "search_outputs", counted)
    for status in ("open", "done"):
        expected = [
            f"{o.recording_id}:{o.index}" for o in everything if o.data.get("status", "open") == status
        ]
        seen: list[str] = []
        cursor: str | None = None
        last: FoundOutput | None = None
        while True:
            reads.clear()
            params: dict[str, Any] = {"status": status, "limit": 50}
            if cursor is not None:
                params["cursor"] = cursor
            r = await api.client.get("/api/action-items", params=params, headers=alice)
            assert r.status_code == 200, r.text
            page = r.json()
            assert all(a["status"] == status for a in page["items"])
            assert page["cursor"] == cursor
            seen += [a["id"] for a in page["items"]]
            # one store read per page, filtered by status in the store, starting right after the
            # previous page's last item and returning one page (and one more row, for has_more):
            # the items before the cursor are not read again, page after page
            assert len(reads) == 1, reads
            [(kwargs, rows)] = reads
            assert (kwargs["status"], kwargs["offset"], kwargs["limit"]) == (status, 0, 51)
            assert kwargs["after"] == (None if last is None else last.key)
            assert rows == len(page["items"]) + page["has_more"]
            assert page["has_more"] == (page["next_cursor"] is not None)
            if not page["has_more"]:
                break
            assert len(page["items"]) == 50
            [last] = [o for o in everything if f"{o.recording_id}:{o.index}" == page["items"][-1]["id"]]
            cursor = page["next_cursor"]
        assert seen == expected
    # offset still counts items of the asked status (from the cursor on)
    open_ids = [f"{o.recording_id}:{o.index}" for o in everything if o.data.get("status", "open") == "open"]
    r = await api.client.get(
        "/api/action-items", params={"status": "open", "limit": 5, "offset": 3}, headers=alice
    )
    assert [a["id"] for a in r.json()["items"]] == open_ids[3:8]
    first = (
        await api.client.get("/api/action-items", params={"status": "open", "limit": 5}, headers=alice)
    ).json()
    r = await api.client.get(
        "/api/action-items",
        params={"status": "open", "limit": 5, "offset": 3, "cursor": first["next_cursor"]},
        headers=alice,
    )
    assert [a["id"] for a in r.json()["items"]] == open_ids[8:13]


async def test_a_cursor_survives_the_deletion_of_the_item_it_names(api: Api, users: dict[str, Any]) -> None:
    """The cursor names the last item's place, not its position: deleting items before it (or it)
    neither skips nor repeats an item on the next page."""
    store, alice = api.ctx.store, users["alice"]
    everything = await many_action_items(store, users["alice_id"], 10)
    ids = [f"{o.recording_id}:{o.index}" for o in everything]
    first = (await api.client.get("/api/action-items", params={"limit": 4}, headers=alice)).json()
    assert [a["id"] for a in first["items"]] == ids[:4]
    for item_id in ids[:4]:
        audio_uuid, index = item_id.split(":")
        await store.delete_output(audio_uuid, "action_item", int(index))
    r = await api.client.get(
        "/api/action-items", params={"limit": 4, "cursor": first["next_cursor"]}, headers=alice
    )
    assert [a["id"] for a in r.json()["items"]] == ids[4:8]


@pytest.mark.parametrize("cursor", ["0", "12", "1.5~x~rec", "~1~rec", "1.5~1", "nan~1~r", "1.5~1~r\x00"])
async def test_a_cursor_the_api_did_not_issue_is_refused(
    api: Api, users: dict[str, Any], cursor: str
) -> None:
    r = await api.client.get("/api/action-items", params={"cursor": cursor}, headers=users["alice"])
    assert r.status_code == 422, r.text


def test_cursors_round_trip_every_key() -> None:
    for key in (
        OutputKey(1_767_000_000.123456, "a-2", 0),
        OutputKey(1e16, "rec~with~tildes", 999_999_999),
        OutputKey(5e-324, "ünïcode rec\nnewline", 7),
        OutputKey(-3.0, "x", 1),
        OutputKey(None, "orphan", 2),
    ):
        cursor = routes_pipeline.encode_cursor(key)
        assert re.fullmatch(routes_pipeline.CURSOR_PATTERN, cursor), cursor
        assert routes_pipeline.decode_cursor(cursor) == key


# -- audio: byte ranges ---------------------------------------------------------------------------

# chunks of different sizes (a stream commits what has arrived), one of a single sample
CHUNKS = [1000, 666, 32000, 2, 4000, 10]


@pytest.fixture
async def chunked(api: Api, users: dict[str, Any]) -> bytes:
    """A recording of alice's stored in chunks of different sizes; its whole WAV file."""
    store = api.ctx.store
    await store.add_recording("chunky", user_id=users["alice_id"], source="stream")
    pcm = pcm16(tone(sum(CHUNKS) / 2 / 16000))
    assert len(pcm) == sum(CHUNKS)
    at = 0
    for seq, size in enumerate(CHUNKS):
        await store.append_audio("chunky", seq, pcm[at : at + size])
        at += size
    return audio.to_wav(pcm)


async def get_range(api: Api, users: dict[str, Any], value: str, **headers: str) -> Any:
    return await api.client.get(
        "/api/conversations/chunky/audio", headers={**users["alice"], "Range": value, **headers}
    )


async def test_audio_byte_ranges_are_exact_slices_of_the_file(
    api: Api, users: dict[str, Any], chunked: bytes
) -> None:
    size = len(chunked)
    whole = await api.client.get("/api/conversations/chunky/audio", headers=users["alice"])
    assert whole.status_code == 200
    assert whole.content == chunked
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-length"] == str(size)
    edges = [0, 1, 43, 44, 45, 1043, 1044, 1045, 1710, 1711, 33709, 33710, 33711, 33712, size - 2, size - 1]
    for first in edges:
        for last in edges:
            if last < first:
                continue
            r = await get_range(api, users, f"bytes={first}-{last}")
            assert r.status_code == 206, (first, last, r.text)
            assert r.content == chunked[first : last + 1], (first, last)
            assert r.headers["content-range"] == f"bytes {first}-{last}/{size}"
            assert r.headers["content-length"] == str(last - first + 1)
            assert r.headers["accept-ranges"] == "bytes"
    # a last byte past the end is the end
    r = await get_range(api, users, f"bytes=1000-{size + 500}")
    assert (r.status_code, r.content) == (206, chunked[1000:])
    assert r.headers["content-range"] == f"bytes 1000-{size - 1}/{size}"


async def test_audio_open_ended_and_suffix_ranges(api: Api, users: dict[str, Any], chunked: bytes) -> None:
    size = len(chunked)
    for first in (0, 44, 1700, size - 1):
        r = await get_range(api, users, f"bytes={first}-")
        assert (r.status_code, r.content) == (206, chunked[first:]), first
        assert r.headers["content-range"] == f"bytes {first}-{size - 1}/{size}"
    for suffix in (1, 10, 44, 5000, size):
        r = await get_range(api, users, f"bytes=-{suffix}")
        assert (r.status_code, r.content) == (206, chunked[-suffix:]), suffix
        assert r.headers["content-range"] == f"bytes {size - suffix}-{size - 1}/{size}"
    # a suffix longer than the file is the whole file; so is a last byte far past its end
    for value in (
        f"bytes=-{size * 3}",
        f"bytes=-{'9' * 5000}",
        f"bytes=0-{'9' * 5000}",
        f"bytes=00000-{'0' * 30}{size - 1}",
    ):
        r = await get_range(api, users, value)
        assert (r.status_code, r.content) == (206, chunked), value
        assert r.headers["content-range"] == f"bytes 0-{size - 1}/{size}"


async def test_audio_unsatisfiable_and_ignored_ranges(
    api: Api, users: dict[str, Any], chunked: bytes
) -> None:
    size = len(chunked)
    huge = "9" * 5000  # more digits than int() takes
    for value in (
        f"bytes={size}-",
        f"bytes={size}-{size + 10}",
        f"bytes={huge}-",
        f"bytes={huge}-{huge}",
        "bytes=-0",
        "bytes=-000",
    ):
        r = await get_range(api, users, value)
        assert r.status_code == 416, (value, r.text)
        assert r.headers["content-range"] == f"bytes */{size}"
        assert "detail" in r.json()
    # malformed, another unit, several ranges, a reversed range: ignored, the whole file
    for value in ("bytes=abc", "bytes=-", "items=0-10", "bytes=0-1,5-9", "bytes=10-5", "bytes 0-10", ""):
        r = await get_range(api, users, value)
        assert (r.status_code, r.content) == (200, chunked), value
    # If-Range: the range only while the file is still the one the client has
    etag = (await get_range(api, users, "bytes=0-0")).headers["etag"]
    r = await get_range(api, users, "bytes=0-9", **{"If-Range": etag})
    assert (r.status_code, r.content) == (206, chunked[:10])
    r = await get_range(api, users, "bytes=0-9", **{"If-Range": '"another"'})
    assert (r.status_code, r.content) == (200, chunked)
    # the audio grows (an open stream): another file, another validator
    await api.ctx.store.append_audio("chunky", len(CHUNKS), b"\0\0")
    assert (await get_range(api, users, "bytes=0-0")).headers["etag"] != etag
    # somebody else's: 404, whatever the range
    r = await api.client.get(
        "/api/conversations/chunky/audio", headers={**users["bob"], "Range": "bytes=0-10"}
    )
    assert r.status_code == 404


async def test_audio_range_reads_no_chunk_after_its_end(
    api: Api, users: dict[str, Any], chunked: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = api.ctx.store
    reads: list[int] = []
    read_audio = store.read_audio

    async def counted(audio_uuid: str, *, after_seq: int = -1, limit: int = 64) -> list[tuple[int, bytes]]:
        reads.append(after_seq)
        return await read_audio(audio_uuid, after_seq=after_seq, limit=limit)

    monkeypatch.setattr(store, "read_audio", counted)
    monkeypatch.setattr(routes_pipeline, "AUDIO_PAGE", 1)
    r = await get_range(api, users, "bytes=50-60")  # inside the first chunk
    assert r.content == chunked[50:61]
    assert reads == [-1]
    reads.clear()
    r = await get_range(api, users, "bytes=1044-1709")  # exactly the second chunk: read alone
    assert r.content == chunked[1044:1710]
    assert reads == [0]
    reads.clear()
    r = await get_range(api, users, "bytes=0-43")  # the header alone reads no audio
    assert r.content == chunked[:44]
    assert reads == []


# a long stream: chunks of different sizes, as a stream commits what has arrived
LONG = [3200 + (seq % 7) * 2 for seq in range(300)]


async def test_a_seek_reads_only_the_chunks_from_the_one_holding_its_first_byte(
    api: Api, users: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = api.ctx.store
    await store.add_recording("long", user_id=users["alice_id"], source="stream")
    pcm = pcm16(tone(sum(LONG) / 2 / 16000))
    starts = [sum(LONG[:seq]) for seq in range(len(LONG) + 1)]  # where each chunk starts in the audio
    for seq, size in enumerate(LONG):
        await store.append_audio("long", seq, pcm[starts[seq] : starts[seq] + size])
    wav = audio.to_wav(pcm)
    read: list[int] = []  # the seqs of the chunks read, in order
    sized: list[str] = []
    read_audio, audio_chunk_sizes = store.read_audio, store.audio_chunk_sizes

    async def counted(audio_uuid: str, *, after_seq: int = -1, limit: int = 64) -> list[tuple[int, bytes]]:
        page = await read_audio(audio_uuid, after_seq=after_seq, limit=limit)
        read.extend(seq for seq, _ in page)
        return page

    async def counted_sizes(audio_uuid: str) -> list[tuple[int, int]]:
        sized.append(audio_uuid)
        return await audio_chunk_sizes(audio_uuid)

    monkeypatch.setattr(store, "read_audio", counted)
    monkeypatch.setattr(store, "audio_chunk_sizes", counted_sizes)

    async def fetch(first: int, last: int | None = None) -> tuple[bytes, int]:
        """The range's bytes, and how many bytes of audio were read to send them."""
        read.clear()
        spec = f"bytes={first}-" if last is None else f"bytes={first}-{last}"
        r = await api.client.get("/api/conversations/long/audio", headers={**users["alice"], "Range": spec})
        assert r.status_code == 206, r.text
        return r.content, sum(LONG[seq] for seq in read)

    size = len(wav)
    # near the end: the last chunk alone, not the ~950 kB before it
    content, cost = await fetch(size - 1000)
    assert content == wav[size - 1000 :]
    assert read == [len(LONG) - 1]
    assert cost == LONG[-1]
    # the suffix form, the way a player asks for the end of a file
    read.clear()
    r = await api.client.get(
        "/api/conversations/long/audio", headers={**users["alice"], "Range": "bytes=-10"}
    )
    assert r.content == wav[-10:]
    assert read == [len(LONG) - 1]
    # a range across chunk boundaries in the middle: exactly the chunks it touches (a page a
    # chunk, to see where reading stops too)
    monkeypatch.setattr(routes_pipeline, "AUDIO_PAGE", 1)
    for first_seq, last_seq in [(150, 150), (150, 151), (7, 40), (0, 1), (298, 299)]:
        first, last = 44 + starts[first_seq] + 1, 44 + starts[last_seq + 1] - 2
        content, cost = await fetch(first, last)
        assert content == wav[first : last + 1], (first_seq, last_seq)
        assert sorted(set(read)) == read == list(range(first_seq, last_seq + 1)), (first_seq, last_seq)
        assert cost == sum(LONG[first_seq : last_seq + 1])
    # a range starting exactly on a chunk's first byte, and on its last byte
    for first in (44 + starts[200], 44 + starts[201] - 1):
        content, _ = await fetch(first, first + 3)
        assert content == wav[first : first + 4]
        assert read[0] == 200, first
    # the whole file, and a range inside the header, need no sizes
    sized.clear()
    whole = await api.client.get("/api/conversations/long/audio", headers=users["alice"])
    assert whole.content == wav
    await fetch(0, 43)
    await fetch(0, 100)
    assert sized == []


async def test_a_seek_into_audio_deleted_meanwhile_keeps_the_promised_length(
    api: Api, users: dict[str, Any], chunked: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleted between reading its row and seeking: silence, as many bytes as Content-Length
    says."""
    store = api.ctx.store
    audio_chunk_sizes = store.audio_chunk_sizes

    async def deleted_first(audio_uuid: str) -> list[tuple[int, int]]:
        await store.delete_recording(audio_uuid)
        return await audio_chunk_sizes(audio_uuid)

    monkeypatch.setattr(store, "audio_chunk_sizes", deleted_first)
    r = await get_range(api, users, "bytes=2000-2099")
    assert (r.status_code, r.headers["content-length"], r.content) == (206, "100", bytes(100))


async def test_head_of_the_audio_answers_a_gets_headers_without_a_body(
    api: Api, users: dict[str, Any], chunked: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "/api/conversations/chunky/audio"
    got = await api.client.get(url, headers=users["alice"])
    store = api.ctx.store

    async def unread(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("HEAD reads no audio")

    monkeypatch.setattr(store, "read_audio", unread)
    monkeypatch.setattr(store, "audio_chunk_sizes", unread)
    for headers in ({}, {"Range": "bytes=100-199"}):  # a Range is ignored: GET only (RFC 9110)
        r = await api.client.head(url, headers={**users["alice"], **headers})
        assert r.status_code == 200, r.text
        assert r.content == b""
        for name in ("content-length", "accept-ranges", "etag", "content-type", "content-disposition"):
            assert r.headers[name] == got.headers[name], name
        assert r.headers["content-length"] == str(len(chunked))
        assert "content-range" not in r.headers
    # what a GET refuses, HEAD refuses: somebody else's, unknown, without audio, no login
    await store.add_recording("silent", user_id=users["alice_id"], source="stream")
    for path, headers in [
        (url, users["bob"]),
        ("/api/conversations/nothing/audio", users["alice"]),
        ("/api/conversations/silent/audio", users["alice"]),
        (url, {}),
    ]:
        r = await api.client.head(path, headers=headers)
        assert r.status_code == (401 if not headers else 404), path
    # and the schema says so
    schema = (await api.client.get("/openapi.json")).json()
    assert set(schema["paths"]["/api/conversations/{audio_uuid}/audio"]) == {"get", "head"}
