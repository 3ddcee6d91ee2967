"""POST /api/audio/upload: every format is normalised and stored with its job before the answer;
bad input is refused with its reason and leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from lifeline import audio
from lifeline.api import create_app
from lifeline.api.multipart import SPOOL_MEMORY, UploadForm
from lifeline.auth import PasswordHashing
from lifeline.domain import Stage, StoreError
from lifeline.ingest import client_id_for, close_key

from .audio_helpers import RATE, encode, live_server, pcm16, tone, wav_bytes
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


# -- a hand-written multipart body: what a broken or hostile client sends -------------------------------

BOUNDARY = "lifeline-test-boundary"
WRITE_BATCH = 64 << 10  # what a spooled part's writes to disk are batched to, at least


def part(data: bytes, *, name: str = "files", filename: str | None = "a.wav", headers: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    head = f"Content-Disposition: {disposition}\r\n{headers}Content-Type: application/octet-stream\r\n\r\n"
    return f"--{BOUNDARY}\r\n".encode() + head.encode("utf-8") + data + b"\r\n"


def closing() -> bytes:
    return f"--{BOUNDARY}--\r\n".encode()


async def post_body(api: Api, headers: dict[str, str], body: bytes) -> httpx.Response:
    return await api.client.post(
        "/api/audio/upload",
        content=body,
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )


async def test_a_body_cut_off_before_its_closing_boundary_is_refused_and_nothing_stored(api: Api) -> None:
    _, headers = await api.new_user("alice@example.com")
    mp3 = encode(tone(4.0, rate=44_100), "mp3", "libmp3lame", rate=44_100)
    whole = part(mp3, filename="talk.mp3") + closing()
    # cut in the middle of the file: the MP3 would decode, two seconds short
    r = await post_body(api, headers, whole[: len(whole) // 2])
    assert r.status_code == 400, r.text
    assert "closing boundary" in r.json()["detail"]
    # every byte of the file there, only the closing boundary missing
    r = await post_body(api, headers, part(wav_bytes(tone(1.0))))
    assert r.status_code == 400, r.text
    assert "closing boundary" in r.json()["detail"]
    await nothing_stored(api)
    # the same bodies, whole, are accepted (an epilogue after the closing boundary is allowed)
    r = await post_body(api, headers, whole + b"epilogue\r\n")
    assert r.status_code == 202, r.text
    assert r.json()["files"][0]["duration_seconds"] == pytest.approx(4.0, abs=0.1)


async def test_a_part_s_headers_are_bounded(api: Api) -> None:
    _, headers = await api.new_user("alice@example.com")
    wav = wav_bytes(tone(0.5))
    # three headers of 3000 bytes: each is under the parser's per-line limit, together over 8 KB
    padding = "".join(f"X-Padding-{i}: {'p' * 3000}\r\n" for i in range(3))
    r = await post_body(api, headers, part(wav, headers=padding) + closing())
    assert r.status_code == 400, r.text
    assert "headers" in r.json()["detail"]
    # one header line past the parser's own limit
    r = await post_body(api, headers, part(wav, headers=f"X-Long: {'p' * 9000}\r\n") + closing())
    assert r.status_code == 400, r.text
    await nothing_stored(api)
    # headers of a few kilobytes are fine
    r = await post_body(api, headers, part(wav, headers=f"X-Padding: {'p' * 3000}\r\n") + closing())
    assert r.status_code == 202, r.text


async def test_a_file_named_with_filename_star_is_a_file_with_its_decoded_name(api: Api) -> None:
    _, headers = await api.new_user("alice@example.com")
    wav = wav_bytes(tone(0.5))
    star = "filename*=UTF-8''%E2%82%AC%20r%C3%A9union.wav"
    only_star = part(wav, filename=None).replace(b'name="files"', f'name="files"; {star}'.encode())
    both = part(wav, filename="reunion.wav").replace(
        b'filename="reunion.wav"', f'filename="reunion.wav"; {star}'.encode()
    )
    latin1 = part(wav, filename=None).replace(
        b'name="files"', b"name=\"files\"; filename*=ISO-8859-1'fr'caf%E9.wav"
    )
    r = await post_body(api, headers, only_star + both + latin1 + closing())
    assert r.status_code == 202, r.text
    assert [f["filename"] for f in r.json()["files"]] == ["€ réunion.wav", "€ réunion.wav", "café.wav"]
    stored = [(await api.ctx.store.get_recording(f["audio_uuid"])).filename for f in r.json()["files"]]
    assert stored == ["€ réunion.wav", "€ réunion.wav", "café.wav"]


async def test_a_store_error_on_a_later_file_leaves_the_earlier_ones_accepted(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first file is stored and queued; the store fails half-way through the second one: the
    answer says so per file (202), the second's partial recording is gone, the third is not tried."""
    _, headers = await api.new_user("alice@example.com")
    store = api.ctx.store
    append_audio = store.append_audio
    seen: list[str] = []

    async def failing(audio_uuid: str, seq: int, pcm: bytes) -> None:
        if audio_uuid not in seen:
            seen.append(audio_uuid)
        if len(seen) == 2 and seq == 1:
            raise StoreError("disk I/O error")
        await append_audio(audio_uuid, seq, pcm)

    monkeypatch.setattr(store, "append_audio", failing)
    r = await upload(
        api,
        headers,
        ("one.wav", wav_bytes(tone(1.0))),
        ("two.wav", wav_bytes(tone(25.0))),  # three 10 s pieces: the second one fails
        ("three.wav", wav_bytes(tone(1.0))),
    )
    assert r.status_code == 202, r.text
    one, two, three = r.json()["files"]
    assert (one["status"], one["filename"]) == ("queued", "one.wav")
    assert (two["status"], two["status_code"], two["reason"]) == ("rejected", 503, "store_unavailable")
    assert "disk I/O error" not in two["error"]  # the store's own words stay in the log
    assert (three["status"], three["status_code"], three["reason"]) == ("rejected", 503, "not_tried")
    monkeypatch.undo()
    [row] = await store.list_recordings()
    assert row.audio_uuid == one["audio_uuid"]
    assert [j.recording_id for j in await store.list_jobs()] == [one["audio_uuid"]]


