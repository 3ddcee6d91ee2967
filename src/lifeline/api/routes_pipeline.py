"""The pipeline API: conversations, their audio, transcripts, memories and action items.

A user sees their own; a superuser sees everybody's. Somebody else's id answers 404, exactly like
an id that does not exist.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Body, Header, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from lifeline import audio
from lifeline.api.context import AppContext
from lifeline.api.deps import Ctx, CurrentUser
from lifeline.api.pipeline_schemas import (
    ActionItemOut,
    ActionItemPage,
    ActionItemPatch,
    ConversationAttemptOut,
    ConversationDetailOut,
    ConversationJobOut,
    ConversationOut,
    ConversationPage,
    MemoryOut,
    MemoryPage,
    ReprocessOut,
    SegmentOut,
    StagesOut,
    TranscriptOut,
)
from lifeline.api.responses import AUTHENTICATED, errors
from lifeline.api.schemas import ErrorOut
from lifeline.domain import NotFound, Stage, User
from lifeline.pipeline.conversations import conversation_status, queue_reprocess
from lifeline.store.base import OutputKey, RecordingRow, StoredOutput

router = APIRouter(tags=["pipeline"], responses=AUTHENTICATED)

AudioUuid = Annotated[str, Path(min_length=1, max_length=200, description="a recording", examples=["rec-1"])]
OutputId = Annotated[
    str, Path(min_length=3, max_length=220, description="<audio_uuid>:<index>", examples=["rec-1:0"])
]
Limit = Annotated[int, Query(ge=1, le=200)]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]
# A cursor is the sort key of a page's last item: "<recording's created_at, or - without a
# recording>~<index>~<audio_uuid>". Opaque to clients; spelled out so that the schema's pattern
# admits only cursors that decode (any string it admits is a valid key, if not one we issued).
CURSOR_PATTERN: Final = r"^(-|-?[0-9]{1,20}(?:\.[0-9]{1,20})?(?:e[+-]?[0-9]{1,3})?)~([0-9]{1,9})~([^\x00]*)$"
_CURSOR = re.compile(CURSOR_PATTERN)
Cursor = Annotated[
    str | None,
    Query(
        max_length=500,
        pattern=CURSOR_PATTERN,
        description="opaque: the previous page's next_cursor (none: the first page); the page"
        " starts right after the item it names",
    ),
]
PREVIEW_CHARS = 200
_NOT_FOUND = errors(404)


def _scope(user: User) -> str | None:
    return None if user.is_superuser else user.id


async def _owned(ctx: AppContext, user: User, audio_uuid: str) -> RecordingRow:
    """The recording, if ``user`` may see it; 404 otherwise (whether it exists or not)."""
    try:
        row = await ctx.store.get_recording(audio_uuid)
    except NotFound:
        row = None
    if row is None or (not user.is_superuser and row.user_id != user.id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no conversation {audio_uuid!r}")
    return row


def encode_cursor(key: OutputKey) -> str:
    """The ``next_cursor`` of a page whose last item has ``key``."""
    at = "-" if key.created_at is None else repr(key.created_at)
    return f"{at}~{key.index}~{key.recording_id}"


def decode_cursor(cursor: str) -> OutputKey:
    """The key a cursor names (``ValueError``, a 422, for one the pattern does not admit)."""
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise ValueError(f"not a cursor: {cursor!r}")
    at, index, audio_uuid = match.groups()
    return OutputKey(None if at == "-" else float(at), audio_uuid, int(index))


def _split_id(output_id: str) -> tuple[str, int]:
    audio_uuid, sep, index = output_id.rpartition(":")
    if not sep or not audio_uuid or not index.isdigit() or len(index) > 9:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no item {output_id!r} (ids look like <audio_uuid>:<index>)"
        )
    return audio_uuid, int(index)


async def _summary(ctx: AppContext, row: RecordingRow) -> tuple[ConversationOut, Any]:
    report = await ctx.store.recording_status(row.audio_uuid)
    stages = StagesOut(
        **{
            name: sr.state.value if sr.state else None
            for name, sr in report.stages.items()
            if name in StagesOut.model_fields
        }
    )
    status_text = conversation_status(row, report)
    transcripts = await ctx.store.get_outputs(row.audio_uuid, Stage.TRANSCRIPTION.value)
    text = str(transcripts[0].data.get("text", "")) if transcripts else None
    summary = ConversationOut(
        audio_uuid=row.audio_uuid,
        client_id=row.client_id,
        device_name=row.device_name,
        filename=row.filename,
        source=row.source,
        created_at=row.created_at,
        duration_seconds=round(row.duration_seconds, 3),
        status=status_text,
        stages=stages,
        transcript_preview=None if text is None else text[:PREVIEW_CHARS],
    )
    return summary, (report, transcripts)


@router.get("/api/conversations", response_model=ConversationPage, responses=errors(503))
async def list_conversations(
    ctx: Ctx, user: CurrentUser, limit: Limit = 50, offset: Offset = 0
) -> ConversationPage:
    """Conversations, newest first, with each stage's status and the start of the transcript."""
    scope = _scope(user)
    rows = await ctx.store.list_recordings(user_id=scope, limit=limit, offset=offset)
    total = await ctx.store.count_recordings(user_id=scope)
    items = []
    for row in rows:
        try:
            items.append((await _summary(ctx, row))[0])
        except NotFound:
            continue  # deleted meanwhile
    return ConversationPage(
        items=items, total=total, limit=limit, offset=offset, has_more=offset + limit < total
    )


