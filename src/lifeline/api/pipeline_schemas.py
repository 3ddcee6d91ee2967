"""Shapes of the pipeline API: uploads, conversations, memories and action items."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lifeline.store.base import StoredOutput


class UploadAccepted(BaseModel):
    filename: str | None
    audio_uuid: str
    duration_seconds: float
    job_id: int
    status: Literal["queued"] = "queued"


class UploadRejected(BaseModel):
    filename: str | None
    error: str
    reason: str = Field(description="not_audio, undecodable, bad_header, truncated, empty, silent, ...")
    status_code: int
    status: Literal["rejected"] = "rejected"


class UploadOut(BaseModel):
    files: list[UploadAccepted | UploadRejected]


class StagesOut(BaseModel):
    """The state of each stage's newest job (``null``: the stage has no job yet)."""

    chunk: str | None = None
    transcription: str | None = None
    memory: str | None = None
    action_item: str | None = None


class ConversationOut(BaseModel):
    audio_uuid: str
    client_id: str | None
    device_name: str | None
    filename: str | None
    source: str = Field(description="upload, stream or api")
    created_at: float
    duration_seconds: float
    status: str = Field(
        description="open (a stream still receiving audio), pending, processing, completed, failed, "
        "dead_letter or cancelled"
    )
    stages: StagesOut
    transcript_preview: str | None


class ConversationPage(BaseModel):
    items: list[ConversationOut]
    total: int = Field(description="conversations in all pages")
    limit: int
    offset: int
    has_more: bool = Field(description="whether a page follows this one (offset + limit)")


class SegmentOut(BaseModel):
    start: float
    end: float
    text: str


class TranscriptOut(BaseModel):
    text: str
    segments: list[SegmentOut]


_UPDATED_AT = "when it was last written: by its stage (a reprocess rewrites it) or by a user's edit"
_FILENAME = "the name of the recording's uploaded file (null: a stream, or a recording made by code)"


class MemoryOut(BaseModel):
    id: str = Field(description="<audio_uuid>:<index>")
    audio_uuid: str
    filename: str | None = Field(description=_FILENAME)
    text: str
    category: str | None
    updated_at: float = Field(description=_UPDATED_AT)

    @classmethod
    def of(cls, out: StoredOutput, filename: str | None) -> MemoryOut:
        data = out.data
        return cls(
            id=f"{out.recording_id}:{out.index}",
            audio_uuid=out.recording_id,
            filename=filename,
            text=str(data.get("text", "")),
            category=_opt_str(data.get("category")),
            updated_at=out.updated_at,
        )


class ActionItemOut(BaseModel):
    id: str = Field(description="<audio_uuid>:<index>")
    audio_uuid: str
    filename: str | None = Field(description=_FILENAME)
    text: str
    assignee: str | None
    due: str | None
    status: str = Field(description="open or done")
    at_seconds: float | None
    updated_at: float = Field(description=_UPDATED_AT)

    @classmethod
    def of(cls, out: StoredOutput, filename: str | None) -> ActionItemOut:
        data = out.data
        at = data.get("at_seconds")
        return cls(
            id=f"{out.recording_id}:{out.index}",
            audio_uuid=out.recording_id,
            filename=filename,
            text=str(data.get("text", "")),
            assignee=_opt_str(data.get("assignee")),
            due=_opt_str(data.get("due")),
            status=cls.status_of(out),
            at_seconds=float(at) if isinstance(at, int | float) else None,
            updated_at=out.updated_at,
        )

    @staticmethod
    def status_of(out: StoredOutput) -> str:
        """open or done (an item without a status, or with null, is open: as the store's
        ``search_outputs(status=...)`` reads it)."""
        status = out.data.get("status")
        return "open" if status is None else str(status)


class ConversationAttemptOut(BaseModel):
    claim: int
    worker_id: str
    started_at: float
    finished_at: float | None
    outcome: str
    error: str | None


class ConversationJobOut(BaseModel):
    id: int
    queue: str
    state: str
    attempts: int
    max_attempts: int
    last_error: str | None
    created_at: float
    updated_at: float
    attempt_history: list[ConversationAttemptOut]


class ConversationDetailOut(ConversationOut):
    transcript: TranscriptOut | None
    memories: list[MemoryOut]
    action_items: list[ActionItemOut]
    jobs: list[ConversationJobOut]


class ReprocessOut(BaseModel):
    audio_uuid: str
    stage: str
    job_id: int


class MemoryPage(BaseModel):
    """One page of memories. There is no total (the store cannot count them without reading them
    all): ``has_more`` says whether another page follows."""

    items: list[MemoryOut]
    limit: int
    offset: int
    has_more: bool = Field(description="whether a page follows this one (offset + limit)")


class ActionItemPage(BaseModel):
    """One page of action items. There is no total (the store cannot count them without reading
    them all): ``has_more`` says whether another page follows. To page, pass ``next_cursor`` as
    ``cursor`` (and no ``offset``): each page then costs the same, however far it is, where a
    growing ``offset`` costs more the further it goes."""

    items: list[ActionItemOut]
    limit: int
    offset: int
    cursor: str | None = Field(description="the cursor this page was asked for (null: the first page)")
    has_more: bool = Field(description="whether more items (of the asked status) follow")
    next_cursor: str | None = Field(
        description="opaque: the ``cursor`` of the next page (null: this is the last page)"
    )


class ActionItemPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["open", "done"] | None = None
    text: str | None = Field(default=None, min_length=1, max_length=2000)
    assignee: str | None = Field(default=None, max_length=200)
    due: str | None = Field(default=None, max_length=200)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
