"""The ``/ws_pcm`` and ``/ws_omi`` WebSockets: Friend-Lite and Omi devices stream audio here.

A stream commits its audio at least every second and closes the conversation (the ``chunk`` job)
on ``audio-stop``, on disconnect, after ``LIFELINE_STREAM_IDLE_SECONDS`` without frames or of
silent audio, and at ``LIFELINE_UPLOAD_MAX_SECONDS`` of audio (the next conversation goes on from
there); each close is told to the client as a ``conversation-closed`` event with its reason.
Whenever a new conversation opens, the connection's token is checked again for revocation and its
user for deactivation (1008 when either happened), not for expiry: a device stays connected for
longer than a token lives. The logic lives in :mod:`lifeline.ingest`; this module speaks WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

from fastapi import APIRouter, WebSocket
from starlette.types import Message
from starlette.websockets import WebSocketDisconnect, WebSocketState

from lifeline import audio
from lifeline.api.context import AppContext
from lifeline.auth import AuthError
from lifeline.domain import NotFound
from lifeline.ingest import (
    DEVICE_NAME_MAX,
    ClosedConversation,
    CloseReason,
    StreamSession,
)

log = logging.getLogger(__name__)
router = APIRouter(tags=["audio"])

INBOX_MAX_BYTES: Final = 8 << 20  # a stream's frames received but not yet stored
MESSAGE_OVERHEAD: Final = 256  # what a message costs in the inbox besides its payload
POLICY_VIOLATION: Final = 1008
INVALID_DATA: Final = 1007
INTERNAL_ERROR: Final = 1011


@router.websocket("/ws_pcm")
async def ws_pcm(websocket: WebSocket, token: str | None = None, device_name: str | None = None) -> None:
    """16 kHz mono s16le PCM in binary frames, or Wyoming events (``audio-start`` with any
    rate/width/channels, ``audio-chunk`` headers each followed by a binary payload, ``audio-stop``)."""
    await _stream(websocket, token, device_name, opus=False)


@router.websocket("/ws_omi")
async def ws_omi(websocket: WebSocket, token: str | None = None, device_name: str | None = None) -> None:
    """Omi devices: one raw Opus packet (16 kHz mono, 20 ms) per binary frame, with the same
    optional Wyoming events as ``/ws_pcm``."""
    await _stream(websocket, token, device_name, opus=True)


def _bearer(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


class _AudioIn:
    """Turns a connection's payloads into 16 kHz mono PCM: Opus packets, or PCM in the format of
    the last ``audio-start`` (default 16 kHz mono s16le)."""

    def __init__(self, opus: bool) -> None:
        self.opus = opus
        self.packet_errors = 0
        self._fmt = (audio.TARGET_RATE, 2, 1)
        self._pcm = audio.PcmConverter()
        self._decoder: audio.OpusPacketDecoder | None = None

    def set_format(self, data: Any) -> None:
        if self.opus or not isinstance(data, dict):
            return
        fmt = (
            _whole(data.get("rate", self._fmt[0]), "rate"),
            _whole(data.get("width", self._fmt[1]), "width"),
            _whole(data.get("channels", self._fmt[2]), "channels"),
        )
        if fmt != self._fmt:
            self._pcm = audio.PcmConverter(*fmt)  # ValueError for impossible formats
            self._fmt = fmt

    def payload(self, data: bytes) -> bytes:
        if not self.opus:
            return self._pcm.convert(data)
        if self._decoder is None:
            self._decoder = audio.OpusPacketDecoder()
        try:
            return self._decoder.decode(data)
        except audio.UndecodableAudio:
            self.packet_errors += 1  # one lost packet is 20 ms of audio; keep going
            return b""

    def flush(self) -> bytes:
        """What the resampler holds at the end of a conversation. The next one starts with a fresh
        resampler (and Opus decoder), but with the incomplete sample frame the converter holds:
        the client's byte stream goes on, and dropping a byte of it would shift every sample
        after it (noise)."""
        if self.opus:
            out = self._decoder.flush() if self._decoder is not None else b""
            self._decoder = None
            return out
        return self._pcm.flush()


def _whole(value: Any, name: str) -> int:
    """A whole number from a JSON event: ``44100``, ``44100.0`` or ``"44100"``; ``ValueError``
    for anything else (``Infinity`` and ``NaN``, which ``json.loads`` accepts, included)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"{name} must be a whole number, not {value}")
        return int(value)
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a whole number") from None


