"""The store's breaker and health methods, on every backend."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from conformance.backends import StoreFactory
from fakes import FakeClock
from lifeline import Store
from lifeline.breakers import BreakerChange, BreakerRecord, BreakerState, Transition, initial
from lifeline.health import HealthCheck, HealthStatus


def opening(now: float, name: str = "asr") -> Callable[[BreakerRecord | None], BreakerChange[str]]:
    def fn(current: BreakerRecord | None) -> BreakerChange[str]:
        rec = current or initial(name)
        new = dataclasses.replace(
            rec, state=BreakerState.OPEN, opened_at=now, open_until=now + 30, updated_at=now
        )
        return new, Transition(name, rec.state, BreakerState.OPEN, "test", now), "opened"

    return fn


async def test_breaker_apply_sees_none_first_then_the_written_record(store: Store, clock: FakeClock) -> None:
    seen: list[BreakerRecord | None] = []

    def look(current: BreakerRecord | None) -> BreakerChange[int]:
        seen.append(current)
        rec = current or initial("llm")
        return dataclasses.replace(rec, window=rec.window + "f", updated_at=clock()), None, len(seen)

    assert await store.breaker_apply("llm", look) == 1
    assert await store.breaker_apply("llm", look) == 2
    assert seen[0] is None
    assert seen[1] == BreakerRecord("llm", window="f", updated_at=clock())
    assert await store.list_breakers() == [BreakerRecord("llm", window="ff", updated_at=clock())]


async def test_every_field_round_trips(store: Store) -> None:
    full = BreakerRecord(
        name="vectors",
        state=BreakerState.HALF_OPEN,
        window="sfsf",
        opened_at=1.5,
        open_until=31.5,
        consecutive_opens=3,
        probe_owner="host:1:abc#7",
        probe_expires_at=91.5,
        last_error="ConnectError: refused",
        updated_at=32.0,
    )
    await store.breaker_apply("vectors", lambda _: (full, None, None))
    assert await store.list_breakers() == [full]


async def test_transitions_are_kept_newest_first_and_bounded(store: Store, clock: FakeClock) -> None:
    for i in range(7):
        clock.advance(1)
        now = clock()

        def flip(current: BreakerRecord | None, i: int = i, now: float = now) -> BreakerChange[None]:
            rec = current or initial("asr")
            to = BreakerState.OPEN if i % 2 == 0 else BreakerState.CLOSED
            return (
                dataclasses.replace(rec, state=to),
                Transition("asr", rec.state, to, f"step {i}", now),
                None,
            )

        await store.breaker_apply("asr", flip, keep_events=5)
    await store.breaker_apply("llm", opening(clock(), "llm"))
    events = await store.breaker_events("asr", limit=50)
    assert [e.reason for e in events] == ["step 6", "step 5", "step 4", "step 3", "step 2"]
    assert events[0] == Transition("asr", BreakerState.CLOSED, BreakerState.OPEN, "step 6", clock())
    assert [e.name for e in await store.breaker_events(limit=2)] == ["llm", "asr"]


async def test_a_change_that_raises_writes_nothing(store: Store) -> None:
    await store.breaker_apply("asr", opening(10.0))

    def broken(current: BreakerRecord | None) -> BreakerChange[None]:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        await store.breaker_apply("asr", broken)
    (rec,) = await store.list_breakers()
    assert rec.state is BreakerState.OPEN
    assert len(await store.breaker_events("asr")) == 1


async def test_breakers_survive_a_restart(open_store: StoreFactory) -> None:
    first = await open_store()
    await first.breaker_apply("asr", opening(5.0))
    await first.close()
    again = await open_store()
    (rec,) = await again.list_breakers()
    assert (rec.state, rec.open_until) == (BreakerState.OPEN, 35.0)


def check(
    service: str, status: HealthStatus, at: float, latency: float | None = 0.01, error: str | None = None
) -> HealthCheck:
    return HealthCheck(service, status, latency, error, None, at)


async def test_health_checks_update_the_state_and_report_transitions(store: Store) -> None:
    first = await store.record_health(check("llm", HealthStatus.HEALTHY, 1.0))
    assert first is not None
    assert (first.from_status, first.to_status) == (HealthStatus.UNKNOWN, HealthStatus.HEALTHY)
    assert await store.record_health(check("llm", HealthStatus.HEALTHY, 2.0)) is None
    down = await store.record_health(check("llm", HealthStatus.UNHEALTHY, 3.0, None, "ConnectError: refused"))
    assert down is not None
    assert down.reason == "ConnectError: refused"
    await store.record_health(check("llm", HealthStatus.UNHEALTHY, 4.0, None, "ConnectError: refused"))
    (state,) = await store.health_states()
    assert state.status is HealthStatus.UNHEALTHY
    assert state.consecutive_failures == 2
    assert state.changed_at == 3.0
    assert state.last_checked_at == 4.0
    assert state.last_error == "ConnectError: refused"
    back = await store.record_health(check("llm", HealthStatus.HEALTHY, 5.0))
    assert back is not None
    (state,) = await store.health_states()
    assert state.consecutive_failures == 0
    assert state.last_error == "ConnectError: refused"  # kept: the last error seen
    events = await store.health_events("llm")
    assert [(e.to_status, e.at) for e in events] == [
        (HealthStatus.HEALTHY, 5.0),
        (HealthStatus.UNHEALTHY, 3.0),
        (HealthStatus.HEALTHY, 1.0),
    ]


async def test_response_times_give_p50_and_p95_over_the_kept_history(store: Store) -> None:
    for i in range(1, 101):  # 1 ms .. 100 ms
        await store.record_health(
            check("vectors", HealthStatus.HEALTHY, float(i), latency=i / 1000), keep=100
        )
    await store.record_health(check("vectors", HealthStatus.UNHEALTHY, 101.0, latency=None), keep=100)
    (state,) = await store.health_states()
    assert state.samples == 99  # the oldest check was dropped, the last one has no latency
    assert state.p50 == pytest.approx(0.051)
    assert state.p95 == pytest.approx(0.096)
    history = await store.health_history("vectors", limit=3)
    assert [c.checked_at for c in history] == [101.0, 100.0, 99.0]
    assert history[0].latency is None
    assert len(await store.health_history("vectors", limit=1000)) == 100


async def test_health_is_kept_per_service(store: Store) -> None:
    await store.record_health(check("asr", HealthStatus.HEALTHY, 1.0))
    await store.record_health(check("llm", HealthStatus.DEGRADED, 1.0))
    states = {s.service: s.status for s in await store.health_states()}
    assert states == {"asr": HealthStatus.HEALTHY, "llm": HealthStatus.DEGRADED}
    assert [e.service for e in await store.health_events("asr")] == ["asr"]


async def test_ping_reads_and_writes(store: Store) -> None:
    await store.ping()
    await store.ping()
