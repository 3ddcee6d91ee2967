"""Lifeline: a self-hosted audio-to-memories backend that never loses a recording.

The public library API is re-exported here; ``tests/unit/test_public_api.py`` pins it.
"""

from __future__ import annotations

from lifeline.domain import (
    Attempt,
    AttemptOutcome,
    DependencyUnavailable,
    InvalidTransition,
    Job,
    JobCancelled,
    JobInfo,
    JobState,
    LeaseLost,
    LifelineError,
    NextJob,
    NotFound,
    Output,
    PermanentError,
    RecordingStatus,
    Stage,
    StoreError,
    TransientError,
)
from lifeline.queue.policy import RetryPolicy
from lifeline.store import Store, connect

__all__ = [
    "Attempt",
    "AttemptOutcome",
    "DependencyUnavailable",
    "InvalidTransition",
    "Job",
    "JobCancelled",
    "JobInfo",
    "JobState",
    "LeaseLost",
    "LifelineError",
    "NextJob",
    "NotFound",
    "Output",
    "PermanentError",
    "RecordingStatus",
    "RetryPolicy",
    "Stage",
    "Store",
    "StoreError",
    "TransientError",
    "connect",
]
