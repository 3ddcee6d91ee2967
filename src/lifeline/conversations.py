"""What an operator does with conversations and memories, on this host's store or a running service.

Like :mod:`lifeline.operations`: the CLI is written against :class:`Conversations`;
``--url``/``--token`` choose :class:`RemoteConversations` (the pipeline API, as the token's user
sees it: a superuser everybody's, anybody else their own), otherwise :class:`LocalConversations`
opens the store directly (every user's). Both return the same values, so the tables look the same.

Status, stage states and reprocess follow the rules of :mod:`lifeline.pipeline.conversations`,
the ones the API applies. Deleting locally goes through :class:`lifeline.pipeline.Pipeline`, so a
recording's Qdrant points go with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from lifeline.breakers import CircuitBreakers
from lifeline.config import Settings
from lifeline.domain import Attempt, AttemptOutcome, JobState, LifelineError, NotFound, Stage
from lifeline.operations import ServiceClient
from lifeline.pipeline.conversations import conversation_status, queue_reprocess, stage_states
from lifeline.store.base import RecordingRow, Store, StoredOutput


class NotAvailableRemotely(LifelineError):
    """What the service's API cannot do (the message says what to do instead)."""


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    audio_uuid: str
    user_id: str | None  # None over the API, which does not say
    user_email: str | None
    client_id: str | None
    device_name: str | None
    filename: str | None
    source: str
    created_at: float
    duration_seconds: float
    status: str
    stages: dict[str, str | None]  # each stage's newest job's state (None: no job yet)


@dataclass(frozen=True, slots=True)
class TranscriptSegment:
    start: float
    end: float
    text: str


@dataclass(frozen=True, slots=True)
class TranscriptView:
    text: str
    segments: list[TranscriptSegment]


@dataclass(frozen=True, slots=True)
class MemoryView:
    id: str  # <audio_uuid>:<index>
    audio_uuid: str
    text: str
    category: str | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class ActionItemView:
    id: str
    audio_uuid: str
    text: str
    assignee: str | None
    due: str | None
    status: str
    at_seconds: float | None


@dataclass(frozen=True, slots=True)
class JobView:
    id: int
    queue: str
    state: JobState
    attempts: int
    max_attempts: int
    last_error: str | None
    created_at: float
    updated_at: float
    history: list[Attempt]


@dataclass(frozen=True, slots=True)
class ConversationDetail:
    summary: ConversationSummary
    transcript: TranscriptView | None
    memories: list[MemoryView]
    action_items: list[ActionItemView]
    jobs: list[JobView]  # oldest first


class Conversations(Protocol):
    async def list_conversations(self, *, user: str | None, limit: int) -> list[ConversationSummary]: ...
    async def conversation(self, audio_uuid: str) -> ConversationDetail: ...
    async def delete_conversation(self, audio_uuid: str) -> None: ...
    async def reprocess(self, audio_uuid: str, stage: str) -> int: ...
    async def memories(self, *, query: str | None, user: str | None, limit: int) -> list[MemoryView]: ...
    async def close(self) -> None: ...


