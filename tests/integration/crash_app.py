"""Handlers for the crash and multi-process tests, loaded by ``lifeline worker --app``.

Each job writes one output keyed by its number in the completing transaction. Outputs are upserts
whose ``revision`` counts how many times the key was committed, so a job completed twice shows
revision 2; a separate ``hold`` table records which process held which job, for overlap checks.
"""

from __future__ import annotations

import asyncio
import os

from lifeline.domain import Job, Output
from lifeline.queue.worker import JobResult


async def work(job: Job) -> JobResult:
    n = int(job.payload["n"])
    delay = float(job.payload.get("sleep", 0.0))
    if delay:
        await asyncio.sleep(delay)
    return JobResult(
        outputs=[Output(recording_id=f"job-{n}", stage="crash", index=0, data={"n": n, "pid": os.getpid()})]
    )


handlers = {"crash": work}
