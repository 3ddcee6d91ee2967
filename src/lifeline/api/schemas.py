"""The HTTP API's response and request shapes (they are also the OpenAPI schema that
schemathesis checks every response against)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lifeline.domain import Attempt, Job, JobInfo, JobState, RecordingStatus, User
from lifeline.health import HealthCheck, HealthStatus
from lifeline.store.base import QueueStats, RecordingReport, RecoveryStats, Throughput


class ErrorOut(BaseModel):
    """The body of every error response except 422 (whose body is FastAPI's validation error)."""

    detail: str


class ReadinessOut(BaseModel):
    ready: bool


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth2 token type, not a secret)


class UserOut(BaseModel):
    id: str
    email: str
    display_name: str | None
    is_active: bool
    is_superuser: bool
    is_verified: bool = True  # Friend-Lite clients read it

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=user.id,
            email=user.email,
            display_name=user.display_name,
            is_active=user.is_active,
            is_superuser=user.is_superuser,
        )


# no "@", control characters or whitespace on either side of one "@"; spelled out rather than
# with \s, which means different characters to Python, to pydantic's Rust regex and to JSON Schema
_EMAIL_CHAR = r"[^@\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
EMAIL_PATTERN = rf"^{_EMAIL_CHAR}+@{_EMAIL_CHAR}+$"


class UserCreate(BaseModel):
    model_config = ConfigDict(strict=True)  # no "0" or 0 for false: the schema says boolean

    email: str = Field(min_length=3, max_length=254, pattern=EMAIL_PATTERN)
    password: str = Field(min_length=8, max_length=1024)
    display_name: str | None = Field(default=None, max_length=200)
    is_superuser: bool = False


class AttemptOut(BaseModel):
    claim: int
    worker_id: str
    started_at: float
    finished_at: float | None
    duration: float | None
    outcome: str
    error: str | None

    @classmethod
    def of(cls, a: Attempt) -> AttemptOut:
        return cls(
            claim=a.claim,
            worker_id=a.worker_id,
            started_at=a.started_at,
            finished_at=a.finished_at,
            duration=a.duration,
            outcome=a.outcome.value,
            error=a.error,
        )


class JobOut(BaseModel):
    """A job as the API shows it: its payload is left out (it may hold user content)."""

    id: int
    queue: str
    state: JobState
    priority: int
    attempts: int
    max_attempts: int
    lost_count: int
    run_at: float
    created_at: float
    updated_at: float
    finished_at: float | None
    recording_id: str | None
    client_id: str | None
    user_id: str | None
    last_error: str | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(
            id=job.id,
            queue=job.queue,
            state=job.state,
            priority=job.priority,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            lost_count=job.lost_count,
            run_at=job.run_at,
            created_at=job.created_at,
            updated_at=job.updated_at,
            finished_at=job.finished_at,
            recording_id=job.recording_id,
            client_id=job.client_id,
            user_id=job.user_id,
            last_error=job.last_error,
        )


class JobDetailOut(JobOut):
    attempt_history: list[AttemptOut]

    @classmethod
    def of_info(cls, info: JobInfo) -> JobDetailOut:
        base = JobOut.of(info.job).model_dump()
        return cls(**base, attempt_history=[AttemptOut.of(a) for a in info.attempts])


class JobPage(BaseModel):
    items: list[JobOut]
    limit: int
    offset: int


class QueueStatsOut(BaseModel):
    queue: str
    counts: dict[str, int]
    total: int
    oldest_pending_age: float | None
    paused: bool
    pause_reason: str | None
    completed_last_minute: int
    completed_last_5_minutes: int
    blocked_by: str | None = None  # not claimed because a breaker its stage needs is open

    @classmethod
    def of(cls, q: QueueStats) -> QueueStatsOut:
        return cls(
            queue=q.queue,
            counts={s.value: n for s, n in q.counts.items()},
            total=q.total,
            oldest_pending_age=q.oldest_pending_age,
            paused=q.paused,
            pause_reason=q.pause_reason,
            completed_last_minute=q.completed_last_minute,
            completed_last_5_minutes=q.completed_last_5_minutes,
            blocked_by=q.blocked_by,
        )


