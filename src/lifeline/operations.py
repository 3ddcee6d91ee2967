"""What an operator does, against the store on this host or a running service over HTTP.

The CLI is written against :class:`Operations`; ``--url``/``--token`` choose
:class:`RemoteOperations` (the failure-recovery API), otherwise :class:`LocalOperations` opens the
store directly. Both return the same domain values, so the tables look the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Self

import httpx

from lifeline.domain import (
    Attempt,
    AttemptOutcome,
    InvalidTransition,
    Job,
    JobInfo,
    JobState,
    LifelineError,
    NotFound,
    RecordingStatus,
)
from lifeline.queue.recovery import RecoveryManager
from lifeline.store.base import (
    CleanupReport,
    QueueStats,
    RecordingReport,
    RecoveryReport,
    RecoveryStats,
    StageReport,
    Store,
)


class RemoteError(LifelineError):
    """The service answered with an error (the message carries its status and detail)."""


@dataclass(frozen=True, slots=True)
class BreakerView:
    name: str
    state: str
    details: dict[str, Any]


class Operations(Protocol):
    async def queue_stats(self) -> dict[str, QueueStats]: ...
    async def recovery_stats(self) -> RecoveryStats: ...
    async def list_jobs(self, *, queue: str | None, state: JobState | None, limit: int) -> list[Job]: ...
    async def get_job(self, job_id: int) -> JobInfo: ...
    async def cancel(self, job_id: int) -> None: ...
    async def requeue(self, job_id: int) -> None: ...
    async def requeue_dead_letters(self, queue: str) -> int: ...
    async def recover(self, queue: str | None, job_id: int | None) -> RecoveryReport: ...
    async def pause(self, queue: str, reason: str | None) -> None: ...
    async def resume(self, queue: str) -> None: ...
    async def cleanup(self, days: float) -> CleanupReport: ...
    async def recording_status(self, audio_uuid: str) -> RecordingReport: ...
    async def breakers(self) -> list[BreakerView]: ...
    async def reset_breakers(self, name: str | None) -> int: ...


class LocalOperations:
    """Straight to the store (same host)."""

    def __init__(self, store: Store, recovery: RecoveryManager, breakers: Any | None = None) -> None:
        self.store = store
        self.recovery = recovery
        self.breaker_service = breakers

    async def queue_stats(self) -> dict[str, QueueStats]:
        stats = await self.store.queue_stats()
        if self.breaker_service is None:
            return stats
        annotated: dict[str, QueueStats] = await self.breaker_service.annotate(stats)
        return annotated

    async def recovery_stats(self) -> RecoveryStats:
        return await self.store.recovery_stats()

    async def list_jobs(self, *, queue: str | None, state: JobState | None, limit: int) -> list[Job]:
        return await self.store.list_jobs(queue=queue, state=state, limit=limit)

    async def get_job(self, job_id: int) -> JobInfo:
        return await self.store.get_job(job_id)

    async def cancel(self, job_id: int) -> None:
        await self.store.cancel(job_id)

    async def requeue(self, job_id: int) -> None:
        await self.store.requeue(job_id)

    async def requeue_dead_letters(self, queue: str) -> int:
        return await self.store.requeue_dead_letters(queue)

    async def recover(self, queue: str | None, job_id: int | None) -> RecoveryReport:
        return await self.recovery.recover(queue=queue, job_id=job_id, force=job_id is not None)

    async def pause(self, queue: str, reason: str | None) -> None:
        await self.store.pause(queue, reason)

    async def resume(self, queue: str) -> None:
        await self.store.resume(queue)

    async def cleanup(self, days: float) -> CleanupReport:
        return await self.store.cleanup(completed_older_than=days * 86_400)

    async def recording_status(self, audio_uuid: str) -> RecordingReport:
        return await self.store.recording_status(audio_uuid)

    async def breakers(self) -> list[BreakerView]:
        if self.breaker_service is None:
            return []
        return [_breaker_view(record.to_dict()) for record in await self.breaker_service.list()]

    async def reset_breakers(self, name: str | None) -> int:
        if self.breaker_service is None:
            return 0
        if name is None:
            count: int = await self.breaker_service.reset_all()
            return count
        if name not in {b.name for b in await self.breakers()}:
            raise NotFound(f"no circuit breaker {name!r}")
        await self.breaker_service.reset(name)
        return 1


class ServiceClient:
    """A running service reached with a user's token; subclasses name the API part they call."""

    PREFIX = ""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    @classmethod
    def connect(cls, url: str, token: str, *, timeout: float = 30.0) -> Self:
        return cls(service_client(url, token, timeout=timeout))

    async def close(self) -> None:
        await self.client.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return await call_service(self.client, method, self.PREFIX + path, **kwargs)


