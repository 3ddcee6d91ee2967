"""Assembly: from settings to a running store, workers and recovery manager.

This is the one place that turns :class:`Settings` into objects; the CLI calls it, and so will the
app factory. Nothing here reads the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from lifeline.breakers import CircuitBreakers
from lifeline.config import Settings
from lifeline.domain import ConfigError
from lifeline.health import HealthMonitor
from lifeline.queue.recovery import DAY, RecoveryManager, RecoverySettings
from lifeline.queue.worker import Handler, Worker, WorkerStats
from lifeline.store.base import Store
from lifeline.store.url import connect

log = logging.getLogger(__name__)


def open_store(settings: Settings) -> Store:
    return connect(settings.database_url, synchronous=settings.sqlite_synchronous, policies=settings.policies)


def recovery_settings(settings: Settings) -> RecoverySettings:
    retention = settings.retention_days * DAY if settings.retention_days > 0 else None
    return RecoverySettings(interval=settings.recovery_interval, retention=retention)


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a handler factory is given: the objects its handlers share (built from the settings).

    A factory whose handlers hold resources (HTTP clients, models) appends their ``aclose`` to
    ``closers``; :func:`run_workers` awaits them once its worker has stopped.
    """

    settings: Settings
    store: Store
    breakers: CircuitBreakers
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        """Await every closer (newest first); one that fails is logged and the rest still run."""
        while self.closers:
            closer = self.closers.pop()
            try:
                await closer()
            except Exception:
                log.exception("closing a handler resource failed")


# A mapping of queue name to handler, or a factory that builds one from the HandlerContext once the
# store is open (handlers that call external services need the breakers).
HandlerFactory = Callable[[HandlerContext], Mapping[str, Handler]]
Handlers = Mapping[str, Handler] | HandlerFactory


def build_breakers(settings: Settings, store: Store) -> CircuitBreakers:
    return CircuitBreakers(store, settings.breakers, default=settings.breaker)


def build_monitor(settings: Settings, store: Store, breakers: CircuitBreakers | None) -> HealthMonitor | None:
    """The health monitor over the configured services; ``None`` when LIFELINE_HEALTH_INTERVAL is 0."""
    if settings.health_interval <= 0:
        return None
    from lifeline.probes import probes_from_settings  # httpx is loaded only when the monitor runs

    return HealthMonitor(
        store,
        probes_from_settings(settings, store),
        breakers,
        interval=settings.health_interval,
        timeout=settings.health_timeout,
        slow_threshold=settings.health_slow,
    )


def resolve_handlers(source: Handlers, context: HandlerContext) -> dict[str, Handler]:
    """The handlers of ``source``, calling it with ``context`` if it is a factory."""
    handlers = source(context) if callable(source) and not isinstance(source, Mapping) else source
    if not isinstance(handlers, Mapping) or not all(callable(h) for h in handlers.values()):
        raise ConfigError("the handler factory did not return a mapping of queue names to handlers")
    return {str(queue): handler for queue, handler in handlers.items()}


def _takes_context(target: Callable[..., object]) -> bool:
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters
    )


def load_handlers(spec: str) -> Handlers:
    """Handlers from ``package.module:attribute``: a mapping of queue name to async handler, a
    function returning one, or a function of a :class:`HandlerContext` returning one (called once
    the store is open, see :func:`resolve_handlers`)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"--app must look like package.module:attribute, not {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name}: {exc}") from exc
    target = getattr(module, attribute, None)
    if target is None:
        raise ConfigError(f"{module_name} has no attribute {attribute}")
    if callable(target) and not isinstance(target, Mapping) and _takes_context(target):
        factory: HandlerFactory = target
        return factory
    handlers = target() if callable(target) and not isinstance(target, Mapping) else target
    if not isinstance(handlers, Mapping) or not all(callable(h) for h in handlers.values()):
        raise ConfigError(f"{spec} is not a mapping of queue names to handlers")
    return {str(queue): handler for queue, handler in handlers.items()}


async def run_workers(
    settings: Settings,
    handlers: Handlers,
    *,
    queues: Sequence[str] | None = None,
    concurrency: int | None = None,
    burst: bool = False,
    with_recovery: bool = True,
) -> WorkerStats | None:
    """Run a worker (if there are handlers), the recovery manager and the health monitor until
    SIGTERM/SIGINT. The worker does not claim a stage while a breaker it needs is open."""
    async with open_store(settings) as store:
        breakers = build_breakers(settings, store)
        context = HandlerContext(settings, store, breakers)
        try:
            return await _run(
                context,
                handlers,
                queues=queues,
                concurrency=concurrency,
                burst=burst,
                with_recovery=with_recovery,
            )
        finally:
            await context.close()  # the handlers' resources, once the worker has stopped


async def _run(
    context: HandlerContext,
    handlers: Handlers,
    *,
    queues: Sequence[str] | None,
    concurrency: int | None,
    burst: bool,
    with_recovery: bool,
) -> WorkerStats | None:
    settings, store, breakers = context.settings, context.store, context.breakers
    stage_handlers = resolve_handlers(handlers, context)
    recovery = RecoveryManager(store, recovery_settings(settings)) if with_recovery else None
    monitor = build_monitor(settings, store, breakers) if with_recovery and not burst else None
    worker = (
        Worker(
            store,
            stage_handlers,
            queues=queues,
            concurrency=concurrency or settings.worker_concurrency,
            poll_interval=settings.poll_interval,
            shutdown_timeout=settings.shutdown_timeout,
            gate=breakers.gate,
        )
        if stage_handlers
        else None
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
    if recovery is not None:
        if burst:
            await recovery.recover()
        else:
            tasks.append(asyncio.create_task(recovery.run()))
    if monitor is not None:
        tasks.append(asyncio.create_task(monitor.run()))
    worker_task = asyncio.create_task(worker.run(burst=burst)) if worker is not None else None
    if worker is None:
        log.info("no handlers registered: running the recovery manager only")
    stopper: asyncio.Future[object] = asyncio.ensure_future(stop.wait())
    waiting: set[asyncio.Future[object]] = {stopper}
    if worker_task is not None:
        waiting.add(asyncio.ensure_future(worker_task))
    elif burst:
        waiting = set()
    if waiting:
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if worker is not None:
        worker.stop()
    if recovery is not None:
        recovery.stop()
    if monitor is not None:
        monitor.stop()
    stopper.cancel()
    stats = await worker_task if worker_task is not None else None
    for task in tasks:
        await task
    return stats
