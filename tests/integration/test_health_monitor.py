"""The health monitor against real servers on loopback: statuses, history, response times, and
the hand-over to the breakers (a service that turns healthy lets its open breaker probe at once)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from breaker_app import generate

import lifeline
from fakes import FakeClock
from lifeline.breakers import BreakerConfig, BreakerState, CircuitBreakers
from lifeline.domain import DependencyUnavailable, TransientError
from lifeline.health import HealthMonitor, HealthStatus, ProbeResult, percentile
from lifeline.probes import (
    DeepgramProbe,
    DiskProbe,
    MongoProbe,
    OllamaProbe,
    OpenAIASRProbe,
    OpenAIProbe,
    QdrantProbe,
    StoreProbe,
    WyomingProbe,
)
from peers.mongo import MongoPeer
from peers.server import Fault, HTTPPeer
from peers.wyoming import WyomingPeer


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[lifeline.Store]:
    async with lifeline.connect(f"sqlite:///{tmp_path}/h.db?synchronous=normal", clock=clock) as opened:
        yield opened


@pytest.fixture
def breakers(store: lifeline.Store, clock: FakeClock) -> CircuitBreakers:
    return CircuitBreakers(store, default=BreakerConfig(min_calls=5), clock=clock, cache_ttl=0)


def monitor_for(
    store: lifeline.Store, *probes: object, breakers: CircuitBreakers | None = None, **kw: float
) -> HealthMonitor:
    options = {"timeout": 3.0, "slow_threshold": 0.25, **kw}
    return HealthMonitor(store, list(probes), breakers, clock=lambda: 0.0, **options)  # type: ignore[arg-type]


async def test_every_probe_speaks_its_service(
    store: lifeline.Store,
    tmp_path: Path,
    ollama_server: HTTPPeer,
    openai_server: HTTPPeer,
    qdrant_server: HTTPPeer,
    deepgram_server: HTTPPeer,
    wyoming_server: WyomingPeer,
    mongo_server: MongoPeer,
) -> None:
    probes = [
        OllamaProbe(ollama_server.url, "llm", model="llama3.2"),
        OpenAIProbe(openai_server.url + "/v1", "llm-openai", model="gpt-4o-mini"),
        QdrantProbe(qdrant_server.url, "vectors"),
        OpenAIASRProbe(openai_server.url, "asr-openai"),
        DeepgramProbe(deepgram_server.url, "asr-deepgram", api_key="test-key"),
        WyomingProbe(wyoming_server.host, wyoming_server.port, "asr"),
        MongoProbe(mongo_server.url),
        StoreProbe(store),
        DiskProbe(tmp_path, min_free=1, warn_free=2),
    ]
    monitor = monitor_for(store, *probes, slow_threshold=5.0)
    checks = await monitor.check_all()
    assert {c.service: c.status for c in checks} == {p.name: HealthStatus.HEALTHY for p in probes}
    assert [r.path for r in ollama_server.requests] == ["/", "/api/tags"]
    assert [r.path for r in openai_server.requests] == ["/v1/models", "/health"]
    assert [r.path for r in qdrant_server.requests] == ["/readyz"]
    assert deepgram_server.requests[0].headers["authorization"] == "Token test-key"
    assert wyoming_server.events == ["describe"]
    assert mongo_server.commands == ["ping"]
    summary = await monitor.summary()
    assert summary["status"] == "healthy"
    assert summary["services"]["llm"]["detail"] == "model llama3.2 listed"
    assert summary["services"]["store"]["critical"] is True


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.REFUSE, "ConnectError"),
        (Fault.HANG, "no answer within 0.5s"),
        (Fault.ERROR_500, "HTTP 500"),
        (Fault.RATE_LIMIT, "HTTP 429"),
        (Fault.RESET, "RemoteProtocolError"),
    ],
)
async def test_a_failing_service_is_unhealthy_with_its_error(
    fault: Fault, error: str, store: lifeline.Store, qdrant_server: HTTPPeer
) -> None:
    monitor = monitor_for(store, QdrantProbe(qdrant_server.url, "vectors"), timeout=0.5)
    qdrant_server.set_fault(fault)
    (check,) = await monitor.check_all()
    assert check.status is HealthStatus.UNHEALTHY
    assert error in (check.error or "")
    (state,) = await store.health_states()
    assert state.consecutive_failures == 1
    assert error in (state.last_error or "")
    qdrant_server.ok()


async def test_slow_answers_and_a_missing_model_are_degraded(
    store: lifeline.Store, ollama_server: HTTPPeer, openai_server: HTTPPeer
) -> None:
    monitor = monitor_for(
        store,
        OllamaProbe(ollama_server.url, "llm", model="mistral"),
        OpenAIProbe(openai_server.url, "openai"),
    )
    openai_server.set_fault(Fault.SLOW, delay=0.3)
    checks = {c.service: c for c in await monitor.check_all()}
    assert checks["llm"].status is HealthStatus.DEGRADED
    assert (checks["llm"].detail or "").startswith("model mistral is not pulled")
    assert checks["openai"].status is HealthStatus.DEGRADED
    assert (checks["openai"].detail or "").startswith("slow: ")
    assert (checks["openai"].latency or 0) >= 0.3


async def test_wyoming_and_mongodb_failures(
    store: lifeline.Store, wyoming_server: WyomingPeer, mongo_server: MongoPeer
) -> None:
    monitor = monitor_for(
        store,
        WyomingProbe(wyoming_server.host, wyoming_server.port),
        MongoProbe(mongo_server.url),
        timeout=0.5,
    )
    wyoming_server.set_fault(Fault.HANG)
    mongo_server.set_fault(Fault.ERROR_500)
    checks = {c.service: c for c in await monitor.check_all()}
    assert checks["asr"].status is HealthStatus.UNHEALTHY
    assert checks["asr"].error == "no answer within 0.5s"
    assert checks["mongodb"].status is HealthStatus.UNHEALTHY
    assert checks["mongodb"].error == "node is not in primary or recovering state"
    wyoming_server.set_fault(Fault.REFUSE)
    mongo_server.set_fault(Fault.REFUSE)
    checks = {c.service: c for c in await monitor.check_all()}
    assert "ConnectionRefusedError" in (checks["asr"].error or "")
    assert "ConnectionRefusedError" in (checks["mongodb"].error or "")


async def test_history_response_times_and_transitions_are_recorded(
    store: lifeline.Store, qdrant_server: HTTPPeer
) -> None:
    times = iter(range(100, 200))
    monitor = HealthMonitor(
        store,
        [QdrantProbe(qdrant_server.url, "vectors")],
        timeout=0.5,
        slow_threshold=5.0,
        clock=lambda: float(next(times)),
    )
    delays = [0.02, 0.04, 0.06, 0.08, 0.10]
    for delay in delays:
        qdrant_server.set_fault(Fault.SLOW, delay=delay)
        await monitor.check_all()
    qdrant_server.set_fault(Fault.REFUSE)
    await monitor.check_all()
    await monitor.check_all()
    qdrant_server.ok()
    await monitor.check_all()

    history = await store.health_history("vectors", limit=100)
    assert [c.checked_at for c in history] == [107.0, 106.0, 105.0, 104.0, 103.0, 102.0, 101.0, 100.0]
    assert [c.status for c in history[:3]] == [
        HealthStatus.HEALTHY,
        HealthStatus.UNHEALTHY,
        HealthStatus.UNHEALTHY,
    ]
    answered = [c.latency for c in reversed(history) if c.latency is not None]
    assert len(answered) == 6  # the two refused checks have no response time
    assert all(latency >= delay for latency, delay in zip(answered, delays, strict=False))
    (state,) = await store.health_states()
    assert state.samples == 6
    assert state.p50 == percentile(answered, 0.5)
    assert state.p95 == percentile(answered, 0.95)
    assert state.p50 is not None
    assert state.p50 >= 0.04
    assert state.status is HealthStatus.HEALTHY
    assert state.consecutive_failures == 0
    assert state.changed_at == 107.0
    events = await store.health_events("vectors")
    assert [(e.from_status, e.to_status, e.at) for e in events] == [
        (HealthStatus.UNHEALTHY, HealthStatus.HEALTHY, 107.0),
        (HealthStatus.HEALTHY, HealthStatus.UNHEALTHY, 105.0),
        (HealthStatus.UNKNOWN, HealthStatus.HEALTHY, 100.0),
    ]
    summary = await monitor.summary()
    assert summary["services"]["vectors"]["p95_ms"] == pytest.approx(state.p95 * 1000, abs=0.01)


async def test_a_service_that_turns_healthy_moves_its_open_breaker_to_half_open(
    store: lifeline.Store, breakers: CircuitBreakers, ollama_server: HTTPPeer, clock: FakeClock
) -> None:
    monitor = monitor_for(store, OllamaProbe(ollama_server.url, "llm"), breakers=breakers)
    ollama_server.set_fault(Fault.REFUSE)
    assert (await monitor.check_all())[0].status is HealthStatus.UNHEALTHY
    for _ in range(5):
        with pytest.raises((TransientError, DependencyUnavailable)):
            await generate(breakers, ollama_server.url, "x")
    rec = await breakers.get("llm")
    assert rec.state is BreakerState.OPEN
    assert rec.open_until == clock() + 30

    ollama_server.ok()  # back, long before the open wait is over
    await monitor.check_all()
    rec = await breakers.get("llm")
    assert rec.state is BreakerState.HALF_OPEN  # not closed: only a real call can close it
    assert rec.probe_owner is None
    assert (await breakers.events("llm", limit=1))[0].reason == "health check passed"
    assert await generate(breakers, ollama_server.url, "x") == "You said: x"  # the probe
    assert (await breakers.get("llm")).state is BreakerState.CLOSED


async def test_a_health_check_that_stays_healthy_does_not_shorten_the_open_wait(
    store: lifeline.Store, breakers: CircuitBreakers, ollama_server: HTTPPeer
) -> None:
    monitor = monitor_for(store, OllamaProbe(ollama_server.url, "llm"), breakers=breakers)
    await monitor.check_all()  # healthy: the health endpoints answer ...
    ollama_server.set_fault(Fault.ERROR_500, paths=["/api/generate"])  # ... but real calls fail
    for _ in range(5):
        with pytest.raises((TransientError, DependencyUnavailable)):
            await generate(breakers, ollama_server.url, "x")
    await monitor.check_all()
    assert (await breakers.get("llm")).state is BreakerState.OPEN  # the breaker follows its own waits


class Failing:
    name = "store"
    critical = True

    async def check(self) -> ProbeResult:
        raise OSError("disk I/O error")


async def test_an_open_breaker_is_a_warning_and_only_a_critical_failure_is_unhealthy(
    store: lifeline.Store, breakers: CircuitBreakers, ollama_server: HTTPPeer
) -> None:
    monitor = monitor_for(store, OllamaProbe(ollama_server.url, "llm"), breakers=breakers)
    ollama_server.set_fault(Fault.REFUSE)
    await monitor.check_all()
    for _ in range(5):
        with pytest.raises((TransientError, DependencyUnavailable)):
            await generate(breakers, ollama_server.url, "x")
    report = await monitor.report()
    assert report.status is HealthStatus.DEGRADED
    assert report.failures == []
    assert any(w.startswith("breaker llm open") for w in report.warnings)
    assert any(w.startswith("llm unhealthy") for w in report.warnings)

    with_store = monitor_for(store, Failing(), OllamaProbe(ollama_server.url, "llm"), breakers=breakers)
    await with_store.check_all()
    report = await with_store.report()
    assert report.status is HealthStatus.UNHEALTHY
    assert report.failures == ["store unhealthy: OSError: disk I/O error"]


async def test_the_monitor_runs_on_its_interval_until_stopped(
    store: lifeline.Store, qdrant_server: HTTPPeer
) -> None:
    monitor = HealthMonitor(store, [QdrantProbe(qdrant_server.url, "vectors")], interval=0.05, timeout=1.0)
    running = asyncio.create_task(monitor.run())
    for _ in range(200):
        if len(qdrant_server.requests) >= 3:
            break
        await asyncio.sleep(0.02)
    monitor.stop()
    await asyncio.wait_for(running, 5)
    assert len(await store.health_history("vectors")) >= 3
