"""The failure-recovery API under ``/api/failure-recovery``.

A normal user sees statistics of their own jobs and only their own recordings, clients and jobs;
somebody else's id answers 404, exactly like an id that does not exist. Management needs a
superuser.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Query, status
from pydantic import BeforeValidator, Field

from lifeline.api.deps import Ctx, CurrentUser, Superuser
from lifeline.api.responses import AUTHENTICATED, errors
from lifeline.api.schemas import (
    ActionResultOut,
    CleanupOut,
    ClientStatsOut,
    HealthHistoryOut,
    JobDetailOut,
    JobOut,
    JobPage,
    PersistentQueueOut,
    PipelineStatusOut,
    QueueStatsOut,
    RecoveryResultOut,
    RecoveryStatsOut,
    SystemOverviewOut,
    ThroughputOut,
)
from lifeline.api.services import (
    breaker_list,
    breaker_one,
    health_check_now,
    health_history,
    health_one,
    health_summary,
)
from lifeline.domain import Job, JobState, NotFound, Stage, User
from lifeline.store.base import QueueStats


def _not_a_bool(value: Any) -> Any:
    """JSON ``true`` is not a count: pydantic's lax mode would read it as 1."""
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    return value


RetryCount = Annotated[int, Field(ge=1, le=100), BeforeValidator(_not_a_bool)]

router = APIRouter(prefix="/api/failure-recovery", tags=["failure-recovery"], responses=AUTHENTICATED)

QUEUES = tuple(s.value for s in Stage)
JobId = Annotated[int, Path(ge=1, le=2**62, examples=[1])]
QueueName = Annotated[
    str, Path(description="chunk, transcription, memory or action_item", examples=["transcription"])
]
AudioUuid = Annotated[str, Path(description="a recording", examples=["rec-1"])]
ClientId = Annotated[str, Path(description="a recording device", examples=["phone-1"])]
ServiceName = Annotated[str, Path(description="a monitored service", examples=["store"])]
BreakerName = Annotated[str, Path(description="a circuit breaker", examples=["asr"])]
_NOT_FOUND = errors(404)
_ADMIN = errors(403)
_ADMIN_NOT_FOUND = errors(403, 404)


def _queue(name: str) -> str:
    if name not in QUEUES:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"unknown queue {name!r}; queues are {', '.join(QUEUES)}"
        )
    return name


def _scope(user: User) -> str | None:
    return None if user.is_superuser else user.id


async def _stats(ctx: Ctx, user: User) -> dict[str, QueueStats]:
    stats = await ctx.store.queue_stats(user_id=_scope(user))
    if ctx.breakers is not None:  # a stage held back by an open breaker says so (blocked_by)
        stats = await ctx.breakers.annotate(stats)
    return {q: s for q, s in stats.items() if q in QUEUES}


async def _owned_job(ctx: Ctx, user: User, job_id: int) -> Job:
    try:
        info = await ctx.store.get_job(job_id)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}") from None
    if not user.is_superuser and info.job.user_id != user.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return info.job


# -- overview and statistics ------------------------------------------------------------------


@router.get("/system-overview", response_model=SystemOverviewOut)
async def system_overview(ctx: Ctx, user: CurrentUser) -> SystemOverviewOut:
    stats = await _stats(ctx, user)
    recovery = await ctx.store.recovery_stats(user_id=_scope(user))
    return SystemOverviewOut(
        queues={q: QueueStatsOut.of(s) for q, s in stats.items()},
        recovery=RecoveryStatsOut.of(recovery, "own" if _scope(user) else "all"),
        circuit_breakers=await breaker_list(ctx),
        health=await health_summary(ctx),
    )


@router.get("/queue-stats", response_model=dict[str, QueueStatsOut])
async def queue_stats(ctx: Ctx, user: CurrentUser) -> dict[str, QueueStatsOut]:
    return {q: QueueStatsOut.of(s) for q, s in (await _stats(ctx, user)).items()}


