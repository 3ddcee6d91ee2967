"""Ingest: audio in, durably, before anybody is told it was accepted.

Independent of HTTP: the routes in :mod:`lifeline.api.routes_audio` and
:mod:`lifeline.api.routes_streams` call these functions.

- :func:`ingest_upload` decodes one uploaded file with :mod:`lifeline.audio` (streaming, on a worker
  thread) into 16 kHz mono s16le, stores it in ~10 s chunks as it is decoded (the file is never held
  in memory a second time), and only then enqueues the recording's ``chunk`` job. When decoding
  fails half-way the recording is deleted again: bad input leaves nothing behind.
- :class:`StreamSession` is one WebSocket connection's conversations: it creates a recording on
  the first sound (with a second of the silence before it), commits what it has buffered every
  second (of audio, or of time), and closes the conversation (the ``chunk`` job) on audio-stop, on
  disconnect, after ``idle_seconds`` without frames (wall time) or of silent frames (audio time),
  and when it reaches its maximum length (the audio after it starts the next one).
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
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from lifeline import audio
from lifeline.config import Settings
from lifeline.domain import Conflict, NotFound, Stage
from lifeline.store.base import Store

log = logging.getLogger(__name__)

UPLOAD_CHUNK_SECONDS: Final = 10.0
STREAM_COMMIT_SECONDS: Final = 1.0
STREAM_WINDOW_SECONDS: Final = 0.1  # a stream is judged silent or not 100 ms at a time
STREAM_PREROLL_SECONDS: Final = 1.0  # silence kept before the first sound of a conversation
STREAM_TRAIL_SECONDS: Final = 1.0  # silence kept after its last sound
# The sweeper waits this much longer than a session's idle timeout (at least; see sweep_margin).
SWEEP_MARGIN_SECONDS: Final = 10.0
SOURCE_UPLOAD: Final = "upload"
SOURCE_STREAM: Final = "stream"
DEVICE_NAME_MAX: Final = 100  # characters of a device name kept with a recording


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
    reason: str = ""


class CloseReason(StrEnum):
    """Why a conversation was closed (the ``reason`` of the ``conversation-closed`` event)."""

    AUDIO_STOP = "audio-stop"
    IDLE = "idle"  # no frames at all for idle_seconds (wall time)
    SILENCE = "silence"  # frames, but silent ones, for idle_seconds of audio
    MAX_LENGTH = "max-length"  # the conversation reached max_seconds of audio: it rolls over
    DISCONNECT = "disconnect"


OnOpen = Callable[[], Awaitable[None]]


class StreamSession:
    """One WebSocket connection's audio: zero or more conversations, one after the other.

    :meth:`feed` takes 16 kHz mono s16le PCM and looks at it in 100 ms windows
    (:data:`STREAM_WINDOW_SECONDS`), each silent or not by :func:`lifeline.audio.is_silent` at
    ``silence_dbfs``. Devices stream all the time, silence included, so:

    - While no conversation is open, silence opens none: the latest ``preroll_seconds`` of it are
      kept in memory, and the first window that is not silent opens a recording (``source``
      ``stream``) that starts with that pre-roll, so the first word is not cut.
    - In an open conversation, a pause is held back in memory; speech after it stores the pause
      too (the recording keeps the conversation's timing). A pause reaching ``idle_seconds`` *of
      audio* (samples received, not wall time, so a client sending faster than real time behaves
      the same) closes the conversation (:attr:`CloseReason.SILENCE`) with only
      ``trail_seconds`` of it; the rest is dropped, and its last ``preroll_seconds`` become the
      next conversation's pre-roll. Every close keeps at most ``trail_seconds`` of a trailing pause.
    - A conversation reaching ``max_seconds`` of audio is closed (:attr:`CloseReason.MAX_LENGTH`)
      and the audio after it goes on into a new one.

    Stored audio is committed once ``commit_seconds`` of it are buffered, or ``commit_seconds``
    after the last commit (so a crash loses at most that much speech; a held-back pause is silence
    and is not committed until speech follows it). :meth:`close` commits the rest and enqueues the
    ``chunk`` job; the caller closes on audio-stop, on disconnect, and when no frames at all came
    for ``idle_seconds`` of wall time (:meth:`idle_timeout`). :meth:`feed` returns the
    conversations it closed itself, each with its :attr:`ClosedConversation.reason`.

    ``on_open`` is awaited before each new recording is created (the WebSocket re-checks its
    token there); whatever it raises propagates and nothing is created.

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
        max_seconds: float | None = None,
        silence_dbfs: float = audio.SILENCE_DBFS,
        preroll_seconds: float = STREAM_PREROLL_SECONDS,
        trail_seconds: float = STREAM_TRAIL_SECONDS,
        commit_seconds: float = STREAM_COMMIT_SECONDS,
        on_open: OnOpen | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.user_id = user_id
        self.device_name = device_name
        self.client_id = client_id_for(user_id, device_name)
        self.idle_seconds = idle_seconds
        self.silence_dbfs = silence_dbfs
        self._silence_bytes = _pcm_bytes(idle_seconds)
        self._max_bytes = _pcm_bytes(max_seconds) if max_seconds is not None else None
        self._preroll_bytes = _pcm_bytes(preroll_seconds, minimum=0)
        self._trail_bytes = _pcm_bytes(trail_seconds, minimum=0)
        self._window_bytes = _pcm_bytes(STREAM_WINDOW_SECONDS)
        self._commit_bytes = _pcm_bytes(commit_seconds)
        self._commit_seconds = commit_seconds
        self._on_open = on_open
        self._clock = clock
        self.audio_uuid: str | None = None
        self._seq = 0
        self._bytes = 0  # committed to the open recording
        self._buffer = bytearray()  # the open recording's audio, not yet committed
        self._pause = bytearray()  # silence since the last sound of the open conversation
        self._preroll = bytearray()  # the latest silence while no conversation is open
        self._odd = b""  # half a sample, waiting for its other half
        self._closed: list[ClosedConversation] = []
        self._last_audio = clock()
        self._last_commit = self._last_audio

    @property
    def open(self) -> bool:
        return self.audio_uuid is not None

    def idle_for(self) -> float:
        """Seconds (wall time) since the last frame."""
        return self._clock() - self._last_audio

    def idle_timeout(self) -> float | None:
        """Seconds until the open conversation times out (``None`` when none is open)."""
        if self.audio_uuid is None:
            return None
        return max(0.0, self.idle_seconds - self.idle_for())

    async def feed(self, pcm: bytes) -> list[ClosedConversation]:
        """Take audio; returns the conversations it closed (silence, maximum length)."""
        if not pcm:
            return []
        self._last_audio = self._clock()
        data = self._odd + pcm
        whole = len(data) // 2 * 2
        data, self._odd = data[:whole], data[whole:]
        self._closed = []
        if data:
            silent = [audio.to_dbfs(float(level)) < self.silence_dbfs for level in audio.window_rms(data)]
            window = self._window_bytes
            pos = 0
            while pos < len(data):
                index = pos // window
                end = min(len(data), (index + 1) * window)
                pos += await self._take(data[pos:end], silent[index])
        if self.audio_uuid is not None and (
            len(self._buffer) >= self._commit_bytes
            or self._last_audio - self._last_commit >= self._commit_seconds
        ):
            await self._commit()
        closed, self._closed = self._closed, []
        return closed

    async def _take(self, piece: bytes, silent: bool) -> int:
        """Handle (a head of) one window; returns how many of its bytes were used."""
        if self.audio_uuid is None:
            if silent:
                self._keep_preroll(piece)
                return len(piece)
            await self._start()
            head = bytes(self._preroll)
            self._preroll.clear()
            used = await self._append(head + piece)
            return max(0, used - len(head))
        if silent:
            self._pause += piece
            if len(self._pause) >= self._silence_bytes:
                await self._close_itself(CloseReason.SILENCE)
            return len(piece)
        if self._pause:  # speech after a pause: the pause is part of the conversation
            pause = bytes(self._pause)
            self._pause.clear()
            used = await self._append(pause)
            if self.audio_uuid is None:  # the conversation reached its maximum length in the pause
                self._keep_preroll(pause[used:])
                return 0
        return await self._append(piece)

    def _keep_preroll(self, silence: bytes) -> None:
        self._preroll += silence
        del self._preroll[: max(0, len(self._preroll) - self._preroll_bytes)]

    async def _append(self, pcm: bytes) -> int:
        """Add to the open recording, up to its maximum length (then it is closed); returns how
        many bytes were added."""
        if self._max_bytes is not None:
            pcm = pcm[: max(0, self._max_bytes - self._bytes - len(self._buffer))]
        self._buffer += pcm
        if len(self._buffer) >= self._commit_bytes:
            await self._commit()
        if self._max_bytes is not None and self._bytes + len(self._buffer) >= self._max_bytes:
            await self._close_itself(CloseReason.MAX_LENGTH)
        return len(pcm)

    async def _close_itself(self, reason: CloseReason) -> None:
        closed = await self.close(reason)
        if closed is not None:
            self._closed.append(closed)

    async def _start(self) -> None:
        """A new recording for the conversation (its id is chosen here)."""
        if self._on_open is not None:
            await self._on_open()
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
        if self.audio_uuid is None or not self._buffer:
            return
        data = bytes(self._buffer)
        try:
            await self.store.append_audio(self.audio_uuid, self._seq, data)
        except Conflict:
            log.warning(
                "recording %s was closed while its stream was still sending (by the sweeper?):"
                " %.1f s of audio start a new conversation",
                self.audio_uuid,
                len(data) / audio.BYTES_PER_SECOND,
            )
            await self._start()
            await self.store.append_audio(self.audio_uuid, self._seq, data)
        self._buffer.clear()
        self._seq += 1
        self._bytes += len(data)
        self._last_commit = self._clock()

    async def close(self, reason: str = CloseReason.AUDIO_STOP) -> ClosedConversation | None:
        """Commit what is buffered (and at most ``trail_seconds`` of a trailing pause) and hand the
        conversation to the pipeline (``None`` if none was open). Half a sample received last is
        kept for the next conversation, except at :attr:`CloseReason.DISCONNECT`.

        Closing a recording that was closed meanwhile (nothing left to commit) finds its job.
        """
        pause = bytes(self._pause)
        self._pause.clear()
        if reason == CloseReason.DISCONNECT:
            self._odd = b""  # half a sample that nothing will complete: not audio
        # otherwise the client's byte stream goes on (a silence or max-length close comes in the
        # middle of a feed): its half sample is completed by the next byte, whatever conversation
        # that byte is in, or every sample after it would be shifted by a byte (noise)
        self._preroll.clear()
        if reason == CloseReason.SILENCE:  # the pause goes on: its end is the next pre-roll
            self._keep_preroll(pause)
        if self.audio_uuid is None:
            return None
        trail = pause[: self._trail_bytes]
        if self._max_bytes is not None:
            trail = trail[: max(0, self._max_bytes - self._bytes - len(self._buffer))]
        self._buffer += trail
        await self._commit()
        audio_uuid = self.audio_uuid
        job_id = await close_recording(self.store, audio_uuid, user_id=self.user_id, client_id=self.client_id)
        self.audio_uuid = None
        return ClosedConversation(audio_uuid, self._bytes / audio.BYTES_PER_SECOND, job_id, str(reason))


def _pcm_bytes(seconds: float, *, minimum: int = 2) -> int:
    """Whole samples of 16 kHz mono s16le in ``seconds`` (at least ``minimum`` bytes)."""
    return max(minimum, int(seconds * audio.TARGET_RATE) * audio.TARGET_WIDTH)


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
