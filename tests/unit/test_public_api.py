"""The public API is what ``lifeline.__all__`` says; a change to it must be deliberate."""

from __future__ import annotations

import lifeline

PUBLIC = [
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


def test_all_is_pinned() -> None:
    assert lifeline.__all__ == PUBLIC


def test_every_name_is_importable() -> None:
    for name in lifeline.__all__:
        assert getattr(lifeline, name) is not None


def test_errors_share_one_base() -> None:
    errors = [getattr(lifeline, n) for n in PUBLIC if isinstance(getattr(lifeline, n), type)]
    errors = [e for e in errors if issubclass(e, Exception)]
    assert len(errors) == 9
    assert all(issubclass(e, lifeline.LifelineError) for e in errors)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from lifeline import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(PUBLIC)
