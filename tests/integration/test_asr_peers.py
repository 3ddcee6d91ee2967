"""The Wyoming and OpenAI-compatible transcribers against the real servers users run, on loopback:
``wyoming-faster-whisper`` and ``faster-whisper-server``, both on the packaged Whisper-base weights,
both offline. Real speech from espeak-ng; the transcript must be right (word error rate < 25 %)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeline.domain import TransientError
from lifeline.providers._http import ServiceError
from lifeline.providers.asr import OpenAITranscriber, WyomingTranscriber, transcript_text
from peers.asr_servers import FasterWhisperServer, WyomingFasterWhisper
from speech import SHORT, espeak_pcm, wer, whisper_model_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pcm() -> bytes:
    return espeak_pcm(SHORT)


@pytest.fixture(scope="module")
def wyoming(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WyomingFasterWhisper]:
    with WyomingFasterWhisper(whisper_model_dir(), tmp_path_factory.mktemp("wyoming")) as server:
        yield server


@pytest.fixture(scope="module")
def openai_asr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FasterWhisperServer]:
    with FasterWhisperServer(whisper_model_dir(), tmp_path_factory.mktemp("fws")) as server:
        yield server


async def test_wyoming_faster_whisper(wyoming: WyomingFasterWhisper, pcm: bytes) -> None:
    client = WyomingTranscriber(url=wyoming.uri, language="en", timeout_seconds=120)
    segments = await client.transcribe(pcm)
    assert wer(SHORT, transcript_text(segments)) < 0.25, (segments, wyoming.log())
    assert len(segments) == 1  # Wyoming gives text only: one segment spanning the audio
    assert segments[0].start == 0.0
    assert segments[0].end == pytest.approx(len(pcm) / 32000, abs=0.001)
    again = await client.transcribe(pcm)  # a connection per recording; the server keeps serving
    assert transcript_text(again) == transcript_text(segments)


async def test_faster_whisper_server(openai_asr: FasterWhisperServer, pcm: bytes) -> None:
    async with OpenAITranscriber(url=openai_asr.url, model="whisper-1", timeout_seconds=120) as client:
        segments = await client.transcribe(pcm)
    assert wer(SHORT, transcript_text(segments)) < 0.25, (segments, openai_asr.log())
    duration = len(pcm) / 32000
    assert segments
    assert all(0.0 <= s.start < s.end <= duration + 0.5 for s in segments)  # verbose_json: real times


async def test_a_stopped_server_is_a_transient_failure(tmp_path: Path, pcm: bytes) -> None:
    server = WyomingFasterWhisper(whisper_model_dir(), tmp_path)
    uri = server.uri  # a free port nobody listens on
    with pytest.raises(ServiceError, match=r"connection to .* failed") as caught:
        await WyomingTranscriber(url=uri, timeout_seconds=5).transcribe(pcm)
    assert isinstance(caught.value, TransientError)
