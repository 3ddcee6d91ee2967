"""End to end with real speech: a real ``lifeline serve`` (the embedded pipeline: Whisper-base and
the rule-based extractors) fed espeak-ng sentences by upload (through ``lifeline submit --wait``,
and ``lifeline submit --email``, which logs in first), over /ws_pcm and over /ws_omi; then a
server killed mid-stream whose committed frames are still transcribed after the restart."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from api.audio_helpers import opus_packets
from speech import MODEL_CACHE, SHORT, espeak_pcm, espeak_wav, wer, whisper_model_dir

from .conftest import ADMIN, USER, Server, lifeline_serve

pytestmark = pytest.mark.slow

SPEECH = (
    "I love hiking in the mountains and I enjoy cooking Italian food. "
    "Remind me to call the dentist by Friday. I need to buy a birthday present for my mother."
)
DONE = {"completed", "dead_letter", "cancelled"}
TIMEOUT = 240.0


def env() -> dict[str, str]:
    return {
        "LIFELINE_MODEL_CACHE_DIR": str(MODEL_CACHE),
        "LIFELINE_ASR_LANGUAGE": "en",
        "LIFELINE_STREAM_IDLE_SECONDS": "3",
        "LIFELINE_RECOVERY_INTERVAL": "1",
        "LIFELINE_POLL_INTERVAL": "0.2",
        "LIFELINE_HEALTH_INTERVAL": "0",
        "LIFELINE_WORKER_CONCURRENCY": "2",
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    whisper_model_dir()  # assembled once, before any server needs it
    root = tmp_path_factory.mktemp("pipeline")
    with lifeline_serve(root / "server", **env()) as s:
        admin = s.login(*ADMIN)
        s.create_user(admin, *USER)
        yield s, s.login(*USER)


def wait_done(server: Server, token: str, audio_uuid: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {token}"}
    while True:
        r = httpx.get(f"{server.url}/api/conversations/{audio_uuid}", headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["status"] in DONE:
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"{audio_uuid} not done after {timeout:.0f} s: {body}\n{server.log_tail()}")
        time.sleep(0.5)


def check_speech(body: dict[str, Any], reference: str) -> None:
    assert body["status"] == "completed", body
    assert body["stages"] == dict.fromkeys(("chunk", "transcription", "memory", "action_item"), "completed")
    text = body["transcript"]["text"]
    assert wer(reference, text) < 0.25, text
    assert body["transcript"]["segments"]
    memories = " | ".join(m["text"].lower() for m in body["memories"])
    assert "hiking" in memories, body["memories"]
    actions = [a for a in body["action_items"] if "dentist" in a["text"].lower()]
    assert actions, body["action_items"]
    assert actions[0]["status"] == "open"


def test_upload_with_lifeline_submit_wait(server: tuple[Server, str], tmp_path: Path) -> None:
    s, token = server
    wav = tmp_path / "speech.wav"
    wav.write_bytes(espeak_wav(SPEECH))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lifeline",
            "--url",
            s.url,
            "--token",
            token,
            "submit",
            str(wav),
            "--device",
            "laptop",
            "--wait",
            "--timeout",
            str(TIMEOUT),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 30,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr + s.log_tail()
    assert "queued as" in done.stdout + done.stderr
    assert "transcription=completed" in done.stdout
    assert "action item:" in done.stdout
    r = httpx.get(f"{s.url}/api/conversations", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    [item] = [c for c in r.json()["items"] if c["filename"] == "speech.wav"]
    assert item["source"] == "upload"
    assert item["client_id"].endswith("-laptop")
    check_speech(wait_done(s, token, item["audio_uuid"]), SPEECH)


def _submit(
    s: Server, cwd: Path, *args: str, stdin: str = "", timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """``lifeline --url <server> submit <args>`` without the caller's LIFELINE_* settings."""
    return subprocess.run(
        [sys.executable, "-m", "lifeline", "--url", s.url, "submit", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}, **env},
        check=False,
    )


