"""The vocabulary every layer shares: stages, job states, jobs, outputs and the error hierarchy.

Enum values are exactly the strings stored in the database and shown by the API, so nothing
converts between spellings (the first version of this system failed on `.upper()` look-ups).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


class Stage(enum.StrEnum):
    """The pipeline's stages; each is also the name of its queue."""

    CHUNK = "chunk"
    TRANSCRIPTION = "transcription"
    MEMORY = "memory"
    ACTION_ITEM = "action_item"


class JobState(enum.StrEnum):
    """One job's state.

    ``failed`` means the last attempt failed and the job waits out its backoff before it is
    claimable again; ``retry`` means the job was put back through no fault of its own code (its
    worker was lost, or an operator asked for a retry). Both are claimable once ``run_at`` passes.
    """

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    CANCELLED = "cancelled"


CLAIMABLE_STATES: tuple[JobState, ...] = (JobState.PENDING, JobState.FAILED, JobState.RETRY)


class AttemptOutcome(enum.StrEnum):
    """How one attempt ended; ``running`` while it is under way."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD_LETTER = "dead_letter"
    DEFERRED = "deferred"
    LOST = "lost"
    CANCELLED = "cancelled"
    RELEASED = "released"


class RecordingStatus(enum.StrEnum):
    """A recording's overall status, always derived from its jobs."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD_LETTER = "dead_letter"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one job row. ``lease_owner`` is the claim token every later change checks."""

    id: int
    queue: str
    state: JobState
    payload: JSON
    priority: int
    attempts: int
    max_attempts: int
    run_at: float
    created_at: float
    updated_at: float
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    recording_id: str | None = None
    user_id: str | None = None
    client_id: str | None = None
    idempotency_key: str | None = None
    last_error: str | None = None
    lost_count: int = 0
    claims: int = 0
    finished_at: float | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One row of the audit trail: who ran which claim of a job, when, and how it ended.

    ``claim`` numbers every claim of the job; a deferred claim does not count as an attempt
    (``outcome == deferred``), so ``claim`` may run ahead of the job's ``attempts``.
    """

    job_id: int
    claim: int
    worker_id: str
    started_at: float
    finished_at: float | None
    outcome: AttemptOutcome
    error: str | None

    @property
    def duration(self) -> float | None:
        if self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A job with its attempt history, oldest attempt first."""

    job: Job
    attempts: list[Attempt] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Output:
    """A stage's output, keyed by (recording, stage, index) and written as an upsert.

    Writing the same key twice replaces the data and bumps ``revision``: a re-run after a crash
    replaces rather than duplicates, and the revision shows how often a key was committed.
    """

    recording_id: str
    stage: str
    index: int
    data: JSON


@dataclass(frozen=True, slots=True)
class NextJob:
    """A job to enqueue in the same transaction that completes the current one."""

    queue: str
    payload: JSON
    priority: int = 0
    delay: float = 0.0
    idempotency_key: str | None = None


# ---------------------------------------------------------------------------------------------
# Errors. One base class; the three kinds of failure each have their own type so that control
# flow is by exception type, never by return codes or ``None``.


class LifelineError(Exception):
    """Base of every error Lifeline raises on purpose."""


class ConfigError(LifelineError):
    """A setting is missing or malformed."""


class StoreError(LifelineError):
    """The store could not do what was asked (I/O error, schema problem)."""


class NotFound(LifelineError):
    """The thing asked for does not exist (or is not visible to the caller)."""


class UnknownQueue(NotFound):
    """A queue name that is not configured."""


class InvalidTransition(LifelineError):
    """A state change that the transition table does not allow."""


class LeaseLost(LifelineError):
    """The job is no longer held by this worker: its lease expired and someone else took over."""


class JobFailure(LifelineError):
    """Raised by a job handler; the subclass says which of the three answers applies."""


class TransientError(JobFailure):
    """Worth retrying: connection refused, timeout, HTTP 5xx or 429."""


class PermanentError(JobFailure):
    """Retrying cannot help: bad input, a validation error, HTTP 4xx. Dead-letter at once."""


class JobCancelled(JobFailure):
    """Nothing is left for the job to do (its recording was deleted after it was queued): the job
    is cancelled, which is neither a failure to retry nor a dead letter to look at."""


class DependencyUnavailable(JobFailure):
    """A service the job needs is down (its breaker is open): put back without spending an attempt."""

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class User:
    """An account. The password hash never leaves the store layer in this type."""

    id: str
    email: str
    display_name: str | None
    is_active: bool
    is_superuser: bool
    created_at: float


class Conflict(LifelineError):
    """The change collides with existing data (an e-mail address already registered)."""