class RemoteOperations(ServiceClient):
    """The same operations through a running service's failure-recovery API."""

    PREFIX = "/api/failure-recovery"

    async def queue_stats(self) -> dict[str, QueueStats]:
        data = await self._call("GET", "/queue-stats")
        return {name: _queue_stats(q) for name, q in data.items()}

    async def recovery_stats(self) -> RecoveryStats:
        d = await self._call("GET", "/recovery-stats")
        return RecoveryStats(
            d["runs"],
            d["attempted"],
            d["successful"],
            d["requeued"],
            d["escalated"],
            d["last_run_at"],
            d["last_recovered"],
        )

    async def list_jobs(self, *, queue: str | None, state: JobState | None, limit: int) -> list[Job]:
        params: dict[str, Any] = {"limit": limit}
        if queue is not None:
            params["queue"] = queue
        if state is not None:
            params["state"] = state.value
        data = await self._call("GET", "/jobs", params=params)
        return [_job(j) for j in data["items"]]

    async def get_job(self, job_id: int) -> JobInfo:
        return _job_info(await self._call("GET", f"/jobs/{job_id}"))

    async def cancel(self, job_id: int) -> None:
        await self._call("DELETE", f"/jobs/{job_id}")

    async def requeue(self, job_id: int) -> None:
        await self._call("POST", f"/jobs/{job_id}/retry")

    async def requeue_dead_letters(self, queue: str) -> int:
        data = await self._call("POST", f"/persistent-queues/{queue}/dead-letter/requeue-all")
        return int(data["count"])

    async def recover(self, queue: str | None, job_id: int | None) -> RecoveryReport:
        queues = [queue] if queue is not None else list(await self.queue_stats())
        found, requeued, escalated = 0, [], []
        for name in queues:
            params = {"item_id": job_id} if job_id is not None else {}
            data = await self._call("POST", f"/recovery/{name}/trigger", params=params)
            found += data["found"]
            requeued += data["requeued"]
            escalated += data["escalated"]
        return RecoveryReport(found=found, requeued=requeued, escalated=escalated)

    async def pause(self, queue: str, reason: str | None) -> None:
        await self._call(
            "POST", f"/persistent-queues/{queue}/pause", params={"reason": reason} if reason else {}
        )

    async def resume(self, queue: str) -> None:
        await self._call("POST", f"/persistent-queues/{queue}/resume")

    async def cleanup(self, days: float) -> CleanupReport:
        data = await self._call("POST", "/maintenance/cleanup", params={"queue_days": days})
        return CleanupReport(data["jobs_deleted"], data["attempts_deleted"])

    async def recording_status(self, audio_uuid: str) -> RecordingReport:
        d = await self._call("GET", f"/pipeline-status/{audio_uuid}")
        return RecordingReport(
            audio_uuid=d["audio_uuid"],
            user_id=d["user_id"],
            client_id=d["client_id"],
            created_at=d["created_at"],
            status=RecordingStatus(d["status"]),
            stages={
                name: StageReport(name, [_job_info(j) for j in stage["jobs"]])
                for name, stage in d["stages"].items()
            },
            last_error=d["last_error"],
        )

    async def breakers(self) -> list[BreakerView]:
        return [_breaker_view(b) for b in await self._call("GET", "/circuit-breakers")]

    async def reset_breakers(self, name: str | None) -> int:
        if name is None:
            data = await self._call("POST", "/circuit-breakers/reset-all")
            return int(data.get("count") or 0)
        await self._call("POST", f"/circuit-breakers/{name}/reset")
        return 1


def service_client(url: str, token: str, *, timeout: float = 30.0) -> httpx.AsyncClient:
    """An HTTP client of the service at ``url`` that sends ``token`` with every request."""
    return httpx.AsyncClient(
        base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=timeout
    )


async def call_service(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    """One request to the service; its JSON answer (``None`` for an empty one, e.g. 204).

    404 raises :class:`NotFound`, 409 :class:`InvalidTransition`, any other error status or a
    failed connection :class:`RemoteError`, each with the service's reason."""
    try:
        response = await client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise RemoteError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
    if response.status_code == 404:
        raise NotFound(_detail(response))
    if response.status_code == 409:
        raise InvalidTransition(_detail(response))
    if response.status_code >= 400:
        raise RemoteError(f"{method} {path}: HTTP {response.status_code}: {_detail(response)}")
    if response.status_code == 204 or not response.content:
        return None
    return response.json()


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:200]
    return str(detail)


def _breaker_view(d: dict[str, Any]) -> BreakerView:
    return BreakerView(name=str(d["name"]), state=str(d["state"]), details=d)


def _queue_stats(q: dict[str, Any]) -> QueueStats:
    return QueueStats(
        queue=q["queue"],
        counts={JobState(s): n for s, n in q["counts"].items()},
        oldest_pending_age=q["oldest_pending_age"],
        paused=q["paused"],
        pause_reason=q["pause_reason"],
        completed_last_minute=q["completed_last_minute"],
        completed_last_5_minutes=q["completed_last_5_minutes"],
        blocked_by=q.get("blocked_by"),
    )


def _job(j: dict[str, Any]) -> Job:
    return Job(
        id=j["id"],
        queue=j["queue"],
        state=JobState(j["state"]),
        payload={},  # the API never shows payloads
        priority=j["priority"],
        attempts=j["attempts"],
        max_attempts=j["max_attempts"],
        run_at=j["run_at"],
        created_at=j["created_at"],
        updated_at=j["updated_at"],
        recording_id=j["recording_id"],
        user_id=j["user_id"],
        client_id=j["client_id"],
        last_error=j["last_error"],
        lost_count=j["lost_count"],
        finished_at=j["finished_at"],
    )


def _job_info(j: dict[str, Any]) -> JobInfo:
    return JobInfo(
        _job(j),
        [
            Attempt(
                job_id=j["id"],
                claim=a["claim"],
                worker_id=a["worker_id"],
                started_at=a["started_at"],
                finished_at=a["finished_at"],
                outcome=AttemptOutcome(a["outcome"]),
                error=a["error"],
            )
            for a in j.get("attempt_history", [])
        ],
    )
