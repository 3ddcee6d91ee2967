"""Pipeline overhead: the time a recording spends in Lifeline beyond its ASR and LLM calls.

    .venv/bin/python bench/pipeline.py                      # 4 recordings of ~35 s speech
    .venv/bin/python bench/pipeline.py --recordings 8 --synchronous normal

Each recording is espeak-ng speech (Debian ``espeak-ng``) stored as an upload is (1 s chunks,
then its ``chunk`` job), and runs through the four stages with the embedded providers (faster-whisper
Whisper-base, the rule-based extractor) on a SQLite store (``synchronous=full`` by default). The
providers are wrapped to time every call. With one job in flight at a time (the default) service
calls never overlap, so

    overhead = wall time (ingest to last completion) - time inside ASR calls - time inside LLM calls

is everything else: ingest, queueing, claims, hand-overs, reading audio, writing outputs, fsyncs.
The model is loaded before the clock starts (its load time is reported apart).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import lifeline

# the same speech as the ASR benchmark (bench/ is the script's directory, so it imports)
from asr_rtf import TEXT, speech
from lifeline.breakers import CircuitBreakers
from lifeline.config import Settings
from lifeline.pipeline import Pipeline
from lifeline.providers.asr import EmbeddedWhisper, Segment
from lifeline.providers.factory import Providers
from lifeline.providers.llm import ActionItem, Memory, RuleBasedExtractor
from lifeline.queue.policy import RetryPolicy
from lifeline.queue.worker import Worker

STAGES = ("chunk", "transcription", "memory", "action_item")


class TimedTranscriber:
    def __init__(self, inner: EmbeddedWhisper) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds = 0.0
        self.calls = 0

    async def transcribe(self, pcm16k: bytes) -> list[Segment]:
        started = time.perf_counter()
        try:
            return await self.inner.transcribe(pcm16k)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1

    async def aclose(self) -> None:
        await self.inner.aclose()


class TimedExtractor:
    def __init__(self, inner: RuleBasedExtractor) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds = 0.0
        self.calls = 0

    async def memories(self, transcript: str) -> list[Memory]:
        started = time.perf_counter()
        try:
            return await self.inner.memories(transcript)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1

    async def action_items(self, segments: Sequence[Segment]) -> list[ActionItem]:
        started = time.perf_counter()
        try:
            return await self.inner.action_items(segments)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1

    async def aclose(self) -> None:
        await self.inner.aclose()


async def run(recordings: int, synchronous: str, concurrency: int, cache: Path) -> None:
    pcm = speech(TEXT)
    whisper = EmbeddedWhisper(cache_dir=cache, language="en")
    started = time.perf_counter()
    await whisper.load()
    load_seconds = time.perf_counter() - started
    transcriber, extractor = TimedTranscriber(whisper), TimedExtractor(RuleBasedExtractor())
    providers = Providers(transcriber, extractor, embedder=None, vectors=None)  # type: ignore[arg-type]
    policy = RetryPolicy(max_attempts=1, base_delay=0.0, max_delay=0.0, lease=600.0)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db?synchronous={synchronous}"
        async with lifeline.connect(url, policies=dict.fromkeys(STAGES, policy)) as store:
            pipeline = Pipeline(
                Settings(database_url=url, data_dir=Path(tmp)), store, CircuitBreakers(store), providers
            )
            wall_start = time.perf_counter()
            for _ in range(recordings):
                rec = str(uuid.uuid4())
                await store.add_recording(rec, user_id="bench", source="upload")
                for seq, start in enumerate(range(0, len(pcm), 32_000)):
                    await store.append_audio(rec, seq, pcm[start : start + 32_000])
                await store.enqueue("chunk", {}, recording_id=rec, user_id="bench")
            ingest_seconds = time.perf_counter() - wall_start
            completed = 0
            while True:  # burst runs until one finds nothing left
                stats = await Worker(store, pipeline.handlers(), concurrency=concurrency).run(burst=True)
                completed += stats.completed
                if stats.claimed == 0:
                    break
            wall = time.perf_counter() - wall_start
            await pipeline.aclose()
    await whisper.aclose()
    if completed != recordings * len(STAGES):
        sys.exit(f"only {completed} of {recordings * len(STAGES)} jobs completed")

    audio_seconds = len(pcm) / 32_000 * recordings
    overhead = wall - transcriber.seconds - extractor.seconds
    rows = [
        ("recordings", f"{recordings} x {len(pcm) / 32_000:.1f} s of speech", ""),
        ("store", f"SQLite synchronous={synchronous}, {concurrency} job(s) in flight", ""),
        ("model load (not counted)", f"{load_seconds:.2f} s", ""),
        ("wall time, ingest to last job", f"{wall:.2f} s", "100.0 %"),
        (
            "  inside ASR calls",
            f"{transcriber.seconds:.2f} s ({transcriber.calls} calls)",
            f"{transcriber.seconds / wall:6.1%}",
        ),
        (
            "  inside LLM calls",
            f"{extractor.seconds:.3f} s ({extractor.calls} calls)",
            f"{extractor.seconds / wall:6.1%}",
        ),
        ("  pipeline overhead", f"{overhead:.3f} s", f"{overhead / wall:6.1%}"),
        ("    of which ingest", f"{ingest_seconds:.3f} s", f"{ingest_seconds / wall:6.1%}"),
        ("overhead per recording", f"{overhead / recordings * 1000:.1f} ms", ""),
        ("ASR real-time factor", f"{transcriber.seconds / audio_seconds:.3f}", ""),
    ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for name, value, share in rows:
        print(f"{name:<{width}}  {value:<{value_width}}  {share}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recordings", type=int, default=4)
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="jobs in flight (>1: service calls overlap)"
    )
    parser.add_argument(
        "--model-cache",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "tests" / "artifacts" / "models",
    )
    args = parser.parse_args()
    asyncio.run(run(args.recordings, args.synchronous, args.concurrency, args.model_cache))


if __name__ == "__main__":
    main()
