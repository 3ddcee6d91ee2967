"""Unauthenticated probes for load balancers and Prometheus: /health, /readiness, /metrics."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from lifeline.api.deps import Ctx
from lifeline.api.metrics import render_metrics
from lifeline.api.schemas import HealthOut, ReadinessOut
from lifeline.api.services import breaker_list, health_summary
from lifeline.domain import LifelineError

log = logging.getLogger(__name__)
router = APIRouter(tags=["ops"])


async def _database(ctx: Ctx) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await ctx.store.recovery_stats()
    except LifelineError as exc:
        log.warning("database check failed: %s", type(exc).__name__)
        return {"status": "unhealthy", "error": type(exc).__name__}
    return {"status": "healthy", "response_ms": round((time.perf_counter() - started) * 1000, 2)}


@router.get(
    "/health",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "the database does not answer"}},
)
async def health(ctx: Ctx) -> JSONResponse:
    """Overall and per-component status, without URLs or secrets.

    A dependency that is down (its breaker open) is a warning (``degraded``, still 200): one
    service down must not make a load balancer pull every instance. Only a store that does not
    answer makes this 503.
    """
    components: dict[str, dict[str, Any]] = {"database": await _database(ctx)}
    summary = await health_summary(ctx)
    for name, service in summary.get("services", {}).items():
        if name != "database":
            components[name] = {"status": service.get("status", "unknown")}
    for breaker in await breaker_list(ctx):
        entry = components.setdefault(breaker["name"], {"status": "unknown"})
        entry["breaker"] = breaker["state"]
        if breaker["state"] != "closed" and entry["status"] == "healthy":
            entry["status"] = "degraded"
    if components["database"]["status"] != "healthy":
        overall, code = "unhealthy", status.HTTP_503_SERVICE_UNAVAILABLE
    elif any(
        c["status"] in ("degraded", "unhealthy") or c.get("breaker", "closed") != "closed"
        for c in components.values()
    ):
        overall, code = "degraded", status.HTTP_200_OK
    else:
        overall, code = "ok", status.HTTP_200_OK
    body = HealthOut(status=overall, components=components)
    return JSONResponse(body.model_dump(), status_code=code)


@router.get(
    "/readiness",
    response_model=ReadinessOut,
    responses={503: {"model": ReadinessOut, "description": "the store does not answer"}},
)
async def readiness(ctx: Ctx) -> JSONResponse:
    database = await _database(ctx)
    ready = database["status"] == "healthy"
    return JSONResponse(
        ReadinessOut(ready=ready).model_dump(),
        status_code=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE,
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(ctx: Ctx) -> Response:
    return Response(await render_metrics(ctx), media_type=CONTENT_TYPE_LATEST)
