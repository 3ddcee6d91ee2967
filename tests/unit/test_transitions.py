"""The job state machine, tested as a table: every (state, action) pair."""

from __future__ import annotations

import itertools

import pytest

from lifeline import InvalidTransition, JobState
from lifeline.domain import CLAIMABLE_STATES
from lifeline.queue.transitions import TRANSITIONS, Action, next_state, sources

P, R, C, F, T, D, X = (
    JobState.PENDING,
    JobState.PROCESSING,
    JobState.COMPLETED,
    JobState.FAILED,
    JobState.RETRY,
    JobState.DEAD_LETTER,
    JobState.CANCELLED,
)
A = Action

# Written out again, independently of the code: a change to the table must change this too.
EXPECTED: dict[tuple[JobState, Action], JobState] = {
    (P, A.CLAIM): R,
    (F, A.CLAIM): R,
    (T, A.CLAIM): R,
    (R, A.COMPLETE): C,
    (R, A.FAIL_TRANSIENT): F,
    (R, A.FAIL_PERMANENT): D,
    (R, A.EXHAUST): D,
    (R, A.DEFER): P,
    (R, A.RELEASE): P,
    (R, A.LEASE_EXPIRED): T,
    (P, A.CANCEL): X,
    (F, A.CANCEL): X,
    (T, A.CANCEL): X,
    (R, A.CANCEL): X,
    (F, A.REQUEUE): P,
    (T, A.REQUEUE): P,
    (D, A.REQUEUE): P,
    (X, A.REQUEUE): P,
}

ALL_PAIRS = list(itertools.product(JobState, Action))


def test_the_table_is_exactly_the_expected_one() -> None:
    assert TRANSITIONS == EXPECTED


@pytest.mark.parametrize(("state", "action"), ALL_PAIRS, ids=[f"{s.value}-{a.value}" for s, a in ALL_PAIRS])
def test_every_state_and_action(state: JobState, action: Action) -> None:
    if (state, action) in EXPECTED:
        assert next_state(state, action) is EXPECTED[(state, action)]
    else:
        with pytest.raises(InvalidTransition, match=f"cannot {action.value} a job that is {state.value}"):
            next_state(state, action)


def test_sources_are_the_guards_of_each_action() -> None:
    for action in Action:
        assert set(sources(action)) == {s for (s, a) in EXPECTED if a is action}
    assert set(sources(Action.CLAIM)) == set(CLAIMABLE_STATES)


def test_a_completed_job_is_final() -> None:
    assert [a for a in Action if (C, a) in TRANSITIONS] == []


def test_every_state_is_reachable_from_pending() -> None:
    reached, frontier = {P}, [P]
    while frontier:
        state = frontier.pop()
        for (src, _), dst in TRANSITIONS.items():
            if src is state and dst not in reached:
                reached.add(dst)
                frontier.append(dst)
    assert reached == set(JobState)


def test_only_processing_ends_an_attempt() -> None:
    worker_actions = {
        A.COMPLETE,
        A.FAIL_TRANSIENT,
        A.FAIL_PERMANENT,
        A.EXHAUST,
        A.DEFER,
        A.RELEASE,
        A.LEASE_EXPIRED,
    }
    for action in worker_actions:
        assert sources(action) == (R,)


def test_enum_values_are_the_database_strings() -> None:
    assert [s.value for s in JobState] == [
        "pending",
        "processing",
        "completed",
        "failed",
        "retry",
        "dead_letter",
        "cancelled",
    ]
    assert JobState("dead_letter") is JobState.DEAD_LETTER
    with pytest.raises(ValueError, match="DEAD_LETTER"):
        JobState("DEAD_LETTER")
