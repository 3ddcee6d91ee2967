"""The stage handlers on a real SQLite store, with real provider clients talking to loopback peers
(Wyoming ASR, Ollama, Qdrant): each stage's outputs, the atomic hand-over, re-runs that replace,
bad transcripts, silence, open breakers, deletions."""

from __future__ import annotations

import json
import math
import re
import struct
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import lifeline
from lifeline.breakers import BreakerConfig, BreakerState, CircuitBreakers
from lifeline.config import Settings
from lifeline.domain import (
    AttemptOutcome,
    DependencyUnavailable,
    JobState,
    LeaseLost,
    NotFound,
    Output,
    RecordingStatus,
)
from lifeline.pipeline import Pipeline, build_pipeline, memory_point_id
from lifeline.providers.vectors import point_id
from lifeline.queue.policy import RetryPolicy
from lifeline.queue.worker import Worker
from lifeline.runtime import HandlerContext
from lifeline.store.base import Store
from peers.ollama import OllamaAPI
from peers.qdrant import QdrantAPI
from peers.server import Fault, HTTPPeer
from peers.wyoming import WyomingPeer

FAST = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0, lease=30.0)
RATE = 16_000
SPEECH = "I love hiking. I love green tea. I love jazz. Remind me to call Anna by Friday."


# -- peers ------------------------------------------------------------------------------------------


class ScriptedLLM:
    """What the Ollama peer answers: one memory per "I love ..." sentence (at most ``limit``), one
    action item per "Remind me to ..." line, as JSON the way the prompts ask for it."""

    def __init__(self) -> None:
        self.limit: int | None = None

    def __call__(self, prompt: str) -> str:
        if prompt.startswith("["):  # the action-item prompt: "[start] text" lines
            items = []
            for line in prompt.splitlines():
                at, _, text = line.partition("] ")
                for task in re.findall(r"[Rr]emind me to ([^.]+?) by (\w+)", text):
                    items.append(
                        {
                            "text": task[0].capitalize(),
                            "assignee": None,
                            "due": task[1],
                            "at_seconds": float(at[1:]),
                        }
                    )
            return json.dumps({"action_items": items})
        likes = re.findall(r"I love ([^.]+)\.", prompt)[: self.limit]
        return json.dumps(
            {"memories": [{"text": f"User loves {x}", "category": "preference"} for x in likes]}
        )


@pytest.fixture
def llm() -> ScriptedLLM:
    return ScriptedLLM()


@pytest.fixture
def ollama(llm: ScriptedLLM) -> Iterator[HTTPPeer]:
    with HTTPPeer(OllamaAPI(reply=llm)) as peer:
        yield peer


@pytest.fixture
def qdrant() -> Iterator[HTTPPeer]:
    with HTTPPeer(QdrantAPI()) as peer:
        yield peer


@pytest.fixture
def asr() -> Iterator[WyomingPeer]:
    with WyomingPeer(transcribe=lambda audio: SPEECH) as peer:
        yield peer


# -- the store, the settings, the pipeline ---------------------------------------------------------


def tone(seconds: float, amplitude: float = 0.3) -> bytes:
    n = int(seconds * RATE)
    return struct.pack(
        f"<{n}h", *(int(amplitude * 32767 * math.sin(2 * math.pi * 440 * i / RATE)) for i in range(n))
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with lifeline.connect(
        f"sqlite:///{tmp_path}/p.db?synchronous=normal",
        policies={stage: FAST for stage in ("chunk", "transcription", "memory", "action_item")},
        default_policy=FAST,
    ) as opened:
        yield opened


def settings_for(
    tmp_path: Path, asr: WyomingPeer, ollama: HTTPPeer, qdrant: HTTPPeer | None, **changes: Any
) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path}/p.db",
        data_dir=tmp_path,
        asr="wyoming",
        asr_url=asr.uri,
        asr_timeout=5.0,
        llm="ollama",
        llm_url=ollama.url,
        llm_model="llama3.2",
        llm_timeout=5.0,
        embedder="ollama",
        embedder_model="all-minilm",
        qdrant_url=qdrant.url if qdrant is not None else None,
        qdrant_collection="memories",
        **changes,
    )


@pytest.fixture
async def pipeline(
    tmp_path: Path, store: Store, asr: WyomingPeer, ollama: HTTPPeer, qdrant: HTTPPeer
) -> AsyncIterator[Pipeline]:
    settings = settings_for(tmp_path, asr, ollama, qdrant)
    built = Pipeline(settings, store, CircuitBreakers(store, default=settings.breaker))
    yield built
    await built.aclose()