@router.get("/queue-stats/{queue_type}", response_model=QueueStatsOut, responses=_NOT_FOUND)
async def queue_stats_one(queue_type: QueueName, ctx: Ctx, user: CurrentUser) -> QueueStatsOut:
    return QueueStatsOut.of((await _stats(ctx, user))[_queue(queue_type)])


@router.get("/pipeline-status/{audio_uuid}", response_model=PipelineStatusOut, responses=_NOT_FOUND)
async def pipeline_status(audio_uuid: AudioUuid, ctx: Ctx, user: CurrentUser) -> PipelineStatusOut:
    try:
        report = await ctx.store.recording_status(audio_uuid)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no recording {audio_uuid}") from None
    if not user.is_superuser and report.user_id != user.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no recording {audio_uuid}")
    return PipelineStatusOut.of(report)


@router.get("/client-stats/{client_id}", response_model=ClientStatsOut, responses=_NOT_FOUND)
async def client_stats(client_id: ClientId, ctx: Ctx, user: CurrentUser) -> ClientStatsOut:
    counts = await ctx.store.client_stats(client_id, user_id=_scope(user))
    total = sum(counts.values())
    if total == 0:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no client {client_id}")
    return ClientStatsOut(client_id=client_id, counts={s.value: n for s, n in counts.items()}, total=total)


@router.get("/recovery-stats", response_model=RecoveryStatsOut)
async def recovery_stats(ctx: Ctx, user: CurrentUser) -> RecoveryStatsOut:
    scope = _scope(user)
    return RecoveryStatsOut.of(await ctx.store.recovery_stats(user_id=scope), "own" if scope else "all")


@router.get("/throughput", response_model=ThroughputOut)
async def throughput(
    ctx: Ctx,
    user: CurrentUser,
    minutes: Annotated[int, Query(ge=1, le=1440, description="how far back (retention keeps days)")] = 60,
    bucket: Annotated[int, Query(ge=10, le=3600, description="each bucket's length in seconds")] = 60,
) -> ThroughputOut:
    """Completed jobs per stage over time: a user's own jobs, or everyone's for a superuser."""
    scope = _scope(user)
    result = await ctx.store.throughput(
        since=time.time() - minutes * 60, bucket_seconds=bucket, user_id=scope
    )
    return ThroughputOut.of(result, "own" if scope else "all", QUEUES)


@router.post("/recovery/{queue_type}/trigger", response_model=RecoveryResultOut, responses=_ADMIN_NOT_FOUND)
async def trigger_recovery(
    queue_type: QueueName,
    ctx: Ctx,
    _: Superuser,
    item_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> RecoveryResultOut:
    queue = _queue(queue_type)
    if item_id is not None:
        try:
            job = (await ctx.store.get_job(item_id)).job
        except NotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {item_id}") from None
        if job.queue != queue:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {item_id} is not in {queue}")
    report = await ctx.recovery.recover(queue=queue, job_id=item_id, force=item_id is not None)
    return RecoveryResultOut(
        queue=queue, found=report.found, requeued=report.requeued, escalated=report.escalated
    )


# -- health and breakers ----------------------------------------------------------------------


@router.get("/health", response_model=dict[str, Any])
async def health(ctx: Ctx, _: CurrentUser) -> dict[str, Any]:
    return await health_summary(ctx)


@router.get("/health/{service_name}", response_model=dict[str, Any], responses=_NOT_FOUND)
async def health_service(service_name: ServiceName, ctx: Ctx, _: CurrentUser) -> dict[str, Any]:
    return await health_one(ctx, service_name)


@router.get("/health/{service_name}/history", response_model=HealthHistoryOut, responses=_NOT_FOUND)
async def health_service_history(
    service_name: ServiceName,
    ctx: Ctx,
    _: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=200, description="how many of the latest checks")] = 30,
) -> HealthHistoryOut:
    """The service's latest checks, oldest first: when, the status, the response time, the error.
    The monitor keeps the latest 200 per service."""
    return await health_history(ctx, service_name, limit)


@router.post("/health/{service_name}/check", response_model=dict[str, Any], responses=_ADMIN_NOT_FOUND)
async def health_check(service_name: ServiceName, ctx: Ctx, _: Superuser) -> dict[str, Any]:
    return await health_check_now(ctx, service_name)


