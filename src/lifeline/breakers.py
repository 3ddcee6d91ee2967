"""Shared circuit breakers: one per external service, its state in the store.

Every worker process on every host reads and changes the same breaker rows, so an outage seen by
one process pauses the stage everywhere, and the state survives restarts. The logic is a set of
pure functions of a :class:`BreakerRecord` (tested without a database); the store runs each of
them inside one write transaction (:meth:`Store.breaker_apply`), which makes every change atomic
across processes: the SQLite writer's ``BEGIN IMMEDIATE`` serialises them (a PostgreSQL store
would ``SELECT … FOR UPDATE``).

The states:

- ``closed``: calls go through; the last ``window`` outcomes are kept. Once at least ``min_calls``
  are known and the share of failures reaches ``failure_rate``, the breaker opens. A call slower
  than ``slow_call`` counts as a failure.
- ``open``: calls are refused (``DependencyUnavailable``) for a wait that starts at ``open_base``
  and doubles with each consecutive opening, up to ``open_max``.
- ``half_open``: exactly one call in the whole fleet, the probe, may go through. It holds a lease
  in the store (``probe_lease`` seconds) so that a hung probe cannot block the breaker forever.
  Its success closes the breaker, its failure opens it again (with a longer wait), and a neutral
  outcome (bad input: the service answered) frees the lease for the next call.

The health monitor moves an open breaker to ``half_open`` as soon as its service turns healthy
(:func:`health_recovered`): it never closes it, only a real call can.
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import itertools
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from lifeline.domain import DependencyUnavailable, PermanentError, TransientError

if TYPE_CHECKING:
    from lifeline.store.base import QueueStats, Store

T = TypeVar("T")
Clock = Callable[[], float]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Outcome(enum.StrEnum):
    """How one call went, as far as the service's health is concerned."""

    SUCCESS = "success"
    FAILURE = "failure"  # connection error, timeout, HTTP 5xx or 429, a slow call
    NEUTRAL = "neutral"  # the service answered, but the input was bad: says nothing about it


# The recent outcomes window is kept as a string, oldest first: readable in the database.
_MARK = {Outcome.SUCCESS: "s", Outcome.FAILURE: "f"}

# The services each stage calls. A stage is not claimed while one of its breakers is open.
STAGE_SERVICES: Mapping[str, tuple[str, ...]] = {
    "chunk": (),
    "transcription": ("asr",),
    "memory": ("llm", "vectors"),
    "action_item": ("llm",),
}
SERVICES: tuple[str, ...] = ("asr", "llm", "vectors")


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Thresholds of one breaker (all times in seconds)."""

    window: int = 20  # the sliding window: the last N calls
    min_calls: int = 5  # no opening on fewer known calls than this
    failure_rate: float = 0.5  # open when failures / calls reaches this
    slow_call: float | None = 60.0  # a successful call slower than this counts as a failure
    open_base: float = 30.0  # the first open wait; it doubles on each consecutive opening
    open_max: float = 600.0  # ... up to this
    probe_lease: float = 60.0  # a half-open probe not heard from for this long is given up
    probe_retry: float = 2.0  # a call refused while the probe runs is retried after this

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be at least 1")
        if not 1 <= self.min_calls <= self.window:
            raise ValueError("min_calls must be between 1 and the window")
        if not 0.0 < self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be in (0, 1]")
        if self.slow_call is not None and self.slow_call <= 0:
            raise ValueError("slow_call must be positive (or None to disable)")
        if self.open_base <= 0 or self.open_max < self.open_base:
            raise ValueError("open_base must be positive and open_max at least open_base")
        if self.probe_lease <= 0 or self.probe_retry < 0:
            raise ValueError("probe_lease must be positive and probe_retry not negative")

    def open_wait(self, consecutive_opens: int) -> float:
        """How long the ``consecutive_opens``-th opening in a row lasts."""
        exponent = max(0, consecutive_opens - 1)
        if exponent > 60:  # 2**60 · base is past any sane open_max; avoid float overflow
            return self.open_max
        return float(min(self.open_max, self.open_base * 2**exponent))


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    """One breaker's row in the store."""

    name: str
    state: BreakerState = BreakerState.CLOSED
    window: str = ""  # recent outcomes, oldest first: "s" success, "f" failure
    opened_at: float | None = None
    open_until: float | None = None
    consecutive_opens: int = 0
    probe_owner: str | None = None
    probe_expires_at: float | None = None
    last_error: str | None = None
    updated_at: float | None = None

    @property
    def calls(self) -> int:
        return len(self.window)

    @property
    def failures(self) -> int:
        return self.window.count(_MARK[Outcome.FAILURE])

    @property
    def failure_rate(self) -> float:
        return self.failures / self.calls if self.window else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The record as the API and the CLI show it (plain JSON types)."""
        return {
            "name": self.name,
            "state": self.state.value,
            "calls": self.calls,
            "failures": self.failures,
            "failure_rate": round(self.failure_rate, 4),
            "window": self.window,
            "opened_at": self.opened_at,
            "open_until": self.open_until,
            "consecutive_opens": self.consecutive_opens,
            "probe_owner": self.probe_owner,
            "probe_expires_at": self.probe_expires_at,
            "last_error": self.last_error,
            "updated_at": self.updated_at,
        }

    def probe_busy(self, now: float) -> bool:
        """A probe holds the half-open lease and has not run out of time."""
        return (
            self.probe_owner is not None and self.probe_expires_at is not None and self.probe_expires_at > now
        )


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of a breaker's state, kept as history in the store."""

    name: str
    from_state: BreakerState
    to_state: BreakerState
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class Permit:
    """The answer to "may I call the service?"."""

    name: str
    allowed: bool
    token: str
    probe: bool = False  # this call is the half-open probe: its outcome decides the breaker
    retry_after: float = 0.0  # when refused: seconds until it is worth asking again
    reason: str = ""  # when refused: why


