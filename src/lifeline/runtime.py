"""Assembly: from settings to a running store, workers and recovery manager.

This is the one place that turns :class:`Settings` into objects; the CLI calls it, and so will the
app factory. Nothing here reads the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import Mapping, Sequence

from lifeline.config import Settings
from lifeline.domain import ConfigError
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


def load_handlers(spec: str) -> dict[str, Handler]:
    """Handlers from ``package.module:attribute``: a mapping of queue name to async handler,
    or a function returning one."""
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
    handlers = target() if callable(target) and not isinstance(target, Mapping) else target
    if not isinstance(handlers, Mapping) or not all(callable(h) for h in handlers.values()):
        raise ConfigError(f"{spec} is not a mapping of queue names to handlers")
    return {str(queue): handler for queue, handler in handlers.items()}


async def run_workers(
    settings: Settings,
    handlers: Mapping[str, Handler],
    *,
    queues: Sequence[str] | None = None,
    concurrency: int | None = None,
    burst: bool = False,
    with_recovery: bool = True,
) -> WorkerStats | None:
    """Run a worker (if there are handlers) and the recovery manager until SIGTERM/SIGINT."""
    async with open_store(settings) as store:
        recovery = RecoveryManager(store, recovery_settings(settings)) if with_recovery else None
        worker = (
            Worker(
                store,
                handlers,
                queues=queues,
                concurrency=concurrency or settings.worker_concurrency,
                poll_interval=settings.poll_interval,
                shutdown_timeout=settings.shutdown_timeout,
            )
            if handlers
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
        stopper.cancel()
        stats = await worker_task if worker_task is not None else None
        for task in tasks:
            await task
        return stats