class PersistentQueueOut(QueueStatsOut):
    recent_failures: list[JobOut] = []


class StageOut(BaseModel):
    stage: str
    state: JobState | None
    jobs: list[JobDetailOut]


class PipelineStatusOut(BaseModel):
    audio_uuid: str
    status: RecordingStatus
    user_id: str | None
    client_id: str | None
    created_at: float | None
    last_error: str | None
    stages: dict[str, StageOut]

    @classmethod
    def of(cls, r: RecordingReport) -> PipelineStatusOut:
        return cls(
            audio_uuid=r.audio_uuid,
            status=r.status,
            user_id=r.user_id,
            client_id=r.client_id,
            created_at=r.created_at,
            last_error=r.last_error,
            stages={
                name: StageOut(
                    stage=name,
                    state=stage.state,
                    jobs=[JobDetailOut.of_info(info) for info in stage.jobs],
                )
                for name, stage in r.stages.items()
            },
        )


class CountsOut(BaseModel):
    counts: dict[str, int]
    total: int


class ClientStatsOut(CountsOut):
    client_id: str


class RecoveryStatsOut(BaseModel):
    scope: str  # "all" for a superuser, "own" for a user (counts from their own jobs)
    runs: int
    attempted: int
    successful: int
    requeued: int
    escalated: int
    last_run_at: float | None
    last_recovered: int

    @classmethod
    def of(cls, s: RecoveryStats, scope: str) -> RecoveryStatsOut:
        return cls(
            scope=scope,
            runs=s.runs,
            attempted=s.attempted,
            successful=s.successful,
            requeued=s.requeued,
            escalated=s.escalated,
            last_run_at=s.last_run_at,
            last_recovered=s.last_recovered,
        )


class ThroughputOut(BaseModel):
    """Completed jobs per stage per time bucket, oldest bucket first, every bucket listed."""

    scope: str = Field(description='"all" for a superuser, "own" for a user (their own jobs only)')
    start: float = Field(description="the first bucket's start (Unix seconds, a multiple of bucket_seconds)")
    bucket_seconds: int = Field(
        description="each bucket's length; bucket i starts at start + i * bucket_seconds"
    )
    buckets: int = Field(description="how many buckets each stage has; the last one holds now")
    queues: dict[str, list[int]] = Field(description="per stage, the jobs completed in each bucket")

    @classmethod
    def of(cls, t: Throughput, scope: str, queues: tuple[str, ...]) -> ThroughputOut:
        return cls(
            scope=scope,
            start=t.start,
            bucket_seconds=t.bucket_seconds,
            buckets=t.buckets,
            queues={q: t.counts.get(q, [0] * t.buckets) for q in queues},
        )


class RecoveryResultOut(BaseModel):
    queue: str
    found: int
    requeued: list[int]
    escalated: list[int]


class ActionResultOut(BaseModel):
    ok: bool = True
    message: str
    count: int | None = None


class CleanupOut(BaseModel):
    jobs_deleted: int
    attempts_deleted: int
    dead_letters_purged: int


class SystemOverviewOut(BaseModel):
    queues: dict[str, QueueStatsOut]
    recovery: RecoveryStatsOut
    circuit_breakers: list[dict[str, Any]]
    health: dict[str, Any]


class HealthOut(BaseModel):
    status: str
    components: dict[str, dict[str, Any]]


class HealthCheckOut(BaseModel):
    """One check of a service as the monitor recorded it."""

    checked_at: float = Field(description="when the check finished (Unix seconds)")
    status: HealthStatus
    latency_ms: float | None = Field(description="time until the answer; null when there was none")
    error: str | None

    @classmethod
    def of(cls, check: HealthCheck) -> HealthCheckOut:
        latency = None if check.latency is None else round(check.latency * 1000, 2)
        return cls(checked_at=check.checked_at, status=check.status, latency_ms=latency, error=check.error)


class HealthHistoryOut(BaseModel):
    service: str
    checks: list[HealthCheckOut] = Field(description="the latest checks, oldest first")
