"""Chaos: 30 recordings through the real pipeline while everything it depends on misbehaves.

The worker is a real ``lifeline worker --app lifeline.pipeline:build_pipeline`` process, killed
with SIGKILL again and again; the ASR peer (Wyoming, on loopback) fails every third call and is
down for a while; the LLM peer (Ollama) hangs now and then (the LLM timeout is one second);
memories go to a Qdrant peer. Afterwards every recording is ``completed``, nothing is
dead-lettered, every stage of every recording ran to completion exactly once (one completed job
each: no hand-over was duplicated), and the outputs and Qdrant points are exactly those of a clean
run without faults: no transcript, memory or action item missing or duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lifeline
from lifeline.config import Settings
from lifeline.domain import RecordingStatus
from lifeline.pipeline import build_pipeline
from lifeline.runtime import run_workers
from peers.ollama import OllamaAPI
from peers.qdrant import QdrantAPI
from peers.server import Fault, HTTPPeer
from peers.wyoming import WyomingPeer, read_event, write_event

pytestmark = pytest.mark.slow

RECORDINGS = 30
KILLS = 5
RATE = 16_000
STAGES = ("chunk", "transcription", "memory", "action_item")


# -- what the recordings say, and the peers that hear it -------------------------------------------


def recording_id(n: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"lifeline-chaos/{n}"))


def spoken(n: int) -> str:
    likes = " ".join(f"I love topic {n}x{k}." for k in range(1 + n % 3))
    tasks = " ".join(f"Remind me to call person {n}x{k} by Friday." for k in range(1 + n % 2))
    return f"{likes} {tasks}"


def tone(n: int) -> bytes:
    """Recording ``n``'s audio: a tone whose length (0.5 s + n * 20 ms) tells the ASR peer who it is."""
    samples = int((0.5 + n * 0.02) * RATE)
    return struct.pack(
        f"<{samples}h", *(int(8000 * math.sin(2 * math.pi * 440 * i / RATE)) for i in range(samples))
    )


def llm_reply(prompt: str) -> str:
    """The Ollama peer's answers: a memory per "I love ..." sentence, an action item per task."""
    if prompt.startswith("["):
        items = [
            {"text": f"Call {who}", "assignee": None, "due": due, "at_seconds": 0.0}
            for who, due in re.findall(r"[Rr]emind me to call ([^.]+?) by (\w+)", prompt)
        ]
        return json.dumps({"action_items": items})
    likes = re.findall(r"I love ([^.]+)\.", prompt)
    return json.dumps({"memories": [{"text": f"User loves {x}", "category": "preference"} for x in likes]})


class FlakyWyoming(WyomingPeer):
    """A Wyoming ASR peer that takes ``delay`` seconds per transcription and, while ``flaky``,
    drops the connection instead of answering on every third call."""

    def __init__(self, texts: dict[int, str], delay: float) -> None:
        super().__init__(transcribe=lambda audio: texts[len(audio)])
        self.transcription_delay = delay
        self.flaky = False
        self.calls = 0
        self.dropped = 0

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        audio = b""
        while True:
            event = await read_event(reader)
            if event is None:
                return
            kind, _, payload = event
            self.events.append(kind)
            if kind == "describe":
                await write_event(writer, "info", self.info)
            elif kind in ("transcribe", "audio-start"):
                audio = b""
            elif kind == "audio-chunk":
                audio += payload
            elif kind == "audio-stop":
                self.calls += 1  # the peer's own event loop: no other thread counts
                await asyncio.sleep(self.transcription_delay)
                if self.flaky and self.calls % 3 == 0:
                    self.dropped += 1
                    return  # Wyoming has no error answer: a failing server drops the connection
                await write_event(writer, "transcript", {"text": self.transcribe(audio)})


@pytest.fixture
def asr() -> Iterator[FlakyWyoming]:
    texts = {len(tone(n)): spoken(n) for n in range(RECORDINGS)}
    with FlakyWyoming(texts, delay=0.15) as peer:
        yield peer


class HangingOllama(HTTPPeer):
    """An Ollama peer on which, while ``hanging``, every ``every``-th chat call hangs: it is read
    and never answered (until the client gives up)."""

    def __init__(self, every: int) -> None:
        super().__init__(OllamaAPI(reply=llm_reply))
        self.every = every
        self.hanging = False
        self.chats = 0

    def _take_fault(self, path: str) -> Fault:
        if self.hanging and path == "/api/chat":
            self.chats += 1  # the peer's own event loop: no other thread counts
            if self.chats % self.every == 0:
                return Fault.HANG
        return super()._take_fault(path)


@pytest.fixture
def ollama() -> Iterator[HangingOllama]:
    with HangingOllama(every=7) as peer:
        yield peer


