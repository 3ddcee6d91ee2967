"""The job state machine, in one place, so that stores, workers and the API agree on it.

Every store checks a change against :data:`TRANSITIONS` before it writes it, and the SQL of each
change also guards on the old state (a compare-and-set), so a change that raced with another one
touches no row instead of overwriting it.
"""

from __future__ import annotations

from enum import StrEnum

from lifeline.domain import InvalidTransition, JobState


class Action(StrEnum):
    """What moves a job from one state to another."""

    CLAIM = "claim"
    COMPLETE = "complete"
    FAIL_TRANSIENT = "fail_transient"
    FAIL_PERMANENT = "fail_permanent"
    EXHAUST = "exhaust"  # a transient failure or a lost lease on the last allowed attempt
    DEFER = "defer"
    LEASE_EXPIRED = "lease_expired"
    RELEASE = "release"  # graceful shutdown hands an unfinished job back
    CANCEL = "cancel"
    REQUEUE = "requeue"


P, R, C, F, T, D, X = (
    JobState.PENDING,
    JobState.PROCESSING,
    JobState.COMPLETED,
    JobState.FAILED,
    JobState.RETRY,
    JobState.DEAD_LETTER,
    JobState.CANCELLED,
)

TRANSITIONS: dict[tuple[JobState, Action], JobState] = {
    # claiming: any claimable state
    (P, Action.CLAIM): R,
    (F, Action.CLAIM): R,
    (T, Action.CLAIM): R,
    # the end of an attempt
    (R, Action.COMPLETE): C,
    (R, Action.FAIL_TRANSIENT): F,
    (R, Action.FAIL_PERMANENT): D,
    (R, Action.EXHAUST): D,
    (R, Action.DEFER): P,
    (R, Action.RELEASE): P,
    (R, Action.LEASE_EXPIRED): T,
    # operators
    (P, Action.CANCEL): X,
    (F, Action.CANCEL): X,
    (T, Action.CANCEL): X,
    (R, Action.CANCEL): X,
    (F, Action.REQUEUE): P,
    (T, Action.REQUEUE): P,
    (D, Action.REQUEUE): P,
    (X, Action.REQUEUE): P,
}


def next_state(current: JobState, action: Action) -> JobState:
    """The state ``action`` leads to from ``current``; :class:`InvalidTransition` if none."""
    try:
        return TRANSITIONS[(current, action)]
    except KeyError:
        raise InvalidTransition(f"cannot {action.value} a job that is {current.value}") from None


def sources(action: Action) -> tuple[JobState, ...]:
    """Every state from which ``action`` is allowed (the guard of its compare-and-set)."""
    return tuple(state for (state, act) in TRANSITIONS if act is action)
