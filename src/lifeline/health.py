"""The health monitor: probes each configured service on an interval and keeps the history.

Each probe (see :mod:`lifeline.probes` for the real ones) answers one question with a
:class:`ProbeResult`; the monitor adds the timing (a timeout, and ``degraded`` for a slow answer),
records the check in the store (bounded history, response times with p50/p95, consecutive
failures, transitions) and tells the breakers when a service turns healthy, so that an open
breaker lets one real call try at once instead of waiting out its open time.

:func:`summarize` is the answer for ``/health``. A service whose breaker is open is a warning
(``degraded``), never a failure: one dependency down must not make load balancers pull every
instance, since every instance shares the same dependency. Only this instance's own means of work
(the store, the disk) can make it ``unhealthy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from lifeline.breakers import BreakerRecord, BreakerState, describe

if TYPE_CHECKING:
    from lifeline.breakers import CircuitBreakers
    from lifeline.store.base import Store

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class HealthStatus(enum.StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"  # answering, but slow or with a warning (the configured model is missing)
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"  # not checked yet


@dataclass(frozen=True, slots=True)
class ProbeResult:
    status: HealthStatus
    detail: str | None = None  # what was seen, e.g. "model llama3.2 listed"
    error: str | None = None  # why it is not healthy


class Probe(Protocol):
    """One service's health check. ``name`` is the service (and its breaker's) name."""

    @property
    def name(self) -> str: ...

    @property
    def critical(self) -> bool:
        """Whether this instance cannot work without it (the store, the disk)."""
        ...

    async def check(self) -> ProbeResult: ...


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One check of one service, as kept in the store's bounded history."""

    service: str
    status: HealthStatus
    latency: float | None  # seconds until the answer; None when there was no answer
    error: str | None
    detail: str | None
    checked_at: float


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    """A service's current health; ``samples``/``p50``/``p95`` are over the kept history."""

    service: str
    status: HealthStatus
    consecutive_failures: int = 0
    last_error: str | None = None
    last_checked_at: float | None = None
    last_latency: float | None = None
    changed_at: float | None = None
    detail: str | None = None
    samples: int = 0
    p50: float | None = None
    p95: float | None = None


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """A change of a service's status, kept as history in the store."""

    service: str
    from_status: HealthStatus
    to_status: HealthStatus
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The instance at a glance: the overall status and why."""

    status: HealthStatus
    services: list[ServiceHealth]
    breakers: list[BreakerRecord]
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


# -- pure logic ---------------------------------------------------------------------------------


def percentile(values: Iterable[float], fraction: float) -> float | None:
    """The nearest-rank percentile (``fraction`` in (0, 1]) of ``values``; ``None`` if empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def apply_check(
    previous: ServiceHealth | None, check: HealthCheck
) -> tuple[ServiceHealth, HealthEvent | None]:
    """The service's state after ``check``, and the transition if its status changed."""
    before = previous.status if previous is not None else HealthStatus.UNKNOWN
    failures = (previous.consecutive_failures if previous is not None else 0) + 1
    changed = before is not check.status
    state = ServiceHealth(
        service=check.service,
        status=check.status,
        consecutive_failures=failures if check.status is HealthStatus.UNHEALTHY else 0,
        last_error=check.error if check.error is not None else (previous.last_error if previous else None),
        last_checked_at=check.checked_at,
        last_latency=check.latency,
        changed_at=check.checked_at if changed or previous is None else previous.changed_at,
        detail=check.detail,
    )
    if not changed:
        return state, None
    reason = check.error or check.detail or check.status.value
    return state, HealthEvent(check.service, before, check.status, reason, check.checked_at)


def summarize(
    services: Sequence[ServiceHealth],
    breakers: Sequence[BreakerRecord],
    *,
    critical: Iterable[str] = ("store", "disk"),
) -> HealthReport:
    """The overall status: ``unhealthy`` only when a critical service is; an external service
    that is down, or an open breaker, is a warning (``degraded``)."""
    must = set(critical)
    warnings: list[str] = []
    failures: list[str] = []
    for svc in services:
        what = svc.last_error or svc.detail or ""
        text = f"{svc.service} {svc.status.value}" + (f": {what}" if what else "")
        if svc.status is HealthStatus.UNHEALTHY:
            (failures if svc.service in must else warnings).append(text)
        elif svc.status is HealthStatus.DEGRADED:
            warnings.append(text)
    for rec in breakers:
        if rec.state is not BreakerState.CLOSED:
            warnings.append(
                f"breaker {rec.name} {rec.state.value}" + (f": {rec.last_error}" if rec.last_error else "")
            )
    if failures:
        status = HealthStatus.UNHEALTHY
    elif warnings:
        status = HealthStatus.DEGRADED
    elif services and all(s.status is HealthStatus.UNKNOWN for s in services):
        status = HealthStatus.UNKNOWN
    else:
        status = HealthStatus.HEALTHY
    return HealthReport(status, list(services), list(breakers), warnings, failures)


