"""The embedded pipeline on real speech: espeak-ng audio stored in chunks, transcribed by the shared
embedded Whisper, memories and action items found by the rule-based extractor, no service called."""

from __future__ import annotations

import uuid
from pathlib import Path

import lifeline
from lifeline.breakers import CircuitBreakers
from lifeline.config import Settings
from lifeline.domain import RecordingStatus
from lifeline.pipeline import Pipeline
from lifeline.providers.factory import Providers
from lifeline.providers.llm import RuleBasedExtractor
from lifeline.queue.policy import RetryPolicy
from lifeline.queue.worker import Worker
from speech import SHORT, espeak_pcm, shared_whisper, wer


async def test_spoken_sentences_become_a_transcript_a_memory_and_an_action_item(tmp_path: Path) -> None:
    pcm = espeak_pcm(SHORT)
    settings = Settings(database_url=f"sqlite:///{tmp_path}/s.db", data_dir=tmp_path)
    policy = RetryPolicy(max_attempts=1, base_delay=0.0, max_delay=0.0, lease=120.0)
    async with lifeline.connect(
        f"sqlite:///{tmp_path}/s.db?synchronous=normal", default_policy=policy
    ) as store:
        providers = Providers(shared_whisper(), RuleBasedExtractor(), embedder=None, vectors=None)
        pipeline = Pipeline(settings, store, CircuitBreakers(store), providers)
        rec = str(uuid.uuid4())
        await store.add_recording(rec, user_id="alice", source="upload")
        for seq, start in enumerate(range(0, len(pcm), 16_000)):
            await store.append_audio(rec, seq, pcm[start : start + 16_000])
        await store.enqueue("chunk", {}, recording_id=rec, user_id="alice")
        completed = 0
        while True:  # burst runs until one finds nothing (one may end just before a hand-over)
            stats = await Worker(store, pipeline.handlers(), concurrency=2).run(burst=True)
            completed += stats.completed
            if stats.claimed == 0:
                break
        await pipeline.aclose()  # the providers were passed in: the shared model stays loaded
        assert shared_whisper().loaded

        assert completed == 4
        assert (await store.recording_status(rec)).status is RecordingStatus.COMPLETED
        (transcript,) = await store.get_outputs(rec, "transcription")
        assert transcript.data["provider"] == "embedded"
        assert wer(SHORT, transcript.data["text"]) < 0.25, transcript.data["text"]
        segments = transcript.data["segments"]
        assert segments
        assert all(0 <= s["start"] < s["end"] for s in segments)
        assert transcript.data["duration_seconds"] == round(len(pcm) / 32_000, 3)
        memories = [o.data for o in await store.get_outputs(rec, "memory")]
        assert any("hiking" in m["text"].lower() and m["category"] == "preference" for m in memories), (
            memories
        )
        assert all(m["point_id"] is None for m in memories)
        items = [o.data for o in await store.get_outputs(rec, "action_item")]
        dentist = [i for i in items if "dentist" in i["text"].lower()]
        assert dentist, items
        assert dentist[0]["due"] == "Friday"
        assert dentist[0]["status"] == "open"
        assert dentist[0]["at_seconds"] is not None