def _own_filenames(s: Server, token: str) -> list[str]:
    r = httpx.get(f"{s.url}/api/conversations", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return [c["filename"] for c in r.json()["items"]]


def test_lifeline_submit_wait_follows_files_with_the_same_name(
    server: tuple[Server, str], tmp_path: Path
) -> None:
    s, token = server
    paths = []
    for folder in ("here", "there"):
        (tmp_path / folder).mkdir()
        wav = tmp_path / folder / "same.wav"
        wav.write_bytes(espeak_wav(SHORT))
        paths.append(wav)
    done = _submit(
        s,
        tmp_path,
        *map(str, paths),
        "--wait",
        "--timeout",
        str(TIMEOUT),
        timeout=TIMEOUT + 30,
        LIFELINE_TOKEN=token,
        COLUMNS="1000",  # rich wraps at the terminal's width: keep each long path on its line
    )
    assert done.returncode == 0, done.stdout + done.stderr + s.log_tail()
    out = " ".join(done.stdout.split())
    uuids = set()
    for path in paths:
        assert f"{path}: completed" in out, out
        uuids.add(out.split(f"{path} (", 1)[1].split(")", 1)[0])  # "<path> (<audio_uuid>): completed"
    assert len(uuids) == 2
    for audio_uuid in uuids:
        body = wait_done(s, token, audio_uuid)
        assert (body["filename"], body["status"]) == ("same.wav", "completed")


@pytest.mark.parametrize("how", ["password-stdin", "LIFELINE_PASSWORD"])
def test_lifeline_submit_logs_in_with_email(server: tuple[Server, str], tmp_path: Path, how: str) -> None:
    s, token = server
    wav = tmp_path / f"login-{how}.wav"
    wav.write_bytes(espeak_wav(SHORT))
    if how == "password-stdin":
        done = _submit(s, tmp_path, str(wav), "--email", USER[0], "--password-stdin", stdin=USER[1] + "\n")
    else:
        done = _submit(s, tmp_path, str(wav), "--email", USER[0], LIFELINE_PASSWORD=USER[1])
    assert done.returncode == 0, done.stdout + done.stderr + s.log_tail()
    assert f"{wav.name}: queued as" in done.stdout + done.stderr
    assert USER[1] not in done.stdout + done.stderr
    # the upload is the user's, the one who logged in: their list holds only their own
    assert wav.name in _own_filenames(s, token)


def test_lifeline_submit_with_a_wrong_password_uploads_nothing(
    server: tuple[Server, str], tmp_path: Path
) -> None:
    s, token = server
    wav = tmp_path / "refused.wav"
    wav.write_bytes(espeak_wav(SHORT))
    done = _submit(s, tmp_path, str(wav), "--email", USER[0], LIFELINE_PASSWORD="not-the-password")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"login as {USER[0]} failed (400)" in done.stderr
    assert "queued as" not in done.stdout + done.stderr
    assert "refused.wav" not in _own_filenames(s, token)
    # neither a token nor an e-mail: refused before anything is sent
    bare = _submit(s, tmp_path, str(wav))
    assert bare.returncode == 2
    assert "--email" in bare.stderr
    alone = _submit(s, tmp_path, str(wav), "--password-stdin", stdin="x\n")
    assert alone.returncode == 2
    assert "needs --email" in alone.stderr


async def stream(url: str, frames: list[bytes]) -> str:
    async with connect(url, max_size=None) as ws:
        for frame in frames:
            await ws.send(frame)
        await ws.send(json.dumps({"type": "audio-stop"}))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
            if message["type"] == "conversation-closed":
                uuid: str = message["data"]["audio_uuid"]
                return uuid


def ws_url(s: Server, path: str, token: str, device: str) -> str:
    return f"{s.url.replace('http://', 'ws://')}{path}?token={token}&device_name={device}"


def test_stream_over_ws_pcm(server: tuple[Server, str]) -> None:
    s, token = server
    pcm = espeak_pcm(SPEECH)
    frames = [pcm[i : i + 3200] for i in range(0, len(pcm), 3200)]
    uuid = asyncio.run(stream(ws_url(s, "/ws_pcm", token, "pendant"), frames))
    body = wait_done(s, token, uuid)
    assert body["source"] == "stream"
    assert body["device_name"] == "pendant"
    check_speech(body, SPEECH)


def test_stream_over_ws_omi(server: tuple[Server, str]) -> None:
    s, token = server
    packets = opus_packets(espeak_pcm(SPEECH))
    uuid = asyncio.run(stream(ws_url(s, "/ws_omi", token, "omi"), packets))
    check_speech(wait_done(s, token, uuid), SPEECH)


def test_a_server_killed_mid_stream_still_transcribes_what_it_committed(tmp_path: Path) -> None:
    whisper_model_dir()
    pcm = espeak_pcm(SHORT)
    frames = [pcm[i : i + 3200] for i in range(0, len(pcm), 3200)]
    root = tmp_path / "crash"

    async def send_then_hang(url: str, s: Server, token: str) -> str:
        """Send every frame, wait until the server committed nearly all, and never say stop."""
        headers = {"Authorization": f"Bearer {token}"}
        async with connect(url, max_size=None) as ws:
            for frame in frames:
                await ws.send(frame)
            async with httpx.AsyncClient(base_url=s.url, headers=headers, timeout=30) as client:
                deadline = time.monotonic() + 60
                while True:
                    items = (await client.get("/api/conversations")).json()["items"]
                    if items and items[0]["duration_seconds"] >= len(pcm) / 32000 - 1.0:
                        break
                    assert time.monotonic() < deadline, items
                    await asyncio.sleep(0.1)
            assert items[0]["status"] == "open"  # not handed over yet
            s.process.kill()  # SIGKILL: no shutdown, no close, nothing
            s.process.wait()
            uuid: str = items[0]["audio_uuid"]
            return uuid

    with lifeline_serve(root, **env()) as s:
        admin = s.login(*ADMIN)
        s.create_user(admin, *USER)
        token = s.login(*USER)
        uuid = asyncio.run(send_then_hang(ws_url(s, "/ws_pcm", token, "crashy"), s, token))
    assert s.process.returncode == -9
    with lifeline_serve(root, **env()) as s:
        body = wait_done(s, token, uuid)
        assert body["status"] == "completed", body
        committed = body["duration_seconds"]
        assert committed >= len(pcm) / 32000 - 1.0
        text = body["transcript"]["text"].lower()
        assert "hiking" in text, text
        assert "mountains" in text, text
        assert "dentist" in text or committed < len(pcm) / 32000 - 0.5, text
