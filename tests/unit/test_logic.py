"""Decisions about jobs, made without a database."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from lifeline import AttemptOutcome, InvalidTransition, Job, JobState, RecordingStatus, RetryPolicy
from lifeline.queue.logic import after_failure, after_lost_lease, recording_status
from lifeline.queue.transitions import Action

POLICY = RetryPolicy(max_attempts=3, base_delay=2.0, max_delay=10.0)
NOW = 5_000.0


def running(attempts: int = 1, max_attempts: int = 3, lost: int = 0) -> Job:
    return Job(
        id=1,
        queue="q",
        state=JobState.PROCESSING,
        payload={},
        priority=0,
        attempts=attempts,
        max_attempts=max_attempts,
        run_at=100.0,
        created_at=100.0,
        updated_at=100.0,
        lease_owner="w#1",
        lease_expires_at=NOW + 1,
        lost_count=lost,
        claims=attempts,
    )


def test_a_permanent_failure_dead_letters_at_once() -> None:
    decision = after_failure(
        running(), "bad audio", permanent=True, policy=POLICY, now=NOW, rng=random.Random(0)
    )
    assert (decision.action, decision.state, decision.run_at) == (
        Action.FAIL_PERMANENT,
        JobState.DEAD_LETTER,
        None,
    )
    assert (decision.outcome, decision.error) == (AttemptOutcome.DEAD_LETTER, "bad audio")


@pytest.mark.parametrize("attempts", [1, 2])
def test_a_transient_failure_backs_off(attempts: int) -> None:
    decision = after_failure(
        running(attempts), "timeout", permanent=False, policy=POLICY, now=NOW, rng=random.Random(3)
    )
    assert (decision.action, decision.state, decision.outcome) == (
        Action.FAIL_TRANSIENT,
        JobState.FAILED,
        AttemptOutcome.FAILED,
    )
    assert decision.run_at == NOW + POLICY.backoff(attempts, random.Random(3))
    assert NOW <= decision.run_at <= NOW + POLICY.backoff_bound(attempts)
    assert decision.error == "timeout"


def test_the_last_transient_failure_exhausts_the_job() -> None:
    decision = after_failure(
        running(3), "timeout", permanent=False, policy=POLICY, now=NOW, rng=random.Random(0)
    )
    assert (decision.action, decision.state, decision.run_at) == (Action.EXHAUST, JobState.DEAD_LETTER, None)
    assert decision.error == "timeout (attempts exhausted: 3 of 3)"


def test_a_failure_of_a_job_not_processing_is_refused() -> None:
    for state in (JobState.PENDING, JobState.COMPLETED):
        job = replace(running(), state=state)
        with pytest.raises(InvalidTransition):
            after_failure(job, "x", permanent=False, policy=POLICY, now=NOW, rng=random.Random(0))
        with pytest.raises(InvalidTransition):
            after_lost_lease(job, policy=POLICY, now=NOW, rng=random.Random(0))


def test_a_lost_lease_retries_and_counts() -> None:
    decision = after_lost_lease(running(1), policy=POLICY, now=NOW, rng=random.Random(5))
    assert (decision.action, decision.state, decision.outcome) == (
        Action.LEASE_EXPIRED,
        JobState.RETRY,
        AttemptOutcome.LOST,
    )
    assert decision.run_at == NOW + POLICY.backoff(1, random.Random(5))
    assert decision.error == "worker lost 1 time"
    assert after_lost_lease(running(2, lost=1), policy=POLICY, now=NOW, rng=random.Random(5)).error == (
        "worker lost 2 times"
    )


def test_a_job_that_keeps_killing_its_workers_is_poison() -> None:
    decision = after_lost_lease(running(3, lost=2), policy=POLICY, now=NOW, rng=random.Random(0))
    assert (decision.action, decision.state, decision.run_at) == (Action.EXHAUST, JobState.DEAD_LETTER, None)
    assert (decision.outcome, decision.error) == (AttemptOutcome.LOST, "worker lost 3 times")
    mixed = after_lost_lease(running(3, lost=0), policy=POLICY, now=NOW, rng=random.Random(0))
    assert mixed.error == "worker lost 1 time (3 of 3 attempts used)"


S = JobState


@pytest.mark.parametrize(
    ("states", "status"),
    [
        ([], RecordingStatus.PENDING),
        ([S.PENDING], RecordingStatus.PENDING),
        ([S.RETRY], RecordingStatus.PENDING),
        ([S.COMPLETED, S.PENDING], RecordingStatus.PENDING),
        ([S.COMPLETED, S.PROCESSING, S.PENDING], RecordingStatus.PROCESSING),
        ([S.COMPLETED, S.FAILED, S.PENDING], RecordingStatus.FAILED),
        ([S.PROCESSING, S.FAILED], RecordingStatus.PROCESSING),
        ([S.COMPLETED, S.COMPLETED], RecordingStatus.COMPLETED),
        ([S.COMPLETED, S.CANCELLED], RecordingStatus.COMPLETED),
        ([S.CANCELLED, S.CANCELLED], RecordingStatus.CANCELLED),
        ([S.COMPLETED, S.PROCESSING, S.DEAD_LETTER], RecordingStatus.DEAD_LETTER),
        ([S.DEAD_LETTER, S.CANCELLED], RecordingStatus.DEAD_LETTER),
    ],
)
def test_recording_status_precedence(states: list[JobState], status: RecordingStatus) -> None:
    assert recording_status(states) is status
    assert recording_status(reversed(states)) is status  # order does not matter


def test_recording_status_never_says_completed_for_nothing() -> None:
    assert recording_status([]) is not RecordingStatus.COMPLETED
