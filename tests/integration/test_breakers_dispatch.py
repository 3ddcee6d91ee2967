"""Breakers against a real Ollama-speaking server on loopback, and dispatch around them.

- the breaker opens after the configured failures (refused, 500, 429, hung, slow) and not on 4xx;
- while it is open, the jobs needing the service stay ``pending`` with their attempts untouched,
  however long the outage (hours, on an injected clock), and nothing is dead-lettered;
- a job claimed just before the opening is deferred without spending an attempt;
- the backlog drains by itself once the service is back;
- queue statistics say why a stage is not being claimed;
- with several worker processes on one database, exactly one probe reaches the service.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from breaker_app import generate, summarizer

import lifeline
from fakes import FakeClock
from lifeline.breakers import BreakerConfig, BreakerState, CircuitBreakers
from lifeline.domain import DependencyUnavailable, JobState, PermanentError, TransientError
from lifeline.queue.policy import RetryPolicy
from lifeline.queue.worker import Worker
from peers.server import Fault, HTTPPeer

HERE = Path(__file__).parent
CONFIG = BreakerConfig(min_calls=5, open_base=30, open_max=600, probe_lease=60, probe_retry=2)
POLICY = RetryPolicy(max_attempts=3, base_delay=1.0, max_delay=10.0, lease=300.0)


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[lifeline.Store]:
    async with lifeline.connect(
        f"sqlite:///{tmp_path}/b.db?synchronous=normal", default_policy=POLICY, policies={}, clock=clock
    ) as opened:
        yield opened


@pytest.fixture
def breakers(store: lifeline.Store, clock: FakeClock) -> CircuitBreakers:
    return CircuitBreakers(store, default=CONFIG, clock=clock, cache_ttl=0)


async def call(breakers: CircuitBreakers, peer: HTTPPeer) -> str:
    return await generate(breakers, peer.url, "hello", timeout=0.5)


@pytest.mark.parametrize("fault", [Fault.REFUSE, Fault.ERROR_500, Fault.RATE_LIMIT, Fault.HANG, Fault.RESET])
async def test_the_breaker_opens_after_the_configured_failures(
    fault: Fault, ollama_server: HTTPPeer, breakers: CircuitBreakers
) -> None:
    ollama_server.set_fault(fault)
    for _ in range(4):  # failures, but fewer calls than the minimum (5) to judge by
        with pytest.raises(TransientError):
            await call(breakers, ollama_server)
    assert (await breakers.get("llm")).state is BreakerState.CLOSED
    with pytest.raises(DependencyUnavailable) as opened:  # the 5th failure opens it: no attempt spent
        await call(breakers, ollama_server)
    assert opened.value.retry_after == pytest.approx(30)
    rec = await breakers.get("llm")
    assert rec.state is BreakerState.OPEN
    assert rec.window == "fffff"
    reached = len(ollama_server.requests)
    with pytest.raises(DependencyUnavailable):
        await call(breakers, ollama_server)
    assert len(ollama_server.requests) == reached  # refused by the breaker: the service never saw it
    (event,) = await breakers.events("llm")
    assert (event.from_state, event.to_state) == (BreakerState.CLOSED, BreakerState.OPEN)
    ollama_server.ok()


async def test_bad_input_never_opens_the_breaker(ollama_server: HTTPPeer, breakers: CircuitBreakers) -> None:
    ollama_server.set_fault(Fault.BAD_REQUEST)
    for _ in range(12):
        with pytest.raises(PermanentError):
            await call(breakers, ollama_server)
    ollama_server.api.models = []  # type: ignore[attr-defined]  # now every model is missing: 404
    ollama_server.ok()
    for _ in range(6):
        with pytest.raises(PermanentError, match="not found"):
            await call(breakers, ollama_server)
    rec = await breakers.get("llm")
    assert rec.state is BreakerState.CLOSED
    assert rec.window == ""  # neither successes nor failures
    assert len(ollama_server.requests) == 18


async def test_slow_calls_count_as_failures(
    ollama_server: HTTPPeer, store: lifeline.Store, clock: FakeClock
) -> None:
    slow = CircuitBreakers(
        store, default=BreakerConfig(min_calls=5, slow_call=0.05), clock=clock, cache_ttl=0
    )
    ollama_server.set_fault(Fault.SLOW, delay=0.1)
    for _ in range(5):
        assert await call(slow, ollama_server) == "You said: hello"  # answers arrive, just too late
    rec = await slow.get("llm")
    assert rec.state is BreakerState.OPEN
    assert rec.last_error is not None
    assert "slow call" in rec.last_error


async def states(store: lifeline.Store) -> list[tuple[JobState, int]]:
    return [(j.state, j.attempts) for j in await store.list_jobs(queue="action_item", limit=1000)]


async def test_an_outage_of_hours_costs_no_attempt_and_the_backlog_drains_after(
    ollama_server: HTTPPeer, store: lifeline.Store, breakers: CircuitBreakers, clock: FakeClock
) -> None:
    handler = summarizer(breakers, ollama_server.url)

    async def drain() -> None:
        worker = Worker(
            store, {"action_item": handler}, concurrency=4, poll_interval=0.01, gate=breakers.gate
        )
        await worker.run(burst=True)

    ollama_server.set_fault(Fault.REFUSE)
    for _ in range(5):  # the service goes down; calls find out and the breaker opens
        with pytest.raises((TransientError, DependencyUnavailable)):
            await call(breakers, ollama_server)
    assert (await breakers.get("llm")).state is BreakerState.OPEN
    ids = await store.enqueue_many("action_item", [{"n": n, "text": f"note {n}"} for n in range(20)])

    six_hours, step = 6 * 3600, 1200
    for _ in range(six_hours // step):  # workers look again every 20 minutes, for 6 hours
        await drain()
        assert await states(store) == [(JobState.PENDING, 0)] * 20
        clock.advance(step)
    assert (await breakers.get("llm")).state is BreakerState.OPEN
    stats = await store.queue_stats()
    assert stats["action_item"].counts[JobState.DEAD_LETTER] == 0
    # the breaker let one probe through after each open wait, and the waits doubled up to 10 min
    events = list(reversed(await breakers.events("llm", limit=200)))
    probes = [e for e in events if e.to_state is BreakerState.HALF_OPEN]
    reopened = [e for e in events if e.from_state is BreakerState.HALF_OPEN]
    assert len(probes) == len(reopened) == six_hours // step - 1  # one per round after the first
    assert all(e.to_state is BreakerState.OPEN and e.reason.startswith("probe failed") for e in reopened)
    waits = [float(e.reason.split()[3].rstrip("s")) for e in probes]  # "open wait of 60.0s elapsed"
    assert waits[:7] == [30, 60, 120, 240, 480, 600, 600]
    assert set(waits[5:]) == {600}
    # the gate kept the stage from being claimed at all while the breaker was open: the only
    # claims are those made right after a wait ended (at most one batch per probe)
    claims = sum([(await store.get_job(i)).job.claims for i in ids])
    assert claims <= 4 * len(probes)

    ollama_server.ok()  # the service is back
    for _ in range(20):
        clock.advance(step)
        await drain()
        if all(s is JobState.COMPLETED for s, _ in await states(store)):
            break
    assert await states(store) == [(JobState.COMPLETED, 1)] * 20  # every job: one attempt, no retry
    assert (await breakers.get("llm")).state is BreakerState.CLOSED
    assert len(ollama_server.requests_to("/api/generate")) == 20


async def test_a_job_claimed_just_before_the_opening_is_deferred_without_an_attempt(
    ollama_server: HTTPPeer, store: lifeline.Store, breakers: CircuitBreakers, clock: FakeClock
) -> None:
    job_id = await store.enqueue("action_item", {"n": 1, "text": "x"})
    job = await store.claim("action_item", worker_id="w")
    assert job is not None
    ollama_server.set_fault(Fault.ERROR_500)
    for _ in range(5):
        with pytest.raises((TransientError, DependencyUnavailable)):
            await call(breakers, ollama_server)
    worker = Worker(store, {"action_item": summarizer(breakers, ollama_server.url)}, poll_interval=0.01)
    await worker._run_job(job)  # the claimed job meets the open breaker in its handler
    info = await store.get_job(job_id)
    assert info.job.state is JobState.PENDING
    assert info.job.attempts == 0
    assert info.job.run_at == pytest.approx(clock() + 30)
    assert info.attempts[-1].outcome.value == "deferred"
    assert "breaker llm is open" in (info.attempts[-1].error or "")
    assert worker.stats.deferred == 1


async def test_queue_stats_say_which_breaker_holds_a_stage_back(
    ollama_server: HTTPPeer, store: lifeline.Store, breakers: CircuitBreakers
) -> None:
    for stage in ("chunk", "transcription", "memory", "action_item"):
        await store.enqueue(stage, {})
    stats = await breakers.annotate(await store.queue_stats())
    assert all(q.blocked_by is None for q in stats.values())
    ollama_server.set_fault(Fault.REFUSE)
    for _ in range(5):
        with pytest.raises((TransientError, DependencyUnavailable)):
            await call(breakers, ollama_server)
    stats = await breakers.annotate(await store.queue_stats())
    for queue in ("memory", "action_item"):  # both need the llm
        assert (stats[queue].blocked_by or "").startswith("breaker llm open for another 30s")
    assert stats["transcription"].blocked_by is None
    assert stats["chunk"].blocked_by is None
    assert not stats["action_item"].paused  # an operator's pause is another thing


# -- several worker processes -------------------------------------------------------------------


def worker_env(db: Path, peer: HTTPPeer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update(
        {
            "LIFELINE_DATABASE_URL": f"sqlite:///{db}",
            "LIFELINE_SQLITE_SYNCHRONOUS": "normal",
            "LIFELINE_POLL_INTERVAL": "0.05",
            "LIFELINE_LOG_LEVEL": "WARNING",
            "LIFELINE_LLM": "ollama",
            "LIFELINE_LLM_URL": peer.url,
            "LIFELINE_LLM_MODEL": "llama3.2",
            "LIFELINE_HEALTH_INTERVAL": "0",
            "LIFELINE_BREAKER_LLM_OPEN_BASE": "3600",  # only the health monitor's word ends the wait
            "LIFELINE_BREAKER_LLM_OPEN_MAX": "3600",
            "LIFELINE_BREAKER_LLM_PROBE_RETRY": "0.3",
            "LIFELINE_BREAKER_LLM_PROBE_LEASE": "30",
            "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
        }
    )
    return env


@pytest.mark.slow
async def test_several_worker_processes_send_exactly_one_probe(
    tmp_path: Path, ollama_server: HTTPPeer
) -> None:
    db = tmp_path / "fleet.db"
    jobs = 30
    async with lifeline.connect(f"sqlite:///{db}?synchronous=normal") as store:
        breakers = CircuitBreakers(store, {"llm": BreakerConfig(open_base=3600, open_max=3600)}, cache_ttl=0)
        ollama_server.set_fault(Fault.ERROR_500, paths=["/api/generate"])
        for _ in range(5):
            with pytest.raises((TransientError, DependencyUnavailable)):
                await generate(breakers, ollama_server.url, "x")
        assert (await breakers.get("llm")).state is BreakerState.OPEN
        ollama_server.set_fault(Fault.SLOW, paths=["/api/generate"], count=1, delay=1.0)  # the probe is slow
        ollama_server.clear()

        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "lifeline", "worker", "--app", "breaker_app:handlers",
                 "--queues", "llm_probe", "--concurrency", "2", "--no-recovery"],
                env=worker_env(db, ollama_server),
                cwd=tmp_path,
            )
            for _ in range(3)
        ]  # fmt: skip
        try:
            for _ in range(600):  # all three are up and polling
                if len([w for w in await store.list_workers() if w.stopped_at is None]) == 3:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the worker processes did not start")
            await breakers.on_health("llm", True)  # the service is back: half-open, one probe allowed
            await store.enqueue_many(
                "llm_probe", [{"n": n, "text": f"note {n}", "think": 0.05} for n in range(jobs)]
            )
            for _ in range(600):
                counts = (await store.queue_stats())["llm_probe"].counts
                if counts[JobState.COMPLETED] == jobs:
                    break
                await asyncio.sleep(0.05)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                assert proc.wait(timeout=60) == 0
        events = [(e.from_state, e.to_state) for e in reversed(await breakers.events("llm"))]

    calls = ollama_server.requests_to("/api/generate")
    assert len(calls) == jobs  # one call per job: no refused call reached the service
    probe = min(calls, key=lambda r: r.received_at)
    assert probe.answered_at is not None
    during_probe = [r for r in calls if r.received_at < probe.answered_at]
    assert during_probe == [probe]  # nothing else reached the service while the probe ran
    assert events == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT state, COUNT(*), MAX(attempts) FROM jobs GROUP BY state").fetchall() == [
            ("completed", jobs, 1)
        ]
        assert conn.execute("SELECT COUNT(*), MAX(revision) FROM outputs").fetchone() == (jobs, 1)
        refused_by = conn.execute(
            "SELECT COUNT(DISTINCT worker_id) FROM attempts WHERE outcome = 'deferred'"
        ).fetchone()[0]
        workers = conn.execute("SELECT COUNT(DISTINCT json_extract(data, '$.pid')) FROM outputs").fetchone()[
            0
        ]
    # the probe was contended: workers of at least two processes were refused while it ran
    assert refused_by >= 2
    assert workers >= 2
