"""Retry policy: exponential backoff with full jitter, capped."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifeline import RetryPolicy, Stage
from lifeline.queue.policy import DEFAULT_POLICIES


def test_the_bound_doubles_from_the_base_up_to_the_cap() -> None:
    policy = RetryPolicy(base_delay=1.5, max_delay=30.0)
    assert [policy.backoff_bound(a) for a in range(1, 8)] == [1.5, 3.0, 6.0, 12.0, 24.0, 30.0, 30.0]
    assert policy.backoff_bound(0) == policy.backoff_bound(1) == 1.5
    assert policy.backoff_bound(10_000) == 30.0  # huge attempt numbers neither overflow nor grow


@given(
    attempt=st.integers(-5, 500),
    base=st.floats(0, 100),
    cap=st.floats(0, 10_000),
    seed=st.integers(0, 2**32),
)
def test_a_draw_is_within_zero_and_the_bound(attempt: int, base: float, cap: float, seed: int) -> None:
    policy = RetryPolicy(base_delay=base, max_delay=cap)
    bound = policy.backoff_bound(attempt)
    assert 0.0 <= bound <= cap
    assert 0.0 <= policy.backoff(attempt, random.Random(seed)) <= bound


def test_full_jitter_spreads_over_the_whole_range() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=300.0)
    rng = random.Random(1)
    draws = [policy.backoff(4, rng) for _ in range(2000)]  # bound 8 s
    assert min(draws) < 0.1
    assert max(draws) > 7.9
    assert 3.7 < sum(draws) / len(draws) < 4.3  # uniform: the mean is half the bound
    assert sum(d < 4 for d in draws) == pytest.approx(1000, abs=120)


def test_the_same_seed_gives_the_same_delays() -> None:
    policy = RetryPolicy()
    first = [policy.backoff(a, random.Random(9)) for a in range(1, 6)]
    assert first == [policy.backoff(a, random.Random(9)) for a in range(1, 6)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"base_delay": -1.0},
        {"max_delay": -1.0},
        {"lease": 0.0},
        {"lease": -5.0},
    ],
)
def test_nonsense_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_defaults_cover_every_stage() -> None:
    assert set(DEFAULT_POLICIES) == set(Stage)
    assert DEFAULT_POLICIES[Stage.MEMORY].max_attempts == 2
    assert all(p.max_attempts >= 1 and p.lease > 0 for p in DEFAULT_POLICIES.values())
