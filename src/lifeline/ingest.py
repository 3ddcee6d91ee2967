"""Ingest: audio in, durably, before anybody is told it was accepted.

Independent of HTTP: the routes in :mod:`lifeline.api.routes_audio` call these functions.

- :func:`ingest_upload` decodes one uploaded file with :mod:`lifeline.audio` (streaming, on a worker
  thread) into 16 kHz mono s16le, stores it in ~10 s chunks as it is decoded (the file is never held
  in memory a second time), and only then enqueues the recording's ``chunk`` job. When decoding
  fails half-way the recording is deleted again: bad input leaves nothing behind.
- :class:`StreamSession` is one WebSocket conversation: it creates its recording on the first
  audio, commits what it has buffered every second (of audio, or of time), and closes the
  conversation (the ``chunk`` job) on audio-stop, on disconnect, or after ``idle_seconds`` without
  audio.
- :func:`sweep_unfinished` finds recordings nobody will ever close (the server died mid-stream, an
  upload was cut off by a crash): a stream's committed audio is handed to the pipeline, an
  unfinished upload is deleted.

Closing a conversation is always the same idempotent enqueue (key ``close:<audio_uuid>``), so a
session and the sweeper racing to close one recording create one job, never two. Once closed (its
first job inserted), a recording's audio is final: the store refuses more with :class:`Conflict`,
and a session that meets that refusal carries its audio over into a new conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from lifeline import audio
from lifeline.config import Settings
from lifeline.domain import Conflict, NotFound, Stage
from lifeline.store.base import Store

log = logging.getLogger(__name__)

UPLOAD_CHUNK_SECONDS: Final = 10.0
STREAM_COMMIT_SECONDS: Final = 1.0
# The sweeper waits this much longer than a session's idle timeout (at least; see sweep_margin).
SWEEP_MARGIN_SECONDS: Final = 10.0
SOURCE_UPLOAD: Final = "upload"
SOURCE_STREAM: Final = "stream"


def close_key(audio_uuid: str) -> str:
    """The idempotency key of a recording's first (``chunk``) job: closing twice enqueues once."""
    return f"close:{audio_uuid}"


def sanitize_device(device_name: str | None) -> str:
    """A device name as it appears in a client id: lower case letters and digits, at most 10."""
    cleaned = re.sub(r"[^a-z0-9]", "", (device_name or "").lower())[:10]
    return cleaned or "default"


def client_id_for(user_id: str, device_name: str | None) -> str:
    """The client id of a user's device, as Friend-Lite derives it: the last six characters of the
    user id, a dash, and the sanitised device name (``"3f9a1c-omi"``)."""
    return f"{user_id[-6:]}-{sanitize_device(device_name)}"


def upload_limits(settings: Settings) -> audio.AudioLimits:
    return audio.AudioLimits(
        max_bytes=max(1, int(settings.upload_max_mb * 1_000_000)),
        max_seconds=settings.upload_max_seconds,
    )


async def close_recording(
    store: Store, audio_uuid: str, *, user_id: str | None, client_id: str | None
) -> int:
    """Hand a recording to the pipeline: its ``chunk`` job (idempotent); returns the job id."""
    return await store.enqueue(
        Stage.CHUNK.value,
        {},
        recording_id=audio_uuid,
        user_id=user_id,
        client_id=client_id,
        idempotency_key=close_key(audio_uuid),
    )


# ---------------------------------------------------------------------------------------------
# Uploads


@dataclass(frozen=True, slots=True)
class Accepted:
    """An upload stored and queued."""

    filename: str | None
    audio_uuid: str
    duration_seconds: float
    job_id: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """An upload refused; nothing of it is left in the store."""

    filename: str | None
    error: str
    reason: str
    status_code: int


UploadOutcome = Accepted | Rejected


def _next_chunk(chunks: Iterator[bytes]) -> bytes | None:
    return next(chunks, None)