@router.get("/circuit-breakers", response_model=list[dict[str, Any]])
async def circuit_breakers(ctx: Ctx, _: CurrentUser) -> list[dict[str, Any]]:
    return await breaker_list(ctx)


@router.post("/circuit-breakers/reset-all", response_model=ActionResultOut, responses=_ADMIN)
async def reset_all_breakers(ctx: Ctx, _: Superuser) -> ActionResultOut:
    if ctx.breakers is None:
        return ActionResultOut(message="no circuit breakers are configured", count=0)
    count = await ctx.breakers.reset_all()
    return ActionResultOut(message="all circuit breakers closed", count=count)


@router.get("/circuit-breakers/{name}", response_model=dict[str, Any], responses=_NOT_FOUND)
async def circuit_breaker(name: BreakerName, ctx: Ctx, _: CurrentUser) -> dict[str, Any]:
    return await breaker_one(ctx, name)


@router.post("/circuit-breakers/{name}/reset", response_model=ActionResultOut, responses=_ADMIN_NOT_FOUND)
async def reset_breaker(name: BreakerName, ctx: Ctx, _: Superuser) -> ActionResultOut:
    await breaker_one(ctx, name)  # 404 for an unknown breaker
    assert ctx.breakers is not None
    await ctx.breakers.reset(name)
    return ActionResultOut(message=f"circuit breaker {name} closed")


# -- persistent queues and dead letters -------------------------------------------------------


@router.get("/persistent-queues", response_model=dict[str, QueueStatsOut])
async def persistent_queues(ctx: Ctx, user: CurrentUser) -> dict[str, QueueStatsOut]:
    return {q: QueueStatsOut.of(s) for q, s in (await _stats(ctx, user)).items()}


@router.get("/persistent-queues/{queue_name}", response_model=PersistentQueueOut, responses=_NOT_FOUND)
async def persistent_queue(queue_name: QueueName, ctx: Ctx, user: CurrentUser) -> PersistentQueueOut:
    queue = _queue(queue_name)
    stats = (await _stats(ctx, user))[queue]
    failures: list[Job] = []
    for state in (JobState.DEAD_LETTER, JobState.FAILED, JobState.RETRY):
        failures += await ctx.store.list_jobs(queue=queue, state=state, user_id=_scope(user), limit=20)
    failures.sort(key=lambda j: j.updated_at, reverse=True)
    base = QueueStatsOut.of(stats).model_dump()
    return PersistentQueueOut(**base, recent_failures=[JobOut.of(j) for j in failures[:20]])


@router.get("/persistent-queues/{queue_name}/dead-letter", response_model=JobPage, responses=_ADMIN_NOT_FOUND)
async def dead_letters(
    queue_name: QueueName,
    ctx: Ctx,
    _: Superuser,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> JobPage:
    jobs = await ctx.store.list_jobs(
        queue=_queue(queue_name), state=JobState.DEAD_LETTER, limit=limit, offset=offset
    )
    return JobPage(items=[JobOut.of(j) for j in jobs], limit=limit, offset=offset)


@router.post(
    "/persistent-queues/{queue_name}/dead-letter/requeue-all",
    response_model=ActionResultOut,
    responses=_ADMIN_NOT_FOUND,
)
async def requeue_all_dead_letters(queue_name: QueueName, ctx: Ctx, _: Superuser) -> ActionResultOut:
    count = await ctx.store.requeue_dead_letters(_queue(queue_name))
    return ActionResultOut(message=f"{count} dead letters requeued", count=count)


@router.post(
    "/persistent-queues/{queue_name}/dead-letter/{message_id}/requeue",
    response_model=ActionResultOut,
    responses=errors(403, 404, 409, described={409: "not a dead letter"}),
)
async def requeue_dead_letter(
    queue_name: QueueName,
    message_id: JobId,
    ctx: Ctx,
    admin: Superuser,
    max_retries: Annotated[int | None, Query(ge=1, le=100)] = None,
) -> ActionResultOut:
    queue = _queue(queue_name)
    job = await _owned_job(ctx, admin, message_id)
    if job.queue != queue:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {message_id} is not in {queue}")
    if job.state is not JobState.DEAD_LETTER:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"job {message_id} is {job.state.value}, not dead_letter"
        )
    await ctx.store.requeue(message_id, max_attempts=max_retries)
    return ActionResultOut(message=f"job {message_id} requeued")


