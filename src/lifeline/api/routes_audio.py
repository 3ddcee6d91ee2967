"""Audio in by upload: ``POST /api/audio/upload``.

Acknowledged means durable: an upload is answered once its audio and its ``chunk`` job are
committed. The logic lives in :mod:`lifeline.ingest`, the form reading in
:mod:`lifeline.api.multipart`; this module speaks HTTP. The WebSockets are in
:mod:`lifeline.api.routes_streams`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect

from lifeline import audio
from lifeline.api.context import AppContext
from lifeline.api.deps import Ctx, CurrentUser
from lifeline.api.multipart import (
    MAX_FILES,
    BodyTooLarge,
    FilePart,
    FormError,
    UploadForm,
    limited,
)
from lifeline.api.pipeline_schemas import UploadAccepted, UploadOut, UploadRejected
from lifeline.api.responses import AUTHENTICATED, errors
from lifeline.domain import StoreError
from lifeline.ingest import (
    DEVICE_NAME_MAX,
    Accepted,
    Rejected,
    UploadOutcome,
    ingest_upload,
    upload_limits,
)

log = logging.getLogger(__name__)
router = APIRouter(tags=["audio"])

# One request carries at most MAX_FILES files of at most LIFELINE_UPLOAD_MAX_MB each: its body
# may weigh MAX_FILES x that (plus FORM_OVERHEAD), and is refused (413) beyond.
FORM_OVERHEAD: Final = 1 << 20  # multipart boundaries, headers and small fields
UPLOAD_SPOOL_DIR: Final = "uploads-tmp"  # under the data dir: file parts past SPOOL_MEMORY go here
CLIENT_CLOSED_REQUEST: Final = 499  # nginx's name for it; logged, never sent (nobody is listening)

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
    form = UploadForm(boundary, spool_dir=spool_dir, max_file_bytes=limits.max_bytes)
    try:
        try:
            async for chunk in Request(request.scope, limited(request.receive, body_limit)).stream():
                await form.feed(chunk)
            await form.finish()
        except BodyTooLarge:
            return _error(413, f"the request is larger than {body_limit / 1e6:.1f} MB")
        except FormError as exc:
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
    parts: list[FilePart],
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
