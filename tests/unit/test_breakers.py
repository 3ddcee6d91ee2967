"""The breaker logic as pure functions: every transition, the window, the probe lease, what counts."""

from __future__ import annotations

import httpx
import pytest

from lifeline.breakers import (
    BreakerConfig,
    BreakerRecord,
    BreakerState,
    Outcome,
    Transition,
    acquire,
    blocking_reason,
    classify,
    health_recovered,
    initial,
    record_outcome,
    reset,
)
from lifeline.domain import DependencyUnavailable, PermanentError, TransientError

CONFIG = BreakerConfig(window=10, min_calls=5, failure_rate=0.5, slow_call=2.0, open_base=30, open_max=600)
T0 = 1000.0


def feed(
    rec: BreakerRecord, outcomes: str, *, now: float = T0, config: BreakerConfig = CONFIG
) -> BreakerRecord:
    """Record outcomes given as a string: s success, f failure, n neutral."""
    kinds = {"s": Outcome.SUCCESS, "f": Outcome.FAILURE, "n": Outcome.NEUTRAL}
    for mark in outcomes:
        rec, _, _ = record_outcome(rec, config, now=now, token="t", outcome=kinds[mark], error="boom")
    return rec


def opened(now: float = T0, config: BreakerConfig = CONFIG) -> BreakerRecord:
    rec = feed(initial("asr"), "fffff", now=now, config=config)
    assert rec.state is BreakerState.OPEN
    return rec


# -- closed -> open -----------------------------------------------------------------------------


def test_a_closed_breaker_permits_every_call() -> None:
    rec, transition, permit = acquire(initial("asr"), CONFIG, now=T0, token="a")
    assert permit.allowed
    assert not permit.probe
    assert transition is None
    assert rec == initial("asr")


def test_it_opens_only_once_the_minimum_number_of_calls_is_known() -> None:
    rec = feed(initial("asr"), "ffff")
    assert rec.state is BreakerState.CLOSED
    assert rec.window == "ffff"
    rec, transition, _ = record_outcome(
        rec, CONFIG, now=T0 + 1, token="t", outcome=Outcome.FAILURE, error="refused"
    )
    assert rec.state is BreakerState.OPEN
    assert rec.opened_at == T0 + 1
    assert rec.open_until == T0 + 1 + 30
    assert rec.consecutive_opens == 1
    assert rec.last_error == "refused"
    assert transition is not None
    assert (transition.from_state, transition.to_state) == (BreakerState.CLOSED, BreakerState.OPEN)
    assert "5 of the last 5 calls failed" in transition.reason
    assert "refused" in transition.reason


@pytest.mark.parametrize(
    ("outcomes", "state"),
    [
        ("sfsfsfsf", BreakerState.OPEN),  # 4 of 8 = 50 %: reaches the threshold
        ("ssfsfsfsf", BreakerState.CLOSED),  # 4 of 9 < 50 %
        ("ssssssssssffff", BreakerState.CLOSED),  # the window (10) keeps 6 s + 4 f: 40 %
        ("ssssssssssfffff", BreakerState.OPEN),  # 5 s + 5 f in the window: 50 %
        ("nnnnnnnnnnffff", BreakerState.CLOSED),  # neutral outcomes do not count as calls
    ],
)
def test_the_failure_rate_over_the_sliding_window_decides(outcomes: str, state: BreakerState) -> None:
    assert feed(initial("asr"), outcomes).state is state


def test_the_window_slides() -> None:
    rec = feed(initial("asr"), "f" + "s" * 12)
    assert rec.window == "s" * 10
    assert rec.calls == 10
    assert rec.failure_rate == 0.0


def test_neutral_outcomes_are_neither_success_nor_failure() -> None:
    rec = feed(initial("asr"), "ffff")
    assert feed(rec, "nnnnnnnn").window == "ffff"


def test_a_slow_success_counts_as_a_failure() -> None:
    rec = feed(initial("asr"), "ffff")
    rec, transition, _ = record_outcome(rec, CONFIG, now=T0, token="t", outcome=Outcome.SUCCESS, duration=2.5)
    assert rec.state is BreakerState.OPEN
    assert rec.last_error is not None
    assert "slow call" in rec.last_error
    assert transition is not None
    fast, _, _ = record_outcome(
        initial("asr"), CONFIG, now=T0, token="t", outcome=Outcome.SUCCESS, duration=1.9
    )
    assert fast.window == "s"


