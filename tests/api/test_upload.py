"""POST /api/audio/upload: every format is normalised and stored with its job before the answer;
bad input is refused with its reason and leaves nothing behind."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from lifeline import audio
from lifeline.api import create_app
from lifeline.auth import PasswordHashing
from lifeline.domain import Stage
from lifeline.ingest import client_id_for, close_key

from .audio_helpers import RATE, encode, pcm16, tone, wav_bytes
from .conftest import Api, api_settings

UploadFiles = list[tuple[str, tuple[str, bytes, str]]]


@asynccontextmanager
async def make_api(tmp_path: Path, **changes: Any) -> AsyncIterator[Api]:
    settings = api_settings(tmp_path).replace(**changes)
    app = create_app(settings, hashing=PasswordHashing(time_cost=1, memory_cost=1024))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lifeline.test") as client:
            yield Api(client, app.state.ctx)


def files(*items: tuple[str, bytes]) -> UploadFiles:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


async def upload(api: Api, headers: dict[str, str], *items: tuple[str, bytes], **data: str) -> httpx.Response:
    return await api.client.post("/api/audio/upload", files=files(*items), data=data, headers=headers)


async def nothing_stored(api: Api) -> None:
    assert await api.ctx.store.count_recordings() == 0
    assert await api.ctx.store.list_jobs() == []


async def test_a_wav_is_stored_with_its_chunk_job_before_the_answer(api: Api) -> None:
    user_id, headers = await api.new_user("alice@example.com")
    samples = tone(3.0, rate=44_100)
    r = await upload(
        api,
        headers,
        ("talk.wav", wav_bytes(samples, rate=44_100, channels=2, width=3)),
        device_name="Omi Pendant",
    )
    assert r.status_code == 202, r.text
    [item] = r.json()["files"]
    assert item["status"] == "queued"
    assert item["filename"] == "talk.wav"
    assert item["duration_seconds"] == pytest.approx(3.0, abs=0.01)
    store = api.ctx.store
    row = await store.get_recording(item["audio_uuid"])
    assert row.source == "upload"
    assert row.user_id == user_id
    assert row.filename == "talk.wav"
    assert row.device_name == "Omi Pendant"
    assert row.client_id == client_id_for(user_id, "Omi Pendant") == f"{user_id[-6:]}-omipendant"
    assert row.duration_seconds == pytest.approx(3.0, abs=0.01)
    assert row.audio_chunks == 1  # 10 s pieces
    [job] = await store.list_jobs(recording_id=item["audio_uuid"])
    assert job.queue == Stage.CHUNK.value
    assert job.id == item["job_id"]
    assert job.idempotency_key == close_key(item["audio_uuid"])
    assert job.user_id == user_id
    # the audio as stored is what the decoder makes of the file
    expected = audio.decode(wav_bytes(samples, rate=44_100, channels=2, width=3)).pcm
    stored = b"".join(pcm for _, pcm in await store.read_audio(item["audio_uuid"]))
    assert stored == expected


async def test_a_long_upload_is_stored_in_ten_second_pieces(api: Api) -> None:
    _, headers = await api.new_user("alice@example.com")
    r = await upload(api, headers, ("long.wav", wav_bytes(tone(25.0))))
    assert r.status_code == 202, r.text
    uuid = r.json()["files"][0]["audio_uuid"]
    chunks = await api.ctx.store.read_audio(uuid)
    assert [len(pcm) for _, pcm in chunks] == [320_000, 320_000, 160_000]


@pytest.mark.parametrize(
    ("rate", "channels", "width"), [(8000, 1, 1), (48_000, 2, 2), (22_050, 1, 4), (16_000, 6, 3)]
)
async def test_wav_at_any_rate_channel_count_and_width(
    api: Api, rate: int, channels: int, width: int
) -> None:
    _, headers = await api.new_user("alice@example.com")
    r = await upload(
        api, headers, ("x.wav", wav_bytes(tone(2.0, rate=rate), rate=rate, channels=channels, width=width))
    )
    assert r.status_code == 202, r.text
    assert r.json()["files"][0]["duration_seconds"] == pytest.approx(2.0, abs=0.01)


@pytest.mark.parametrize(
    ("name", "container", "codec"),
    [
        ("a.mp3", "mp3", "libmp3lame"),
        ("a.m4a", "mp4", "aac"),
        ("a.ogg", "ogg", "libopus"),
        ("a.flac", "flac", "flac"),
        ("a.webm", "webm", "libopus"),
    ],
)
async def test_compressed_formats(api: Api, name: str, container: str, codec: str) -> None:
    _, headers = await api.new_user("alice@example.com")
    rate = 48_000 if codec == "libopus" else 44_100
    data = encode(tone(2.0, rate=rate), container, codec, rate=rate)
    r = await upload(api, headers, (name, data))
    assert r.status_code == 202, r.text
    assert r.json()["files"][0]["duration_seconds"] == pytest.approx(2.0, abs=0.15)


BAD: dict[str, tuple[Callable[[], bytes], int, str]] = {
    "not audio": (
        lambda: b"hello, this is a text file and no audio at all\n" * 10,
        415,
        "not a recognised audio",
    ),
    "empty": (lambda: b"", 422, "empty"),
    "undecodable": (lambda: b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 40, 422, ""),
    "silent only": (lambda: wav_bytes(np.zeros(RATE * 2, dtype=np.float32)), 422, "silent"),
    "header lies about its length": (lambda: _lying_wav(), 422, "truncated"),
}


def _lying_wav() -> bytes:
    data = bytearray(wav_bytes(tone(1.0)))
    data[40:44] = (RATE * 2 * 10).to_bytes(4, "little")  # claims 10 s, holds 1 s
    return bytes(data)


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_input_is_refused_with_its_reason_and_leaves_nothing(api: Api, case: str) -> None:
    make, code, words = BAD[case]
    _, headers = await api.new_user("alice@example.com")
    r = await upload(api, headers, ("bad.bin", make()))
    assert r.status_code == code, r.text
    assert words in r.json()["detail"]
    await nothing_stored(api)


async def test_too_long_is_413_even_when_found_out_half_way_and_nothing_is_left(tmp_path: Path) -> None:
    async with make_api(tmp_path, upload_max_seconds=12.0) as api:
        _, headers = await api.new_user("alice@example.com")
        # MP3 carries no length: the decoder stores 10 s before it finds out
        mp3 = encode(tone(15.0, rate=44_100), "mp3", "libmp3lame", rate=44_100)
        r = await upload(api, headers, ("long.mp3", mp3))
        assert r.status_code == 413, r.text
        assert "limit" in r.json()["detail"]
        await nothing_stored(api)
        # a WAV's header says it at once
        r = await upload(api, headers, ("long.wav", wav_bytes(tone(13.0))))
        assert r.status_code == 413, r.text
        await nothing_stored(api)


async def test_too_large_is_413_per_file_and_per_request(tmp_path: Path) -> None:
    async with make_api(tmp_path, upload_max_mb=0.05) as api:
        _, headers = await api.new_user("alice@example.com")
        r = await upload(api, headers, ("big.wav", wav_bytes(tone(2.0))))  # 64 kB
        assert r.status_code == 413, r.text
        assert "MB" in r.json()["detail"]
        # a request beyond what 8 files at the limit may weigh (8 x 50 kB + 1 MB of form) is
        # refused before it is read
        r = await api.client.post(
            "/api/audio/upload",
            content=b"x" * 1_500_000,
            headers={**headers, "Content-Type": "multipart/form-data; boundary=abc"},
        )
        assert r.status_code == 413, r.text
        await nothing_stored(api)


async def test_one_bad_file_in_a_batch_leaves_the_good_ones_accepted(api: Api) -> None:
    _, headers = await api.new_user("alice@example.com")
    r = await upload(
        api,
        headers,
        ("one.wav", wav_bytes(tone(1.0))),
        ("notes.txt", b"just some notes, not audio"),
        ("two.flac", encode(tone(1.5, rate=44_100), "flac", "flac", rate=44_100)),
    )
    assert r.status_code == 202, r.text
    one, bad, two = r.json()["files"]
    assert one["status"] == two["status"] == "queued"
    assert bad == {
        "filename": "notes.txt",
        "error": bad["error"],
        "reason": "not_audio",
        "status_code": 415,
        "status": "rejected",
    }
    assert await api.ctx.store.count_recordings() == 2
    assert {j.recording_id for j in await api.ctx.store.list_jobs()} == {one["audio_uuid"], two["audio_uuid"]}


async def test_when_every_file_fails_the_first_ones_error_is_the_answer(api: Api) -> None:
    _, headers = await api.new_user("alice@example.com")
    r = await upload(api, headers, ("a.wav", wav_bytes(np.zeros(RATE, dtype=np.float32))), ("b.txt", b"text"))
    assert r.status_code == 422
    assert "silent" in r.json()["detail"]
    await nothing_stored(api)


async def test_requests_that_are_not_uploads(api: Api) -> None:
    _, headers = await api.new_user("alice@example.com")
    r = await api.client.post("/api/audio/upload", files=files(("a.wav", wav_bytes(tone(1.0)))))
    assert r.status_code == 401
    r = await api.client.post("/api/audio/upload", json={"files": []}, headers=headers)
    assert r.status_code == 415
    r = await api.client.post(
        "/api/audio/upload", data={"device_name": "x"}, files={"other": ("a", b"b")}, headers=headers
    )
    assert r.status_code == 422
    assert "files" in r.json()["detail"]
    await nothing_stored(api)


async def test_the_stored_audio_is_served_back_as_wav(api: Api) -> None:
    _, headers = await api.new_user("alice@example.com")
    pcm = pcm16(tone(12.5))
    r = await upload(api, headers, ("x.wav", audio.to_wav(pcm)))
    uuid = r.json()["files"][0]["audio_uuid"]
    r = await api.client.get(f"/api/conversations/{uuid}/audio", headers=headers)
    assert r.status_code == 200
    assert r.headers["content-type"] == "audio/wav"
    assert r.content == audio.to_wav(pcm)


async def test_at_most_eight_files_in_one_request(api: Api) -> None:
    _, headers = await api.new_user("alice@example.com")
    wav = wav_bytes(tone(0.5))
    r = await upload(api, headers, *[(f"{i}.wav", wav) for i in range(9)])
    assert r.status_code == 400, r.text
    assert "too many files" in r.json()["detail"]
    await nothing_stored(api)
    r = await upload(api, headers, *[(f"{i}.wav", wav) for i in range(8)])
    assert r.status_code == 202, r.text
    assert len(r.json()["files"]) == 8


async def test_files_are_spooled_in_the_data_dir_not_the_system_temp_dir(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the system temp dir gone, a file part past the 1 MiB kept in memory still spools:
    into <data dir>/uploads-tmp, which holds nothing once the answer is given."""
    _, headers = await api.new_user("alice@example.com")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-dir"))
    data = wav_bytes(tone(40.0))  # 1.28 MB
    r = await upload(api, headers, ("long.wav", data), ("short.wav", wav_bytes(tone(1.0))))
    assert r.status_code == 202, r.text
    assert [f["duration_seconds"] for f in r.json()["files"]] == pytest.approx([40.0, 1.0])
    spool_dir = api.ctx.settings.data_dir / "uploads-tmp"
    assert spool_dir.is_dir()
    assert list(spool_dir.iterdir()) == []


async def test_a_file_past_the_limit_is_dropped_while_it_arrives_and_its_batch_mates_kept(
    tmp_path: Path,
) -> None:
    async with make_api(tmp_path, upload_max_mb=0.05) as api:
        _, headers = await api.new_user("alice@example.com")
        big = wav_bytes(tone(2.0))  # 64 kB
        r = await upload(api, headers, ("small.wav", wav_bytes(tone(0.5))), ("big.wav", big))
        assert r.status_code == 202, r.text
        small, refused = r.json()["files"]
        assert small["status"] == "queued"
        assert (refused["status"], refused["reason"], refused["status_code"]) == (
            "rejected",
            "too_large",
            413,
        )
        assert f"{len(big) / 1e6:.1f} MB" in refused["error"]
        assert await api.ctx.store.count_recordings() == 1
