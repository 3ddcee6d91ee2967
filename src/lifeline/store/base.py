"""The store interface: what the queue, the tracker and the recovery manager need of a database.

It is drawn by what it does, not by how: each implementation (SQLite, later PostgreSQL) keeps its
SQL to itself, and the conformance suite in ``tests/conformance`` runs the same tests on each.
"""

from __future__ import annotations

import abc
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

from lifeline.breakers import BreakerChange, BreakerRecord, Transition
from lifeline.domain import (
    JSON,
    Job,
    JobInfo,
    JobState,
    NextJob,
    Output,
    RecordingStatus,
    User,
)
from lifeline.health import HealthCheck, HealthEvent, ServiceHealth
from lifeline.queue.policy import RetryPolicy

T = TypeVar("T")


def dumps_json(value: Any) -> str:
    """JSON as every store writes it: compact, UTF-8 kept as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue at a glance."""

    queue: str
    counts: dict[JobState, int]
    oldest_pending_age: float | None
    paused: bool
    pause_reason: str | None
    completed_last_minute: int
    completed_last_5_minutes: int
    # why workers do not claim the queue although it is not paused: a breaker its stage needs is
    # open (filled in by ``CircuitBreakers.annotate``; the store itself leaves it None)
    blocked_by: str | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# The most buckets one throughput query may ask for (a week of minutes is 10,080).
MAX_THROUGHPUT_BUCKETS = 20_000


@dataclass(frozen=True, slots=True)
class Throughput:
    """Completed jobs per queue per time bucket, dense: every bucket is there, empty ones as 0.

    ``counts[queue][i]`` is the number of jobs of ``queue`` that completed in
    ``[start + i * bucket_seconds, start + (i + 1) * bucket_seconds)``. Buckets are aligned to
    multiples of ``bucket_seconds`` since the epoch (so a minute stays the same minute from one
    poll to the next), the first one is the bucket that holds ``since`` and the last one the bucket
    that holds the store's now (still filling). Every configured queue is listed, with zeros when
    nothing completed in it.
    """

    start: float
    bucket_seconds: int
    buckets: int
    counts: dict[str, list[int]]

    def bucket_starts(self) -> list[float]:
        return [self.start + i * self.bucket_seconds for i in range(self.buckets)]

    def points(self, queue: str) -> list[tuple[float, int]]:
        """(bucket start, completed jobs) of one queue, oldest first."""
        return list(zip(self.bucket_starts(), self.counts[queue], strict=True))


def throughput_frame(since: float, bucket_seconds: int, now: float) -> tuple[float, int]:
    """The first bucket's start and the number of buckets from ``since`` to ``now``."""
    if isinstance(bucket_seconds, bool) or not isinstance(bucket_seconds, int) or bucket_seconds < 1:
        raise ValueError("bucket_seconds must be a positive integer")
    first = math.floor(since / bucket_seconds)
    last = math.floor(now / bucket_seconds)
    buckets = max(0, last - first + 1)
    if buckets > MAX_THROUGHPUT_BUCKETS:
        raise ValueError(f"at most {MAX_THROUGHPUT_BUCKETS} buckets; ask for a shorter span or wider buckets")
    return float(first * bucket_seconds), buckets


def fill_throughput(
    start: float,
    bucket_seconds: int,
    buckets: int,
    queues: Iterable[str],
    rows: Iterable[tuple[str, int, int]],
) -> Throughput:
    """A :class:`Throughput` from ``(queue, bucket index, count)`` rows (indexes out of range dropped)."""
    counts = {q: [0] * buckets for q in queues}
    for queue, index, n in rows:
        series = counts.setdefault(queue, [0] * buckets)
        if 0 <= index < buckets:
            series[index] += n
    return Throughput(start=start, bucket_seconds=bucket_seconds, buckets=buckets, counts=counts)


@dataclass(frozen=True, slots=True)
class StageReport:
    """One stage of one recording: its jobs (newest last)."""

    stage: str
    jobs: list[JobInfo]

    @property
    def state(self) -> JobState | None:
        return self.jobs[-1].job.state if self.jobs else None


