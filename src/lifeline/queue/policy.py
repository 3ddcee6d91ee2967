"""Per-queue retry policy: how many attempts, how long to back off, how long a lease lasts."""

from __future__ import annotations

import random
from dataclasses import dataclass

from lifeline.domain import Stage


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped.

    Full jitter (a uniform draw between zero and the exponential bound) spreads retries of many
    jobs that failed together, so a recovering service is not hit by all of them at once.
    ``lease`` is how long a claim lasts without a heartbeat before the job counts as stale.
    """

    max_attempts: int = 3
    base_delay: float = 1.0
    max_delay: float = 300.0
    lease: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.lease <= 0:
            raise ValueError("delays must be >= 0 and the lease > 0")

    def backoff_bound(self, attempt: int) -> float:
        """The upper bound of the delay after failed attempt number ``attempt`` (1-based)."""
        exponent = min(max(attempt - 1, 0), 62)
        return float(min(self.max_delay, self.base_delay * (2**exponent)))

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """A delay drawn uniformly from ``[0, backoff_bound(attempt)]``."""
        return rng.uniform(0.0, self.backoff_bound(attempt))


# The limits of the first version of this system, kept as defaults (all configurable).
DEFAULT_POLICIES: dict[str, RetryPolicy] = {
    Stage.CHUNK: RetryPolicy(max_attempts=3, lease=300.0),
    Stage.TRANSCRIPTION: RetryPolicy(max_attempts=3, lease=600.0),
    Stage.MEMORY: RetryPolicy(max_attempts=2, lease=900.0),
    Stage.ACTION_ITEM: RetryPolicy(max_attempts=3, lease=300.0),
}
