"""/ws_pcm and /ws_omi against a real uvicorn on loopback: frames are committed as they arrive, the
conversation closes on audio-stop, disconnect or idle time, and a broken client harms nobody."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import lifeline
from lifeline import audio
from lifeline.api import create_app
from lifeline.api.routes_streams import MESSAGE_OVERHEAD, Inbox
from lifeline.auth import PasswordHashing
from lifeline.domain import Stage
from lifeline.ingest import StreamSession, client_id_for, close_key, sweep_margin, sweep_unfinished
from lifeline.store.base import Store

from .audio_helpers import Live, live_server, opus_packets, pcm16, tone
from .conftest import ADMIN, api_settings


class Streams:
    def __init__(self, live: Live, store: Store, token: str, user_id: str, http: httpx.AsyncClient) -> None:
        self.live, self.store, self.token, self.user_id, self.http = live, store, token, user_id, http

    def connect(self, path: str = "/ws_pcm", token: str | None = None, device: str = "phone") -> Any:
        return connect(
            f"{self.live.ws}{path}?token={token or self.token}&device_name={device}", max_size=None
        )


@pytest.fixture
async def streams(tmp_path: Path) -> AsyncIterator[Streams]:
    async with open_streams(tmp_path) as opened:
        yield opened


@asynccontextmanager
async def open_streams(tmp_path: Path, **changes: Any) -> AsyncIterator[Streams]:
    settings = api_settings(tmp_path).replace(**{"stream_idle_seconds": 1.0, **changes})
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
        yield Streams(live, app.state.ctx.store, r.json()["access_token"], user_id, client)


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
    report = await sweep_unfinished(store, idle_seconds=0)  # the margin: at least 10 s more
    assert report.closed == []
    assert report.deleted == []
    report = await sweep_unfinished(store, idle_seconds=0, margin=0)
    assert report.closed == [crashed_uuid]
    assert sorted(report.deleted) == ["cut-upload", "empty-stream"]
    [job] = await store.list_jobs(recording_id=crashed_uuid)
    assert job.queue == "chunk"
    assert job.idempotency_key == close_key(crashed_uuid)
    assert (await store.get_recording("by-code")).source == "api"
    # a session that closes the same recording later makes no second job
    assert (await crashed.close()) is not None
    assert len(await store.list_jobs(recording_id=crashed_uuid)) == 1
    assert (await sweep_unfinished(store, idle_seconds=0, margin=0)).closed == []


# -- the sweeper and live sessions ---------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with lifeline.connect(f"sqlite:///{tmp_path}/s.db?synchronous=normal") as opened:
        yield opened


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("idle", "margin"), [(1.0, 10.0), (60.0, 60.0), (600.0, 600.0)])
async def test_the_sweeper_leaves_a_live_session_a_margin_past_its_idle_time(
    store: Store, idle: float, margin: float
) -> None:
    assert sweep_margin(idle) == margin
    session = StreamSession(store, user_id="user-123456", device_name="p", idle_seconds=idle)
    await session.feed(pcm16(tone(1.0)))  # committed
    rec = session.audio_uuid
    assert rec is not None
    last = (await store.get_recording(rec)).last_audio_at
    assert last is not None
    # the session itself would close at last + idle (+ up to a second): the sweeper waits longer
    for now in (last + idle + 1.0, last + idle + margin - 0.5):
        assert (await sweep_unfinished(store, idle, now=now)).closed == []
    assert await store.list_jobs(recording_id=rec) == []
    assert (await sweep_unfinished(store, idle, now=last + idle + margin + 0.5)).closed == [rec]


async def test_a_session_whose_recording_was_swept_carries_its_audio_into_a_new_conversation(
    store: Store,
) -> None:
    session = StreamSession(store, user_id="user-123456", device_name="p", idle_seconds=60)
    await session.feed(pcm16(tone(1.0)))  # committed as chunk 0
    first = session.audio_uuid
    assert first is not None
    # the sweeper takes the connection for dead and hands the recording over
    assert (await sweep_unfinished(store, 60, margin=0, now=time.time() + 61)).closed == [first]
    [swept_job] = await store.list_jobs(recording_id=first)
    # the session lives on: its next commit is refused, and its audio starts a new recording
    tail = pcm16(tone(0.5))
    await session.feed(tail)
    closed = await session.close()
    assert closed is not None
    assert closed.audio_uuid != first
    assert closed.duration_seconds == pytest.approx(0.5)
    assert await store.read_audio(closed.audio_uuid) == [(0, tail)]
    [new_job] = await store.list_jobs(recording_id=closed.audio_uuid)
    assert (new_job.id, new_job.queue, new_job.idempotency_key) == (
        closed.job_id,
        Stage.CHUNK.value,
        close_key(closed.audio_uuid),
    )
    # the swept recording kept exactly what it had when it was handed over, and its one job
    assert [seq for seq, _ in await store.read_audio(first)] == [0]
    assert (await store.get_recording(first)).audio_bytes == 32_000
    assert [j.id for j in await store.list_jobs(recording_id=first)] == [swept_job.id]
    new = await store.get_recording(closed.audio_uuid)
    assert (new.source, new.user_id, new.client_id) == (
        "stream",
        "user-123456",
        client_id_for("user-123456", "p"),
    )


async def test_a_session_closed_by_the_sweeper_with_nothing_buffered_finds_its_job(store: Store) -> None:
    session = StreamSession(store, user_id="user-123456", device_name="p", idle_seconds=60)
    await session.feed(pcm16(tone(1.0)))
    rec = session.audio_uuid
    assert rec is not None
    await sweep_unfinished(store, 60, margin=0, now=time.time() + 61)
    [job] = await store.list_jobs(recording_id=rec)
    closed = await session.close()
    assert closed is not None
    assert (closed.audio_uuid, closed.job_id) == (rec, job.id)
    assert len(await store.list_jobs(recording_id=rec)) == 1


async def test_a_slow_client_s_audio_is_committed_every_second_of_time(store: Store) -> None:
    """last_audio_at trails the last frame received by at most a second, however slowly the
    client sends (the sweeper's margin relies on it)."""
    ticks = Ticks()
    session = StreamSession(store, user_id="user-123456", device_name="p", idle_seconds=60, clock=ticks)
    frame = pcm16(tone(0.1))
    await session.feed(frame)
    rec = session.audio_uuid
    assert rec is not None
    ticks.now += 0.5
    await session.feed(frame)
    assert await store.read_audio(rec) == []  # 0.2 s of audio, half a second: still buffered
    ticks.now += 0.5
    await session.feed(frame)
    assert await store.read_audio(rec) == [(0, frame * 3)]
    ticks.now += 0.2
    await session.feed(frame)
    assert len(await store.read_audio(rec)) == 1
    assert session.idle_for() == 0.0
    ticks.now += 3.0
    assert session.idle_for() == 3.0
    assert session.idle_timeout() == 57.0


# -- silence, maximum length, and a hardened protocol ----------------------------------------------------

FRAME = 3200  # 100 ms


def quiet(seconds: float, seed: int = 3) -> bytes:
    """Room noise at about -70 dBFS: silence to the -50 dBFS threshold, but not digital zeros."""
    rng = np.random.default_rng(seed)
    return pcm16(0.0003 * rng.standard_normal(int(seconds * 16_000)).astype(np.float32))


async def drain(ws: ClientConnection) -> None:
    """Read until the server closes the connection (ConnectionClosed)."""
    while True:
        await ws.recv()


async def send_frames(ws: ClientConnection, pcm: bytes, frame: int = FRAME) -> None:
    for start in range(0, len(pcm), frame):
        await ws.send(pcm[start : start + frame])


async def test_silence_closes_the_conversation_and_speech_opens_the_next_with_a_preroll(
    tmp_path: Path,
) -> None:
    """Speech, 3 s of silence, speech (idle time 2 s), sent far faster than real time: two
    conversations; the first keeps one second of the pause, the second starts with the last one."""
    speech1, pause, speech2 = pcm16(tone(1.0)), quiet(3.0), pcm16(tone(1.2, freq=330.0))
    async with open_streams(tmp_path, stream_idle_seconds=2.0) as streams, streams.connect() as ws:
        await send_frames(ws, speech1 + pause + speech2)
        first = (await event(ws, "conversation-closed"))["data"]
        await ws.send(json.dumps({"type": "audio-stop"}))
        second = (await event(ws, "conversation-closed"))["data"]
        store = streams.store
        assert first["reason"] == "silence"
        assert first["duration_seconds"] == pytest.approx(2.0)
        assert await stored_pcm(store, first["audio_uuid"]) == speech1 + pause[:32_000]
        assert second["reason"] == "audio-stop"
        assert second["duration_seconds"] == pytest.approx(2.2)
        assert await stored_pcm(store, second["audio_uuid"]) == pause[-32_000:] + speech2
        assert await store.count_recordings() == 2
        for closed in (first, second):
            [job] = await store.list_jobs(recording_id=closed["audio_uuid"])
            assert (job.id, job.queue) == (closed["job_id"], Stage.CHUNK.value)


async def test_a_pause_shorter_than_the_idle_time_stays_in_the_conversation(tmp_path: Path) -> None:
    speech1, pause, speech2 = pcm16(tone(0.5)), quiet(1.5), pcm16(tone(0.5))
    async with open_streams(tmp_path, stream_idle_seconds=2.0) as streams, streams.connect() as ws:
        await send_frames(ws, quiet(0.3, seed=9) + speech1 + pause + speech2 + quiet(4.0, seed=5))
        closed = (await event(ws, "conversation-closed"))["data"]
        assert closed["reason"] == "silence"
        assert await stored_pcm(streams.store, closed["audio_uuid"]) == (
            quiet(0.3, seed=9) + speech1 + pause + speech2 + quiet(4.0, seed=5)[:32_000]
        )
        await ws.send(json.dumps({"type": "audio-stop"}))
        assert (await event(ws, "conversation-closed"))["data"]["audio_uuid"] is None
        assert await streams.store.count_recordings() == 1


async def test_continuous_silence_opens_no_conversation(tmp_path: Path) -> None:
    async with open_streams(tmp_path, stream_idle_seconds=2.0) as streams:
        async with streams.connect("/ws_omi", device="omi") as omi, streams.connect() as pcm:
            for packet in opus_packets(quiet(6.0)):
                await omi.send(packet)
            await send_frames(pcm, quiet(6.0), frame=640)
            for ws in (omi, pcm):
                await ws.send(json.dumps({"type": "audio-stop"}))
                closed = (await event(ws, "conversation-closed"))["data"]
                assert (closed["audio_uuid"], closed["reason"]) == (None, "audio-stop")
        assert await streams.store.count_recordings() == 0


async def test_a_conversation_rolls_over_at_the_maximum_length(tmp_path: Path) -> None:
    pcm = pcm16(tone(7.05))
    async with open_streams(tmp_path, upload_max_seconds=3.0) as streams, streams.connect() as ws:
        await send_frames(ws, pcm, frame=4800)  # 150 ms: the limit falls inside a frame
        await ws.send(json.dumps({"type": "audio-stop"}))
        closes = [(await event(ws, "conversation-closed"))["data"] for _ in range(3)]
        assert [c["reason"] for c in closes] == ["max-length", "max-length", "audio-stop"]
        assert [c["duration_seconds"] for c in closes] == pytest.approx([3.0, 3.0, 1.05])
        stored = [await stored_pcm(streams.store, c["audio_uuid"]) for c in closes]
        assert b"".join(stored) == pcm  # nothing lost, nothing doubled at the seams
        assert len({c["audio_uuid"] for c in closes}) == 3
        for c in closes:
            assert [j.id for j in await streams.store.list_jobs(recording_id=c["audio_uuid"])] == [
                c["job_id"]
            ]


@pytest.mark.parametrize("rate", [float("inf"), float("-inf"), float("nan"), 1e400, 16000.5, True])
async def test_a_non_finite_or_fractional_rate_is_invalid_data(streams: Streams, rate: Any) -> None:
    async with streams.connect() as ws:
        await event(ws, "ready")
        await ws.send(json.dumps({"type": "audio-start", "data": {"rate": rate, "width": 2, "channels": 1}}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1007
    assert await streams.store.count_recordings() == 0


async def test_an_audio_chunk_header_must_be_followed_by_its_payload(streams: Streams) -> None:
    header = json.dumps({"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1},
                         "payload_length": 3200})  # fmt: skip
    # a payload of another length than its header says
    async with streams.connect() as ws:
        await ws.send(pcm16(tone(0.5)))
        await ws.send(header)
        await ws.send(pcm16(tone(0.05)))
        with pytest.raises(ConnectionClosed) as closed:
            await drain(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1007
        assert "3200" in closed.value.rcvd.reason
    # another event instead of the payload
    async with streams.connect() as ws:
        await ws.send(header)
        await ws.send(json.dumps({"type": "audio-stop"}))
        with pytest.raises(ConnectionClosed) as closed:
            await drain(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1007
    # the audio before the broken header was kept and handed over
    [row] = await streams.store.list_recordings()
    assert row.duration_seconds == pytest.approx(0.5)
    assert len(await streams.store.list_jobs(recording_id=row.audio_uuid)) == 1


async def test_the_token_is_checked_again_when_a_new_conversation_opens(streams: Streams) -> None:
    async with streams.connect() as ws:
        await ws.send(pcm16(tone(0.5)))
        await ws.send(json.dumps({"type": "audio-stop"}))
        assert (await event(ws, "conversation-closed"))["data"]["audio_uuid"]
        r = await streams.http.post("/auth/jwt/logout", headers={"Authorization": f"Bearer {streams.token}"})
        assert r.status_code == 204
        await ws.send(quiet(0.5))  # silence opens nothing, so nothing is checked yet
        await ws.send(pcm16(tone(0.5)))
        with pytest.raises(ConnectionClosed) as closed:
            await drain(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008
    assert await streams.store.count_recordings() == 1


async def test_the_inbox_is_bounded_by_bytes_not_messages() -> None:
    inbox = Inbox(max_bytes=10_000)
    big = {"type": "websocket.receive", "bytes": b"x" * 6_000}
    await inbox.put(big)
    blocked = asyncio.create_task(inbox.put(dict(big)))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # 12 kB would be in flight
    assert inbox.queued_bytes == 6_000 + MESSAGE_OVERHEAD
    assert await inbox.get() is big
    await asyncio.wait_for(blocked, timeout=1)
    # small messages count too (their overhead), and one message beyond the bound gets in alone
    await inbox.get()
    small = 10_000 // MESSAGE_OVERHEAD
    for _ in range(small):
        await asyncio.wait_for(inbox.put({"type": "websocket.receive", "bytes": b""}), timeout=1)
    late = asyncio.create_task(inbox.put({"type": "websocket.receive", "bytes": b""}))
    await asyncio.sleep(0.05)
    assert not late.done()
    await inbox.get()
    await asyncio.wait_for(late, timeout=1)
    for _ in range(small):
        await inbox.get()
    assert inbox.queued_bytes == 0
    await asyncio.wait_for(inbox.put({"type": "websocket.receive", "bytes": b"y" * 50_000}), timeout=1)
    assert inbox.queued_bytes == 50_000 + MESSAGE_OVERHEAD


# -- odd byte counts, the resampler's tail, and a token that expires ---------------------------------------


async def test_odd_length_frames_across_an_idle_close_keep_their_byte_alignment(streams: Streams) -> None:
    """The half sample held back when the idle close comes is the first byte of the next
    conversation: its audio is byte-exact, not shifted by one byte (noise)."""
    pcm = pcm16(tone(0.5)) + pcm16(tone(0.7, freq=330.0))
    cut = 16_001  # half a second and one byte
    async with streams.connect() as ws:
        await send_frames(ws, pcm[:cut], frame=3201)
        first = (await event(ws, "conversation-closed", timeout=5))["data"]  # idle after 1 s
        assert first["reason"] == "idle"
        await send_frames(ws, pcm[cut:], frame=3201)
        await ws.send(json.dumps({"type": "audio-stop"}))
        second = (await event(ws, "conversation-closed"))["data"]
    assert await stored_pcm(streams.store, first["audio_uuid"]) == pcm[:16_000]
    assert await stored_pcm(streams.store, second["audio_uuid"]) == pcm[16_000:]


async def test_odd_length_feeds_across_a_silence_close_keep_their_byte_alignment(store: Store) -> None:
    speech1, pause, speech2 = pcm16(tone(1.0)), quiet(3.0), pcm16(tone(1.2, freq=330.0))
    pcm = speech1 + pause + speech2
    session = StreamSession(store, user_id="user-123456", device_name="p", idle_seconds=2.0)
    closed = []
    # one odd feed first: from then on each feed leaves half a sample over, the one in which the
    # silence close comes included
    for start, end in [(0, 3201), *((i, i + 3200) for i in range(3201, len(pcm), 3200))]:
        closed += await session.feed(pcm[start:end])
    last = await session.close()
    assert last is not None
    [first] = closed
    assert first.reason == "silence"
    # 100 ms windows start where each feed does, so where the pause is found to begin moves a
    # little; the audio stored is the client's byte stream all the same, in whole samples
    one, two = await stored_pcm(store, first.audio_uuid), await stored_pcm(store, last.audio_uuid)
    assert pcm.startswith(one)
    assert len(one) / 32_000 == pytest.approx(2.0, abs=0.2)
    assert pcm.endswith(two)
    assert len(two) % 2 == 0
    assert len(two) / 32_000 == pytest.approx(2.2, abs=0.2)


async def test_a_conversation_closed_by_the_resampler_s_tail_is_reported(tmp_path: Path) -> None:
    """One second of 44.1 kHz audio with a one-second maximum: the resampler holds the last
    samples back until audio-stop, and it is their flush that reaches the maximum length."""
    samples = tone(1.0, rate=44_100)
    async with open_streams(tmp_path, upload_max_seconds=1.0) as streams, streams.connect() as ws:
        await ws.send(
            json.dumps({"type": "audio-start", "data": {"rate": 44_100, "width": 2, "channels": 1}})
        )
        await ws.send(pcm16(samples))
        await ws.send(json.dumps({"type": "audio-stop"}))
        by_tail = (await event(ws, "conversation-closed"))["data"]
        stop = (await event(ws, "conversation-closed"))["data"]
        assert (by_tail["reason"], by_tail["duration_seconds"]) == ("max-length", pytest.approx(1.0))
        assert (stop["reason"], stop["audio_uuid"]) == ("audio-stop", None)
        [row] = await streams.store.list_recordings()
        assert row.audio_uuid == by_tail["audio_uuid"]
        [job] = await streams.store.list_jobs(recording_id=row.audio_uuid)
        assert job.id == by_tail["job_id"]


async def test_a_token_that_expires_during_the_connection_still_opens_conversations(tmp_path: Path) -> None:
    """The token is checked when the connection opens; later conversations re-check revocation and
    the user, not the expiry (a logout still ends it: the test above)."""
    async with open_streams(tmp_path, jwt_lifetime=3.0) as streams, streams.connect() as ws:
        await ws.send(pcm16(tone(0.5)))
        await ws.send(json.dumps({"type": "audio-stop"}))
        assert (await event(ws, "conversation-closed"))["data"]["audio_uuid"]
        auth = {"Authorization": f"Bearer {streams.token}"}

        async def expired() -> bool:
            return (await streams.http.get("/users/me", headers=auth)).status_code == 401

        await eventually(expired)
        await ws.send(pcm16(tone(0.5)))
        await ws.send(json.dumps({"type": "audio-stop"}))
        second = (await event(ws, "conversation-closed"))["data"]
        assert second["audio_uuid"]
        assert second["duration_seconds"] == pytest.approx(0.5)
        assert await streams.store.count_recordings() == 2