async def add_recording(store: Store, pcm: bytes, *, user: str = "alice", chunk: int = 32_000) -> str:
    """A recording with its audio, then its ``chunk`` job (as ingest does it)."""
    audio_uuid = str(uuid.uuid4())
    await store.add_recording(audio_uuid, user_id=user, client_id=f"{user}-phone", source="api")
    for seq, start in enumerate(range(0, len(pcm), chunk)):
        await store.append_audio(audio_uuid, seq, pcm[start : start + chunk])
    await store.enqueue("chunk", {}, recording_id=audio_uuid, user_id=user, client_id=f"{user}-phone")
    return audio_uuid


async def drain(store: Store, pipeline: Pipeline) -> None:
    """Burst runs until one finds nothing to claim (a burst run can end just before a job it ran
    hands over the next stage's: it then exits with that job pending)."""
    while True:
        worker = Worker(store, pipeline.handlers(), concurrency=2, gate=pipeline.breakers.gate)
        if (await worker.run(burst=True)).claimed == 0:
            return


async def outputs(store: Store, audio_uuid: str, stage: str) -> list[dict[str, Any]]:
    return [o.data for o in sorted(await store.get_outputs(audio_uuid, stage), key=lambda o: o.index)]


async def jobs_of(store: Store, audio_uuid: str, stage: str) -> list[lifeline.Job]:
    report = await store.recording_status(audio_uuid)
    return [info.job for info in report.stages[stage].jobs] if stage in report.stages else []


# -- the stages ---------------------------------------------------------------------------------------


async def test_every_stage_writes_its_outputs_and_the_recording_completes(
    store: Store, pipeline: Pipeline, asr: WyomingPeer, qdrant: HTTPPeer
) -> None:
    pcm = tone(2.5)
    rec = await add_recording(store, pcm)
    await drain(store, pipeline)

    assert (await store.recording_status(rec)).status is RecordingStatus.COMPLETED
    assert await outputs(store, rec, "chunk") == [
        {"duration_seconds": 2.5, "bytes": len(pcm), "chunks": 3, "speech": True}
    ]
    assert await outputs(store, rec, "transcription") == [
        {
            "text": SPEECH,
            "segments": [{"start": 0.0, "end": 2.5, "text": SPEECH}],
            "duration_seconds": 2.5,
            "provider": "wyoming",
        }
    ]
    assert asr.events.count("audio-stop") == 1  # the whole recording went in one call
    memories = await outputs(store, rec, "memory")
    assert memories == [
        {"text": f"User loves {what}", "category": "preference", "point_id": memory_point_id(rec, i)}
        for i, what in enumerate(["hiking", "green tea", "jazz"])
    ]
    assert await outputs(store, rec, "action_item") == [
        {"text": "Call anna", "assignee": None, "due": "Friday", "status": "open", "at_seconds": 0.0}
    ]
    points = qdrant.api.points()
    assert set(points) == {m["point_id"] for m in memories}
    payload = points[memories[1]["point_id"]]["payload"]
    assert payload["user_id"] == "alice"
    assert payload["audio_uuid"] == rec
    assert payload["recording_id"] == rec
    assert payload["text"] == "User loves green tea"
    assert payload["category"] == "preference"
    # every stage ran exactly once
    for stage in ("chunk", "transcription", "memory", "action_item"):
        assert [j.state for j in await jobs_of(store, rec, stage)] == [JobState.COMPLETED]


async def test_point_ids_are_the_vector_stores_deterministic_ids() -> None:
    assert memory_point_id("rec-1", 2) == point_id("rec-1", 2) == memory_point_id("rec-1", 2)
    assert memory_point_id("rec-1", 2) != memory_point_id("rec-1", 3)


