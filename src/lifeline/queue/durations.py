"""The duration histogram's bounds, shared by the store (which counts) and /metrics (which shows)."""

from __future__ import annotations

import bisect

# Seconds. Transcription of an hour of audio can take minutes; a memory job a fraction of a second.
DURATION_BOUNDS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


def bucket_for(seconds: float) -> int:
    """Index of the first bound ``seconds`` fits under; ``len(DURATION_BOUNDS)`` means +Inf."""
    return bisect.bisect_left(DURATION_BOUNDS, max(0.0, seconds))