class LocalConversations:
    """Straight to the store (same host), every user's conversations."""

    def __init__(self, settings: Settings, store: Store, breakers: CircuitBreakers) -> None:
        self.settings = settings
        self.store = store
        self.breakers = breakers

    async def close(self) -> None:
        """Nothing to close: the store belongs to the caller."""

    async def user_id(self, user: str) -> str:
        """A user given by e-mail (it must exist) or by id (taken as it is: the recordings of a
        deleted account still carry it)."""
        if "@" not in user:
            return user
        found = await self.store.get_user_credentials(user)
        if found is None:
            raise NotFound(f"no user {user!r}")
        return found[0].id

    async def list_conversations(self, *, user: str | None, limit: int) -> list[ConversationSummary]:
        user_id = await self.user_id(user) if user is not None else None
        emails: dict[str, str | None] = {}
        found = []
        for row in await self.store.list_recordings(user_id=user_id, limit=limit):
            try:
                found.append(await self._summary(row, emails))
            except NotFound:
                continue  # deleted meanwhile
        return found

    async def conversation(self, audio_uuid: str) -> ConversationDetail:
        row = await self.store.get_recording(audio_uuid)
        summary = await self._summary(row, {})
        report = await self.store.recording_status(audio_uuid)
        outputs = await self.store.get_outputs(audio_uuid)
        by_stage: dict[str, list[StoredOutput]] = {}
        for out in sorted(outputs, key=lambda o: o.index):
            by_stage.setdefault(out.stage, []).append(out)
        transcripts = by_stage.get(Stage.TRANSCRIPTION.value, [])
        infos = sorted((info for sr in report.stages.values() for info in sr.jobs), key=lambda i: i.job.id)
        return ConversationDetail(
            summary=summary,
            transcript=_transcript(transcripts[0].data) if transcripts else None,
            memories=[_memory(o) for o in by_stage.get(Stage.MEMORY.value, [])],
            action_items=[_action_item(o) for o in by_stage.get(Stage.ACTION_ITEM.value, [])],
            jobs=[
                JobView(
                    id=i.job.id,
                    queue=i.job.queue,
                    state=i.job.state,
                    attempts=i.job.attempts,
                    max_attempts=i.job.max_attempts,
                    last_error=i.job.last_error,
                    created_at=i.job.created_at,
                    updated_at=i.job.updated_at,
                    history=list(i.attempts),
                )
                for i in infos
            ],
        )

    async def delete_conversation(self, audio_uuid: str) -> None:
        # imported here: the stages load the provider clients, which no other command needs
        from lifeline.pipeline import Pipeline

        pipeline = Pipeline(self.settings, self.store, self.breakers)
        try:
            await pipeline.delete_recording(audio_uuid)
        finally:
            await pipeline.aclose()

    async def reprocess(self, audio_uuid: str, stage: str) -> int:
        return await queue_reprocess(self.store, await self.store.get_recording(audio_uuid), stage)

    async def memories(self, *, query: str | None, user: str | None, limit: int) -> list[MemoryView]:
        user_id = await self.user_id(user) if user is not None else None
        words = query.strip() if query else None
        found = await self.store.search_outputs(
            Stage.MEMORY.value, user_id=user_id, query=words or None, limit=limit
        )
        return [_memory(o) for o in found]

    async def _summary(self, row: RecordingRow, emails: dict[str, str | None]) -> ConversationSummary:
        report = await self.store.recording_status(row.audio_uuid)
        email = None
        if row.user_id is not None:
            if row.user_id not in emails:
                try:
                    emails[row.user_id] = (await self.store.get_user(row.user_id)).email
                except NotFound:
                    emails[row.user_id] = None  # a deleted account
            email = emails[row.user_id]
        return ConversationSummary(
            audio_uuid=row.audio_uuid,
            user_id=row.user_id,
            user_email=email,
            client_id=row.client_id,
            device_name=row.device_name,
            filename=row.filename,
            source=row.source,
            created_at=row.created_at,
            duration_seconds=row.duration_seconds,
            status=conversation_status(row, report),
            stages={name: None if s is None else s.value for name, s in stage_states(report).items()},
        )