# -- open -> half-open -> closed / open --------------------------------------------------------


def test_an_open_breaker_refuses_until_its_wait_is_over() -> None:
    rec = opened()
    same, transition, permit = acquire(rec, CONFIG, now=T0 + 10, token="a")
    assert not permit.allowed
    assert permit.retry_after == pytest.approx(20)
    assert "open" in permit.reason
    assert "boom" in permit.reason
    assert same == rec
    assert transition is None


def test_after_the_wait_the_first_caller_takes_the_probe_and_the_others_wait() -> None:
    rec = opened()
    rec, transition, first = acquire(rec, CONFIG, now=T0 + 30, token="a")
    assert first.allowed
    assert first.probe
    assert rec.state is BreakerState.HALF_OPEN
    assert rec.probe_owner == "a"
    assert rec.probe_expires_at == T0 + 30 + CONFIG.probe_lease
    assert transition is not None
    assert transition.to_state is BreakerState.HALF_OPEN
    after, none, second = acquire(rec, CONFIG, now=T0 + 31, token="b")
    assert not second.allowed
    assert second.retry_after == CONFIG.probe_retry
    assert "probe" in second.reason
    assert (after, none) == (rec, None)


def test_a_successful_probe_closes_the_breaker_and_forgets_the_window() -> None:
    rec, _, _ = acquire(opened(), CONFIG, now=T0 + 30, token="a")
    rec, transition, _ = record_outcome(
        rec, CONFIG, now=T0 + 31, token="a", outcome=Outcome.SUCCESS, duration=0.1
    )
    assert rec.state is BreakerState.CLOSED
    assert rec.window == ""
    assert rec.consecutive_opens == 0
    assert rec.probe_owner is None
    assert transition == Transition(
        "asr", BreakerState.HALF_OPEN, BreakerState.CLOSED, "probe succeeded", T0 + 31
    )


def test_a_failed_probe_reopens_with_a_doubled_wait() -> None:
    rec, _, _ = acquire(opened(), CONFIG, now=T0 + 30, token="a")
    rec, transition, _ = record_outcome(
        rec, CONFIG, now=T0 + 31, token="a", outcome=Outcome.FAILURE, error="500"
    )
    assert rec.state is BreakerState.OPEN
    assert rec.consecutive_opens == 2
    assert rec.open_until == T0 + 31 + 60
    assert rec.probe_owner is None
    assert transition is not None
    assert transition.reason == "probe failed: 500"


@pytest.mark.parametrize(
    ("opens", "wait"), [(1, 30), (2, 60), (3, 120), (4, 240), (5, 480), (6, 600), (50, 600)]
)
def test_the_open_wait_doubles_up_to_the_maximum(opens: int, wait: float) -> None:
    assert CONFIG.open_wait(opens) == wait


def test_consecutive_failed_probes_keep_doubling_until_the_cap() -> None:
    rec, now, waits = opened(), T0, []
    for _ in range(7):
        assert rec.open_until is not None
        waits.append(rec.open_until - now)
        now = rec.open_until
        rec, _, _ = acquire(rec, CONFIG, now=now, token="p")
        rec, _, _ = record_outcome(rec, CONFIG, now=now, token="p", outcome=Outcome.FAILURE)
    assert waits == [30, 60, 120, 240, 480, 600, 600]


def test_a_neutral_probe_frees_the_lease_for_the_next_caller() -> None:
    rec, _, _ = acquire(opened(), CONFIG, now=T0 + 30, token="a")
    rec, transition, _ = record_outcome(rec, CONFIG, now=T0 + 31, token="a", outcome=Outcome.NEUTRAL)
    assert rec.state is BreakerState.HALF_OPEN
    assert rec.probe_owner is None
    assert transition is None
    rec, _, permit = acquire(rec, CONFIG, now=T0 + 32, token="b")
    assert permit.probe
    assert rec.probe_owner == "b"


def test_a_hung_probe_loses_its_lease_and_its_late_answer_decides_nothing() -> None:
    rec, _, _ = acquire(opened(), CONFIG, now=T0 + 30, token="hung")
    expiry = T0 + 30 + CONFIG.probe_lease
    _, _, early = acquire(rec, CONFIG, now=expiry - 1, token="b")
    assert not early.allowed
    rec, _, permit = acquire(rec, CONFIG, now=expiry, token="b")
    assert permit.probe
    assert rec.probe_owner == "b"
    late, transition, _ = record_outcome(rec, CONFIG, now=expiry + 1, token="hung", outcome=Outcome.FAILURE)
    assert (late, transition) == (rec, None)
    rec, transition, _ = record_outcome(rec, CONFIG, now=expiry + 1, token="b", outcome=Outcome.SUCCESS)
    assert rec.state is BreakerState.CLOSED