async def test_transcription_hands_over_in_the_transaction_that_completes_it(
    store: Store, pipeline: Pipeline
) -> None:
    rec = await add_recording(store, tone(1.0))
    chunk_job = await store.claim("chunk", worker_id="w")
    assert chunk_job is not None
    result = await pipeline.chunk(chunk_job)
    await store.complete(chunk_job, then=result.then, outputs=result.outputs, replace=result.replace)

    job = await store.claim("transcription", worker_id="w")
    assert job is not None
    assert job.recording_id == rec
    result = await pipeline.transcription(job)
    assert [getattr(n, "queue", None) for n in result.then] == ["memory", "action_item"]
    # the lease is lost before the result is recorded: nothing of it may be written
    await store.recover_expired(job_id=job.id, force=True)
    with pytest.raises(LeaseLost):
        await store.complete(job, then=result.then, outputs=result.outputs, replace=result.replace)
    assert await outputs(store, rec, "transcription") == []
    assert await jobs_of(store, rec, "memory") == []
    assert await jobs_of(store, rec, "action_item") == []

    # the next claim completes: transcript and both next jobs appear together
    again = await store.claim("transcription", worker_id="w2")
    assert again is not None
    assert again.id == job.id
    result = await pipeline.transcription(again)
    await store.complete(again, then=result.then, outputs=result.outputs, replace=result.replace)
    assert len(await outputs(store, rec, "transcription")) == 1
    for stage in ("memory", "action_item"):
        (next_job,) = await jobs_of(store, rec, stage)
        assert next_job.state is JobState.PENDING
        assert (next_job.recording_id, next_job.user_id, next_job.payload) == (rec, "alice", {})


async def test_a_memory_rerun_replaces_outputs_and_points_never_adds(
    store: Store, pipeline: Pipeline, llm: ScriptedLLM, qdrant: HTTPPeer
) -> None:
    rec = await add_recording(store, tone(1.0))
    other = await add_recording(store, tone(1.5), user="bob")
    await drain(store, pipeline)
    first = await outputs(store, rec, "memory")
    assert len(first) == 3
    points = qdrant.api.points
    assert len(points()) == 6  # three for each recording

    await store.enqueue("memory", {}, recording_id=rec, user_id="alice")
    await drain(store, pipeline)
    assert await outputs(store, rec, "memory") == first
    assert {o.revision for o in await store.get_outputs(rec, "memory")} == {2}
    assert len(points()) == 6

    llm.limit = 1  # the next run finds fewer memories: the stale ones go, in the store and in Qdrant
    await store.enqueue("memory", {}, recording_id=rec, user_id="alice")
    await drain(store, pipeline)
    assert await outputs(store, rec, "memory") == first[:1]
    assert [o.revision for o in await store.get_outputs(rec, "memory")] == [3]
    mine = {pid for pid, p in points().items() if p["payload"]["recording_id"] == rec}
    assert mine == {memory_point_id(rec, 0)}
    # the stale points went by id, after the upsert; the recording's points were never all deleted
    deletes = [r.json() for r in qdrant.requests_to("/collections/memories/points/delete", "POST")]
    assert deletes == [{"points": sorted([memory_point_id(rec, 1), memory_point_id(rec, 2)])}]
    last_upsert = qdrant.requests.index(qdrant.requests_to("/collections/memories/points", "PUT")[-1])
    assert qdrant.requests[last_upsert + 1].path == "/collections/memories/points/delete"
    # the other recording was not touched
    assert len(await outputs(store, other, "memory")) == 3
    assert sum(p["payload"]["recording_id"] == other for p in points().values()) == 3


async def test_a_memory_run_after_a_crash_removes_the_points_nobody_knows_of(
    store: Store, pipeline: Pipeline, llm: ScriptedLLM, qdrant: HTTPPeer
) -> None:
    rec = await add_recording(store, tone(1.0))
    other = await add_recording(store, tone(1.0), user="bob")
    for stage in ("chunk", "transcription", "action_item"):
        while (job := await store.claim(stage, worker_id="w")) is not None:
            result = await pipeline.handlers()[stage](job)
            await store.complete(job, then=result.then, outputs=result.outputs, replace=result.replace)
    crashed = await store.claim("memory", worker_id="w")
    assert crashed is not None
    assert crashed.recording_id == rec
    await pipeline.memory(crashed)  # three points upserted, then the worker dies before completing

    def mine() -> set[str]:
        return {pid for pid, p in qdrant.api.points().items() if p["payload"]["recording_id"] == rec}

    assert len(mine()) == 3
    assert await store.get_outputs(rec, "memory") == []  # nothing records those points
    await store.recover_expired(job_id=crashed.id, force=True)

    llm.limit = 1  # the next claim finds one memory: the crashed claim's other two points must go
    await drain(store, pipeline)
    assert [o["point_id"] for o in await outputs(store, rec, "memory")] == [memory_point_id(rec, 0)]
    assert mine() == {memory_point_id(rec, 0)}
    deletes = [r.json() for r in qdrant.requests_to("/collections/memories/points/delete", "POST")]
    assert deletes == [{"filter": {"must": [{"key": "recording_id", "match": {"value": rec}}]}}]
    # the other recording's points were not touched
    assert sum(p["payload"]["recording_id"] == other for p in qdrant.api.points().values()) == 1


