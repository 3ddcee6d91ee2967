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
    total: int
    limit: int
    offset: int


class SegmentOut(BaseModel):
    start: float
    end: float
    text: str


class TranscriptOut(BaseModel):
    text: str
    segments: list[SegmentOut]


class MemoryOut(BaseModel):
    id: str = Field(description="<audio_uuid>:<index>")
    audio_uuid: str
    text: str
    category: str | None
    created_at: float

    @classmethod
    def of(cls, out: StoredOutput) -> MemoryOut:
        data = out.data
        return cls(
            id=f"{out.recording_id}:{out.index}",
            audio_uuid=out.recording_id,
            text=str(data.get("text", "")),
            category=_opt_str(data.get("category")),
            created_at=out.updated_at,
        )


class ActionItemOut(BaseModel):
    id: str = Field(description="<audio_uuid>:<index>")
    audio_uuid: str
    text: str
    assignee: str | None
    due: str | None
    status: str = Field(description="open or done")
    at_seconds: float | None
    created_at: float

    @classmethod
    def of(cls, out: StoredOutput) -> ActionItemOut:
        data = out.data
        at = data.get("at_seconds")
        return cls(
            id=f"{out.recording_id}:{out.index}",
            audio_uuid=out.recording_id,
            text=str(data.get("text", "")),
            assignee=_opt_str(data.get("assignee")),
            due=_opt_str(data.get("due")),
            status=str(data.get("status") or "open"),
            at_seconds=float(at) if isinstance(at, int | float) else None,
            created_at=out.updated_at,
        )


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
    items: list[MemoryOut]


class ActionItemPage(BaseModel):
    items: list[ActionItemOut]


class ActionItemPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["open", "done"] | None = None
    text: str | None = Field(default=None, min_length=1, max_length=2000)
    assignee: str | None = Field(default=None, max_length=200)
    due: str | None = Field(default=None, max_length=200)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
