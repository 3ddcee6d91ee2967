"""Decisions about jobs that do not depend on the database, shared by every store.

A store asks these functions what should happen and then writes it as one compare-and-set; the
decisions themselves are plain functions, so they are tested without any database.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from lifeline.domain import AttemptOutcome, Job, JobState, RecordingStatus
from lifeline.queue.policy import RetryPolicy
from lifeline.queue.transitions import Action, next_state


@dataclass(frozen=True, slots=True)
class Decision:
    """The state a job moves to, when it becomes claimable again, and how its attempt ended."""

    action: Action
    state: JobState
    run_at: float | None
    outcome: AttemptOutcome
    error: str


def after_failure(
    job: Job, reason: str, *, permanent: bool, policy: RetryPolicy, now: float, rng: random.Random
) -> Decision:
    """A failed attempt: dead-letter permanent failures and exhausted jobs, else back off."""
    if permanent:
        action = Action.FAIL_PERMANENT
        return Decision(action, next_state(job.state, action), None, AttemptOutcome.DEAD_LETTER, reason)
    if job.attempts >= job.max_attempts:
        action = Action.EXHAUST
        error = f"{reason} (attempts exhausted: {job.attempts} of {job.max_attempts})"
        return Decision(action, next_state(job.state, action), None, AttemptOutcome.DEAD_LETTER, error)
    action = Action.FAIL_TRANSIENT
    run_at = now + policy.backoff(job.attempts, rng)
    return Decision(action, next_state(job.state, action), run_at, AttemptOutcome.FAILED, reason)


def after_lost_lease(job: Job, *, policy: RetryPolicy, now: float, rng: random.Random) -> Decision:
    """A worker that held the job is gone: the attempt counts; a job that keeps killing
    its workers is poison and goes to the dead-letter queue."""
    lost = job.lost_count + 1
    times = "time" if lost == 1 else "times"
    if job.attempts >= job.max_attempts:
        action = Action.EXHAUST
        error = f"worker lost {lost} {times}"
        if lost != job.attempts:
            error += f" ({job.attempts} of {job.max_attempts} attempts used)"
        return Decision(action, next_state(job.state, action), None, AttemptOutcome.LOST, error)
    action = Action.LEASE_EXPIRED
    run_at = now + policy.backoff(job.attempts, rng)
    return Decision(
        action, next_state(job.state, action), run_at, AttemptOutcome.LOST, f"worker lost {lost} {times}"
    )


_STATUS_PRECEDENCE: tuple[tuple[frozenset[JobState], RecordingStatus], ...] = (
    (frozenset({JobState.DEAD_LETTER}), RecordingStatus.DEAD_LETTER),
    (frozenset({JobState.PROCESSING}), RecordingStatus.PROCESSING),
    (frozenset({JobState.FAILED}), RecordingStatus.FAILED),
    (frozenset({JobState.PENDING, JobState.RETRY}), RecordingStatus.PENDING),
    (frozenset({JobState.COMPLETED}), RecordingStatus.COMPLETED),
)


def recording_status(states: Iterable[JobState]) -> RecordingStatus:
    """A recording's status from the current state of each of its jobs (every stage, every job).

    A dead letter anywhere wins (someone must look), then work in progress, then waiting work;
    a recording is completed only when every live job is; only cancelled jobs mean cancelled.
    """
    present = set(states)
    for group, status in _STATUS_PRECEDENCE:
        if present & group:
            return status
    return RecordingStatus.CANCELLED if present else RecordingStatus.PENDING
