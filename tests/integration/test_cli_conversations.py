"""``lifeline conversations …`` and ``lifeline memories`` on the local store: recordings made by a
real pipeline run (loopback Wyoming ASR, Ollama and Qdrant peers) on a SQLite store in the test's
temporary directory, then listed, shown, searched, re-run and deleted as an operator does it."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import lifeline
from lifeline import cli
from lifeline.breakers import CircuitBreakers
from lifeline.conversations import LocalConversations
from lifeline.domain import Conflict, JobState, NotFound
from lifeline.pipeline import Pipeline
from lifeline.pipeline.conversations import queue_reprocess
from lifeline.store.base import Store
from peers.ollama import OllamaAPI
from peers.qdrant import QdrantAPI
from peers.server import HTTPPeer
from peers.wyoming import WyomingPeer
from unit.test_pipeline_stages import FAST, SPEECH, ScriptedLLM, add_recording, drain, settings_for, tone

ALICE = "alice@example.com"
BOB = "bob@example.com"


@pytest.fixture
def ollama() -> Iterator[HTTPPeer]:
    with HTTPPeer(OllamaAPI(reply=ScriptedLLM())) as peer:
        yield peer


@pytest.fixture
def qdrant() -> Iterator[HTTPPeer]:
    with HTTPPeer(QdrantAPI()) as peer:
        yield peer


@pytest.fixture
def asr() -> Iterator[WyomingPeer]:
    with WyomingPeer(transcribe=lambda audio: SPEECH) as peer:
        yield peer


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with lifeline.connect(
        f"sqlite:///{tmp_path}/p.db?synchronous=normal",
        policies={stage: FAST for stage in ("chunk", "transcription", "memory", "action_item")},
        default_policy=FAST,
    ) as opened:
        yield opened


@pytest.fixture
async def pipeline(
    tmp_path: Path, store: Store, asr: WyomingPeer, ollama: HTTPPeer, qdrant: HTTPPeer
) -> AsyncIterator[Pipeline]:
    settings = settings_for(tmp_path, asr, ollama, qdrant)
    built = Pipeline(settings, store, CircuitBreakers(store, default=settings.breaker))
    yield built
    await built.aclose()


@pytest.fixture
def conversations(store: Store, pipeline: Pipeline) -> LocalConversations:
    return LocalConversations(pipeline.settings, store, pipeline.breakers)


@pytest.fixture
def environment(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    asr: WyomingPeer,
    ollama: HTTPPeer,
    qdrant: HTTPPeer,
) -> None:
    """The CLI's settings, from the environment as an operator sets them: the same store and peers."""
    for name in list(os.environ):
        if name.startswith("LIFELINE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    for name, value in {
        "LIFELINE_DATABASE_URL": f"sqlite:///{tmp_path}/p.db",
        "LIFELINE_DATA_DIR": str(tmp_path),
        "LIFELINE_ASR": "wyoming",
        "LIFELINE_ASR_URL": asr.uri,
        "LIFELINE_LLM": "ollama",
        "LIFELINE_LLM_URL": ollama.url,
        "LIFELINE_LLM_MODEL": "llama3.2",
        "LIFELINE_EMBEDDER": "ollama",
        "LIFELINE_EMBEDDER_MODEL": "all-minilm",
        "LIFELINE_QDRANT_URL": qdrant.url,
        "LIFELINE_QDRANT_COLLECTION": "memories",
        "COLUMNS": "250",
    }.items():
        monkeypatch.setenv(name, value)


async def run_cli(*args: str, stdin: str | None = None) -> Result:
    """``lifeline ARGS`` in a thread (the CLI runs its own event loop), as from a shell."""
    return await asyncio.to_thread(CliRunner().invoke, cli.app, list(args), input=stdin)


async def users(store: Store) -> tuple[str, str]:
    alice = await store.create_user(ALICE, "not-a-real-hash")
    bob = await store.create_user(BOB, "not-a-real-hash")
    return alice.id, bob.id


# -- reading ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("environment")
async def test_completed_conversations_are_listed_shown_and_searched(
    store: Store, pipeline: Pipeline, conversations: LocalConversations
) -> None:
    alice, bob = await users(store)
    first = await add_recording(store, tone(1.0), user=alice)
    await asyncio.sleep(0.01)  # created_at orders the list
    second = await add_recording(store, tone(1.5), user=bob)
    await drain(store, pipeline)

    listed = await conversations.list_conversations(user=None, limit=10)
    assert [c.audio_uuid for c in listed] == [second, first]  # newest first
    assert [(c.user_email, c.status, c.duration_seconds) for c in listed] == [
        (BOB, "completed", 1.5),
        (ALICE, "completed", 1.0),
    ]
    assert listed[0].stages == {s: "completed" for s in ("chunk", "transcription", "memory", "action_item")}
    for who in (ALICE, alice):
        assert [c.audio_uuid for c in await conversations.list_conversations(user=who, limit=10)] == [first]
    assert [c.audio_uuid for c in await conversations.list_conversations(user=None, limit=1)] == [second]
    with pytest.raises(NotFound):
        await conversations.list_conversations(user="nobody@example.com", limit=10)

    out = await run_cli("conversations", "list", "--user", ALICE)
    assert out.exit_code == 0, out.output
    assert first in out.output
    assert ALICE in out.output
    assert second not in out.output
    assert BOB not in out.output
    row = next(line for line in out.output.splitlines() if first in line)
    assert [cell.strip() for cell in row.split("│")][6:12] == ["0:01", "completed", *["completed"] * 4]

    shown = await run_cli("conversations", "show", first)
    assert shown.exit_code == 0, shown.output
    assert f"{first}: completed" in shown.output
    assert SPEECH in shown.output
    for memory in ("User loves hiking", "User loves green tea", "User loves jazz"):
        assert memory in shown.output
    assert "Call anna" in shown.output
    assert "Friday" in shown.output
    jobs = [line for line in shown.output.splitlines() if "│ completed" in line and "1/3" in line]
    assert len(jobs) == 4  # one job per stage, each done in its first attempt

    found = await run_cli("memories", "jazz")
    assert found.exit_code == 0, found.output
    assert found.output.count("User loves jazz") == 2  # both recordings say it
    assert "hiking" not in found.output
    mine = await run_cli("memories", "jazz", "--user", BOB)
    assert mine.exit_code == 0, mine.output
    assert f"{second}:2" in mine.output
    assert first not in mine.output
    everything = await conversations.memories(query=None, user=ALICE, limit=50)
    assert [m.id for m in everything] == [f"{first}:{i}" for i in range(3)]