class RemoteConversations(ServiceClient):
    """The same through a running service's pipeline API, as the token's user sees it."""

    async def list_conversations(self, *, user: str | None, limit: int) -> list[ConversationSummary]:
        _no_user_filter(user)
        data = await self._call("GET", "/api/conversations", params={"limit": limit})
        return [_remote_summary(d) for d in data["items"]]

    async def conversation(self, audio_uuid: str) -> ConversationDetail:
        d = await self._call("GET", f"/api/conversations/{_segment(audio_uuid)}")
        transcript = d.get("transcript")
        return ConversationDetail(
            summary=_remote_summary(d),
            transcript=None if transcript is None else _transcript(transcript),
            memories=[_remote_memory(m) for m in d["memories"]],
            action_items=[
                ActionItemView(
                    id=a["id"],
                    audio_uuid=a["audio_uuid"],
                    text=a["text"],
                    assignee=a["assignee"],
                    due=a["due"],
                    status=a["status"],
                    at_seconds=a["at_seconds"],
                )
                for a in d["action_items"]
            ],
            jobs=[
                JobView(
                    id=j["id"],
                    queue=j["queue"],
                    state=JobState(j["state"]),
                    attempts=j["attempts"],
                    max_attempts=j["max_attempts"],
                    last_error=j["last_error"],
                    created_at=j["created_at"],
                    updated_at=j["updated_at"],
                    history=[
                        Attempt(
                            job_id=j["id"],
                            claim=a["claim"],
                            worker_id=a["worker_id"],
                            started_at=a["started_at"],
                            finished_at=a["finished_at"],
                            outcome=AttemptOutcome(a["outcome"]),
                            error=a["error"],
                        )
                        for a in j["attempt_history"]
                    ],
                )
                for j in d["jobs"]
            ],
        )

    async def delete_conversation(self, audio_uuid: str) -> None:
        await self._call("DELETE", f"/api/conversations/{_segment(audio_uuid)}")

    async def reprocess(self, audio_uuid: str, stage: str) -> int:
        data = await self._call(
            "POST",
            f"/api/conversations/{_segment(audio_uuid)}/reprocess",
            params={"from": stage},
        )
        return int(data["job_id"])

    async def memories(self, *, query: str | None, user: str | None, limit: int) -> list[MemoryView]:
        _no_user_filter(user)
        params: dict[str, Any] = {"limit": limit}
        if query:
            params["q"] = query
        data = await self._call("GET", "/api/memories", params=params)
        return [_remote_memory(m) for m in data["items"]]


def _no_user_filter(user: str | None) -> None:
    if user is not None:
        raise NotAvailableRemotely(
            "--user works on the local store only: over --url the service shows a superuser"
            " everybody's conversations and memories, and a user their own (use that user's token)"
        )


def _segment(audio_uuid: str) -> str:
    """``audio_uuid`` as one path segment (a ``/`` or ``?`` in it cannot reach another route)."""
    return quote(audio_uuid, safe="")


def _transcript(data: dict[str, Any]) -> TranscriptView:
    return TranscriptView(
        text=str(data.get("text", "")),
        segments=[
            TranscriptSegment(float(s.get("start", 0.0)), float(s.get("end", 0.0)), str(s.get("text", "")))
            for s in data.get("segments") or []
            if isinstance(s, dict)
        ],
    )


def _memory(out: StoredOutput) -> MemoryView:
    category = out.data.get("category")
    return MemoryView(
        id=f"{out.recording_id}:{out.index}",
        audio_uuid=out.recording_id,
        text=str(out.data.get("text", "")),
        category=None if category is None else str(category),
        updated_at=out.updated_at,
    )


def _action_item(out: StoredOutput) -> ActionItemView:
    data = out.data
    at = data.get("at_seconds")
    return ActionItemView(
        id=f"{out.recording_id}:{out.index}",
        audio_uuid=out.recording_id,
        text=str(data.get("text", "")),
        assignee=None if data.get("assignee") is None else str(data["assignee"]),
        due=None if data.get("due") is None else str(data["due"]),
        status=str(data.get("status") or "open"),
        at_seconds=float(at) if isinstance(at, int | float) else None,
    )


def _remote_summary(d: dict[str, Any]) -> ConversationSummary:
    return ConversationSummary(
        audio_uuid=d["audio_uuid"],
        user_id=None,
        user_email=None,
        client_id=d["client_id"],
        device_name=d["device_name"],
        filename=d["filename"],
        source=d["source"],
        created_at=d["created_at"],
        duration_seconds=d["duration_seconds"],
        status=d["status"],
        stages={stage.value: d["stages"].get(stage.value) for stage in Stage},
    )


def _remote_memory(m: dict[str, Any]) -> MemoryView:
    return MemoryView(
        id=m["id"],
        audio_uuid=m["audio_uuid"],
        text=m["text"],
        category=m["category"],
        updated_at=m["updated_at"],
    )