# -- the monitor --------------------------------------------------------------------------------


class HealthMonitor:
    """Runs every probe each ``interval`` seconds (each within ``timeout``) and records the results."""

    def __init__(
        self,
        store: Store,
        probes: Sequence[Probe],
        breakers: CircuitBreakers | None = None,
        *,
        interval: float = 30.0,
        timeout: float = 5.0,
        slow_threshold: float = 2.0,
        keep: int = 200,
        clock: Clock = time.time,
        monotonic: Clock = time.perf_counter,
    ) -> None:
        names = [p.name for p in probes]
        if len(set(names)) != len(names):
            raise ValueError(f"two probes share a service name: {names}")
        self.store = store
        self.probes = list(probes)
        self.breakers = breakers
        self.interval = interval
        self.timeout = timeout
        self.slow_threshold = slow_threshold
        self.keep = keep
        self._clock = clock
        self._monotonic = monotonic
        self._stopping = asyncio.Event()

    async def check(self, probe: Probe) -> HealthCheck:
        """Run one probe now, record its result, and tell the breakers if the service recovered."""
        started = self._monotonic()
        latency: float | None
        try:
            result = await asyncio.wait_for(probe.check(), self.timeout)
            latency = self._monotonic() - started
        except TimeoutError:
            result = ProbeResult(HealthStatus.UNHEALTHY, error=f"no answer within {self.timeout:g}s")
            latency = None
        except Exception as exc:  # a probe reports what went wrong; it never stops the monitor
            result = ProbeResult(HealthStatus.UNHEALTHY, error=describe(exc))
            latency = None
        status, detail = result.status, result.detail
        if status is HealthStatus.HEALTHY and latency is not None and latency > self.slow_threshold:
            status = HealthStatus.DEGRADED
            detail = f"slow: {latency:.3f}s > {self.slow_threshold:g}s" + (f"; {detail}" if detail else "")
        check = HealthCheck(probe.name, status, latency, result.error, detail, self._clock())
        event = await self.store.record_health(check, keep=self.keep)
        if event is not None:
            log.info(
                "health: %s %s -> %s (%s)", event.service, event.from_status, event.to_status, event.reason
            )
            if (
                event.to_status is HealthStatus.HEALTHY
                and self.breakers is not None
                and probe.name in self.breakers.names
            ):
                await self.breakers.on_health(probe.name, True)
        return check

    async def check_all(self) -> list[HealthCheck]:
        return list(await asyncio.gather(*(self.check(p) for p in self.probes)))

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Check every service at once, then every ``interval`` until :meth:`stop`."""
        while not self._stopping.is_set():
            try:
                await self.check_all()
            except Exception:
                log.exception("health check round failed; trying again at the next interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)

    # -- what the API and the CLI show ------------------------------------------------------------
    def service_names(self) -> list[str]:
        return [p.name for p in self.probes]

    async def check_now(self, name: str) -> dict[str, Any]:
        """Check one service now; its state afterwards, as :meth:`summary` shows it."""
        probe = next((p for p in self.probes if p.name == name), None)
        if probe is None:
            raise KeyError(name)
        await self.check(probe)
        summary = await self.summary()
        found: dict[str, Any] = summary["services"][name]
        return found

    async def summary(self) -> dict[str, Any]:
        """:meth:`report` as plain JSON types (the API's ``health`` objects); times in ms."""
        report = await self.report()
        breakers = {b.name: b.state.value for b in report.breakers}
        critical = {p.name for p in self.probes if p.critical}
        return {
            "status": report.status.value,
            "services": {
                s.service: service_dict(s, breakers.get(s.service), s.service in critical)
                for s in report.services
            },
            "warnings": report.warnings,
            "failures": report.failures,
        }

    async def report(self) -> HealthReport:
        """The overall health from the store (shared by every process) and the breakers."""
        stored = {s.service: s for s in await self.store.health_states()}
        # only the services configured here: one removed from the settings no longer counts
        services = [stored.get(p.name) or ServiceHealth(p.name, HealthStatus.UNKNOWN) for p in self.probes]
        breakers = await self.breakers.list() if self.breakers is not None else []
        return summarize(services, breakers, critical=[p.name for p in self.probes if p.critical])


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def service_dict(
    service: ServiceHealth, breaker: str | None = None, critical: bool = False
) -> dict[str, Any]:
    return {
        "status": service.status.value,
        "critical": critical,
        "breaker": breaker,
        "consecutive_failures": service.consecutive_failures,
        "last_error": service.last_error,
        "detail": service.detail,
        "last_checked_at": service.last_checked_at,
        "last_change_at": service.changed_at,
        "last_response_ms": _ms(service.last_latency),
        "p50_ms": _ms(service.p50),
        "p95_ms": _ms(service.p95),
        "samples": service.samples,
    }