@pytest.mark.usefixtures("environment")
async def test_open_and_failed_conversations_show_why(store: Store, pipeline: Pipeline) -> None:
    await store.add_recording("live", user_id="someone", source="stream")
    await store.append_audio("live", 0, tone(0.5))
    await store.add_recording("empty", user_id="someone", source="api")
    await store.enqueue("chunk", {}, recording_id="empty", user_id="someone")
    await drain(store, pipeline)

    listed = await run_cli("conversations", "list")
    assert listed.exit_code == 0, listed.output
    live = next(line for line in listed.output.splitlines() if "live" in line)
    assert [cell.strip() for cell in live.split("│")][1:12] == [
        "live",
        "someone",  # an account that does not exist: its id
        "-",
        "stream",
        live.split("│")[5].strip(),
        "0:00",
        "open",
        *["-"] * 4,
    ]
    shown = await run_cli("conversations", "show", "empty")
    assert shown.exit_code == 0, shown.output
    assert "empty: dead_letter" in shown.output
    assert "transcript: -" in shown.output
    attempt = next(line for line in shown.output.splitlines() if "│ dead_letter" in line and "│ 1 " in line)
    assert "the recording has no audio" in attempt

    missing = await run_cli("conversations", "show", "no-such-recording")
    assert missing.exit_code == 1
    assert "no recording no-such-recording" in missing.output


# -- changing --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("environment")
async def test_reprocess_queues_one_job_and_refuses_while_it_waits(store: Store, pipeline: Pipeline) -> None:
    rec = await add_recording(store, tone(1.0))
    early = await run_cli("conversations", "reprocess", rec, "--from", "transcription")
    assert early.exit_code == 1
    assert f"{rec} has not been assembled yet" in early.output
    await drain(store, pipeline)
    before = {o.index: o.revision for o in await store.get_outputs(rec, "memory")}

    out = await run_cli("conversations", "reprocess", rec, "--from", "memory")
    assert out.exit_code == 0, out.output
    report = await store.recording_status(rec)
    newest = report.stages["memory"].jobs[-1].job
    assert newest.state is JobState.PENDING
    assert f"memory of {rec} queued again as job {newest.id}" in out.output
    again = await run_cli("conversations", "reprocess", rec, "--from", "memory")
    assert again.exit_code == 1
    assert f"memory of {rec} is already queued or running" in again.output
    wrong = await run_cli("conversations", "reprocess", rec, "--from", "chunk")
    assert wrong.exit_code == 2  # not a stage one can re-run from

    await drain(store, pipeline)
    after = await store.get_outputs(rec, "memory")
    assert {o.index: o.revision for o in after} == {i: r + 1 for i, r in before.items()}  # replaced


async def test_two_reprocess_calls_at_once_queue_one_job(store: Store, pipeline: Pipeline) -> None:
    rec = await add_recording(store, tone(1.0))
    await drain(store, pipeline)
    row = await store.get_recording(rec)
    first, second = await asyncio.gather(
        queue_reprocess(store, row, "action_item"), queue_reprocess(store, row, "action_item")
    )
    assert first == second
    assert len((await store.recording_status(rec)).stages["action_item"].jobs) == 2
    with pytest.raises(Conflict):
        await queue_reprocess(store, row, "action_item")
    with pytest.raises(ValueError, match="cannot be re-run"):
        await queue_reprocess(store, row, "chunk")


@pytest.mark.usefixtures("environment")
async def test_delete_asks_first_and_takes_the_qdrant_points_too(
    store: Store, pipeline: Pipeline, qdrant: HTTPPeer
) -> None:
    victim = await add_recording(store, tone(1.0))
    keeper = await add_recording(store, tone(1.0))
    await drain(store, pipeline)
    points = {p["payload"]["audio_uuid"] for p in qdrant.api.points().values()}
    assert points == {victim, keeper}

    declined = await run_cli("conversations", "delete", victim, stdin="n\n")
    assert declined.exit_code == 1
    assert (await store.get_recording(victim)).audio_uuid == victim

    out = await run_cli("conversations", "delete", victim, stdin="y\n")
    assert out.exit_code == 0, out.output
    assert f"{victim} deleted" in out.output
    with pytest.raises(NotFound):
        await store.get_recording(victim)
    assert await store.get_outputs(victim) == []
    assert {p["payload"]["audio_uuid"] for p in qdrant.api.points().values()} == {keeper}

    again = await run_cli("conversations", "delete", victim, "--yes")
    assert again.exit_code == 1
    assert "no recording" in again.output
    assert (await store.get_recording(keeper)).audio_uuid == keeper


async def test_an_unknown_id_is_not_found_before_anything_is_queued(
    conversations: LocalConversations,
) -> None:
    with pytest.raises(NotFound):
        await conversations.reprocess(str(uuid.uuid4()), "memory")
    with pytest.raises(NotFound):
        await conversations.conversation(str(uuid.uuid4()))