class Inbox:
    """A connection's received messages on their way to storage, bounded by their size in bytes.

    :meth:`put` waits while the messages queued weigh ``max_bytes`` or more (each counts its
    payload plus :data:`MESSAGE_OVERHEAD`), so while the store is slow a client's frames stay in
    its TCP connection (which then pushes back) rather than in our memory. One message larger than
    the bound is let in when the inbox is empty, or it could never be.
    """

    def __init__(self, max_bytes: int = INBOX_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: deque[tuple[Message, int]] = deque()
        self._bytes = 0
        self._changed = asyncio.Condition()

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @staticmethod
    def weight(message: Message) -> int:
        payload = message.get("bytes") or message.get("text") or b""
        return len(payload) + MESSAGE_OVERHEAD

    async def put(self, message: Message) -> None:
        size = self.weight(message)
        async with self._changed:
            await self._changed.wait_for(lambda: not self._items or self._bytes + size <= self.max_bytes)
            self._items.append((message, size))
            self._bytes += size
            self._changed.notify_all()

    async def get(self) -> Message:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._items))
            message, size = self._items.popleft()
            self._bytes -= size
            self._changed.notify_all()
            return message


async def _send(websocket: WebSocket, event: dict[str, Any]) -> None:
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.send_json(event)


def _closed_event(closed: ClosedConversation | None, reason: str | None = None) -> dict[str, Any]:
    return {
        "type": "conversation-closed",
        "data": {
            "audio_uuid": closed.audio_uuid if closed else None,
            "duration_seconds": round(closed.duration_seconds, 3) if closed else 0.0,
            "job_id": closed.job_id if closed else None,
            "reason": reason or (closed.reason if closed else ""),
        },
    }


class _ProtocolError(Exception):
    """The client broke the protocol: the connection is closed with 1007."""