@pytest.fixture
def qdrant() -> Iterator[HTTPPeer]:
    with HTTPPeer(QdrantAPI()) as peer:
        yield peer


# -- the system under test ---------------------------------------------------------------------------


def environment(
    db: Path, asr: FlakyWyoming, ollama: HTTPPeer, qdrant: HTTPPeer, collection: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update(
        LIFELINE_DATABASE_URL=f"sqlite:///{db}",
        LIFELINE_SQLITE_SYNCHRONOUS="normal",
        LIFELINE_DATA_DIR=str(db.parent),
        LIFELINE_LOG_LEVEL="ERROR",
        LIFELINE_POLL_INTERVAL="0.05",
        LIFELINE_RECOVERY_INTERVAL="0.3",
        LIFELINE_WORKER_CONCURRENCY="4",
        LIFELINE_SHUTDOWN_TIMEOUT="5",
        LIFELINE_HEALTH_INTERVAL="0",
        LIFELINE_ASR="wyoming",
        LIFELINE_ASR_URL=asr.uri,
        LIFELINE_ASR_TIMEOUT="5",
        LIFELINE_LLM="ollama",
        LIFELINE_LLM_URL=ollama.url,
        LIFELINE_LLM_MODEL="llama3.2",
        LIFELINE_LLM_TIMEOUT="1",
        LIFELINE_EMBEDDER="ollama",
        LIFELINE_EMBEDDER_MODEL="all-minilm",
        LIFELINE_QDRANT_URL=qdrant.url,
        LIFELINE_QDRANT_COLLECTION=collection,
        # an outage opens a breaker quickly and the breaker soon lets a probe through again
        LIFELINE_BREAKER_WINDOW="6",
        LIFELINE_BREAKER_MIN_CALLS="3",
        LIFELINE_BREAKER_OPEN_BASE="0.5",
        LIFELINE_BREAKER_OPEN_MAX="2",
        LIFELINE_BREAKER_PROBE_LEASE="3",
        LIFELINE_BREAKER_PROBE_RETRY="0.2",
    )
    for stage in STAGES:
        prefix = f"LIFELINE_QUEUE_{stage.upper()}_"
        # a lost lease and a failed call each spend an attempt; with five kills, a third of the ASR
        # calls failing and hanging LLM calls, three attempts (the default) would dead-letter a few
        # jobs by chance; ten is what an operator of a flaky deployment would set
        env[prefix + "MAX_ATTEMPTS"] = "10"
        env[prefix + "BASE_DELAY"] = "0.05"
        env[prefix + "MAX_DELAY"] = "0.5"
        env[prefix + "LEASE"] = "2"
    return env


async def ingest(db: Path) -> None:
    """The recordings, their audio (in 0.25 s chunks) and their ``chunk`` jobs."""
    async with lifeline.connect(f"sqlite:///{db}", synchronous="normal") as store:
        for n in range(RECORDINGS):
            rec, pcm = recording_id(n), tone(n)
            await store.add_recording(rec, user_id=f"user{n % 3}", client_id="phone", source="api")
            for seq, start in enumerate(range(0, len(pcm), 8_000)):
                await store.append_audio(rec, seq, pcm[start : start + 8_000])
            await store.enqueue("chunk", {}, recording_id=rec, user_id=f"user{n % 3}", client_id="phone")


async def results(db: Path) -> dict[str, Any]:
    """Per recording: its status and each stage's outputs (data by index)."""
    found: dict[str, Any] = {}
    async with lifeline.connect(f"sqlite:///{db}", synchronous="normal") as store:
        for n in range(RECORDINGS):
            rec = recording_id(n)
            report = await store.recording_status(rec)
            outputs: dict[str, dict[int, Any]] = {}
            for o in await store.get_outputs(rec):
                outputs.setdefault(o.stage, {})[o.index] = o.data
            found[rec] = {
                "status": report.status,
                "jobs": {stage: [i.job.state.value for i in r.jobs] for stage, r in report.stages.items()},
                "outputs": outputs,
            }
    return found


def counts(db: Path, sql: str) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        return {str(k): int(v) for k, v in conn.execute(sql).fetchall()}


def stuck(db: Path) -> str:
    """What is left, for the failure message."""
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        jobs = conn.execute(
            "SELECT id, queue, state, attempts, run_at - unixepoch('subsec'), last_error FROM jobs"
            " WHERE state != 'completed'"
        ).fetchall()
        breakers = conn.execute("SELECT * FROM breakers").fetchall()
    return f"jobs {jobs}; breakers {breakers}"


def completed_jobs(db: Path) -> int:
    return counts(db, "SELECT 'n', COUNT(*) FROM jobs WHERE state = 'completed'").get("n", 0)


def all_done(db: Path) -> bool:
    return completed_jobs(db) >= RECORDINGS * len(STAGES)


def worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "lifeline", "worker", "--app", "lifeline.pipeline:build_pipeline"]
    return subprocess.Popen(command, env=env)