# What a function run by ``Store.breaker_apply`` returns: the record to write, the transition to
# keep as history (if any) and what the caller gets back.
BreakerChange = tuple[BreakerRecord, Transition | None, T]


# -- the pure logic -----------------------------------------------------------------------------


def initial(name: str) -> BreakerRecord:
    return BreakerRecord(name=name)


def acquire(record: BreakerRecord, config: BreakerConfig, *, now: float, token: str) -> BreakerChange[Permit]:
    """May the caller (identified by ``token``) call the service now?"""
    name = record.name
    if record.state is BreakerState.CLOSED:
        return record, None, Permit(name, True, token)
    if record.state is BreakerState.OPEN:
        open_until = record.open_until if record.open_until is not None else now
        if now < open_until:
            reason = f"breaker {name} is open for another {open_until - now:.1f}s"
            if record.last_error:
                reason += f" (last error: {record.last_error})"
            return record, None, Permit(name, False, token, retry_after=open_until - now, reason=reason)
        waited = open_until - (record.opened_at if record.opened_at is not None else open_until)
        new = replace(
            record,
            state=BreakerState.HALF_OPEN,
            probe_owner=token,
            probe_expires_at=now + config.probe_lease,
            updated_at=now,
        )
        transition = Transition(
            name, BreakerState.OPEN, BreakerState.HALF_OPEN, f"open wait of {waited:.1f}s elapsed", now
        )
        return new, transition, Permit(name, True, token, probe=True)
    # half-open: the probe lease is free, expired, or someone else's
    if record.probe_busy(now) and record.probe_owner != token:
        assert record.probe_expires_at is not None
        retry = max(0.0, min(config.probe_retry, record.probe_expires_at - now))
        reason = f"breaker {name} is half-open and its probe is in flight"
        return record, None, Permit(name, False, token, retry_after=retry, reason=reason)
    new = replace(record, probe_owner=token, probe_expires_at=now + config.probe_lease, updated_at=now)
    return new, None, Permit(name, True, token, probe=True)


def classify_duration(outcome: Outcome, duration: float | None, config: BreakerConfig) -> Outcome:
    """A success slower than ``slow_call`` is a failure."""
    if (
        outcome is Outcome.SUCCESS
        and duration is not None
        and config.slow_call is not None
        and duration > config.slow_call
    ):
        return Outcome.FAILURE
    return outcome