async def test_an_action_item_rerun_replaces_its_outputs(store: Store, pipeline: Pipeline) -> None:
    rec = await add_recording(store, tone(1.0))
    await drain(store, pipeline)
    before = await outputs(store, rec, "action_item")
    await store.enqueue("action_item", {}, recording_id=rec, user_id="alice")
    await drain(store, pipeline)
    assert await outputs(store, rec, "action_item") == before
    assert [o.revision for o in await store.get_outputs(rec, "action_item")] == [2]


async def test_without_a_vector_store_memories_have_no_point(
    tmp_path: Path, store: Store, asr: WyomingPeer, ollama: HTTPPeer
) -> None:
    settings = settings_for(tmp_path, asr, ollama, None)
    plain = Pipeline(settings, store, CircuitBreakers(store))
    try:
        assert plain.providers.vectors is None
        assert plain.providers.embedder is None
        rec = await add_recording(store, tone(1.0))
        await drain(store, plain)
        memories = await outputs(store, rec, "memory")
        assert len(memories) == 3
        assert all(m["point_id"] is None for m in memories)
        assert not ollama.requests_to("/api/embed")
    finally:
        await plain.aclose()


# -- silence, missing audio, bad transcripts ---------------------------------------------------------


async def test_a_silent_recording_completes_with_nothing_to_transcribe(
    store: Store, pipeline: Pipeline, asr: WyomingPeer
) -> None:
    rec = await add_recording(store, bytes(3 * 32_000))
    await drain(store, pipeline)
    assert await outputs(store, rec, "chunk") == [
        {"duration_seconds": 3.0, "bytes": 96_000, "chunks": 3, "speech": False}
    ]
    report = await store.recording_status(rec)
    assert report.status is RecordingStatus.COMPLETED
    assert set(report.stages) == {"chunk"}
    assert asr.events == []


async def test_speech_after_a_silent_start_is_found(store: Store, pipeline: Pipeline) -> None:
    rec = await add_recording(store, bytes(70 * 32_000) + tone(0.5), chunk=32_000)  # past one page
    await drain(store, pipeline)
    assert (await outputs(store, rec, "chunk"))[0]["speech"] is True
    assert len(await outputs(store, rec, "transcription")) == 1


async def test_a_recording_without_audio_is_dead_lettered_with_the_reason(
    store: Store, pipeline: Pipeline
) -> None:
    rec = str(uuid.uuid4())
    await store.add_recording(rec, user_id="alice", source="api")
    job_id = await store.enqueue("chunk", {}, recording_id=rec, user_id="alice")
    await drain(store, pipeline)
    job = (await store.get_job(job_id)).job
    assert job.state is JobState.DEAD_LETTER
    assert job.last_error == "the recording has no audio"
    assert job.attempts == 1


async def write_output(store: Store, rec: str, stage: str, data: dict[str, Any]) -> None:
    """Store an output as a completing job would (for transcripts a test makes up)."""
    await store.enqueue("test_writer", {}, recording_id=rec)
    job = await store.claim("test_writer", worker_id="w")
    assert job is not None
    await store.complete(job, outputs=[Output(rec, stage, 0, data)])


@pytest.mark.parametrize("stage", ["memory", "action_item"])
async def test_a_missing_or_malformed_transcript_is_dead_lettered_with_the_reason(
    store: Store, pipeline: Pipeline, ollama: HTTPPeer, stage: str
) -> None:
    missing = str(uuid.uuid4())
    await store.add_recording(missing, user_id="alice", source="api")
    missing_job = await store.enqueue(stage, {}, recording_id=missing)
    broken = str(uuid.uuid4())
    await store.add_recording(broken, user_id="alice", source="api")
    await write_output(store, broken, "transcription", {"text": "hi", "segments": [{"start": 0.0}]})
    broken_job = await store.enqueue(stage, {}, recording_id=broken)
    await drain(store, pipeline)

    job = (await store.get_job(missing_job)).job
    assert job.state is JobState.DEAD_LETTER
    assert job.last_error == (
        f"recording {missing} has no transcript: its transcription stage has not stored one"
    )
    job = (await store.get_job(broken_job)).job
    assert job.state is JobState.DEAD_LETTER
    assert job.last_error is not None
    assert f"the transcript of recording {broken} is malformed" in job.last_error
    assert "KeyError" in job.last_error
    assert job.attempts == 1
    assert not ollama.requests  # never asked the LLM about it