def test_late_results_of_calls_made_before_the_opening_change_nothing() -> None:
    rec = opened()
    assert record_outcome(rec, CONFIG, now=T0 + 1, token="old", outcome=Outcome.SUCCESS) == (rec, None, rec)
    assert record_outcome(rec, CONFIG, now=T0 + 1, token="old", outcome=Outcome.FAILURE) == (rec, None, rec)


# -- by hand, and by the health monitor ----------------------------------------------------------


def test_a_manual_reset_closes_and_is_recorded() -> None:
    rec, transition, _ = reset(opened(), now=T0 + 5)
    assert rec.state is BreakerState.CLOSED
    assert rec.window == ""
    assert rec.consecutive_opens == 0
    assert transition == Transition("asr", BreakerState.OPEN, BreakerState.CLOSED, "manual reset", T0 + 5)
    _, none, _ = reset(initial("asr"), now=T0)
    assert none is None


def test_a_recovered_service_moves_an_open_breaker_to_half_open_with_the_probe_free() -> None:
    rec, transition, _ = health_recovered(opened(), now=T0 + 1)
    assert rec.state is BreakerState.HALF_OPEN
    assert rec.probe_owner is None
    assert transition is not None
    assert transition.reason == "health check passed"
    rec, _, permit = acquire(rec, CONFIG, now=T0 + 1, token="a")
    assert permit.probe
    closed = initial("asr")
    assert health_recovered(closed, now=T0) == (closed, None, closed)  # never closes, never opens


def test_blocking_reason() -> None:
    rec = opened()
    reason = blocking_reason(rec, now=T0 + 1)
    assert reason is not None
    assert reason.startswith("breaker asr open for another 29s")
    assert blocking_reason(rec, now=T0 + 30) is None  # the wait is over: a claim may probe
    half, _, _ = acquire(rec, CONFIG, now=T0 + 30, token="a")
    assert blocking_reason(half, now=T0 + 31) == "breaker asr half-open, probe in flight"
    assert blocking_reason(half, now=T0 + 30 + CONFIG.probe_lease) is None
    assert blocking_reason(initial("asr"), now=T0) is None


# -- what counts --------------------------------------------------------------------------------


def _status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://llm/api/generate")
    return httpx.HTTPStatusError("status", request=request, response=httpx.Response(code, request=request))


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (TransientError("connection refused"), Outcome.FAILURE),
        (ConnectionRefusedError(), Outcome.FAILURE),
        (TimeoutError(), Outcome.FAILURE),
        (httpx.ConnectError("refused"), Outcome.FAILURE),
        (httpx.ReadTimeout("slow"), Outcome.FAILURE),
        (_status_error(500), Outcome.FAILURE),
        (_status_error(503), Outcome.FAILURE),
        (_status_error(429), Outcome.FAILURE),
        (_status_error(400), Outcome.NEUTRAL),
        (_status_error(404), Outcome.NEUTRAL),
        (_status_error(422), Outcome.NEUTRAL),
        (PermanentError("undecodable audio"), Outcome.NEUTRAL),
        (DependencyUnavailable("vectors breaker open"), Outcome.NEUTRAL),
        (KeyError("a bug of ours"), Outcome.NEUTRAL),
    ],
)
def test_what_counts_against_the_service(exc: BaseException, outcome: Outcome) -> None:
    assert classify(exc) is outcome


@pytest.mark.parametrize(
    "changes",
    [
        {"window": 0},
        {"min_calls": 0},
        {"min_calls": 21},
        {"failure_rate": 0.0},
        {"failure_rate": 1.5},
        {"slow_call": 0.0},
        {"open_base": 0.0},
        {"open_max": 10.0},
        {"probe_lease": 0.0},
    ],
)
def test_config_is_validated(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        BreakerConfig(**changes)  # type: ignore[arg-type]


def test_defaults_are_the_documented_ones() -> None:
    config = BreakerConfig()
    assert (config.window, config.min_calls, config.failure_rate) == (20, 5, 0.5)
    assert (config.open_base, config.open_max) == (30.0, 600.0)