def record_outcome(
    record: BreakerRecord,
    config: BreakerConfig,
    *,
    now: float,
    token: str,
    outcome: Outcome,
    duration: float | None = None,
    error: str | None = None,
) -> BreakerChange[BreakerRecord]:
    """Count the outcome of a call made with ``token``; returns the breaker as it now is."""
    counted = classify_duration(outcome, duration, config)
    if counted is not outcome:
        error = f"slow call: {duration:.3f}s > {config.slow_call}s"
    name = record.name
    if record.state is BreakerState.HALF_OPEN:
        if record.probe_owner != token:
            # A call that began before the breaker opened, or a probe whose lease was taken over:
            # its late result does not decide anything.
            return record, None, record
        if counted is Outcome.SUCCESS:
            new = replace(
                record,
                state=BreakerState.CLOSED,
                window="",
                opened_at=None,
                open_until=None,
                consecutive_opens=0,
                probe_owner=None,
                probe_expires_at=None,
                updated_at=now,
            )
            transition = Transition(name, BreakerState.HALF_OPEN, BreakerState.CLOSED, "probe succeeded", now)
            return new, transition, new
        if counted is Outcome.FAILURE:
            return _open(record, config, now=now, error=error, reason=f"probe failed: {error or 'failure'}")
        # neutral: the service answered but the input was bad; let the next call probe
        new = replace(record, probe_owner=None, probe_expires_at=None, updated_at=now)
        return new, None, new
    if record.state is BreakerState.OPEN or counted is Outcome.NEUTRAL:
        # Late results of calls made before the breaker opened change nothing; neither do neutral ones.
        return record, None, record
    window = (record.window + _MARK[counted])[-config.window :]
    new = replace(
        record,
        window=window,
        last_error=error if counted is Outcome.FAILURE else record.last_error,
        updated_at=now,
    )
    calls = len(window)
    failures = window.count(_MARK[Outcome.FAILURE])
    if counted is Outcome.FAILURE and calls >= config.min_calls and failures / calls >= config.failure_rate:
        reason = (
            f"{failures} of the last {calls} calls failed"
            f" ({failures / calls:.0%} >= {config.failure_rate:.0%}); last error: {error or 'failure'}"
        )
        return _open(new, config, now=now, error=error, reason=reason)
    return new, None, new


def _open(
    record: BreakerRecord, config: BreakerConfig, *, now: float, error: str | None, reason: str
) -> BreakerChange[BreakerRecord]:
    opens = record.consecutive_opens + 1
    new = replace(
        record,
        state=BreakerState.OPEN,
        opened_at=now,
        open_until=now + config.open_wait(opens),
        consecutive_opens=opens,
        probe_owner=None,
        probe_expires_at=None,
        last_error=error if error is not None else record.last_error,
        updated_at=now,
    )
    return new, Transition(record.name, record.state, BreakerState.OPEN, reason, now), new


def reset(record: BreakerRecord, *, now: float, reason: str = "manual reset") -> BreakerChange[BreakerRecord]:
    """Close the breaker and forget its history (an operator's decision)."""
    new = replace(
        record,
        state=BreakerState.CLOSED,
        window="",
        opened_at=None,
        open_until=None,
        consecutive_opens=0,
        probe_owner=None,
        probe_expires_at=None,
        updated_at=now,
    )
    if record.state is BreakerState.CLOSED:
        return new, None, new
    return new, Transition(record.name, record.state, BreakerState.CLOSED, reason, now), new


def health_recovered(
    record: BreakerRecord, *, now: float, reason: str = "health check passed"
) -> BreakerChange[BreakerRecord]:
    """The service answers its health check again: an open breaker lets one probe through now."""
    if record.state is not BreakerState.OPEN:
        return record, None, record
    new = replace(
        record,
        state=BreakerState.HALF_OPEN,
        probe_owner=None,
        probe_expires_at=None,
        updated_at=now,
    )
    return new, Transition(record.name, BreakerState.OPEN, BreakerState.HALF_OPEN, reason, now), new


def blocking_reason(record: BreakerRecord, *, now: float) -> str | None:
    """Why no job needing this service should be claimed now, or ``None``.

    An open breaker whose wait is over does not block: a claimed job's call becomes the probe.
    """
    if record.state is BreakerState.OPEN and record.open_until is not None and now < record.open_until:
        reason = f"breaker {record.name} open for another {record.open_until - now:.0f}s"
        return reason + (f": {record.last_error}" if record.last_error else "")
    if record.state is BreakerState.HALF_OPEN and record.probe_busy(now):
        return f"breaker {record.name} half-open, probe in flight"
    return None


# -- what counts --------------------------------------------------------------------------------