def wait_for(condition: Any, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def points(qdrant: HTTPPeer, collection: str) -> dict[str, Any]:
    stored = qdrant.api.collections.get(collection, {}).get("points", {})  # type: ignore[attr-defined]
    return {pid: p["payload"] for pid, p in stored.items()}


# -- the test ------------------------------------------------------------------------------------------


def test_chaos_every_recording_completes_exactly_once(
    tmp_path: Path, asr: FlakyWyoming, ollama: HangingOllama, qdrant: HTTPPeer
) -> None:
    # a clean run first (in this process, no faults): the reference
    clean_db = tmp_path / "clean" / "l.db"
    clean_db.parent.mkdir()
    asyncio.run(ingest(clean_db))
    clean_env = environment(clean_db, asr, ollama, qdrant, "clean")
    while True:  # burst runs until one finds nothing to do (see drain in test_pipeline_stages)
        stats = asyncio.run(run_workers(Settings.from_env(clean_env), build_pipeline, burst=True))
        assert stats is not None
        if stats.claimed == 0:
            break
    clean = asyncio.run(results(clean_db))
    assert all(r["status"] is RecordingStatus.COMPLETED for r in clean.values())
    assert sum(len(r["outputs"].get("memory", {})) for r in clean.values()) == 60  # 1-3 per recording
    assert sum(len(r["outputs"].get("action_item", {})) for r in clean.values()) == 45
    assert asr.dropped == 0

    # now the same recordings under chaos
    db = tmp_path / "chaos" / "l.db"
    db.parent.mkdir()
    asyncio.run(ingest(db))
    env = environment(db, asr, ollama, qdrant, "chaos")
    asr.flaky = True
    ollama.hanging = True
    rng = random.Random(20261201)
    outage_done = False
    kills = 0
    started = time.monotonic()
    try:
        while kills < KILLS and not all_done(db):
            proc = worker(env)
            try:
                before = completed_jobs(db)
                # kill only once this worker is working (start-up time varies), then at a random moment
                assert wait_for(lambda b=before: completed_jobs(db) > b or all_done(db), 30), "no progress"
                if not outage_done:
                    asr.set_fault(Fault.REFUSE)  # the ASR server goes down for a while ...
                    threading.Timer(2.5, asr.ok).start()  # ... and comes back
                    outage_done = True
                time.sleep(rng.uniform(0.2, 1.0))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            kills += 1
        # the last worker runs until everything is done, and is stopped gracefully
        proc = worker(env)
        try:
            finished = wait_for(lambda: all_done(db), 60, step=0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    finally:
        asr.flaky = ollama.hanging = False
        asr.ok()
    elapsed = time.monotonic() - started
    assert finished, f"not done in time: {stuck(db)}"

    chaos = asyncio.run(results(db))
    for rec, found in chaos.items():
        assert found["status"] is RecordingStatus.COMPLETED, (rec, found["jobs"])
        # exactly one job per stage, completed: no hand-over happened twice
        assert found["jobs"] == {stage: ["completed"] for stage in STAGES}, (rec, found["jobs"])
        # the same transcript, memories and action items as the clean run: none lost, none duplicated
        assert found["outputs"] == clean[rec]["outputs"], rec
    assert counts(db, "SELECT state, COUNT(*) FROM jobs GROUP BY state") == {
        "completed": RECORDINGS * len(STAGES)
    }
    # the Qdrant points are those of the clean run, one per memory
    assert points(qdrant, "chaos") == points(qdrant, "clean")
    assert len(points(qdrant, "chaos")) == 60

    # and the chaos really happened
    outcomes = counts(db, "SELECT outcome, COUNT(*) FROM attempts GROUP BY outcome")
    opened = counts(db, "SELECT name, COUNT(*) FROM breaker_events WHERE to_state = 'open' GROUP BY name")
    hung = [r for r in ollama.requests if r.path == "/api/chat" and r.answered_at is None]
    print(
        f"\nchaos: {elapsed:.1f}s, {kills} kills, attempts {outcomes}, breaker openings {opened},"
        f" ASR calls {asr.calls} ({asr.dropped} dropped), {len(hung)} LLM calls hung"
    )
    assert kills >= 3
    assert outcomes.get("lost", 0) > 0, "no kill landed while a job was in flight"
    assert asr.dropped > 0
    assert opened.get("asr", 0) > 0, "the ASR outage never opened its breaker"
    assert outcomes.get("deferred", 0) > 0, "no job was put back while a breaker was open"
    assert hung, "no LLM call hung"
    assert outcomes.get("dead_letter", 0) == 0