@router.get(
    "/api/conversations/{audio_uuid}", response_model=ConversationDetailOut, responses=errors(404, 503)
)
async def get_conversation(ctx: Ctx, user: CurrentUser, audio_uuid: AudioUuid) -> ConversationDetailOut:
    """One conversation: transcript, memories, action items, and every job with its attempts."""
    row = await _owned(ctx, user, audio_uuid)
    summary, (report, transcripts) = await _summary(ctx, row)
    transcript = None
    if transcripts:
        data = transcripts[0].data
        segments = [
            SegmentOut(
                start=float(s.get("start", 0.0)), end=float(s.get("end", 0.0)), text=str(s.get("text", ""))
            )
            for s in data.get("segments") or []
            if isinstance(s, dict)
        ]
        transcript = TranscriptOut(text=str(data.get("text", "")), segments=segments)
    memories = await ctx.store.get_outputs(audio_uuid, Stage.MEMORY.value)
    actions = await ctx.store.get_outputs(audio_uuid, Stage.ACTION_ITEM.value)
    jobs = sorted((info for sr in report.stages.values() for info in sr.jobs), key=lambda i: i.job.id)
    return ConversationDetailOut(
        **summary.model_dump(),
        transcript=transcript,
        memories=[MemoryOut.of(m, row.filename) for m in memories],
        action_items=[ActionItemOut.of(a, row.filename) for a in actions],
        jobs=[
            ConversationJobOut(
                id=i.job.id,
                queue=i.job.queue,
                state=i.job.state.value,
                attempts=i.job.attempts,
                max_attempts=i.job.max_attempts,
                last_error=i.job.last_error,
                created_at=i.job.created_at,
                updated_at=i.job.updated_at,
                attempt_history=[
                    ConversationAttemptOut(
                        claim=a.claim,
                        worker_id=a.worker_id,
                        started_at=a.started_at,
                        finished_at=a.finished_at,
                        outcome=a.outcome.value,
                        error=a.error,
                    )
                    for a in i.attempts
                ],
            )
            for i in jobs
        ],
    )


