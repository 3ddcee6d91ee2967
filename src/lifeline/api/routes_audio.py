"""Audio in: ``POST /api/audio/upload`` and the ``/ws_pcm`` and ``/ws_omi`` WebSockets.

Acknowledged means durable: an upload is answered once its audio and its ``chunk`` job are
committed; a stream commits its audio at least every second and closes the conversation (the
``chunk`` job) on ``audio-stop``, on disconnect, or after ``LIFELINE_STREAM_IDLE_SECONDS`` without
audio. The logic lives in :mod:`lifeline.ingest`; this module speaks HTTP and WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Final

from fastapi import APIRouter, Request, WebSocket, status
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive
from starlette.websockets import WebSocketDisconnect, WebSocketState

from lifeline import audio
from lifeline.api.context import AppContext
from lifeline.api.deps import Ctx, CurrentUser
from lifeline.api.pipeline_schemas import UploadAccepted, UploadOut, UploadRejected
from lifeline.api.responses import AUTHENTICATED, errors
from lifeline.auth import AuthError
from lifeline.domain import NotFound
from lifeline.ingest import (
    Accepted,
    ClosedConversation,
    PcmConverter,
    StreamSession,
    ingest_upload,
    upload_limits,
)

log = logging.getLogger(__name__)
router = APIRouter(tags=["audio"])

MAX_FILES: Final = 16  # files in one upload request
MAX_FIELDS: Final = 64  # other form fields (unknown ones are ignored)
FORM_OVERHEAD: Final = 1 << 20  # multipart boundaries, headers and small fields
DEVICE_NAME_MAX: Final = 100
POLICY_VIOLATION: Final = 1008
INVALID_DATA: Final = 1007
INTERNAL_ERROR: Final = 1011

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_FILES,
                            "items": {"type": "string", "format": "binary"},
                            "description": "audio files: WAV (any rate, channels, 8-32 bit), MP3, "
                            "M4A/AAC, Ogg Vorbis/Opus, FLAC, WebM",
                        },
                        "device_name": {"type": "string", "maxLength": DEVICE_NAME_MAX},
                    },
                }
            }
        },
    }
}


class _BodyTooLarge(Exception):
    pass


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises once the request body passes ``limit`` bytes (a client may lie
    about, or leave out, its Content-Length)."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge
        return message

    return limited


def _error(code: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=code)


@router.post(
    "/api/audio/upload",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=UploadOut,
    openapi_extra=_UPLOAD_BODY,
    responses={
        **AUTHENTICATED,
        **errors(
            400,
            413,
            415,
            422,
            503,
            described={
                400: "a malformed multipart body, more than 16 files or more than 64 other fields",
                413: "larger than LIFELINE_UPLOAD_MAX_MB, or longer than LIFELINE_UPLOAD_MAX_SECONDS",
                415: "not a multipart form, or not audio (the first file's reason, when every file failed)",
                422: "no files, or undecodable, empty or silent audio (when every file failed)",
            },
        ),
    },
)
async def upload(request: Request, ctx: Ctx, user: CurrentUser) -> JSONResponse:
    """Upload one or more audio files (field ``files``; optional ``device_name``).

    Each file is decoded to 16 kHz mono 16-bit PCM, stored, and queued for the pipeline; the
    answer lists one ``audio_uuid`` per accepted file and the reason for each refused one (a bad
    file leaves nothing behind). When every file is refused, the first one's status and reason
    are the answer.
    """
    limits = upload_limits(ctx.settings)
    body_limit = limits.max_bytes * MAX_FILES + FORM_OVERHEAD
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        return _error(
            413, f"the request is {int(declared) / 1e6:.1f} MB; the limit is {body_limit / 1e6:.1f} MB"
        )
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return _error(415, "expected a multipart/form-data body with audio in the field 'files'")
    limited = Request(request.scope, _limited(request.receive, body_limit))
    try:
        form = await limited.form(max_files=MAX_FILES, max_fields=MAX_FIELDS)
    except _BodyTooLarge:
        return _error(413, f"the request is larger than {body_limit / 1e6:.1f} MB")
    except StarletteHTTPException as exc:
        return _error(400, str(exc.detail))
    try:
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not files:
            return _error(422, "the form has no audio in the field 'files'")
        device = form.get("device_name")
        device_name = device if isinstance(device, str) and device.strip() else None
        if device_name is not None and len(device_name) > DEVICE_NAME_MAX:
            return _error(422, f"device_name is longer than {DEVICE_NAME_MAX} characters")
        outcomes = []
        for f in files:
            outcomes.append(
                await ingest_upload(
                    ctx.store,
                    f.file,
                    user_id=user.id,
                    device_name=device_name,
                    filename=f.filename,
                    limits=limits,
                )
            )
    finally:
        await form.close()
    items: list[UploadAccepted | UploadRejected] = []
    for outcome in outcomes:
        if isinstance(outcome, Accepted):
            items.append(
                UploadAccepted(
                    filename=outcome.filename,
                    audio_uuid=outcome.audio_uuid,
                    duration_seconds=round(outcome.duration_seconds, 3),
                    job_id=outcome.job_id,
                )
            )
        else:
            log.info("upload refused: %s (%s)", outcome.reason, outcome.status_code)
            items.append(
                UploadRejected(
                    filename=outcome.filename,
                    error=outcome.error,
                    reason=outcome.reason,
                    status_code=outcome.status_code,
                )
            )
    if all(isinstance(i, UploadRejected) for i in items):
        first = items[0]
        assert isinstance(first, UploadRejected)
        return _error(first.status_code, first.error)
    return JSONResponse(UploadOut(files=items).model_dump(), status_code=status.HTTP_202_ACCEPTED)


# ---------------------------------------------------------------------------------------------
# WebSockets


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
        self._pcm = PcmConverter()
        self._decoder: audio.OpusPacketDecoder | None = None

    def set_format(self, data: Any) -> None:
        if self.opus or not isinstance(data, dict):
            return
        fmt = (
            int(data.get("rate", self._fmt[0])),
            int(data.get("width", self._fmt[1])),
            int(data.get("channels", self._fmt[2])),
        )
        if fmt != self._fmt:
            self._pcm = PcmConverter(*fmt)  # ValueError for impossible formats
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
        """What the resampler holds at the end of a conversation; the next one starts afresh."""
        if self.opus:
            out = self._decoder.flush() if self._decoder is not None else b""
            self._decoder = None
            return out
        out = self._pcm.flush()
        self._pcm = PcmConverter(*self._fmt)
        return out


async def _send(websocket: WebSocket, event: dict[str, Any]) -> None:
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.send_json(event)


def _closed_event(closed: ClosedConversation | None, reason: str) -> dict[str, Any]:
    return {
        "type": "conversation-closed",
        "data": {
            "audio_uuid": closed.audio_uuid if closed else None,
            "duration_seconds": round(closed.duration_seconds, 3) if closed else 0.0,
            "job_id": closed.job_id if closed else None,
            "reason": reason,
        },
    }


async def _stream(websocket: WebSocket, token: str | None, device_name: str | None, *, opus: bool) -> None:
    ctx: AppContext = websocket.app.state.ctx
    await websocket.accept()
    token = token or _bearer(websocket)
    try:
        if not token:
            raise AuthError("no token")
        user, _ = await ctx.accounts.authenticate(token)
    except AuthError:
        await websocket.close(code=POLICY_VIOLATION, reason="invalid or missing token")
        return
    if device_name is not None:
        device_name = device_name.strip()[:DEVICE_NAME_MAX] or None
    session = StreamSession(
        ctx.store, user_id=user.id, device_name=device_name, idle_seconds=ctx.settings.stream_idle_seconds
    )
    source = _AudioIn(opus)
    inbox: asyncio.Queue[Message] = asyncio.Queue(maxsize=256)

    async def read() -> None:
        try:
            while True:
                message = await websocket.receive()
                await inbox.put(message)
                if message["type"] == "websocket.disconnect":
                    return
        except (WebSocketDisconnect, RuntimeError, OSError):
            await inbox.put({"type": "websocket.disconnect", "code": 1006})

    reader = asyncio.create_task(read(), name="ws-reader")
    await _send(websocket, {"type": "ready", "data": {"client_id": session.client_id}})
    awaiting_payload = False
    close_code, close_reason = 1000, ""
    try:
        while True:
            try:
                message = await asyncio.wait_for(inbox.get(), timeout=session.idle_timeout())
            except TimeoutError:
                closed = await _close(session, source)
                await _send(websocket, _closed_event(closed, "idle"))
                continue
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is not None:
                awaiting_payload = False
                await session.feed(source.payload(data))
                continue
            text = message.get("text")
            if text is None:
                continue
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
                except (TypeError, ValueError) as exc:
                    await websocket.close(code=INVALID_DATA, reason=f"unsupported audio format: {exc}"[:120])
                    break
                awaiting_payload = kind == "audio-chunk"
            elif kind == "audio-stop":
                if awaiting_payload:
                    awaiting_payload = False
                closed = await _close(session, source)
                await _send(websocket, _closed_event(closed, "audio-stop"))
            # other events (ping, info, ...) are ignored
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
            await asyncio.shield(_close(session, source))
        except Exception as exc:  # the sweeper closes it from the committed audio
            log.warning("could not close the conversation at disconnect: %s: %s", type(exc).__name__, exc)
        if websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close(code=close_code, reason=close_reason[:120])


async def _close(session: StreamSession, source: _AudioIn) -> ClosedConversation | None:
    tail = source.flush()
    if tail and session.open:
        await session.feed(tail)
    return await session.close()
