"""The pipeline on PostgreSQL, scaled out the way an operator runs it: one ``lifeline serve
--no-workers`` (the API) and two ``lifeline worker`` processes (the default handlers: the
pipeline's four stages) on one database, each process with its own data directory (as if on its
own host) and a shared signing secret.

The speech is real: espeak-ng sentences, transcribed by the embedded Whisper-base (from the shared
model cache, not re-assembled) and mined by the embedded rule-based extractors. A recognizer that
hears the audio is the point of a word-error-rate check (a fake ASR peer would hand back whatever
text it was given), and on two cores it costs about a second per sentence.

- Six uploads, in two concurrent requests: every recording completes with its own transcript
  (WER < 25 %), its memory and its action item; one completed job per stage, every output key
  written once, and both worker processes did part of the work.
- ``DELETE`` removes a conversation and everything derived from it, and only that;
  ``reprocess?from=memory`` replaces the memories (a stale one is gone, none is doubled) and
  leaves the other stages' outputs alone.
- A stream over ``/ws_pcm`` whose API process is killed with SIGKILL mid-stream: a new API
  process's sweeper closes the committed audio, and the workers transcribe it.
- A conversation deleted while it still streams: the stream ends with 1011 (not a clean 1000),
  nothing of the recording is left, and the service keeps serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import pg
from speech import MODEL_CACHE, espeak_pcm, espeak_wav, wer, whisper_model_dir

pytestmark = pytest.mark.slow

ADMIN = ("admin@example.com", "admin-password-1")
USER = ("user@example.com", "user-password-1")
STAGES = ("chunk", "transcription", "memory", "action_item")
DONE = {"completed", "failed", "dead_letter", "cancelled"}
IDLE_SECONDS = 2.0
START_TIMEOUT = 60.0
DONE_TIMEOUT = 60.0

# (what is said, a word its memory holds, a word its action item holds); checked against the
# embedded Whisper-base and the rule-based extractors
SPEECH = [
    ("I love hiking in the mountains. Remind me to call the dentist by Friday.", "hiking", "dentist"),
    (
        "My sister lives in Boston with her husband. I need to buy a birthday present for my mother.",
        "boston",
        "present",
    ),
    (
        "Good morning. I enjoy cooking Italian food. Don't forget to send the insurance papers before"
        " the weekend.",
        "cooking",
        "insurance",
    ),
    (
        "I work at the city hospital as a nurse. Remind me to book a table for Saturday evening.",
        "nurse",
        "table",
    ),
    (
        "My brother lives in Chicago with his two dogs. I need to renew my passport by Monday.",
        "chicago",
        "passport",
    ),
    (
        "I play the piano every evening. Remind me to renew the car insurance by Tuesday.",
        "piano",
        "insurance",
    ),
]


# -- the processes ----------------------------------------------------------------------------------


class Fleet:
    """The API process (replaceable) and the worker processes, all on one PostgreSQL database."""

    def __init__(self, database_url: str, root: Path) -> None:
        self.database_url = database_url
        self.root = root
        self.secret = uuid.uuid4().hex + uuid.uuid4().hex
        self.api: subprocess.Popen[bytes] | None = None
        self.api_log: Path | None = None
        self.url = ""
        self.workers: list[subprocess.Popen[bytes]] = []
        self._count = 0

    def env(self, name: str, port: int = 0) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
        env.update(
            LIFELINE_DATABASE_URL=self.database_url,
            LIFELINE_DATA_DIR=str(self.root / name / "data"),  # nothing shared but the database
            LIFELINE_AUTH_SECRET=self.secret,
            LIFELINE_ADMIN_EMAIL=ADMIN[0],
            LIFELINE_ADMIN_PASSWORD=ADMIN[1],
            LIFELINE_HOST="127.0.0.1",
            LIFELINE_MODEL_CACHE_DIR=str(MODEL_CACHE),
            LIFELINE_ASR_LANGUAGE="en",
            LIFELINE_STREAM_IDLE_SECONDS=str(IDLE_SECONDS),
            LIFELINE_RECOVERY_INTERVAL="0.5",  # also the sweeper's interval
            LIFELINE_POLL_INTERVAL="0.5",  # LISTEN/NOTIFY wakes the workers; polling is the fallback
            LIFELINE_HEALTH_INTERVAL="0",
            LIFELINE_SHUTDOWN_TIMEOUT="5",
            LIFELINE_LOG_LEVEL="WARNING",
        )
        if port:
            env["LIFELINE_PORT"] = str(port)
        return env

    def _spawn(self, name: str, argv: list[str], port: int = 0) -> tuple[subprocess.Popen[bytes], Path]:
        directory = self.root / name
        directory.mkdir(parents=True)
        log = directory / "process.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "lifeline", *argv],
                cwd=directory,  # no .env of the developer's working directory
                env=self.env(name, port),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return process, log

    def start_api(self) -> None:
        self._count += 1
        port = pg.free_port()
        self.api, self.api_log = self._spawn(
            f"api{self._count}", ["serve", "--no-workers", "--port", str(port)], port
        )
        self.url = f"http://127.0.0.1:{port}"

    def start_worker(self) -> None:
        process, _ = self._spawn(f"worker{len(self.workers) + 1}", ["worker", "--concurrency", "2"])
        self.workers.append(process)

    def logs(self) -> str:
        parts = []
        for log in sorted(self.root.glob("*/process.log")):
            lines = log.read_text(errors="replace").splitlines()[-25:]
            parts.append(f"--- {log.parent.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def wait_ready(self) -> None:
        """The API answers /readiness and both workers are registered in the database."""
        deadline = time.monotonic() + START_TIMEOUT
        pids = {w.pid for w in self.workers}
        while True:
            for process in [self.api, *self.workers]:
                assert process is not None
                if process.poll() is not None:
                    pytest.fail(f"a process exited with {process.returncode}:\n{self.logs()}")
            try:
                api_ready = httpx.get(f"{self.url}/readiness", timeout=5).status_code == 200
            except httpx.TransportError:
                api_ready = False
            if api_ready and pids <= registered_worker_pids(self.database_url):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"the fleet was not ready after {START_TIMEOUT:.0f} s:\n{self.logs()}")
            time.sleep(0.1)

    def kill_api(self) -> None:
        assert self.api is not None
        self.api.send_signal(signal.SIGKILL)  # no shutdown, no close of the stream, nothing
        self.api.wait()

    def stop(self) -> None:
        running = [p for p in [self.api, *self.workers] if p is not None and p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def registered_worker_pids(database_url: str) -> set[int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT pid FROM workers WHERE stopped_at IS NULL").fetchall()
    return {int(r[0]) for r in rows}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    cluster = pg.require()
    whisper_model_dir()  # assembled (or found) once, before any worker needs it
    database = cluster.create_database(f"pipeline_{uuid.uuid4().hex[:12]}", pg.TEMPLATE)
    running = Fleet(cluster.url(database), tmp_path_factory.mktemp("pg-pipeline"))
    try:
        running.start_api()
        running.start_worker()
        running.start_worker()
        running.wait_ready()
        yield running
    finally:
        running.stop()
        cluster.drop_database(database)


@pytest.fixture(scope="module")
def token(fleet: Fleet) -> str:
    admin = login(fleet, *ADMIN)
    r = httpx.post(
        f"{fleet.url}/api/users",
        json={"email": USER[0], "password": USER[1]},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return login(fleet, *USER)


# -- talking to it ----------------------------------------------------------------------------------


def login(fleet: Fleet, email: str, password: str) -> str:
    r = httpx.post(f"{fleet.url}/auth/jwt/login", data={"username": email, "password": password}, timeout=30)
    assert r.status_code == 200, r.text
    access: str = r.json()["access_token"]
    return access


def client(fleet: Fleet, token: str) -> httpx.Client:
    return httpx.Client(base_url=fleet.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def upload(fleet: Fleet, token: str, files: list[tuple[str, bytes]], device: str) -> list[str]:
    with client(fleet, token) as http:
        r = http.post(
            "/api/audio/upload",
            files=[("files", (name, data, "audio/wav")) for name, data in files],
            data={"device_name": device},
        )
    assert r.status_code == 202, r.text
    accepted = r.json()["files"]
    assert [f["filename"] for f in accepted] == [name for name, _ in files]
    return [str(f["audio_uuid"]) for f in accepted]


def conversation(fleet: Fleet, token: str, audio_uuid: str) -> dict[str, Any]:
    with client(fleet, token) as http:
        r = http.get(f"/api/conversations/{audio_uuid}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def wait_for(fleet: Fleet, token: str, audio_uuid: str, done: Any = None) -> dict[str, Any]:
    """The conversation once ``done(body)`` (default: its status is final)."""
    deadline = time.monotonic() + DONE_TIMEOUT
    while True:
        body = conversation(fleet, token, audio_uuid)
        if (done or (lambda b: b["status"] in DONE))(body):
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"{audio_uuid} not done after {DONE_TIMEOUT:.0f} s: {body}\n{fleet.logs()}")
        time.sleep(0.2)


def stage_jobs(body: dict[str, Any]) -> dict[str, list[str]]:
    jobs: dict[str, list[str]] = {}
    for job in body["jobs"]:
        jobs.setdefault(job["queue"], []).append(job["state"])
    return jobs


def check_speech(body: dict[str, Any], said: str, memory_word: str, action_word: str) -> None:
    assert body["status"] == "completed", body
    assert body["stages"] == dict.fromkeys(STAGES, "completed"), body["stages"]
    assert stage_jobs(body) == {stage: ["completed"] for stage in STAGES}, body["jobs"]
    text = body["transcript"]["text"]
    assert wer(said, text) < 0.25, (said, text)
    assert body["transcript"]["segments"]
    memories = [m["text"].lower() for m in body["memories"]]
    assert any(memory_word in m for m in memories), body["memories"]
    assert len(set(memories)) == len(memories), body["memories"]
    actions = [a["text"].lower() for a in body["action_items"]]
    assert any(action_word in a for a in actions), body["action_items"]
    assert len(set(actions)) == len(actions), body["action_items"]


def without_time(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "updated_at"}


def rows(database_url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, args).fetchall()  # type: ignore[arg-type]


# -- the tests ------------------------------------------------------------------------------------


def test_uploads_run_through_two_worker_processes(fleet: Fleet, token: str) -> None:
    started = time.monotonic()
    wavs = [(f"speech{n}.wav", espeak_wav(said)) for n, (said, _, _) in enumerate(SPEECH)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two requests at once, three files each
        batches = [pool.submit(upload, fleet, token, wavs[i : i + 3], "laptop") for i in (0, 3)]
        ids = [audio_uuid for batch in batches for audio_uuid in batch.result()]
    assert len(set(ids)) == len(SPEECH)
    bodies = [wait_for(fleet, token, audio_uuid) for audio_uuid in ids]
    elapsed = time.monotonic() - started
    for body, (filename, _), (said, memory_word, action_word) in zip(bodies, wavs, SPEECH, strict=True):
        assert body["filename"] == filename
        assert body["source"] == "upload"
        assert body["device_name"] == "laptop"
        check_speech(body, said, memory_word, action_word)

    # in the database: one completed job per stage, one completed attempt per job, each output
    # key committed once (a stage that completed twice would show revision 2)
    jobs = rows(
        fleet.database_url,
        "SELECT recording_id, queue, state, (SELECT COUNT(*) FROM attempts a WHERE a.job_id = j.id"
        " AND a.outcome = 'completed') FROM jobs j WHERE recording_id = ANY(%s)",
        ids,
    )
    assert sorted((r, q, s, n) for r, q, s, n in jobs) == sorted(
        (r, q, "completed", 1) for r in ids for q in STAGES
    )
    revisions = rows(
        fleet.database_url,
        "SELECT stage, COUNT(*), MAX(revision) FROM outputs WHERE recording_id = ANY(%s) GROUP BY stage",
        ids,
    )
    by_stage = {stage: (count, top) for stage, count, top in revisions}
    assert by_stage["chunk"] == (len(ids), 1)
    assert by_stage["transcription"] == (len(ids), 1)
    for stage in ("memory", "action_item"):
        count, top = by_stage[stage]
        assert count >= len(ids), by_stage
        assert top == 1, by_stage

    # the work was shared: completed attempts by both worker processes, none by the API process
    done_by = rows(
        fleet.database_url,
        "SELECT w.pid, j.queue, COUNT(*) FROM attempts a JOIN jobs j ON j.id = a.job_id"
        " JOIN workers w ON w.worker_id = a.worker_id"
        " WHERE j.recording_id = ANY(%s) AND a.outcome = 'completed' GROUP BY w.pid, j.queue",
        ids,
    )
    per_pid: dict[int, dict[str, int]] = {}
    for pid, queue, count in done_by:
        per_pid.setdefault(int(pid), {})[queue] = int(count)
    assert sum(sum(q.values()) for q in per_pid.values()) == len(ids) * len(STAGES), per_pid
    assert set(per_pid) == {w.pid for w in fleet.workers}, per_pid
    print(f"\n{len(ids)} uploads completed in {elapsed:.1f} s; completed jobs per worker: {per_pid}")


def test_delete_and_reprocess_from_memory(fleet: Fleet, token: str) -> None:
    (said_a, memory_a, action_a), (said_b, memory_b, action_b) = SPEECH[0], SPEECH[3]
    keep, gone = upload(
        fleet, token, [("keep.wav", espeak_wav(said_a)), ("gone.wav", espeak_wav(said_b))], "desk"
    )
    before = wait_for(fleet, token, keep)
    check_speech(before, said_a, memory_a, action_a)
    check_speech(wait_for(fleet, token, gone), said_b, memory_b, action_b)

    # DELETE: the conversation and everything derived from it, and nothing else
    with client(fleet, token) as http:
        assert http.delete(f"/api/conversations/{gone}").status_code == 204
        assert http.get(f"/api/conversations/{gone}").status_code == 404
        assert http.delete(f"/api/conversations/{gone}").status_code == 404
        listed = [
            c["audio_uuid"] for c in http.get("/api/conversations", params={"limit": 200}).json()["items"]
        ]
        memories = http.get("/api/memories", params={"limit": 200}).json()["items"]
        actions = http.get("/api/action-items", params={"limit": 200}).json()["items"]
    assert gone not in listed
    assert keep in listed
    assert not [m for m in memories if m["audio_uuid"] == gone]
    assert not [a for a in actions if a["audio_uuid"] == gone]
    for table, column in (
        ("recordings", "audio_uuid"),
        ("jobs", "recording_id"),
        ("outputs", "recording_id"),
        ("audio_chunks", "recording_id"),
    ):
        assert rows(fleet.database_url, f"SELECT COUNT(*) FROM {table} WHERE {column} = %s", gone) == [(0,)]
    assert conversation(fleet, token, keep) == before

    # a stale memory (as if from an older run that found more): the re-run must replace the stage
    rows_before = dict(
        ((stage, idx), (revision, data))
        for stage, idx, revision, data in rows(
            fleet.database_url,
            "SELECT stage, idx, revision, data::text FROM outputs WHERE recording_id = %s",
            keep,
        )
    )
    with psycopg.connect(fleet.database_url) as conn:
        conn.execute(
            "INSERT INTO outputs (recording_id, stage, idx, data, job_id, revision, updated_at)"
            " VALUES (%s, 'memory', 7, %s::json, NULL, 1, 0)",
            (keep, json.dumps({"text": "A stale memory", "category": "fact", "point_id": None})),
        )
    assert len(conversation(fleet, token, keep)["memories"]) == len(before["memories"]) + 1

    with client(fleet, token) as http:
        r = http.post(f"/api/conversations/{keep}/reprocess", params={"from": "memory"})
    assert r.status_code == 202, r.text
    assert r.json()["stage"] == "memory"
    after = wait_for(
        fleet, token, keep, lambda b: b["status"] in DONE and stage_jobs(b).get("memory") == ["completed"] * 2
    )
    assert after["status"] == "completed"
    assert stage_jobs(after) == {
        "chunk": ["completed"],
        "transcription": ["completed"],
        "memory": ["completed", "completed"],
        "action_item": ["completed"],
    }
    # the stale memory is gone and none is doubled; the re-run rewrote them (a newer updated_at)
    assert [without_time(m) for m in after["memories"]] == [without_time(m) for m in before["memories"]]
    assert all(
        new["updated_at"] > old["updated_at"]
        for new, old in zip(after["memories"], before["memories"], strict=True)
    )
    assert after["action_items"] == before["action_items"]
    assert after["transcript"] == before["transcript"]
    rows_after = dict(
        ((stage, idx), (revision, data))
        for stage, idx, revision, data in rows(
            fleet.database_url,
            "SELECT stage, idx, revision, data::text FROM outputs WHERE recording_id = %s",
            keep,
        )
    )
    assert set(rows_after) == set(rows_before)
    for (stage, idx), (revision, data) in rows_after.items():
        old_revision, old_data = rows_before[(stage, idx)]
        assert revision == old_revision + (stage == "memory"), (stage, idx, revision)
        assert json.loads(data) == json.loads(old_data)


async def stream_until_killed(fleet: Fleet, token: str, first: bytes, then: bytes) -> tuple[str, float]:
    """Send ``first`` at once and ``then`` at twice real time; once the server has committed all
    of ``first`` and a second of ``then``, SIGKILL the API process. Returns the recording and the
    seconds of audio it had committed (as the API said just before the kill)."""
    frame = 3200  # 0.1 s
    url = f"{fleet.url.replace('http://', 'ws://')}/ws_pcm?token={token}&device_name=pendant"
    target = len(first) / 32000 + 1.0
    async with (
        httpx.AsyncClient(
            base_url=fleet.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as http,
        connect(url, max_size=None, close_timeout=1) as ws,
    ):
        ready = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        assert ready["type"] == "ready", ready
        for start in range(0, len(first), frame):
            await ws.send(first[start : start + frame])
        for n, start in enumerate(range(0, len(then), frame)):
            await ws.send(then[start : start + frame])
            await asyncio.sleep(0.05)
            if n % 4:
                continue
            items = (await http.get("/api/conversations", params={"limit": 1})).json()["items"]
            if items and items[0]["source"] == "stream" and items[0]["duration_seconds"] >= target:
                assert items[0]["status"] == "open", items  # still streaming: not handed over
                fleet.kill_api()
                try:
                    for _ in range(20):  # the client notices once it writes to a dead connection
                        await ws.send(then[start : start + frame])
                        await asyncio.sleep(0.05)
                except ConnectionClosed:
                    pass
                return str(items[0]["audio_uuid"]), float(items[0]["duration_seconds"])
    pytest.fail(f"the server never committed {target:.1f} s of the stream:\n{fleet.logs()}")


def test_api_killed_mid_stream_its_committed_audio_is_swept_and_transcribed(fleet: Fleet, token: str) -> None:
    (first_said, memory_word, action_word), (then_said, _, _) = SPEECH[0], SPEECH[4]
    first, then = espeak_pcm(first_said), espeak_pcm(then_said)
    audio_uuid, committed = asyncio.run(stream_until_killed(fleet, token, first, then))
    assert fleet.api is not None
    assert fleet.api.returncode == -signal.SIGKILL
    assert len(first) / 32000 + 1.0 <= committed < (len(first) + len(then)) / 32000

    # nobody closes the conversation while no API process runs: workers do not sweep
    rows_now = rows(fleet.database_url, "SELECT COUNT(*) FROM jobs WHERE recording_id = %s", audio_uuid)
    assert rows_now == [(0,)]

    restarted_at = time.time()
    fleet.start_api()  # another API process, with its own data dir: the same token still works
    fleet.wait_ready()
    body = wait_for(fleet, token, audio_uuid)
    assert body["source"] == "stream"
    assert body["device_name"] == "pendant"
    assert body["duration_seconds"] >= committed  # what was committed was kept
    chunk_job = next(j for j in body["jobs"] if j["queue"] == "chunk")
    assert chunk_job["created_at"] >= restarted_at  # closed by the new process's sweeper
    assert body["status"] == "completed", body
    assert stage_jobs(body) == {stage: ["completed"] for stage in STAGES}, body["jobs"]
    text = body["transcript"]["text"]
    spoken_first = len(first_said.split())
    prefix = " ".join(text.split()[:spoken_first])
    assert wer(first_said, prefix) < 0.25, text  # all of the first sentence, then part of the next
    assert len(text.split()) > spoken_first, text
    assert any(memory_word in m["text"].lower() for m in body["memories"]), body["memories"]
    assert any(action_word in a["text"].lower() for a in body["action_items"]), body["action_items"]
    print(
        f"\nstream: {committed:.1f} s committed before the SIGKILL, {body['duration_seconds']:.1f} s kept;"
        f" done {time.time() - restarted_at:.1f} s after the restart: {text!r}"
    )
    worked = rows(
        fleet.database_url,
        "SELECT DISTINCT w.pid FROM attempts a JOIN jobs j ON j.id = a.job_id"
        " JOIN workers w ON w.worker_id = a.worker_id WHERE j.recording_id = %s",
        audio_uuid,
    )
    assert {int(pid) for (pid,) in worked} <= {w.pid for w in fleet.workers}


async def stream_and_delete(fleet: Fleet, token: str, pcm: bytes) -> tuple[str, Any]:
    """Stream ``pcm``; once two seconds are committed, delete the conversation, and go on sending.
    Returns the recording and how the server closed the connection."""
    url = f"{fleet.url.replace('http://', 'ws://')}/ws_pcm?token={token}&device_name=deleted"
    async with (
        httpx.AsyncClient(
            base_url=fleet.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as http,
        connect(url, max_size=None, close_timeout=1) as ws,
    ):
        assert json.loads(await asyncio.wait_for(ws.recv(), timeout=10))["type"] == "ready"
        await ws.send(pcm[:64000])
        deadline = time.monotonic() + 20
        while True:
            items = (await http.get("/api/conversations", params={"limit": 1})).json()["items"]
            if items and items[0]["device_name"] == "deleted" and items[0]["duration_seconds"] >= 2.0:
                break
            assert time.monotonic() < deadline, items
            await asyncio.sleep(0.1)
        audio_uuid = str(items[0]["audio_uuid"])
        assert (await http.delete(f"/api/conversations/{audio_uuid}")).status_code == 204
        try:
            for start in range(64000, len(pcm), 3200):
                await ws.send(pcm[start : start + 3200])
                await asyncio.sleep(0.02)
            await ws.send(json.dumps({"type": "audio-stop"}))
            while True:
                await asyncio.wait_for(ws.recv(), timeout=10)
        except ConnectionClosed as exc:
            return audio_uuid, exc.rcvd
    raise AssertionError("unreachable")


def test_deleting_a_conversation_while_it_streams_ends_the_stream_with_an_error(
    fleet: Fleet, token: str
) -> None:
    audio_uuid, closed = asyncio.run(stream_and_delete(fleet, token, espeak_pcm(SPEECH[1][0])))
    # not 1000: the client must not take the audio it sent after the deletion as kept
    assert closed is not None
    assert closed.code == 1011, closed
    assert "deleted" in closed.reason, closed
    with client(fleet, token) as http:
        assert http.get(f"/api/conversations/{audio_uuid}").status_code == 404
        assert http.get("/readiness").status_code == 200
    for table, column in (
        ("recordings", "audio_uuid"),
        ("jobs", "recording_id"),
        ("audio_chunks", "recording_id"),
    ):
        assert rows(fleet.database_url, f"SELECT COUNT(*) FROM {table} WHERE {column} = %s", audio_uuid) == [
            (0,)
        ]
