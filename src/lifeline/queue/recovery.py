"""The recovery manager: puts back jobs whose worker is gone, and keeps the tables trim.

Recovery is a query, not a memory: a pass asks the store for leases that expired (a crashed or
hung worker) and for leases held by workers known to be dead, so it works the same after a restart
of the whole system as in the middle of a run. The first pass runs at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from lifeline.store.base import CleanupReport, RecoveryReport, Store

log = logging.getLogger(__name__)

DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class RecoverySettings:
    interval: float = 15.0
    retention: float | None = 7 * DAY  # completed jobs older than this are deleted; None keeps all
    cleanup_interval: float = 3_600.0
    cleanup_batch: int = 1_000


class RecoveryManager:
    def __init__(self, store: Store, settings: RecoverySettings | None = None) -> None:
        self.store = store
        self.settings = settings or RecoverySettings()
        self._stopping = asyncio.Event()
        self.last_report: RecoveryReport | None = None
        self.last_cleanup: CleanupReport | None = None

    async def recover(
        self, *, queue: str | None = None, job_id: int | None = None, force: bool = False
    ) -> RecoveryReport:
        """One pass now (the manual trigger: a queue, or one job with ``force`` to skip the lease)."""
        report = await self.store.recover_expired(queue=queue, job_id=job_id, force=force)
        self.last_report = report
        if report.recovered:
            log.info(
                "recovery: %d requeued, %d dead-lettered (of %d found)",
                len(report.requeued),
                len(report.escalated),
                report.found,
            )
        return report

    async def cleanup(self) -> CleanupReport | None:
        if self.settings.retention is None:
            return None
        report = await self.store.cleanup(
            completed_older_than=self.settings.retention, batch_size=self.settings.cleanup_batch
        )
        self.last_cleanup = report
        if report.jobs_deleted:
            log.info(
                "retention: deleted %d jobs and %d attempts", report.jobs_deleted, report.attempts_deleted
            )
        return report

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Recover at once, then every ``interval``; clean up every ``cleanup_interval``."""
        loop = asyncio.get_running_loop()
        next_cleanup = loop.time()
        while not self._stopping.is_set():
            try:
                await self.recover()
                if loop.time() >= next_cleanup:
                    await self.cleanup()
                    next_cleanup = loop.time() + self.settings.cleanup_interval
            except Exception:
                log.exception("recovery pass failed; trying again at the next interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.interval)