# -- breakers -------------------------------------------------------------------------------------------


async def test_an_outage_opens_the_breaker_and_defers_the_job_without_spending_an_attempt(
    tmp_path: Path, store: Store, asr: WyomingPeer, ollama: HTTPPeer
) -> None:
    rec = str(uuid.uuid4())
    await store.add_recording(rec, user_id="alice", source="api")
    await write_output(
        store, rec, "transcription", {"text": SPEECH, "segments": [{"start": 0, "end": 1, "text": SPEECH}]}
    )
    job_id = await store.enqueue("action_item", {}, recording_id=rec)
    settings = settings_for(tmp_path, asr, ollama, None)
    once = BreakerConfig(window=2, min_calls=1, failure_rate=1.0, open_base=60.0, open_max=60.0)
    breakers = CircuitBreakers(store, {"llm": once})
    guarded = Pipeline(settings, store, breakers)
    try:
        ollama.set_fault(Fault.ERROR_500)
        await Worker(store, guarded.handlers(), gate=breakers.gate).run(burst=True)
        info = await store.get_job(job_id)
        assert info.job.state in (JobState.RETRY, JobState.PENDING)
        assert info.job.attempts == 0  # the outage cost no attempt
        assert [a.outcome for a in info.attempts] == [AttemptOutcome.DEFERRED]
        assert "breaker llm is open" in (info.attempts[0].error or "")
        assert (await breakers.get("llm")).state is BreakerState.OPEN
        assert len(ollama.requests_to("/api/chat")) == 1

        # while it is open, the handler refuses before calling the service
        ollama.ok()
        job = info.job
        with pytest.raises(DependencyUnavailable):
            await guarded.action_item(job)
        assert len(ollama.requests_to("/api/chat")) == 1
        assert await outputs(store, rec, "action_item") == []
    finally:
        await guarded.aclose()


# -- deletions ------------------------------------------------------------------------------------------


async def test_delete_memory_removes_its_point_and_output_only(
    store: Store, pipeline: Pipeline, qdrant: HTTPPeer, ollama: HTTPPeer
) -> None:
    rec = await add_recording(store, tone(1.0))
    await drain(store, pipeline)
    points = qdrant.api.points
    requests_before = len(qdrant.requests)
    embeds_before = len(ollama.requests_to("/api/embed"))
    await pipeline.delete_memory(rec, 1)
    # one request: that point deleted by id; nothing re-embedded, nothing upserted again
    assert [(r.method, r.path, r.json()) for r in qdrant.requests[requests_before:]] == [
        ("POST", "/collections/memories/points/delete", {"points": [memory_point_id(rec, 1)]})
    ]
    assert len(ollama.requests_to("/api/embed")) == embeds_before
    remaining = await store.get_outputs(rec, "memory")
    assert [(o.index, o.data["text"]) for o in remaining] == [
        (0, "User loves hiking"),
        (2, "User loves jazz"),
    ]
    assert set(points()) == {memory_point_id(rec, 0), memory_point_id(rec, 2)}
    assert points()[memory_point_id(rec, 2)]["payload"]["text"] == "User loves jazz"
    with pytest.raises(NotFound):
        await pipeline.delete_memory(rec, 1)


async def test_delete_recording_removes_its_points_and_everything_in_the_store(
    store: Store, pipeline: Pipeline, qdrant: HTTPPeer
) -> None:
    rec = await add_recording(store, tone(1.0))
    keep = await add_recording(store, tone(1.0), user="bob")
    await drain(store, pipeline)
    points = qdrant.api.points
    await pipeline.delete_recording(rec)
    assert {p["payload"]["recording_id"] for p in points().values()} == {keep}
    with pytest.raises(NotFound):
        await store.get_recording(rec)
    assert await store.get_outputs(rec) == []
    assert len(await store.get_outputs(keep, "memory")) == 3
    with pytest.raises(NotFound):
        await pipeline.delete_recording(rec)


# -- assembly ---------------------------------------------------------------------------------------------