async def ingest_upload(
    store: Store,
    source: audio.AudioSource,
    *,
    user_id: str,
    device_name: str | None,
    filename: str | None,
    limits: audio.AudioLimits,
) -> UploadOutcome:
    """Decode ``source`` into a new recording and queue it; a :class:`Rejected` for bad audio.

    Decoding runs on a worker thread ten seconds of audio at a time; each piece is committed
    before the next is decoded, and the ``chunk`` job is enqueued last, so the answer comes only
    once audio and job are durable. Errors other than bad audio (the store failing) propagate,
    after the partial recording has been deleted where possible.
    """
    client_id = client_id_for(user_id, device_name)
    audio_uuid: str | None = None
    try:
        stream = await asyncio.to_thread(audio.open_audio, source, limits, chunk_seconds=UPLOAD_CHUNK_SECONDS)
        with stream:
            chunks = iter(stream)
            seq = 0
            while (chunk := await asyncio.to_thread(_next_chunk, chunks)) is not None:
                if audio_uuid is None:
                    audio_uuid = uuid.uuid4().hex
                    await store.add_recording(
                        audio_uuid,
                        user_id=user_id,
                        client_id=client_id,
                        source=SOURCE_UPLOAD,
                        device_name=device_name,
                        filename=filename,
                    )
                await store.append_audio(audio_uuid, seq, chunk)
                seq += 1
            duration = stream.duration
        if audio_uuid is None:  # the decoder raises EmptyAudio first; kept for safety
            raise audio.EmptyAudio("the file holds no audio samples")
        job_id = await close_recording(store, audio_uuid, user_id=user_id, client_id=client_id)
    except audio.AudioError as exc:
        await _discard(store, audio_uuid)
        return Rejected(filename, exc.message, exc.reason, exc.http_status)
    except BaseException:
        await _discard(store, audio_uuid)
        raise
    return Accepted(filename, audio_uuid, duration, job_id)


async def _discard(store: Store, audio_uuid: str | None) -> None:
    if audio_uuid is None:
        return
    try:
        await asyncio.shield(store.delete_recording(audio_uuid))
    except NotFound:
        pass
    except Exception as exc:  # the sweeper deletes it later
        log.warning("could not delete the rejected upload %s: %s", audio_uuid, exc)


# ---------------------------------------------------------------------------------------------
# Streams


@dataclass(frozen=True, slots=True)
class ClosedConversation:
    audio_uuid: str
    duration_seconds: float
    job_id: int