async def _stream(websocket: WebSocket, token: str | None, device_name: str | None, *, opus: bool) -> None:
    ctx: AppContext = websocket.app.state.ctx
    await websocket.accept()
    token = token or _bearer(websocket)
    try:
        if not token:
            raise AuthError("no token")
        user, claims = await ctx.accounts.authenticate(token)
    except AuthError:
        await websocket.close(code=POLICY_VIOLATION, reason="invalid or missing token")
        return
    if device_name is not None:
        device_name = device_name.strip()[:DEVICE_NAME_MAX] or None

    async def recheck_token() -> None:
        # each new conversation: the token may have been revoked, the user deactivated (AuthError);
        # its expiry is not checked again (a device stays connected for longer than a token lives)
        await ctx.accounts.still_allowed(claims)

    session = StreamSession(
        ctx.store,
        user_id=user.id,
        device_name=device_name,
        idle_seconds=ctx.settings.stream_idle_seconds,
        max_seconds=ctx.settings.upload_max_seconds,
        on_open=recheck_token,
    )
    source = _AudioIn(opus)
    inbox = Inbox()

    async def read() -> None:
        try:
            while True:
                message = await websocket.receive()
                await inbox.put(message)
                if message["type"] == "websocket.disconnect":
                    return
        except (WebSocketDisconnect, RuntimeError, OSError):
            await inbox.put({"type": "websocket.disconnect", "code": 1006})

    async def feed(pcm: bytes) -> None:
        for closed in await session.feed(pcm):
            await _send(websocket, _closed_event(closed))

    reader = asyncio.create_task(read(), name="ws-reader")
    await _send(websocket, {"type": "ready", "data": {"client_id": session.client_id}})
    # Wyoming over a WebSocket (as Friend-Lite clients speak it): an ``audio-chunk`` event with a
    # ``payload_length`` is a JSON header whose payload is the next message, a binary one of that
    # length. None: no header waiting for its payload.
    payload_due: int | None = None
    close_code, close_reason = 1000, ""
    try:
        while True:
            try:
                message = await asyncio.wait_for(inbox.get(), timeout=session.idle_timeout())
            except TimeoutError:
                for closed_event in _close_events(await _close(session, source, CloseReason.IDLE)):
                    await _send(websocket, closed_event)
                continue
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is not None:
                if payload_due is not None and len(data) != payload_due:
                    raise _ProtocolError(
                        f"the audio-chunk payload is {len(data)} bytes; its header said {payload_due}"
                    )
                payload_due = None
                await feed(source.payload(data))
                continue
            text = message.get("text")
            if text is None:
                continue
            if payload_due is not None:
                raise _ProtocolError("an audio-chunk header must be followed by its binary payload")
            try:
                event = json.loads(text)
                kind = event.get("type") if isinstance(event, dict) else None
            except ValueError:
                kind = None
            if kind is None:
                await _send(websocket, {"type": "error", "data": {"message": "expected a JSON event"}})
                continue
            if kind in ("audio-start", "audio-chunk"):
                try:
                    source.set_format(event.get("data"))
                    if kind == "audio-chunk" and event.get("payload_length") is not None:
                        payload_due = _whole(event["payload_length"], "payload_length") or None
                        if payload_due is not None and payload_due < 0:
                            raise ValueError("payload_length must not be negative")
                except (TypeError, ValueError) as exc:
                    raise _ProtocolError(f"unsupported audio format: {exc}") from exc
            elif kind == "audio-stop":
                for closed_event in _close_events(await _close(session, source, CloseReason.AUDIO_STOP)):
                    await _send(websocket, closed_event)
            # other events (ping, info, ...) are ignored
    except _ProtocolError as exc:
        close_code, close_reason = INVALID_DATA, str(exc)
    except AuthError as exc:
        # a new conversation was about to open, and the token no longer holds
        log.info("stream ended: the token no longer authenticates: %s", exc)
        close_code, close_reason = POLICY_VIOLATION, "the token is no longer valid"
    except Exception as exc:
        # the audio could not be stored (the conversation was deleted meanwhile, the store is
        # down): say so and end the connection with 1011, so the client does not take the audio
        # since its last acknowledgement as kept (an exception escaping a WebSocket handler ends
        # it with 1000, as if all was well)
        if isinstance(exc, NotFound):
            close_reason = "the conversation was deleted while it was streaming"
        else:
            close_reason = f"the audio could not be stored: {type(exc).__name__}"
        log.warning("stream ended: %s: %s: %s", close_reason, type(exc).__name__, exc)
        close_code = INTERNAL_ERROR
        await _send(websocket, {"type": "error", "data": {"message": close_reason}})
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        try:
            await asyncio.shield(_close(session, source, CloseReason.DISCONNECT))
        except Exception as exc:  # the sweeper closes it from the committed audio
            log.warning("could not close the conversation at disconnect: %s: %s", type(exc).__name__, exc)
        if websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close(code=close_code, reason=close_reason[:120])


@dataclass(frozen=True, slots=True)
class _Closes:
    """What closing a connection's conversation closed: conversations the resampler's tail closed
    on its way in (each with its own reason), then the close asked for (``None``: nothing open)."""

    by_tail: list[ClosedConversation]
    reason: CloseReason
    last: ClosedConversation | None


def _close_events(closes: _Closes) -> list[dict[str, Any]]:
    """One ``conversation-closed`` event per conversation closed, and one for the close asked
    for even when nothing was left open (a client's audio-stop is always answered)."""
    return [_closed_event(c) for c in closes.by_tail] + [_closed_event(closes.last, closes.reason)]


async def _close(session: StreamSession, source: _AudioIn, reason: CloseReason) -> _Closes:
    """Close the open conversation, with what the resampler still holds. That tail may close the
    conversation itself (its maximum length, or silence), and what comes after such a close may
    open the next one, which the close asked for then closes: every one is reported."""
    tail = source.flush()
    by_tail = await session.feed(tail) if tail and session.open else []
    return _Closes(by_tail, reason, await session.close(reason))
