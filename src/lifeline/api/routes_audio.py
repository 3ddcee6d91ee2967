"""Audio in: ``POST /api/audio/upload`` and the ``/ws_pcm`` and ``/ws_omi`` WebSockets.

Acknowledged means durable: an upload is answered once its audio and its ``chunk`` job are
committed; a stream commits its audio at least every second and closes the conversation (the
``chunk`` job) on ``audio-stop``, on disconnect, after ``LIFELINE_STREAM_IDLE_SECONDS`` without
frames or of silent audio, and at ``LIFELINE_UPLOAD_MAX_SECONDS`` of audio (the next conversation
goes on from there); each close is told to the client as a ``conversation-closed`` event with its
reason. Whenever a new conversation opens, the connection's token is checked again for revocation
and its user for deactivation (1008 when either happened), not for expiry: a device stays
connected for longer than a token lives. The logic lives in :mod:`lifeline.ingest`; this module
speaks HTTP and WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import tempfile
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from fastapi import APIRouter, Request, WebSocket, status
from fastapi.responses import JSONResponse
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive
from starlette.websockets import WebSocketDisconnect, WebSocketState

from lifeline import audio
from lifeline.api.context import AppContext
from lifeline.api.deps import Ctx, CurrentUser
from lifeline.api.pipeline_schemas import UploadAccepted, UploadOut, UploadRejected
from lifeline.api.responses import AUTHENTICATED, errors
from lifeline.auth import AuthError
from lifeline.domain import NotFound, StoreError
from lifeline.ingest import (
    Accepted,
    ClosedConversation,
    CloseReason,
    Rejected,
    StreamSession,
    UploadOutcome,
    ingest_upload,
    upload_limits,
)

log = logging.getLogger(__name__)
router = APIRouter(tags=["audio"])

# One request carries at most MAX_FILES files of at most LIFELINE_UPLOAD_MAX_MB each: its body
# may weigh MAX_FILES x that (plus FORM_OVERHEAD), and is refused (413) beyond.
MAX_FILES: Final = 8
MAX_FIELDS: Final = 64  # other form fields (unknown ones are ignored)
FIELD_MAX_BYTES: Final = 64 << 10  # one non-file field
FORM_OVERHEAD: Final = 1 << 20  # multipart boundaries, headers and small fields
PART_HEADERS_MAX: Final = 8 << 10  # one part's header names and values together
UPLOAD_SPOOL_DIR: Final = "uploads-tmp"  # under the data dir: file parts past SPOOL_MEMORY go here
SPOOL_MEMORY: Final = 1 << 20
WRITE_BATCH: Final = 64 << 10  # a spool past SPOOL_MEMORY is written on a thread this much at a time
CLIENT_CLOSED_REQUEST: Final = 499  # nginx's name for it; logged, never sent (nobody is listening)
INBOX_MAX_BYTES: Final = 8 << 20  # a stream's frames received but not yet stored
MESSAGE_OVERHEAD: Final = 256  # what a message costs in the inbox besides its payload
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


class _FormError(Exception):
    """A multipart body that cannot be accepted (400)."""


@dataclass(eq=False, slots=True)
class _FilePart:
    filename: str | None
    file: IO[bytes] | None  # None once the part passed the per-file limit (its spool is gone)
    size: int = 0  # received
    written: int = 0  # written to ``file``
    pending: bytearray = field(default_factory=bytearray)  # received, not yet written


@dataclass(eq=False, slots=True)
class _Part:
    name: str = ""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    file: _FilePart | None = None
    data: bytearray | None = None  # a non-file field's value; None for a file in another field


class _UploadForm:
    """A ``multipart/form-data`` body, parsed as it arrives (python-multipart's parser).

    Starlette's own form parsing spools every file part past 1 MB to the system temporary
    directory (often a RAM-backed tmpfs), with no way to say where, and keeps a part however large
    it grows until the whole body is read. Here the parts of the field ``files`` are spooled past
    :data:`SPOOL_MEMORY` into ``spool_dir`` (the data dir's ``uploads-tmp``): written on the event
    loop while the spool is in memory, and past that on a worker thread in batches of at least
    :data:`WRITE_BATCH` (not one thread hop per received chunk, however small the chunks). A part
    that passes ``max_file_bytes`` is dropped at once and only its size is counted on (it is
    refused as too large, its batch mates are not). Files in other fields are counted and their
    bytes dropped; other fields are kept (up to :data:`FIELD_MAX_BYTES` each) as text.

    A body must end with its closing boundary (:meth:`finish`; python-multipart's ``finalize``
    does not check it): a body cut off before it is refused rather than stored short. A part's
    headers may weigh :data:`PART_HEADERS_MAX` bytes in all (the parser bounds each line and
    their count). A file part is one with a ``filename`` or an RFC 5987 ``filename*`` parameter
    (the decoded ``filename*`` is its name, as RFC 6266 prefers it when both are given).
    """

    def __init__(self, boundary: bytes, *, spool_dir: Path, max_file_bytes: int) -> None:
        self.files: list[_FilePart] = []
        self.fields: dict[str, str] = {}
        self._spool_dir = spool_dir
        self._max_file_bytes = max_file_bytes
        self._part = _Part()
        self._header_name = b""
        self._header_value = b""
        self._header_bytes = 0  # the current part's headers so far
        self._file_count = 0
        self._field_count = 0
        self._ended = False  # the closing boundary was seen
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_end": self._on_end,
            },
        )

    async def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise _FormError(f"invalid multipart data: {exc}") from exc
        current = self._part.file
        for part in self.files:  # at most MAX_FILES
            await self._write(part, final=part is not current)

    async def finish(self) -> None:
        """The body has ended: :class:`_FormError` unless it ended with its closing boundary."""
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise _FormError(f"invalid multipart data: {exc}") from exc
        if not self._ended:
            raise _FormError("the multipart body ends before its closing boundary (was it cut off?)")
        for part in self.files:
            await self._write(part, final=True)

    async def _write(self, part: _FilePart, *, final: bool) -> None:
        """Write what ``part`` received: at once while its spool is in memory (no blocking I/O),
        past that on a worker thread once :data:`WRITE_BATCH` bytes are waiting (or ``final``)."""
        if part.file is None or not part.pending:
            return
        size = len(part.pending)
        if part.written + size <= SPOOL_MEMORY:  # stays in the spool's memory buffer
            part.file.write(part.pending)
        elif size >= WRITE_BATCH or final:  # rolls over to, or goes on in, a file on disk
            await asyncio.to_thread(part.file.write, bytes(part.pending))
        else:
            return
        part.written += size
        part.pending.clear()

    def close(self) -> None:
        """Close (and so delete) every spooled file; blocking I/O (use a worker thread)."""
        for part in self.files:
            if part.file is not None:
                part.file.close()
                part.file = None

    def _on_part_begin(self) -> None:
        self._part = _Part()
        self._header_bytes = 0

    def _on_end(self) -> None:
        self._ended = True

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > PART_HEADERS_MAX:
            raise _FormError(f"a part's headers are longer than {PART_HEADERS_MAX} bytes")

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._part.headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        disposition = self._part.headers.get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            raise _FormError('a part has no Content-Disposition "name"')
        self._part.name = options[b"name"].decode("utf-8", "replace")
        filename = _extended_filename(disposition)
        if filename is None and b"filename" in options:
            filename = options[b"filename"].decode("utf-8", "replace")
        if filename is not None:
            self._file_count += 1
            if self._file_count > MAX_FILES:
                raise _FormError(f"too many files: at most {MAX_FILES} in one request")
            if self._part.name == "files":
                # closing it deletes it (its name is unlinked at once where the OS allows)
                spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY, dir=str(self._spool_dir))  # noqa: SIM115
                self._part.file = _FilePart(filename, spool)
                self.files.append(self._part.file)
        else:
            self._field_count += 1
            if self._field_count > MAX_FIELDS:
                raise _FormError(f"too many fields: at most {MAX_FIELDS} besides the files")
            self._part.data = bytearray()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part.data is not None:
            if len(part.data) + end - start > FIELD_MAX_BYTES:
                raise _FormError(f"the field {part.name!r} is longer than {FIELD_MAX_BYTES} bytes")
            part.data += data[start:end]
        elif part.file is not None:
            upload = part.file
            upload.size += end - start
            if upload.file is None:
                return
            if upload.size > self._max_file_bytes:  # refused whatever follows: free its spool now
                upload.pending = bytearray()
                spool, upload.file = upload.file, None
                spool.close()  # at most SPOOL_MEMORY in memory, or one file to unlink
                return
            upload.pending += data[start:end]

    def _on_part_end(self) -> None:
        if self._part.data is not None:
            self.fields.setdefault(self._part.name, self._part.data.decode("utf-8", "replace"))


_PARAMETER = re.compile(r'(?:[^;"]|"(?:\\.|[^"\\])*")+')  # a header's ;-separated pieces, quotes kept


def _extended_filename(disposition: bytes) -> str | None:
    """The RFC 5987 ``filename*=charset'lang'percent-encoded`` of a Content-Disposition header,
    decoded (``None`` without one). RFC 7578 tells senders not to use it in a form, but some do;
    python-multipart's ``parse_options_header`` drops it. An unknown charset or a malformed value
    falls back to UTF-8 with replacement characters: the name is for people, not a key."""
    for segment in _PARAMETER.findall(disposition.decode("latin-1"))[1:]:
        key, _, value = segment.partition("=")
        if key.strip().lower() == "filename*":
            break
    else:
        return None
    pieces = value.strip().strip('"').split("'", 2)  # charset, language (ignored), value
    charset, value = (pieces[0] or "utf-8", pieces[2]) if len(pieces) == 3 else ("utf-8", pieces[-1])
    try:
        return urllib.parse.unquote(value, encoding=charset, errors="replace")
    except LookupError:  # an unknown charset
        return urllib.parse.unquote(value, encoding="utf-8", errors="replace")


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
                400: "a malformed multipart body (one cut off before its closing boundary, a part's "
                "headers over 8 KB), more than 8 files or more than 64 other fields",
                413: "larger than LIFELINE_UPLOAD_MAX_MB, or longer than LIFELINE_UPLOAD_MAX_SECONDS",
                415: "not a multipart form, or not audio (the first file's reason, when every file failed)",
                422: "no files, or undecodable, empty or silent audio (when every file failed)",
                503: "the store is unavailable, and no file was stored",
            },
        ),
    },
)
async def upload(request: Request, ctx: Ctx, user: CurrentUser) -> JSONResponse:
    """Upload one or more audio files (field ``files``; optional ``device_name``).

    Each file is decoded to 16 kHz mono 16-bit PCM, stored, and queued for the pipeline; the
    answer (202) lists, in the order of the files, the ``audio_uuid`` of each accepted one and the
    ``status_code`` and reason of each refused one (a refused file leaves nothing behind). When
    every file is refused, the first one's status and reason are the answer.

    When the store fails on a file, the files before it stay stored and queued, and the answer
    still lists them (202): the failed file is refused with ``status_code`` 503 (reason
    ``store_unavailable``) and the files after it are not tried (503, reason ``not_tried``), so a
    client resends only the files that were not accepted, and duplicates none. A 503 answer means
    no file was stored.
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
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        return _error(400, "the multipart body has no boundary")
    spool_dir = ctx.settings.data_dir / UPLOAD_SPOOL_DIR
    await asyncio.to_thread(spool_dir.mkdir, parents=True, exist_ok=True)
    form = _UploadForm(boundary, spool_dir=spool_dir, max_file_bytes=limits.max_bytes)
    try:
        try:
            async for chunk in Request(request.scope, _limited(request.receive, body_limit)).stream():
                await form.feed(chunk)
            await form.finish()
        except _BodyTooLarge:
            return _error(413, f"the request is larger than {body_limit / 1e6:.1f} MB")
        except _FormError as exc:
            return _error(400, str(exc))
        except ClientDisconnect:
            # nothing was stored yet (files are decoded once the whole body is in); the spools go
            # in the finally below. Nobody is listening for the answer: it only reaches the log.
            log.info("upload not received: the client went away before the end of its body")
            return _error(CLIENT_CLOSED_REQUEST, "the client went away before the end of its body")
        if not form.files:
            return _error(422, "the form has no audio in the field 'files'")
        device = form.fields.get("device_name")
        device_name = device if device is not None and device.strip() else None
        if device_name is not None and len(device_name) > DEVICE_NAME_MAX:
            return _error(422, f"device_name is longer than {DEVICE_NAME_MAX} characters")
        outcomes = await _ingest_files(
            ctx, form.files, limits=limits, user_id=user.id, device_name=device_name
        )
    finally:
        await asyncio.to_thread(form.close)
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


async def _ingest_files(
    ctx: AppContext,
    parts: list[_FilePart],
    *,
    limits: audio.AudioLimits,
    user_id: str,
    device_name: str | None,
) -> list[UploadOutcome]:
    """Each received file stored and queued, or refused; after a store failure the rest are not
    tried (each failed or untried file is a 503 :class:`Rejected`)."""
    outcomes: list[UploadOutcome] = []
    failed = False
    for part in parts:
        if failed:
            message = "not stored: the store failed on an earlier file of this request; send it again"
            outcomes.append(Rejected(part.filename, message, "not_tried", 503))
            continue
        if part.file is None:  # past the per-file limit: its bytes were counted, not kept
            size, limit = part.size / 1e6, limits.max_bytes / 1e6
            message = f"the upload is {size:.1f} MB; the limit is {limit:.1f} MB"
            outcomes.append(Rejected(part.filename, message, "too_large", 413))
            continue
        await asyncio.to_thread(part.file.seek, 0)
        try:
            outcome = await ingest_upload(
                ctx.store,
                part.file,
                user_id=user_id,
                device_name=device_name,
                filename=part.filename,
                limits=limits,
            )
        except StoreError as exc:  # ingest_upload deleted its partial recording (or the sweeper will)
            log.error("upload not stored: the store failed: %s", exc)
            failed = True
            message = "not stored: the store is unavailable; send it again"
            outcome = Rejected(part.filename, message, "store_unavailable", 503)
        outcomes.append(outcome)
    return outcomes


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