@dataclass(frozen=True, slots=True)
class RecordingReport:
    """Every stage of one recording and the overall status derived from them."""

    audio_uuid: str
    user_id: str | None
    client_id: str | None
    created_at: float | None
    status: RecordingStatus
    stages: dict[str, StageReport]
    last_error: str | None


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What one recovery pass found and did."""

    found: int = 0
    requeued: list[int] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)

    @property
    def recovered(self) -> int:
        return len(self.requeued) + len(self.escalated)


@dataclass(frozen=True, slots=True)
class RecoveryStats:
    """The recovery manager's counters since the database was created (shared by all processes)."""

    runs: int
    attempted: int
    successful: int
    requeued: int
    escalated: int
    last_run_at: float | None
    last_recovered: int


@dataclass(frozen=True, slots=True)
class CleanupReport:
    jobs_deleted: int
    attempts_deleted: int


@dataclass(frozen=True, slots=True)
class StoredOutput:
    recording_id: str
    stage: str
    index: int
    data: JSON
    job_id: int | None
    revision: int
    updated_at: float


@dataclass(frozen=True, slots=True)
class OutputKey:
    """Where an output stands in :meth:`Store.search_outputs`' order (its recording's
    ``created_at``, newest first, ``None`` last; then ``recording_id``; then ``index``).

    Pass the last result's :attr:`FoundOutput.key` as ``after`` to read the next page: it starts
    right after that output (even if the output was deleted meanwhile), and costs the same as the
    first page however far it is."""

    created_at: float | None
    recording_id: str
    index: int


@dataclass(frozen=True, slots=True)
class FoundOutput(StoredOutput):
    """An output found by :meth:`Store.search_outputs`, with what it read of its recording (in the
    same statement): ``filename`` and ``created_at`` (both ``None`` if the recording is gone)."""

    filename: str | None
    created_at: float | None

    @classmethod
    def of(cls, output: StoredOutput, filename: str | None, created_at: float | None) -> FoundOutput:
        return cls(
            output.recording_id,
            output.stage,
            output.index,
            output.data,
            output.job_id,
            output.revision,
            output.updated_at,
            filename,
            created_at,
        )

    @property
    def key(self) -> OutputKey:
        return OutputKey(self.created_at, self.recording_id, self.index)


@dataclass(frozen=True, slots=True)
class RecordingRow:
    """One recording as stored: who made it, where it came from, how much audio it holds.

    ``source`` is ``upload`` (a file sent to /api/audio/upload), ``stream`` (a WebSocket
    conversation) or ``api`` (created by code, no audio required). The audio columns are kept up to
    date by :meth:`Store.append_audio` in the same transaction that stores the chunk.

    ``closed_at`` is when the recording was handed to the pipeline: the creation time of the first
    job ever inserted for it (set in that job's transaction, by every path that inserts jobs), or
    ``None`` while it has had none. It is never cleared: deleting its jobs (a purge of dead
    letters, retention) does not make a finished recording unfinished again.
    """

    audio_uuid: str
    user_id: str | None
    client_id: str | None
    created_at: float
    source: str
    device_name: str | None
    filename: str | None
    audio_bytes: int
    audio_chunks: int
    last_audio_at: float | None
    closed_at: float | None

    @property
    def duration_seconds(self) -> float:
        """Seconds of audio (16 kHz mono s16le: 32,000 bytes a second)."""
        return self.audio_bytes / 32000.0