async def test_when_the_store_fails_on_the_only_file_the_answer_is_503(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, headers = await api.new_user("alice@example.com")

    async def failing(*args: Any, **kwargs: Any) -> None:
        raise StoreError("no database connection")

    monkeypatch.setattr(api.ctx.store, "add_recording", failing)
    r = await upload(api, headers, ("one.wav", wav_bytes(tone(1.0))))
    assert r.status_code == 503, r.text
    assert "store" in r.json()["detail"]
    monkeypatch.undo()
    await nothing_stored(api)


async def test_file_parts_kept_in_memory_are_written_without_a_thread_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part is written on the event loop while its spool is in memory, and past that in batches
    of at least 64 KB on a worker thread: not one thread hop per received chunk."""
    hops = 0
    to_thread = asyncio.to_thread

    async def counting(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        nonlocal hops
        hops += 1
        return await to_thread(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    small, big = os.urandom(300_000), os.urandom(1_500_000)  # under and over the 1 MiB in memory
    body = part(small, filename="small.wav") + part(big, filename="big.wav") + closing()
    form = UploadForm(BOUNDARY.encode(), spool_dir=tmp_path, max_file_bytes=10_000_000)
    for start in range(0, len(body), 1000):
        await form.feed(body[start : start + 1000])
    past_memory = len(big) - SPOOL_MEMORY
    assert hops <= past_memory // WRITE_BATCH + 2, hops  # ~1800 chunks came in
    await form.finish()
    assert hops <= past_memory // WRITE_BATCH + 3, hops
    try:
        assert [(f.filename, f.size) for f in form.files] == [
            ("small.wav", len(small)),
            ("big.wav", len(big)),
        ]
        for upload_part, data in zip(form.files, (small, big), strict=True):
            assert upload_part.file is not None
            upload_part.file.seek(0)
            assert upload_part.file.read() == data
    finally:
        form.close()


def _spool_fds(spool_dir: Path) -> list[str]:
    """This process's open files in ``spool_dir`` (unlinked at once, they show only here)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith(str(spool_dir)):
                found.append(os.readlink(fd))
    return found


async def test_a_client_that_goes_away_mid_upload_leaves_nothing_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Half a body, then the TCP connection closes: no 500 and no traceback, no recording, no spool
    file; the server goes on serving."""
    caplog.set_level(logging.INFO)
    settings = api_settings(tmp_path)
    app = create_app(settings, hashing=PasswordHashing(time_cost=1, memory_cost=1024))
    spool_dir = settings.data_dir / "uploads-tmp"
    async with live_server(app) as live, httpx.AsyncClient(base_url=live.http) as client:
        api = Api(client, app.state.ctx)
        _, headers = await api.new_user("alice@example.com")
        body = part(wav_bytes(tone(60.0))) + closing()  # 1.9 MB: spooled to disk past 1 MiB
        port = int(live.http.rsplit(":", 1)[1])
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            "POST /api/audio/upload HTTP/1.1\r\nHost: lifeline.test\r\n"
            f"Authorization: {headers['Authorization']}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body[: len(body) * 2 // 3])
        await writer.drain()

        async def spooled() -> bool:
            return bool(_spool_fds(spool_dir))

        await eventually(spooled)  # the server is reading the body
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

        async def handled() -> bool:
            ended = any(r.levelno >= logging.ERROR or "went away" in r.getMessage() for r in caplog.records)
            return ended and not _spool_fds(spool_dir)

        await eventually(handled)
        errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert errors == [], [r.getMessage() for r in errors]
        await nothing_stored(api)
        assert list(spool_dir.iterdir()) == []
        # the server goes on
        r = await upload(api, headers, ("a.wav", wav_bytes(tone(1.0))))
        assert r.status_code == 202, r.text


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