class StreamSession:
    """One WebSocket connection's audio: zero or more conversations, one after the other.

    :meth:`feed` takes 16 kHz mono s16le PCM. The first audio creates a recording (``source``
    ``stream``); buffered audio is committed once it reaches ``commit_seconds`` of audio, or once
    ``commit_seconds`` have passed since the last commit (so a crash loses at most that much, and
    the recording's ``last_audio_at`` trails the last frame received by at most that much however
    slowly a client sends: the sweeper relies on it). :meth:`close` commits the rest and enqueues
    the ``chunk`` job. After a close, the next audio starts a new recording.

    If the recording was closed by someone else meanwhile (the sweeper took this connection for
    dead), its pipeline may already have read its audio, and the store refuses more of it
    (:class:`Conflict`): the audio that was refused starts a new conversation instead, so it is
    transcribed rather than appended where nobody reads it. Not safe for concurrent use: one task
    feeds it.
    """

    def __init__(
        self,
        store: Store,
        *,
        user_id: str,
        device_name: str | None,
        idle_seconds: float,
        commit_seconds: float = STREAM_COMMIT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.user_id = user_id
        self.device_name = device_name
        self.client_id = client_id_for(user_id, device_name)
        self.idle_seconds = idle_seconds
        self._commit_bytes = max(2, int(commit_seconds * audio.BYTES_PER_SECOND) // 2 * 2)
        self._commit_seconds = commit_seconds
        self._clock = clock
        self.audio_uuid: str | None = None
        self._seq = 0
        self._bytes = 0
        self._buffer = bytearray()
        self._last_audio = clock()
        self._last_commit = self._last_audio

    @property
    def open(self) -> bool:
        return self.audio_uuid is not None

    def idle_for(self) -> float:
        """Seconds since the last audio."""
        return self._clock() - self._last_audio

    def idle_timeout(self) -> float | None:
        """Seconds until the open conversation times out (``None`` when none is open)."""
        if self.audio_uuid is None:
            return None
        return max(0.0, self.idle_seconds - self.idle_for())

    async def feed(self, pcm: bytes) -> None:
        if not pcm:
            return
        self._last_audio = self._clock()
        if self.audio_uuid is None:
            await self._start()
        self._buffer += pcm
        if (
            len(self._buffer) >= self._commit_bytes
            or self._last_audio - self._last_commit >= self._commit_seconds
        ):
            await self._commit()

    async def _start(self) -> None:
        """A new recording for the conversation (its id is chosen here)."""
        audio_uuid = uuid.uuid4().hex
        await self.store.add_recording(
            audio_uuid,
            user_id=self.user_id,
            client_id=self.client_id,
            source=SOURCE_STREAM,
            device_name=self.device_name,
        )
        self.audio_uuid, self._seq, self._bytes = audio_uuid, 0, 0
        self._last_commit = self._clock()

    async def _commit(self) -> None:
        whole = len(self._buffer) // 2 * 2  # a trailing odd byte waits for its other half
        if self.audio_uuid is None or whole == 0:
            return
        data = bytes(self._buffer[:whole])
        try:
            await self.store.append_audio(self.audio_uuid, self._seq, data)
        except Conflict:
            log.warning(
                "recording %s was closed while its stream was still sending (by the sweeper?):"
                " %.1f s of audio start a new conversation",
                self.audio_uuid,
                whole / audio.BYTES_PER_SECOND,
            )
            await self._start()
            await self.store.append_audio(self.audio_uuid, self._seq, data)
        del self._buffer[:whole]
        self._seq += 1
        self._bytes += whole
        self._last_commit = self._clock()

    async def close(self) -> ClosedConversation | None:
        """Commit what is buffered and hand the conversation to the pipeline (``None`` if none).

        Closing a recording that was closed meanwhile (nothing left to commit) finds its job.
        """
        if self.audio_uuid is None:
            return None
        await self._commit()
        self._buffer.clear()  # at most one odd byte: not a sample
        audio_uuid = self.audio_uuid
        job_id = await close_recording(self.store, audio_uuid, user_id=self.user_id, client_id=self.client_id)
        self.audio_uuid = None
        return ClosedConversation(audio_uuid, self._bytes / audio.BYTES_PER_SECOND, job_id)


class PcmConverter:
    """Raw interleaved PCM of any rate, width (1-4 bytes) and channel count to 16 kHz mono s16le.

    Keeps an incomplete sample frame for the next call, and the resampler's state across calls.
    """

    def __init__(self, rate: int = audio.TARGET_RATE, width: int = 2, channels: int = 1) -> None:
        if not 1000 <= rate <= 768_000:
            raise ValueError(f"unsupported sample rate {rate}")
        if width not in (1, 2, 3, 4):
            raise ValueError(f"unsupported sample width {width}")
        if not 1 <= channels <= 64:
            raise ValueError(f"unsupported channel count {channels}")
        self.rate, self.width, self.channels = rate, width, channels
        self._frame = width * channels
        self._carry = b""
        self._passthrough = rate == audio.TARGET_RATE and width == 2 and channels == 1
        self._resampler: object | None = None

    def convert(self, data: bytes) -> bytes:
        data = self._carry + data
        whole = len(data) // self._frame * self._frame
        data, self._carry = data[:whole], data[whole:]
        if not data:
            return b""
        if self._passthrough:
            return data
        mono = self._to_mono(data)
        if self.rate == audio.TARGET_RATE:
            out: bytes = np.clip(np.rint(mono * 32768.0), -32768, 32767).astype("<i2").tobytes()
            return out
        return self._resample(mono)

    def flush(self) -> bytes:
        if self._resampler is None:
            return b""
        resampler = self._resampler
        return b"".join(_frame_bytes(f) for f in resampler.resample(None))  # type: ignore[attr-defined]

    def _to_mono(self, data: bytes) -> npt.NDArray[np.float32]:
        samples: npt.NDArray[np.float32]
        if self.width == 1:
            samples = (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
        elif self.width == 2:
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        elif self.width == 3:
            raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            ints = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
            ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
            samples = ints.astype(np.float32) / float(1 << 23)
        else:
            samples = (np.frombuffer(data, dtype="<i4").astype(np.float64) / float(1 << 31)).astype(
                np.float32
            )
        frames = samples.reshape(-1, self.channels)
        mono = frames[:, 0] if self.channels == 1 else frames.mean(axis=1)
        return np.ascontiguousarray(mono, dtype=np.float32)

    def _resample(self, mono: npt.NDArray[np.float32]) -> bytes:
        import av

        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=audio.TARGET_RATE)
        frame = av.AudioFrame.from_ndarray(mono.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.rate
        resampler = self._resampler
        return b"".join(_frame_bytes(f) for f in resampler.resample(frame))  # type: ignore[attr-defined]


def _frame_bytes(frame: object) -> bytes:
    samples: int = frame.samples  # type: ignore[attr-defined]
    return bytes(frame.planes[0])[: samples * audio.TARGET_WIDTH]  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# The sweeper


@dataclass(frozen=True, slots=True)
class SweepReport:
    closed: list[str]
    deleted: list[str]


def sweep_margin(idle_seconds: float) -> float:
    """How much longer than a session's idle timeout the sweeper waits: ``max(10 s, idle)``."""
    return max(SWEEP_MARGIN_SECONDS, idle_seconds)


async def sweep_unfinished(
    store: Store, idle_seconds: float, *, margin: float | None = None, now: float | None = None
) -> SweepReport:
    """Close or delete recordings never closed and without audio for ``idle_seconds + margin``.

    A stream whose connection (or server) died before the conversation was handed over still has
    its committed audio: it gets its ``chunk`` job. A stream without any audio, and an upload that
    never finished (the server died while decoding it), is deleted. Recordings created by code
    (source ``api``) are left alone, and so is every recording that ever had a job (``closed_at``),
    even once its jobs are gone.

    Why the margin (``margin``, by default :func:`sweep_margin`): the sweeper sees a stream's last
    *committed* audio (``last_audio_at``), while a live session times out ``idle_seconds`` after
    the last frame it *received*, and commits up to a second of audio (or of time) later than it
    received it, and then needs a moment to commit and enqueue. Sweeping at exactly
    ``idle_seconds`` could close a conversation just before its own session does: the session's
    last commit would then land after the ``chunk`` job may have read the audio, and those frames
    would never be transcribed. The margin leaves a live session time to close its own
    conversation; the store refusing audio of a closed recording (the session then starts a new
    conversation) covers a session stalled longer than that. The cost is that a crashed stream is
    handed over ``margin`` seconds later.
    """
    closed: list[str] = []
    deleted: list[str] = []
    wait = idle_seconds + (sweep_margin(idle_seconds) if margin is None else margin)
    idle_before = (time.time() if now is None else now) - wait
    for row in await store.unfinished_recordings(idle_before=idle_before):
        try:
            if row.source == SOURCE_STREAM and row.audio_bytes > 0:
                await close_recording(store, row.audio_uuid, user_id=row.user_id, client_id=row.client_id)
                closed.append(row.audio_uuid)
            elif row.source in (SOURCE_STREAM, SOURCE_UPLOAD):
                await store.delete_recording(row.audio_uuid)
                deleted.append(row.audio_uuid)
        except NotFound:
            continue  # deleted meanwhile
    if closed or deleted:
        log.info(
            "sweeper: %d unfinished streams closed, %d unfinished recordings deleted",
            len(closed),
            len(deleted),
        )
    return SweepReport(closed, deleted)


async def run_sweeper(store: Store, *, idle_seconds: float, interval: float, stop: asyncio.Event) -> None:
    """:func:`sweep_unfinished` at once and then every ``interval`` seconds until ``stop`` is set."""
    while not stop.is_set():
        try:
            await sweep_unfinished(store, idle_seconds)
        except Exception as exc:
            log.warning("sweeper pass failed: %s: %s", type(exc).__name__, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