def classify(exc: BaseException) -> Outcome:
    """How an exception raised by a call counts against the service.

    Failures: :class:`TransientError`, connection errors and timeouts (``OSError``,
    ``TimeoutError``, httpx transport errors), HTTP 5xx and 429. Neutral: :class:`PermanentError`
    (bad input: HTTP 4xx, undecodable audio, a validation error), :class:`DependencyUnavailable`
    (another breaker said no), cancellation, and anything else (a bug in our own code says nothing
    about the service).
    """
    if isinstance(exc, TransientError):
        return Outcome.FAILURE
    if isinstance(exc, PermanentError | DependencyUnavailable):
        return Outcome.NEUTRAL
    status = _http_status(exc)
    if status is not None:
        return Outcome.FAILURE if status >= 500 or status == 429 else Outcome.NEUTRAL
    if isinstance(exc, OSError | TimeoutError):
        return Outcome.FAILURE
    httpx: Any = sys.modules.get("httpx")  # only if the caller uses it; no import for nothing
    if httpx is not None and isinstance(exc, httpx.TransportError):
        return Outcome.FAILURE
    return Outcome.NEUTRAL


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- the service --------------------------------------------------------------------------------


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class _Call:
    """``async with breakers.call(name) as permit:`` — see :meth:`CircuitBreakers.call`."""

    def __init__(self, breakers: CircuitBreakers, name: str) -> None:
        self._breakers = breakers
        self._name = name
        self._permit: Permit | None = None
        self._started = 0.0

    async def __aenter__(self) -> Permit:
        self._permit = await self._breakers.acquire(self._name)
        self._started = self._breakers._monotonic()
        return self._permit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._permit is not None
        duration = self._breakers._monotonic() - self._started
        if exc is None:
            await self._breakers.record(self._permit, Outcome.SUCCESS, duration=duration)
            return
        outcome = classify(exc)
        recording = self._breakers.record(self._permit, outcome, duration=duration, error=describe(exc))
        if isinstance(exc, asyncio.CancelledError):
            # free the probe lease even while being cancelled (shutdown), then go on cancelling
            await asyncio.shield(recording)
            return
        after = await recording
        if outcome is Outcome.FAILURE and after.state is BreakerState.OPEN:
            # The service is down (this failure may have opened the breaker, or was the probe's):
            # the job is put back without spending an attempt, like the jobs that were never claimed.
            retry_after = max(0.0, (after.open_until or 0.0) - self._breakers._clock())
            raise DependencyUnavailable(
                f"breaker {self._name} is open: {describe(exc)}", retry_after=retry_after
            ) from exc


