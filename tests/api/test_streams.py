"""/ws_pcm and /ws_omi against a real uvicorn on loopback: frames are committed as they arrive, the
conversation closes on audio-stop, disconnect or idle time, and a broken client harms nobody."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from lifeline import audio
from lifeline.api import create_app
from lifeline.auth import PasswordHashing
from lifeline.domain import Stage
from lifeline.ingest import StreamSession, client_id_for, close_key, sweep_unfinished
from lifeline.store.base import Store

from .audio_helpers import Live, live_server, opus_packets, pcm16, tone
from .conftest import ADMIN, api_settings


class Streams:
    def __init__(self, live: Live, store: Store, token: str, user_id: str) -> None:
        self.live, self.store, self.token, self.user_id = live, store, token, user_id

    def connect(self, path: str = "/ws_pcm", token: str | None = None, device: str = "phone") -> Any:
        return connect(
            f"{self.live.ws}{path}?token={token or self.token}&device_name={device}", max_size=None
        )


@pytest.fixture
async def streams(tmp_path: Path) -> AsyncIterator[Streams]:
    settings = api_settings(tmp_path).replace(stream_idle_seconds=1.0)
    app = create_app(settings, hashing=PasswordHashing(time_cost=1, memory_cost=1024))
    async with live_server(app) as live, httpx.AsyncClient(base_url=live.http) as client:
        r = await client.post("/auth/jwt/login", data={"username": ADMIN[0], "password": ADMIN[1]})
        admin = {"Authorization": f"Bearer {r.json()['access_token']}"}
        r = await client.post(
            "/api/users", json={"email": "u@example.com", "password": "user-password-1"}, headers=admin
        )
        user_id = r.json()["id"]
        r = await client.post(
            "/auth/jwt/login", data={"username": "u@example.com", "password": "user-password-1"}
        )
        yield Streams(live, app.state.ctx.store, r.json()["access_token"], user_id)


async def event(ws: ClientConnection, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next JSON event of type ``kind`` (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        message = await asyncio.wait_for(ws.recv(), timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(message, str):
            data: dict[str, Any] = json.loads(message)
            if data.get("type") == kind:
                return data


async def stored_pcm(store: Store, audio_uuid: str) -> bytes:
    return b"".join(pcm for _, pcm in await store.read_audio(audio_uuid, limit=10_000))


async def eventually(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_pcm_frames_are_committed_and_closed_on_audio_stop(streams: Streams) -> None:
    pcm = pcm16(tone(3.3))
    async with streams.connect() as ws:
        ready = await event(ws, "ready")
        assert ready["data"]["client_id"] == client_id_for(streams.user_id, "phone")
        for start in range(0, len(pcm), 3200):  # 100 ms frames
            await ws.send(pcm[start : start + 3200])
        await ws.send(json.dumps({"type": "audio-stop"}))
        closed = (await event(ws, "conversation-closed"))["data"]
    assert closed["reason"] == "audio-stop"
    assert closed["duration_seconds"] == pytest.approx(3.3, abs=0.001)
    uuid = closed["audio_uuid"]
    row = await streams.store.get_recording(uuid)
    assert row.source == "stream"
    assert row.user_id == streams.user_id
    assert row.device_name == "phone"
    assert row.audio_chunks == 4  # committed every second of audio, the rest on close
    assert await stored_pcm(streams.store, uuid) == pcm
    [job] = await streams.store.list_jobs(recording_id=uuid)
    assert (job.queue, job.id, job.idempotency_key) == (Stage.CHUNK.value, closed["job_id"], close_key(uuid))


async def test_audio_is_committed_while_the_conversation_is_still_open(streams: Streams) -> None:
    pcm = pcm16(tone(2.5))
    async with streams.connect() as ws:
        await ws.send(pcm)
        rows = []

        async def committed() -> bool:
            rows[:] = await streams.store.list_recordings(user_id=streams.user_id)
            return bool(rows) and rows[0].audio_bytes >= 64_000

        await eventually(committed)
        assert await streams.store.list_jobs(recording_id=rows[0].audio_uuid) == []  # not closed yet
        await ws.send(json.dumps({"type": "audio-stop"}))
        await event(ws, "conversation-closed")


async def test_wyoming_events_in_any_format_are_converted(streams: Streams) -> None:
    samples = tone(2.0, rate=44_100)
    frames = (samples.reshape(-1, 1).repeat(2, axis=1) * 32767).astype("<i2").tobytes()
    async with streams.connect() as ws:
        await ws.send(
            json.dumps({"type": "audio-start", "data": {"rate": 44_100, "width": 2, "channels": 2}})
        )
        step = 4410 * 4  # 100 ms of 44.1 kHz stereo s16
        for start in range(0, len(frames), step):
            payload = frames[start : start + step]
            header = {
                "type": "audio-chunk",
                "data": {"rate": 44_100, "width": 2, "channels": 2},
                "payload_length": len(payload),
            }
            await ws.send(json.dumps(header))
            await ws.send(payload)
        await ws.send(json.dumps({"type": "audio-stop", "data": {}}))
        closed = (await event(ws, "conversation-closed"))["data"]
    assert closed["duration_seconds"] == pytest.approx(2.0, abs=0.02)
    row = await streams.store.get_recording(closed["audio_uuid"])
    assert row.duration_seconds == pytest.approx(2.0, abs=0.02)


async def test_omi_opus_packets(streams: Streams) -> None:
    pcm = pcm16(tone(2.0))
    packets = opus_packets(pcm)
    assert len(packets) >= 99
    async with streams.connect("/ws_omi", device="omi") as ws:
        for packet in packets:
            await ws.send(packet)
        await ws.send(json.dumps({"type": "audio-stop"}))
        closed = (await event(ws, "conversation-closed"))["data"]
    assert closed["duration_seconds"] == pytest.approx(2.0, abs=0.05)
    stored = await stored_pcm(streams.store, closed["audio_uuid"])
    assert audio.peak_dbfs(stored) > -20  # a tone came through, not silence


async def test_a_bad_token_is_a_policy_violation(streams: Streams) -> None:
    for path in ("/ws_pcm", "/ws_omi"):
        async with streams.connect(path, token="not-a-token") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008
    assert await streams.store.count_recordings() == 0


async def test_disconnect_closes_the_conversation(streams: Streams) -> None:
    pcm = pcm16(tone(1.5))
    async with streams.connect() as ws:
        await event(ws, "ready")
        await ws.send(pcm)
    recordings: list[Any] = []

    async def closed() -> bool:
        recordings[:] = await streams.store.list_recordings()
        return bool(recordings) and bool(await streams.store.list_jobs(recording_id=recordings[0].audio_uuid))

    await eventually(closed)
    assert await stored_pcm(streams.store, recordings[0].audio_uuid) == pcm


async def test_idle_time_closes_and_later_audio_starts_a_new_conversation(streams: Streams) -> None:
    async with streams.connect() as ws:
        await ws.send(pcm16(tone(0.5)))
        first = (await event(ws, "conversation-closed", timeout=5))["data"]  # idle after 1 s
        assert first["reason"] == "idle"
        assert first["duration_seconds"] == pytest.approx(0.5)
        await ws.send(pcm16(tone(0.7)))
        await ws.send(json.dumps({"type": "audio-stop"}))
        second = (await event(ws, "conversation-closed"))["data"]
    assert second["audio_uuid"] != first["audio_uuid"]
    assert second["duration_seconds"] == pytest.approx(0.7)
    assert await streams.store.count_recordings() == 2


async def test_a_client_that_disconnects_mid_frame_harms_nobody(streams: Streams) -> None:
    whole = pcm16(tone(1.2))
    async with streams.connect(device="broken") as broken, streams.connect(device="good") as good:
        await event(broken, "ready")
        await broken.send(whole)
        # half a masked binary frame: header for 64000 bytes, then 1000 of them, then the TCP
        # connection drops
        header = bytes([0x82, 0x80 | 126]) + struct.pack(">H", 64000) + os.urandom(4)
        broken.transport.write(header + os.urandom(1000))
        broken.transport.abort()
        # the other client goes on as if nothing happened
        await good.send(pcm16(tone(1.0)))
        await good.send(json.dumps({"type": "audio-stop"}))
        closed = (await event(good, "conversation-closed"))["data"]
        assert closed["duration_seconds"] == pytest.approx(1.0)
    rows: list[Any] = []

    async def broken_closed() -> bool:
        rows[:] = [r for r in await streams.store.list_recordings() if r.device_name == "broken"]
        return bool(rows) and bool(await streams.store.list_jobs(recording_id=rows[0].audio_uuid))

    await eventually(broken_closed)
    assert await stored_pcm(streams.store, rows[0].audio_uuid) == whole  # every whole frame kept


async def test_a_bad_audio_start_closes_only_that_connection(streams: Streams) -> None:
    async with streams.connect() as ws:
        await ws.send(json.dumps({"type": "audio-start", "data": {"rate": 16000, "width": 7, "channels": 1}}))
        await event(ws, "ready")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1007
    async with streams.connect() as ws:
        await ws.send(pcm16(tone(0.5)))
        await ws.send(json.dumps({"type": "audio-stop"}))
        assert (await event(ws, "conversation-closed"))["data"]["audio_uuid"]


async def test_the_sweeper_closes_crashed_streams_and_deletes_unfinished_uploads(streams: Streams) -> None:
    store = streams.store
    # what a server that died mid-stream leaves behind: a stream with committed audio, no job
    crashed = StreamSession(store, user_id=streams.user_id, device_name="p", idle_seconds=60)
    await crashed.feed(pcm16(tone(1.0)))
    crashed_uuid = crashed.audio_uuid
    assert crashed_uuid is not None
    await store.add_recording("empty-stream", user_id=streams.user_id, source="stream")
    await store.add_recording("cut-upload", user_id=streams.user_id, source="upload")
    await store.append_audio("cut-upload", 0, pcm16(tone(1.0)))
    await store.add_recording("by-code", user_id=streams.user_id, source="api")
    report = await sweep_unfinished(store, idle_seconds=3600)
    assert report.closed == []
    assert report.deleted == []
    report = await sweep_unfinished(store, idle_seconds=0)
    assert report.closed == [crashed_uuid]
    assert sorted(report.deleted) == ["cut-upload", "empty-stream"]
    [job] = await store.list_jobs(recording_id=crashed_uuid)
    assert job.queue == "chunk"
    assert job.idempotency_key == close_key(crashed_uuid)
    assert (await store.get_recording("by-code")).source == "api"
    # a session that closes the same recording later makes no second job
    assert (await crashed.close()) is not None
    assert len(await store.list_jobs(recording_id=crashed_uuid)) == 1
    assert (await sweep_unfinished(store, idle_seconds=0)).closed == []
