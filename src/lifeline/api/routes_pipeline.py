"""The pipeline API: conversations, their audio, transcripts, memories and action items.

A user sees their own; a superuser sees everybody's. Somebody else's id answers 404, exactly like
an id that does not exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Path, Query, Response, status
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
from lifeline.domain import CLAIMABLE_STATES, JobState, NotFound, Stage, User
from lifeline.store.base import RecordingRow, StoredOutput

router = APIRouter(tags=["pipeline"], responses=AUTHENTICATED)

AudioUuid = Annotated[str, Path(min_length=1, max_length=200, description="a recording", examples=["rec-1"])]
OutputId = Annotated[
    str, Path(min_length=3, max_length=220, description="<audio_uuid>:<index>", examples=["rec-1:0"])
]
Limit = Annotated[int, Query(ge=1, le=200)]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]
PREVIEW_CHARS = 200
_NOT_FOUND = errors(404)
_ACTIVE = (*CLAIMABLE_STATES, JobState.PROCESSING)


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
    has_jobs = any(sr.jobs for sr in report.stages.values())
    status_text = report.status.value if has_jobs else ("open" if row.source == "stream" else "pending")
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
    return ConversationPage(items=items, total=total, limit=limit, offset=offset)


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
        memories=[MemoryOut.of(m) for m in memories],
        action_items=[ActionItemOut.of(a) for a in actions],
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


@router.get(
    "/api/conversations/{audio_uuid}/audio",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}},
            "description": "WAV",
        },
        **errors(404, 503, described={404: "unknown, not yours, or without audio"}),
    },
)
async def conversation_audio(ctx: Ctx, user: CurrentUser, audio_uuid: AudioUuid) -> StreamingResponse:
    """The conversation's audio as a 16 kHz mono 16-bit WAV file, streamed page by page."""
    row = await _owned(ctx, user, audio_uuid)
    if row.audio_bytes <= 0:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"conversation {audio_uuid!r} has no audio")
    total = row.audio_bytes
    store = ctx.store

    async def body() -> AsyncIterator[bytes]:
        yield audio.wav_header(total)
        sent, after = 0, -1
        while sent < total:
            page = await store.read_audio(audio_uuid, after_seq=after, limit=16)
            if not page:
                break
            for seq, pcm in page:
                piece = pcm[: total - sent]
                sent += len(piece)
                after = seq
                if piece:
                    yield piece
        if sent < total:  # deleted while streaming: keep the promised length
            yield bytes(total - sent)

    return StreamingResponse(
        body(),
        media_type="audio/wav",
        headers={
            "Content-Length": str(total + 44),
            "Content-Disposition": f'attachment; filename="{audio_uuid}.wav"',
        },
    )


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


_REQUIRES = {
    Stage.TRANSCRIPTION.value: None,
    Stage.MEMORY.value: Stage.TRANSCRIPTION.value,
    Stage.ACTION_ITEM.value: Stage.TRANSCRIPTION.value,
}


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
    """Re-run one stage of a conversation (keeping the earlier stages' outputs)."""
    row = await _owned(ctx, user, audio_uuid)
    report = await ctx.store.recording_status(audio_uuid)
    stage_report = report.stages.get(from_stage)
    if stage_report is not None and stage_report.state in _ACTIVE:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"{from_stage} of {audio_uuid} is already queued or running"
        )
    needs = _REQUIRES[from_stage]
    if needs is None:
        if row.audio_bytes <= 0:
            raise HTTPException(status.HTTP_409_CONFLICT, f"{audio_uuid} has no audio to transcribe")
        chunk = report.stages.get(Stage.CHUNK.value)
        if chunk is None or chunk.state != JobState.COMPLETED:
            raise HTTPException(status.HTTP_409_CONFLICT, f"{audio_uuid} has not been assembled yet")
    elif not await ctx.store.get_outputs(audio_uuid, needs):
        raise HTTPException(status.HTTP_409_CONFLICT, f"{audio_uuid} has no {needs} yet")
    job_id = await ctx.store.enqueue(
        from_stage, {}, recording_id=audio_uuid, user_id=row.user_id, client_id=row.client_id
    )
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
    """Memories, newest conversation first; with ``q``, those matching every word, best first."""
    query = q.strip() if q else None
    found = await ctx.store.search_outputs(
        Stage.MEMORY.value, user_id=_scope(user), query=query or None, limit=limit, offset=offset
    )
    return MemoryPage(items=[MemoryOut.of(o) for o in found])


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

_SCAN_PAGE = 200


@router.get("/api/action-items", response_model=ActionItemPage, responses=errors(503))
async def list_action_items(
    ctx: Ctx,
    user: CurrentUser,
    status_filter: Annotated[Literal["open", "done"] | None, Query(alias="status")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> ActionItemPage:
    """Action items, newest conversation first; only open or done ones with ``status``."""
    scope = _scope(user)
    if status_filter is None:
        found = await ctx.store.search_outputs(
            Stage.ACTION_ITEM.value, user_id=scope, limit=limit, offset=offset
        )
        return ActionItemPage(items=[ActionItemOut.of(o) for o in found])
    items: list[ActionItemOut] = []
    skipped, position = 0, 0
    while len(items) < limit:
        page = await ctx.store.search_outputs(
            Stage.ACTION_ITEM.value, user_id=scope, limit=_SCAN_PAGE, offset=position
        )
        position += len(page)
        for out in page:
            item = ActionItemOut.of(out)
            if item.status != status_filter:
                continue
            if skipped < offset:
                skipped += 1
                continue
            items.append(item)
            if len(items) == limit:
                break
        if len(page) < _SCAN_PAGE:
            break
    return ActionItemPage(items=items)


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
    await _owned(ctx, user, audio_uuid)
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
    return ActionItemOut.of(updated)