class CircuitBreakers:
    """The breakers of one process, backed by the shared rows in the store.

    ``async with breakers.call("asr"):`` wraps one call to a service: it raises
    :class:`DependencyUnavailable` (with ``retry_after``) when the breaker refuses, and records the
    outcome by the exception the block raises (see :func:`classify`). A failure that leaves the
    breaker open is re-raised as :class:`DependencyUnavailable` too, so the job that met the outage
    is deferred without spending an attempt.

    :meth:`gate` is the worker's dispatch gate: a stage whose services have an open breaker is not
    claimed at all. Its reads are cached for ``cache_ttl`` seconds so idle workers do not hammer
    the store.
    """

    def __init__(
        self,
        store: Store,
        configs: Mapping[str, BreakerConfig] | None = None,
        *,
        default: BreakerConfig | None = None,
        stage_services: Mapping[str, Sequence[str]] = STAGE_SERVICES,
        clock: Clock = time.time,
        owner: str | None = None,
        cache_ttl: float = 0.5,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.store = store
        self.configs = dict(configs or {})
        self.default = default or BreakerConfig()
        self.stage_services = {stage: tuple(services) for stage, services in stage_services.items()}
        self.owner = owner or new_owner()
        self.cache_ttl = cache_ttl
        self._clock = clock
        self._monotonic = monotonic
        self._tokens = itertools.count(1)
        self._cache: dict[str, BreakerRecord] = {}
        self._cache_at: float | None = None

    # -- configuration ----------------------------------------------------------------------------
    def config(self, name: str) -> BreakerConfig:
        return self.configs.get(name, self.default)

    @property
    def names(self) -> list[str]:
        """The breakers known without looking at the store: configured ones and the stages' services."""
        found = dict.fromkeys([*SERVICES, *self.configs])
        for services in self.stage_services.values():
            found.update(dict.fromkeys(services))
        return list(found)

    # -- calls --------------------------------------------------------------------------------------
    def call(self, name: str) -> _Call:
        return _Call(self, name)

    async def acquire(self, name: str) -> Permit:
        """A permit to call ``name``; :class:`DependencyUnavailable` when the breaker refuses."""
        token = f"{self.owner}#{next(self._tokens)}"
        config = self.config(name)
        clock = self._clock

        def fn(current: BreakerRecord | None) -> BreakerChange[tuple[Permit, BreakerRecord]]:
            rec = current or initial(name)
            new, transition, permit = acquire(rec, config, now=clock(), token=token)
            return new, transition, (permit, new)

        permit, rec = await self.store.breaker_apply(name, fn)
        self._remember(rec)
        if not permit.allowed:
            raise DependencyUnavailable(permit.reason, retry_after=permit.retry_after)
        return permit

    async def record(
        self, permit: Permit, outcome: Outcome, *, duration: float | None = None, error: str | None = None
    ) -> BreakerRecord:
        """Count the outcome of a call made under ``permit``; returns the breaker as it now is."""
        config = self.config(permit.name)
        clock = self._clock

        def fn(current: BreakerRecord | None) -> BreakerChange[BreakerRecord]:
            rec = current or initial(permit.name)
            return record_outcome(
                rec, config, now=clock(), token=permit.token, outcome=outcome, duration=duration, error=error
            )

        rec: BreakerRecord = await self.store.breaker_apply(permit.name, fn)
        self._remember(rec)
        return rec

    # -- operating ------------------------------------------------------------------------------
    async def get(self, name: str) -> BreakerRecord:
        for rec in await self.store.list_breakers():
            if rec.name == name:
                return rec
        return initial(name)

    async def list(self) -> list[BreakerRecord]:
        """Every known breaker: the configured ones (closed if never used) and any in the store."""
        stored = {rec.name: rec for rec in await self.store.list_breakers()}
        names = [*self.names, *(n for n in sorted(stored) if n not in self.names)]
        return [stored.get(name) or initial(name) for name in names]

    async def reset(self, name: str, *, reason: str = "manual reset") -> BreakerRecord:
        return await self._apply(name, lambda rec, now: reset(rec, now=now, reason=reason))

    async def reset_all(self, *, reason: str = "manual reset") -> int:
        """Close every breaker; returns how many were not closed."""
        closed = 0
        for rec in await self.store.list_breakers():
            if rec.state is not BreakerState.CLOSED:
                closed += 1
            await self.reset(rec.name, reason=reason)
        return closed

    async def on_health(self, name: str, healthy: bool) -> BreakerRecord:
        """The health monitor's word: a service that turned healthy moves its open breaker to half-open."""
        if not healthy:
            return await self.get(name)
        return await self._apply(name, lambda rec, now: health_recovered(rec, now=now))

    async def events(self, name: str | None = None, *, limit: int = 50) -> builtins.list[Transition]:
        return await self.store.breaker_events(name, limit=limit)

    async def _apply(
        self, name: str, change: Callable[[BreakerRecord, float], BreakerChange[BreakerRecord]]
    ) -> BreakerRecord:
        clock = self._clock

        def fn(current: BreakerRecord | None) -> BreakerChange[BreakerRecord]:
            return change(current or initial(name), clock())

        rec: BreakerRecord = await self.store.breaker_apply(name, fn)
        self._remember(rec)
        return rec

    # -- dispatch ---------------------------------------------------------------------------------
    async def gate(self, queue: str) -> str | None:
        """Why ``queue`` must not be claimed now (a breaker its stage needs is open), or ``None``."""
        services = self.stage_services.get(queue, ())
        if not services:
            return None
        records = await self._snapshot()
        now = self._clock()
        for service in services:
            rec = records.get(service)
            reason = None if rec is None else blocking_reason(rec, now=now)
            if reason is not None:
                return reason
        return None

    async def blocked(self, queues: Iterable[str] | None = None) -> dict[str, str]:
        """Queue -> why it is not being claimed, for the queues held back by a breaker."""
        found: dict[str, str] = {}
        for queue in self.stage_services if queues is None else queues:
            reason = await self.gate(queue)
            if reason is not None:
                found[queue] = reason
        return found

    async def annotate(self, stats: Mapping[str, QueueStats]) -> dict[str, QueueStats]:
        """Queue statistics with ``blocked_by`` filled in from the breakers."""
        blocked = await self.blocked(stats)
        return {queue: replace(q, blocked_by=blocked.get(queue)) for queue, q in stats.items()}

    async def _snapshot(self) -> dict[str, BreakerRecord]:
        now = self._monotonic()
        if self._cache_at is None or now - self._cache_at >= self.cache_ttl:
            self._cache = {rec.name: rec for rec in await self.store.list_breakers()}
            self._cache_at = now
        return self._cache

    def _remember(self, rec: BreakerRecord) -> None:
        """What this process just wrote is the freshest it can know: keep it in the gate's cache."""
        if self._cache_at is not None:
            self._cache[rec.name] = rec