WAV_HEADER_BYTES: Final = 44
# chunks read from the store at a time while streaming audio: uploads store ten seconds a chunk
# (320 kB), so a page is at most about 5 MB in memory
AUDIO_PAGE: Final = 16
_BYTES_SPEC = re.compile(r"\s*([0-9]*)\s*-\s*([0-9]*)\s*")
_PAST_ANY_END: Final = 10**18  # what a position of more digits than that counts as
_WAV_CONTENT = {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": {"type": "string"}}


_ACCEPT_RANGES = _header("always bytes: seeking asks for a byte range (Range: bytes=a-b)")


def _requested_range(value: str, size: int) -> tuple[int, int] | None:
    """The one byte range a ``Range`` header asks of a ``size``-byte file, as (first, last),
    inclusive, ``last`` clamped to the end of the file; ``None`` to send the whole file instead (a
    malformed header, another unit, or several ranges: RFC 9110 lets a server ignore those).

    ``bytes=a-b``, ``bytes=a-`` (from ``a`` to the end) and ``bytes=-n`` (the last ``n`` bytes).
    HTTP 416 when the range holds no byte of the file (it starts at or past the end, or ``-0``).
    """
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _BYTES_SPEC.fullmatch(spec)
    if match is None or match.group(0).strip() == "-":
        return None
    first_text, last_text = match.groups()
    if first_text:
        first = _position(first_text)
        last = _position(last_text) if last_text else _PAST_ANY_END  # bytes=a-: to the end
        if last < first:
            return None  # not a valid range: ignored, like any malformed one
        if first >= size:
            raise _unsatisfiable(size)
        return first, min(last, size - 1)
    suffix = _position(last_text)
    if suffix == 0:
        raise _unsatisfiable(size)
    return max(0, size - suffix), size - 1


def _position(digits: str) -> int:
    """A byte position; one too long for ``int`` (Python refuses over 4300 digits) is past any end."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) < 18 else _PAST_ANY_END


def _unsatisfiable(size: int) -> HTTPException:
    return HTTPException(
        status.HTTP_416_RANGE_NOT_SATISFIABLE,
        f"the range asks for no byte of the file ({size} bytes)",
        headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
    )


def _etag(row: RecordingRow) -> str:
    """A strong validator of the WAV file: its audio only grows (an open stream) or stays."""
    key = f"{row.audio_uuid}\0{row.created_at!r}\0{row.audio_chunks}\0{row.audio_bytes}"
    return f'"{hashlib.sha256(key.encode()).hexdigest()[:32]}"'


async def _seek(ctx: AppContext, audio_uuid: str, offset: int) -> tuple[int, int]:
    """Where to start reading the audio to reach byte ``offset`` of it: (where the chunk holding it
    starts in the audio, the ``after_seq`` that reads from that chunk on).

    Chunks can differ in size (a stream commits what has arrived), so their sizes are asked of the
    store, which tells them without reading the audio; no chunk before the one holding ``offset``
    is read. Chunks deleted meanwhile: from after the last one (nothing to read but silence)."""
    if offset <= 0:
        return 0, -1
    position, after = 0, -1
    for seq, size in await ctx.store.audio_chunk_sizes(audio_uuid):
        if position + size > offset:
            return position, seq - 1
        position, after = position + size, seq
    return position, after


async def _wav_bytes(
    ctx: AppContext, audio_uuid: str, total: int, start: int, stop: int
) -> AsyncIterator[bytes]:
    """Bytes ``[start, stop)`` of the WAV file of ``total`` bytes of audio (after its 44-byte header).

    Reading starts at the chunk holding ``start`` (see :func:`_seek`) and no page after ``stop`` is
    read. Audio deleted meanwhile is sent as silence, to keep the length promised in Content-Length.
    """
    header = audio.wav_header(total)
    if start < WAV_HEADER_BYTES:
        yield header[start:stop]
    first, end = max(0, start - WAV_HEADER_BYTES), stop - WAV_HEADER_BYTES  # in the audio
    sent = 0
    # position: where the next chunk starts in the audio
    position, after = await _seek(ctx, audio_uuid, first) if first < end else (end, -1)
    while position < end:
        page = await ctx.store.read_audio(audio_uuid, after_seq=after, limit=AUDIO_PAGE)
        if not page:
            break
        for seq, pcm in page:
            after = seq
            piece = pcm[max(0, first - position) : max(0, end - position)]
            position += len(pcm)
            if piece:
                sent += len(piece)
                yield piece
            if position >= end:
                break
    if sent < max(0, end - first):  # deleted while streaming: keep the promised length
        yield bytes(end - first - sent)


_AUDIO_HEADERS: Final = {
    "Accept-Ranges": _ACCEPT_RANGES,
    "ETag": _header("a strong validator"),
    "Content-Length": _header("the size of the whole WAV file, in bytes"),
}


@router.get(
    "/api/conversations/{audio_uuid}/audio",
    response_class=StreamingResponse,
    responses={
        200: {"content": _WAV_CONTENT, "description": "the whole WAV file", "headers": _AUDIO_HEADERS},
        206: {
            "content": _WAV_CONTENT,
            "description": "the asked byte range of the WAV file",
            "headers": {
                "Content-Range": _header("bytes <first>-<last>/<size of the whole file>"),
                "Accept-Ranges": _ACCEPT_RANGES,
                "ETag": _header("a strong validator"),
                "Content-Length": _header("the size of the range, in bytes"),
            },
        },
        416: {
            "model": ErrorOut,
            "description": "the range holds no byte of the file",
            "headers": {"Content-Range": _header("bytes */<size of the whole file>")},
        },
        **errors(404, 503, described={404: "unknown, not yours, or without audio"}),
    },
)
async def conversation_audio(
    ctx: Ctx,
    user: CurrentUser,
    audio_uuid: AudioUuid,
    request: Request,
    range_header: Annotated[
        str | None,
        Header(
            alias="Range",
            description="one byte range: bytes=<first>-<last>, bytes=<first>- or bytes=-<suffix"
            " length>; anything else (several ranges, another unit, a malformed range) is ignored"
            " and the whole file is sent",
        ),
    ] = None,
) -> StreamingResponse:
    """The conversation's audio as a 16 kHz mono 16-bit WAV file, streamed page by page.

    With a ``Range`` header (an ``<audio>`` element seeking), 206 and only the asked bytes; 416
    when they lie past the end. With an ``If-Range`` that is not the current ``ETag``, the whole
    file (200). A seek reads only the chunks from the one holding its first byte.
    """
    row, headers = await _audio_file(ctx, user, audio_uuid)
    size, etag = row.audio_bytes + WAV_HEADER_BYTES, headers["ETag"]
    wanted = None
    if range_header is not None and request.headers.get("if-range", etag) == etag:
        wanted = _requested_range(range_header, size)
    first, last = wanted if wanted is not None else (0, size - 1)
    if wanted is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(last - first + 1)
    return StreamingResponse(
        _wav_bytes(ctx, audio_uuid, row.audio_bytes, first, last + 1),
        status_code=status.HTTP_206_PARTIAL_CONTENT if wanted is not None else status.HTTP_200_OK,
        media_type="audio/wav",
        headers=headers,
    )


@router.head(
    "/api/conversations/{audio_uuid}/audio",
    response_class=Response,
    responses={
        200: {
            "content": _WAV_CONTENT,
            "description": "the headers a GET of the whole WAV file answers with, and no body",
            "headers": _AUDIO_HEADERS,
        },
        **errors(404, 503, described={404: "unknown, not yours, or without audio"}),
    },
)
async def conversation_audio_head(ctx: Ctx, user: CurrentUser, audio_uuid: AudioUuid) -> Response:
    """What a GET of the conversation's audio would answer, without the audio: its size
    (Content-Length), type, ``ETag`` and ``Accept-Ranges``. A ``Range`` header is ignored (range
    requests are defined for GET only, RFC 9110): always the whole file's headers; nothing is read
    of the audio."""
    row, headers = await _audio_file(ctx, user, audio_uuid)
    headers["Content-Length"] = str(row.audio_bytes + WAV_HEADER_BYTES)
    return Response(status_code=status.HTTP_200_OK, media_type="audio/wav", headers=headers)


async def _audio_file(ctx: AppContext, user: User, audio_uuid: str) -> tuple[RecordingRow, dict[str, str]]:
    """The recording whose WAV file is asked for (404 if there is none, or it has no audio yet) and
    the headers every answer about that file carries."""
    row = await _owned(ctx, user, audio_uuid)
    if row.audio_bytes <= 0:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"conversation {audio_uuid!r} has no audio")
    return row, {
        "Accept-Ranges": "bytes",
        "ETag": _etag(row),
        "Content-Disposition": f'attachment; filename="{audio_uuid}.wav"',
    }


@router.delete(
    "/api/conversations/{audio_uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=errors(404, 503),
)
async def delete_conversation(ctx: Ctx, user: CurrentUser, audio_uuid: AudioUuid) -> Response:
    """Delete the conversation and everything derived from it (vector points included)."""
    await _owned(ctx, user, audio_uuid)
    try:
        if ctx.pipeline is not None:
            await ctx.pipeline.delete_recording(audio_uuid)
        else:
            await ctx.store.delete_recording(audio_uuid)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no conversation {audio_uuid!r}") from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/api/conversations/{audio_uuid}/reprocess",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ReprocessOut,
    responses=errors(
        404,
        409,
        503,
        described={409: "the stage is already queued or running, or what it needs is not there yet"},
    ),
)
async def reprocess(
    ctx: Ctx,
    user: CurrentUser,
    audio_uuid: AudioUuid,
    from_stage: Annotated[
        Literal["transcription", "memory", "action_item"],
        Query(alias="from", description="the stage to re-run; transcription re-runs everything after it"),
    ],
) -> ReprocessOut:
    """Re-run one stage of a conversation (keeping the earlier stages' outputs).

    409 while the stage is queued or running, or before what it needs exists. Two requests at once
    (a double click) queue one job between them and both answer 202 with its id (see
    :func:`lifeline.pipeline.conversations.reprocess_key`)."""
    row = await _owned(ctx, user, audio_uuid)
    job_id = await queue_reprocess(ctx.store, row, from_stage)
    return ReprocessOut(audio_uuid=audio_uuid, stage=from_stage, job_id=job_id)


# -- memories ---------------------------------------------------------------------------------


@router.get("/api/memories", response_model=MemoryPage, responses=errors(503))
async def list_memories(
    ctx: Ctx,
    user: CurrentUser,
    q: Annotated[str | None, Query(max_length=500, description="words the memory must contain")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> MemoryPage:
    """Memories, newest conversation first; with ``q``, those matching every word, best first.

    No total: ``has_more`` says whether another page follows."""
    query = q.strip() if q else None
    found = await ctx.store.search_outputs(
        Stage.MEMORY.value, user_id=_scope(user), query=query or None, limit=limit + 1, offset=offset
    )
    return MemoryPage(
        items=[MemoryOut.of(o, o.filename) for o in found[:limit]],
        limit=limit,
        offset=offset,
        has_more=len(found) > limit,
    )


@router.delete(
    "/api/memories/{memory_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=errors(404, 503),
)
async def delete_memory(ctx: Ctx, user: CurrentUser, memory_id: OutputId) -> Response:
    """Delete one memory (and its vector point)."""
    audio_uuid, index = _split_id(memory_id)
    await _owned(ctx, user, audio_uuid)
    try:
        await ctx.store.get_output(audio_uuid, Stage.MEMORY.value, index)
        if ctx.pipeline is not None:
            await ctx.pipeline.delete_memory(audio_uuid, index)
        else:
            await ctx.store.delete_output(audio_uuid, Stage.MEMORY.value, index)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no memory {memory_id!r}") from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- action items -----------------------------------------------------------------------------


@router.get("/api/action-items", response_model=ActionItemPage, responses=errors(503))
async def list_action_items(
    ctx: Ctx,
    user: CurrentUser,
    status_filter: Annotated[Literal["open", "done"] | None, Query(alias="status")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
    cursor: Cursor = None,
) -> ActionItemPage:
    """Action items, newest conversation first; only open or done ones with ``status``.

    The page starts right after the item ``cursor`` names (the previous page's ``next_cursor``),
    skips ``offset`` items (of the asked status) and holds the next ``limit``. No total:
    ``has_more`` says whether more follow. Every page by cursor costs the same, however far it
    is (the store seeks to the cursor in its indexes and filters by status there); a large
    ``offset`` costs more, as the store reads the items it skips.
    """
    found = await ctx.store.search_outputs(
        Stage.ACTION_ITEM.value,
        user_id=_scope(user),
        status=status_filter,
        after=None if cursor is None else decode_cursor(cursor),
        limit=limit + 1,
        offset=offset,
    )
    has_more = len(found) > limit
    found = found[:limit]
    return ActionItemPage(
        items=[ActionItemOut.of(out, out.filename) for out in found],
        limit=limit,
        offset=offset,
        cursor=cursor,
        has_more=has_more,
        next_cursor=encode_cursor(found[-1].key) if has_more else None,
    )


@router.patch(
    "/api/action-items/{item_id}",
    response_model=ActionItemOut,
    responses=errors(400, 404, 503, described={400: "the body is not JSON"}),
)
async def update_action_item(
    ctx: Ctx, user: CurrentUser, item_id: OutputId, patch: Annotated[ActionItemPatch, Body()]
) -> ActionItemOut:
    """Mark an action item done (or open again), or correct its text, assignee or due date."""
    audio_uuid, index = _split_id(item_id)
    row = await _owned(ctx, user, audio_uuid)
    try:
        current: StoredOutput = await ctx.store.get_output(audio_uuid, Stage.ACTION_ITEM.value, index)
        data = dict(current.data)
        data.update(patch.model_dump(exclude_unset=True))
        if data.get("status") is None:
            data["status"] = "open"
        if data.get("text") is None:
            data["text"] = current.data.get("text", "")
        updated = await ctx.store.update_output(audio_uuid, Stage.ACTION_ITEM.value, index, data)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no action item {item_id!r}") from None
    return ActionItemOut.of(updated, row.filename)
