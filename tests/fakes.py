"""Test doubles shared by the test suites: an injected clock and a seeded random generator."""

from __future__ import annotations

import random

START = 1_000_000.0
SEED = 20261128


class FakeClock:
    """A clock that only moves when a test moves it; pass it as ``clock=`` to a store."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self.now += seconds
        return self.now

    def set(self, when: float) -> None:
        """Jump to ``when`` exactly (used to land on a stored ``run_at`` without rounding)."""
        if when < self.now:
            raise ValueError("time does not go backwards")
        self.now = when


def seeded_rng(seed: int = SEED) -> random.Random:
    return random.Random(seed)