async def test_build_pipeline_is_a_cheap_handler_factory_that_registers_its_cleanup(
    tmp_path: Path, store: Store
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/p.db", data_dir=tmp_path)
    context = HandlerContext(settings, store, CircuitBreakers(store))
    handlers = build_pipeline(context)
    assert set(handlers) == {"chunk", "transcription", "memory", "action_item"}
    assert len(context.closers) == 1
    pipeline = handlers["chunk"].__self__  # type: ignore[attr-defined]
    assert isinstance(pipeline, Pipeline)
    assert pipeline.providers.transcriber.name == "embedded"
    assert pipeline.providers.transcriber.loaded is False  # type: ignore[attr-defined]
    assert not (tmp_path / "models").exists()  # nothing assembled or loaded before the first job
    await context.close()
    assert context.closers == []


class DeletingExtractor:
    """The real extractor, except that the recording is deleted (as a user would, through the
    API) while its memories are being extracted: the job's upsert then comes after the deletion."""

    def __init__(self, inner: Any, pipeline: Pipeline, victim: str) -> None:
        self.inner, self.pipeline, self.victim = inner, pipeline, victim
        self.name = inner.name
        self.deleted = False

    async def memories(self, transcript: str) -> list[Any]:
        found = await self.inner.memories(transcript)
        if not self.deleted:
            self.deleted = True
            await self.pipeline.delete_recording(self.victim)
        return list(found)

    async def action_items(self, segments: Any) -> list[Any]:
        return list(await self.inner.action_items(segments))

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_recording_deleted_while_its_memories_are_indexed_leaves_no_point(
    store: Store, pipeline: Pipeline, qdrant: HTTPPeer
) -> None:
    keep = await add_recording(store, tone(1.0), user="bob")
    await drain(store, pipeline)
    rec = await add_recording(store, tone(1.0))
    # run the recording up to its memory job, then delete it in the middle of that job
    chunk_and_transcription = {
        q: h for q, h in pipeline.handlers().items() if q in ("chunk", "transcription")
    }
    for _ in range(2):
        await Worker(store, chunk_and_transcription, concurrency=1).run(burst=True)
    deleting = DeletingExtractor(pipeline.providers.extractor, pipeline, rec)
    pipeline.providers.extractor = deleting  # type: ignore[assignment]
    await drain(store, pipeline)
    assert deleting.deleted
    points = qdrant.api.points()
    assert points, "the other recording's points should be there"
    assert {p["payload"]["recording_id"] for p in points.values()} == {keep}
    with pytest.raises(NotFound):
        await store.get_recording(rec)
    assert await store.list_jobs(recording_id=rec) == []


@pytest.mark.parametrize("stage", ["chunk", "transcription", "memory", "action_item"])
async def test_a_job_queued_after_its_recording_was_deleted_is_cancelled_not_dead_lettered(
    store: Store, pipeline: Pipeline, stage: str
) -> None:
    rec = await add_recording(store, tone(1.0))
    await drain(store, pipeline)
    await pipeline.delete_recording(rec)
    # a stream closing, or a reprocess, at the moment the recording was deleted
    job_id = await store.enqueue(stage, {}, recording_id=rec, user_id="alice")
    stats = await Worker(store, pipeline.handlers(), concurrency=1).run(burst=True)
    job = (await store.get_job(job_id)).job
    assert job.state is lifeline.JobState.CANCELLED
    assert (stats.cancelled, stats.dead_lettered, stats.failed) == (1, 0, 0)
    assert await store.list_jobs(state=lifeline.JobState.DEAD_LETTER) == []


async def test_a_reprocess_after_a_dead_lettered_memory_run_removes_its_points(
    store: Store, pipeline: Pipeline, llm: ScriptedLLM, qdrant: HTTPPeer
) -> None:
    rec = await add_recording(store, tone(1.0))
    for stage in ("chunk", "transcription", "action_item"):
        while (job := await store.claim(stage, worker_id="w")) is not None:
            result = await pipeline.handlers()[stage](job)
            await store.complete(job, then=result.then, outputs=result.outputs, replace=result.replace)
    doomed = await store.claim("memory", worker_id="w")
    assert doomed is not None
    await pipeline.memory(doomed)  # three points upserted, then the run is dead-lettered
    await store.fail(doomed, "the worker gave up", permanent=True)

    def mine() -> set[str]:
        return {pid for pid, p in qdrant.api.points().items() if p["payload"]["recording_id"] == rec}

    assert len(mine()) == 3
    # a reprocess is a new job, claimed for the first time: only the dead letter tells of the points
    llm.limit = 1
    await store.enqueue("memory", {}, recording_id=rec, user_id="alice")
    await drain(store, pipeline)
    assert [o["point_id"] for o in await outputs(store, rec, "memory")] == [memory_point_id(rec, 0)]
    assert mine() == {memory_point_id(rec, 0)}