@router.post(
    "/persistent-queues/{queue_name}/pause", response_model=ActionResultOut, responses=_ADMIN_NOT_FOUND
)
async def pause_queue(
    queue_name: QueueName,
    ctx: Ctx,
    _: Superuser,
    reason: Annotated[str | None, Query(max_length=200)] = None,
) -> ActionResultOut:
    await ctx.store.pause(_queue(queue_name), reason)
    return ActionResultOut(message=f"{queue_name} paused")


@router.post(
    "/persistent-queues/{queue_name}/resume", response_model=ActionResultOut, responses=_ADMIN_NOT_FOUND
)
async def resume_queue(queue_name: QueueName, ctx: Ctx, _: Superuser) -> ActionResultOut:
    await ctx.store.resume(_queue(queue_name))
    return ActionResultOut(message=f"{queue_name} resumed")


@router.post("/maintenance/cleanup", response_model=CleanupOut, responses=_ADMIN)
async def cleanup(
    ctx: Ctx,
    _: Superuser,
    queue_days: Annotated[float | None, Query(ge=0, le=36500)] = None,
    persistent_hours: Annotated[float | None, Query(ge=0, le=876000)] = None,
) -> CleanupOut:
    """Delete completed and cancelled jobs older than ``queue_days`` (default: the retention
    setting); with ``persistent_hours``, also purge dead letters older than that."""
    days = ctx.settings.retention_days if queue_days is None else queue_days
    report = await ctx.store.cleanup(completed_older_than=days * 86_400)
    purged = 0
    if persistent_hours is not None:
        for queue in QUEUES:
            purged += await ctx.store.purge_dead_letters(queue, older_than=persistent_hours * 3_600)
    return CleanupOut(
        jobs_deleted=report.jobs_deleted, attempts_deleted=report.attempts_deleted, dead_letters_purged=purged
    )


# -- jobs -------------------------------------------------------------------------------------


@router.get("/jobs", response_model=JobPage)
async def list_jobs(
    ctx: Ctx,
    user: CurrentUser,
    queue: Annotated[Stage | None, Query()] = None,
    state: Annotated[JobState | None, Query()] = None,
    recording_id: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> JobPage:
    jobs = await ctx.store.list_jobs(
        queue=queue, state=state, recording_id=recording_id, user_id=_scope(user), limit=limit, offset=offset
    )
    return JobPage(items=[JobOut.of(j) for j in jobs], limit=limit, offset=offset)


@router.get("/jobs/{job_id}", response_model=JobDetailOut, responses=_NOT_FOUND)
async def get_job(job_id: JobId, ctx: Ctx, user: CurrentUser) -> JobDetailOut:
    await _owned_job(ctx, user, job_id)
    return JobDetailOut.of_info(await ctx.store.get_job(job_id))


@router.delete(
    "/jobs/{job_id}",
    response_model=ActionResultOut,
    responses=errors(404, 409, described={409: "finished"}),
)
async def cancel_job(job_id: JobId, ctx: Ctx, user: CurrentUser) -> ActionResultOut:
    await _owned_job(ctx, user, job_id)
    await ctx.store.cancel(job_id)
    return ActionResultOut(message=f"job {job_id} cancelled")


@router.post(
    "/jobs/{job_id}/retry",
    response_model=ActionResultOut,
    responses=errors(400, 404, 409, described={400: "the body is not JSON", 409: "not retryable"}),
)
async def retry_job(
    job_id: JobId,
    ctx: Ctx,
    user: CurrentUser,
    max_retries: Annotated[RetryCount | None, Body(embed=True)] = None,
) -> ActionResultOut:
    await _owned_job(ctx, user, job_id)
    await ctx.store.requeue(job_id, max_attempts=max_retries)
    return ActionResultOut(message=f"job {job_id} requeued")
