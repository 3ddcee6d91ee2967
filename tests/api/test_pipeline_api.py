"""The pipeline API over conversations whose stages ran (outputs written through the store's own
``complete``, as the stage handlers write them): listing, details, audio, deletes, reprocessing,
memories and action items, and ownership (somebody else's id is a 404)."""

from __future__ import annotations

from typing import Any

import pytest

from lifeline import audio
from lifeline.domain import JobState, NextJob, Output
from lifeline.store.base import Store

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
    assert r.json() | {"created_at": 0} == {
        "id": "a-2:0",
        "audio_uuid": "a-2",
        "text": "call the dentist",
        "assignee": "me",
        "due": "Friday",
        "status": "done",
        "at_seconds": 0.5,
        "created_at": 0,
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
