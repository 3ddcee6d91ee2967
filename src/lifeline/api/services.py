"""Breakers and health as the API shows them; empty (never invented) when none are configured."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, status

from lifeline.api.context import AppContext
from lifeline.api.schemas import HealthCheckOut, HealthHistoryOut


def _missing(kind: str, name: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no {kind} {name!r}")


async def breaker_list(ctx: AppContext) -> list[dict[str, Any]]:
    if ctx.breakers is None:
        return []
    return [record.to_dict() for record in await ctx.breakers.list()]


async def breaker_one(ctx: AppContext, name: str) -> dict[str, Any]:
    for record in await breaker_list(ctx):
        if record["name"] == name:
            return record
    raise _missing("circuit breaker", name)


async def health_summary(ctx: AppContext) -> dict[str, Any]:
    if ctx.health is None:
        return {"status": "unknown", "services": {}}
    summary: dict[str, Any] = await ctx.health.summary()
    return summary


async def health_one(ctx: AppContext, name: str) -> dict[str, Any]:
    services = (await health_summary(ctx))["services"]
    if name not in services:
        raise _missing("monitored service", name)
    found: dict[str, Any] = services[name]
    return found


async def health_check_now(ctx: AppContext, name: str) -> dict[str, Any]:
    if ctx.health is None or name not in ctx.health.service_names():
        raise _missing("monitored service", name)
    result: dict[str, Any] = await ctx.health.check_now(name)
    return result


async def health_history(ctx: AppContext, name: str, limit: int) -> HealthHistoryOut:
    """The service's latest ``limit`` checks, oldest first (the store answers newest first)."""
    if ctx.health is None or name not in ctx.health.service_names():
        raise _missing("monitored service", name)
    checks = await ctx.store.health_history(name, limit=limit)
    return HealthHistoryOut(service=name, checks=[HealthCheckOut.of(c) for c in reversed(checks)])