@dataclass(frozen=True, slots=True)
class RecordingTotals:
    """Every recording in the store at once (for the metrics): how many there are of each source,
    how many are still open (``closed_at`` is ``None``: a live stream or an upload being stored, or
    one whose connection or server died before it was handed over), and how many bytes of audio
    they hold."""

    by_source: dict[str, int]
    open: int
    audio_bytes: int

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio stored (16 kHz mono s16le: 32,000 bytes a second)."""
        return self.audio_bytes / 32000.0


@dataclass(frozen=True, slots=True)
class LoginFailures:
    key: str
    failures: int
    first_at: float
    last_at: float


@dataclass(frozen=True, slots=True)
class AttemptMetric:
    """Attempts of one queue that ended with one outcome and fell in one duration bucket."""

    queue: str
    outcome: str
    bucket: int
    count: int
    duration_sum: float


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    worker_id: str
    hostname: str
    pid: int
    queues: list[str]
    started_at: float
    heartbeat_at: float
    stopped_at: float | None


class Store(abc.ABC):
    """Durable jobs, attempts, recordings and outputs behind one async interface.

    Every method that changes state commits before it returns: when ``enqueue`` returns, the job
    is durable at the store's chosen durability level.
    """

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    def policy(self, queue: str) -> RetryPolicy:
        """The retry policy (attempts, backoff, lease) of ``queue``."""

    # -- rows shared by every implementation ------------------------------------------------------
    def _job_values(
        self,
        queue: str,
        payload: JSON,
        *,
        priority: int,
        delay: float,
        max_attempts: int | None,
        recording_id: str | None,
        user_id: str | None,
        client_id: str | None,
        idempotency_key: str | None,
        now: float,
    ) -> tuple[Any, ...]:
        """A new job's column values, in the order of the stores' ``INSERT INTO jobs``."""
        if max_attempts is None:
            max_attempts = self.policy(queue).max_attempts
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        return (
            queue,
            int(priority),
            now + max(0.0, delay),
            dumps_json(payload),
            max_attempts,
            recording_id,
            user_id,
            client_id,
            idempotency_key,
            now,
            now,
        )

    def _next_job_values(self, item: tuple[str, JSON] | NextJob, parent: Job, now: float) -> tuple[Any, ...]:
        """A next stage's job: it belongs to the same recording, user and client as its parent."""
        nxt = item if isinstance(item, NextJob) else NextJob(item[0], item[1])
        return self._job_values(
            nxt.queue,
            nxt.payload,
            priority=nxt.priority,
            delay=nxt.delay,
            max_attempts=None,
            recording_id=parent.recording_id,
            user_id=parent.user_id,
            client_id=parent.client_id,
            idempotency_key=nxt.idempotency_key,
            now=now,
        )

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply migrations."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish what was submitted and release the connections."""

    # -- producing ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue(
        self,
        queue: str,
        payload: JSON,
        *,
        priority: int = 0,
        delay: float = 0.0,
        max_attempts: int | None = None,
        recording_id: str | None = None,
        user_id: str | None = None,
        client_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Add a job; with an ``idempotency_key`` already used, return the first job's id."""

    @abc.abstractmethod
    async def enqueue_many(
        self,
        queue: str,
        payloads: Sequence[JSON],
        *,
        priority: int = 0,
        delay: float = 0.0,
        max_attempts: int | None = None,
        recording_id: str | None = None,
        user_id: str | None = None,
        client_id: str | None = None,
    ) -> list[int]:
        """Add many jobs in one transaction."""

    # -- consuming ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def claim(self, queue: str, *, worker_id: str, lease: float | None = None) -> Job | None:
        """Take the most urgent claimable job, or ``None`` when there is none (or the queue is paused)."""

    @abc.abstractmethod
    async def claim_many(
        self, queue: str, *, worker_id: str, limit: int, lease: float | None = None
    ) -> list[Job]:
        """Take up to ``limit`` jobs in one atomic statement."""

    @abc.abstractmethod
    async def heartbeat(self, job: Job, *, lease: float | None = None) -> None:
        """Extend the lease; :class:`LeaseLost` if the job is no longer ours."""

    @abc.abstractmethod
    async def heartbeat_many(self, jobs: Iterable[Job], *, lease: float | None = None) -> list[int]:
        """Extend several leases at once; returns the ids whose lease was lost."""

    @abc.abstractmethod
    async def complete(
        self,
        job: Job,
        *,
        then: Sequence[tuple[str, JSON] | NextJob] = (),
        outputs: Sequence[Output] = (),
        replace: Sequence[tuple[str, str]] = (),
    ) -> list[int]:
        """Complete, write the outputs and enqueue the next jobs in one transaction.

        ``replace`` lists ``(recording_id, stage)`` pairs whose outputs this job replaces as a
        whole: in the same transaction, every output of such a pair whose index is not among
        ``outputs`` is deleted (a re-run that finds fewer memories leaves no stale ones behind).

        Returns the ids of the next jobs. :class:`LeaseLost` (and nothing written) if the job is
        no longer held by the caller.
        """

    @abc.abstractmethod
    async def fail(self, job: Job, reason: str, *, permanent: bool = False) -> JobState:
        """End the attempt as failed: retry with backoff, or dead-letter. Returns the new state."""

    @abc.abstractmethod
    async def defer(self, job: Job, *, seconds: float, reason: str | None = None) -> None:
        """Put the job back without spending an attempt (its dependency is unavailable)."""

    @abc.abstractmethod
    async def release(self, job: Job) -> None:
        """Hand an unfinished job back at shutdown, attempt refunded, claimable at once."""

    # -- operating ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def cancel(self, job_id: int) -> None: ...

    @abc.abstractmethod
    async def requeue(self, job_id: int, *, max_attempts: int | None = None) -> None:
        """Back to pending from dead_letter, failed, retry or cancelled, attempts reset."""

    @abc.abstractmethod
    async def requeue_dead_letters(self, queue: str) -> int: ...

    @abc.abstractmethod
    async def purge_dead_letters(self, queue: str, *, older_than: float = 0.0) -> int: ...

    @abc.abstractmethod
    async def pause(self, queue: str, reason: str | None = None) -> None: ...

    @abc.abstractmethod
    async def resume(self, queue: str) -> None: ...

    @abc.abstractmethod
    async def paused_queues(self) -> dict[str, str | None]: ...

    # -- reading --------------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_job(self, job_id: int) -> JobInfo:
        """The job and its attempts; :class:`NotFound` if there is no such job."""

    @abc.abstractmethod
    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        recording_id: str | None = None,
        user_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Job]:
        """Newest first."""

    @abc.abstractmethod
    async def queue_stats(self, *, user_id: str | None = None) -> dict[str, QueueStats]:
        """Per queue: counts by state, oldest pending age, throughput, pause flag."""

    @abc.abstractmethod
    async def throughput(
        self, *, since: float, bucket_seconds: int = 60, user_id: str | None = None
    ) -> Throughput:
        """Jobs completed per queue per bucket from the bucket that holds ``since`` until now.

        Counted from the finished jobs' index (jobs_finished: a completed row's updated_at is its
        finished_at), so only completions still kept by retention are seen; cancelled and
        dead-lettered jobs are not completions. ``user_id`` counts only that user's jobs. Raises
        ``ValueError`` for a bucket under one second or more than ``MAX_THROUGHPUT_BUCKETS``.
        """

    @abc.abstractmethod
    async def get_outputs(self, recording_id: str, stage: str | None = None) -> list[StoredOutput]: ...

    # -- tracker --------------------------------------------------------------------------------
    @abc.abstractmethod
    async def add_recording(
        self,
        audio_uuid: str,
        *,
        user_id: str | None = None,
        client_id: str | None = None,
        first_job: NextJob | None = None,
        source: str = "api",
        device_name: str | None = None,
        filename: str | None = None,
    ) -> int | None:
        """Record a recording (and, in the same transaction, its first job, whose id is returned)."""

    # -- recordings and their audio ---------------------------------------------------------------
    @abc.abstractmethod
    async def get_recording(self, audio_uuid: str) -> RecordingRow:
        """:class:`NotFound` for an unknown recording."""

    @abc.abstractmethod
    async def list_recordings(
        self, *, user_id: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[RecordingRow]:
        """Newest first (``created_at`` descending); only ``user_id``'s when given."""

    @abc.abstractmethod
    async def count_recordings(self, *, user_id: str | None = None) -> int: ...

    @abc.abstractmethod
    async def append_audio(self, audio_uuid: str, seq: int, pcm: bytes) -> None:
        """Store chunk ``seq`` of the recording's 16 kHz mono s16le audio, durably, as an upsert.

        Writing a ``seq`` again replaces that chunk (a retried write never duplicates audio); the
        recording's ``audio_bytes``/``audio_chunks``/``last_audio_at`` change in the same
        transaction. :class:`NotFound` if the recording does not exist; :class:`Conflict` (nothing
        written) once it is closed (``closed_at``): its pipeline may already have read its audio,
        so audio added later would silently never be transcribed.
        """

    @abc.abstractmethod
    async def read_audio(
        self, audio_uuid: str, *, after_seq: int = -1, limit: int = 64
    ) -> list[tuple[int, bytes]]:
        """Up to ``limit`` chunks with ``seq > after_seq``, in order: page through long audio."""

    @abc.abstractmethod
    async def unfinished_recordings(self, *, idle_before: float, limit: int = 100) -> list[RecordingRow]:
        """Recordings never closed (``closed_at`` is ``None``: no job was ever inserted for them)
        and without audio since ``idle_before`` (by ``last_audio_at``, or ``created_at`` when they
        have none), oldest first: streams whose connection or server died before the conversation
        was handed over, and uploads that never finished. A recording whose jobs were all deleted
        later is still closed, and never listed here."""

    @abc.abstractmethod
    async def delete_recording(self, audio_uuid: str) -> None:
        """The recording, its audio, its outputs, its jobs and their attempts, in one transaction.

        :class:`NotFound` if it does not exist. A worker still running one of its jobs then loses
        its lease (its ``complete`` raises :class:`LeaseLost` and writes nothing).
        """

    @abc.abstractmethod
    async def audio_chunk_sizes(self, audio_uuid: str) -> list[tuple[int, int]]:
        """(seq, size in bytes) of every chunk of the recording's audio, in order, without reading
        the audio itself: where a byte offset lies, to start :meth:`read_audio` at its chunk.
        Empty for an unknown recording (like :meth:`read_audio`)."""

    # -- outputs across recordings ---------------------------------------------------------------
    @abc.abstractmethod
    async def search_outputs(
        self,
        stage: str,
        *,
        user_id: str | None = None,
        query: str | None = None,
        status: str | None = None,
        after: OutputKey | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[FoundOutput]:
        """Outputs of ``stage`` (of ``user_id``'s recordings when given), newest recording first
        and by index within one (outputs whose recording is gone come last), each with its
        recording's filename.

        With ``query``, only outputs whose ``data["text"]`` matches it by full text (every word
        of the query, case-insensitive; SQLite FTS5, PostgreSQL ``to_tsvector``), best match
        first. The query is words, not a query language: quotes and operators are taken as text.

        With ``status``, only outputs whose ``data["status"]`` is ``status``; one without a
        status (absent or null) counts as ``"open"`` (index ``outputs_status``).

        ``after`` (the :attr:`FoundOutput.key` of a previous page's last output) starts the page
        right after that output, by seeking in the indexes rather than reading the pages before
        (keyset paging); ``offset`` then skips that many more. A search with ``query`` is ordered
        by relevance, which has no stable key: ``after`` with ``query`` is a :class:`ValueError`.
        """

    @abc.abstractmethod
    async def get_output(self, recording_id: str, stage: str, index: int) -> StoredOutput:
        """:class:`NotFound` if there is no such output."""

    @abc.abstractmethod
    async def update_output(self, recording_id: str, stage: str, index: int, data: JSON) -> StoredOutput:
        """Replace one output's data (a user's edit), bumping its revision; :class:`NotFound`."""

    @abc.abstractmethod
    async def delete_output(self, recording_id: str, stage: str, index: int) -> None:
        """:class:`NotFound` if there is no such output."""

    @abc.abstractmethod
    async def recording_status(self, audio_uuid: str) -> RecordingReport:
        """Every stage's jobs and the derived status; :class:`NotFound` for an unknown recording."""

    @abc.abstractmethod
    async def client_stats(self, client_id: str, *, user_id: str | None = None) -> dict[JobState, int]:
        """Counts by state of one device's jobs (only ``user_id``'s, when given)."""

    @abc.abstractmethod
    async def user_stats(self, user_id: str) -> dict[JobState, int]: ...

    # -- recovery and retention -----------------------------------------------------------------
    @abc.abstractmethod
    async def recover_expired(
        self, *, queue: str | None = None, job_id: int | None = None, force: bool = False
    ) -> RecoveryReport:
        """One recovery pass over expired leases (and leases of workers known to be dead).

        With ``job_id`` and ``force`` the job is recovered even if its lease has not expired.
        """

    @abc.abstractmethod
    async def recovery_stats(self, *, user_id: str | None = None) -> RecoveryStats:
        """The recovery counters; with ``user_id``, that user's share counted from their jobs."""

    @abc.abstractmethod
    async def cleanup(self, *, completed_older_than: float, batch_size: int = 1000) -> CleanupReport:
        """Delete completed and cancelled jobs (and their attempts) older than the age, in batches."""

    # -- workers --------------------------------------------------------------------------------
    @abc.abstractmethod
    async def register_worker(self, worker_id: str, queues: Sequence[str]) -> None: ...

    @abc.abstractmethod
    async def worker_heartbeat(self, worker_id: str) -> None: ...

    @abc.abstractmethod
    async def unregister_worker(self, worker_id: str) -> None: ...

    @abc.abstractmethod
    async def list_workers(self) -> list[WorkerRecord]: ...

    @abc.abstractmethod
    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:  # noqa: ASYNC109
        """Return when a job may have arrived on one of the queues, or after ``timeout``."""

    # -- breakers and health --------------------------------------------------------------------
    @abc.abstractmethod
    async def breaker_apply(
        self, name: str, fn: Callable[[BreakerRecord | None], BreakerChange[T]], *, keep_events: int = 200
    ) -> T:
        """Change breaker ``name`` atomically for the whole fleet, and return ``fn``'s result.

        In one write transaction: load the row (``None`` if there is none), call ``fn`` (pure, see
        :mod:`lifeline.breakers`), write the record it returns (only if it changed), append its
        transition to the history (the newest ``keep_events`` per breaker are kept).
        """

    @abc.abstractmethod
    async def list_breakers(self) -> list[BreakerRecord]:
        """Every breaker that has a row, by name."""

    @abc.abstractmethod
    async def breaker_events(self, name: str | None = None, *, limit: int = 50) -> list[Transition]:
        """Breaker transitions, newest first (of one breaker, or of all)."""

    @abc.abstractmethod
    async def record_health(self, check: HealthCheck, *, keep: int = 200) -> HealthEvent | None:
        """Keep one health check and update the service's state in one transaction.

        Returns the transition when the service's status changed. The newest ``keep`` checks and
        ``keep`` transitions of each service are kept.
        """

    @abc.abstractmethod
    async def health_states(self) -> list[ServiceHealth]:
        """Each checked service's state, with p50/p95 response times over its kept checks."""

    @abc.abstractmethod
    async def health_history(self, service: str, *, limit: int = 50) -> list[HealthCheck]:
        """The service's latest checks, newest first."""

    @abc.abstractmethod
    async def health_events(self, service: str | None = None, *, limit: int = 50) -> list[HealthEvent]:
        """Health transitions, newest first (of one service, or of all)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """A read and a durable write: the store's own health check. Raises if either fails."""

    # -- users, tokens, logins and metrics --------------------------------------------------------
    @abc.abstractmethod
    async def create_user(
        self,
        email: str,
        password_hash: str,
        *,
        display_name: str | None = None,
        is_superuser: bool = False,
        is_active: bool = True,
    ) -> User:
        """:class:`Conflict` if the e-mail address (case-insensitive) is taken."""

    @abc.abstractmethod
    async def get_user(self, user_id: str) -> User: ...

    @abc.abstractmethod
    async def get_user_credentials(self, email: str) -> tuple[User, str] | None: ...

    @abc.abstractmethod
    async def list_users(self, *, limit: int = 100, offset: int = 0) -> list[User]: ...

    @abc.abstractmethod
    async def count_superusers(self) -> int: ...

    @abc.abstractmethod
    async def delete_user(self, user_id: str) -> None: ...

    @abc.abstractmethod
    async def set_password(self, user_id: str, password_hash: str) -> None: ...

    @abc.abstractmethod
    async def revoke_token(self, token_id: str, expires_at: float) -> None: ...

    @abc.abstractmethod
    async def is_token_revoked(self, token_id: str) -> bool: ...

    @abc.abstractmethod
    async def login_failures(self, keys: Sequence[str]) -> list[LoginFailures]: ...

    @abc.abstractmethod
    async def record_login_failure(self, keys: Sequence[str], *, window: float) -> None: ...

    @abc.abstractmethod
    async def clear_login_failures(self, keys: Sequence[str]) -> None: ...

    @abc.abstractmethod
    async def attempt_metrics(self) -> list[AttemptMetric]:
        """Attempt counts and durations per queue, outcome and histogram bucket."""

    @abc.abstractmethod
    async def recording_totals(self) -> RecordingTotals:
        """Counts of recordings by source, of open ones, and the bytes of audio of all: one
        aggregate over the recordings (no audio is read)."""
