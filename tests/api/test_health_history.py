"""``GET /api/failure-recovery/health/{service}/history``: a service's recorded checks, oldest first,
as the dashboard draws its response-time trend from them."""

from __future__ import annotations

import asyncio
import time

from lifeline.health import HealthCheck, HealthStatus

from .conftest import Api

URL = "/api/failure-recovery/health/{}/history"


async def _startup_round_done(api: Api, service: str) -> None:
    """The monitor checks every service once when the app starts; wait for it, so that the checks
    a test records afterwards are the newest."""
    deadline = time.monotonic() + 30
    while not await api.ctx.store.health_history(service, limit=1):
        assert time.monotonic() < deadline, f"the monitor never checked {service}"
        await asyncio.sleep(0.05)


async def test_history_is_the_latest_checks_oldest_first(api: Api) -> None:
    _, user = await api.new_user("someone@example.com")
    await _startup_round_done(api, "store")
    base = time.time() + 1000  # later than the startup check, whatever the clock says
    recorded = [
        HealthCheck("store", HealthStatus.HEALTHY, 0.0123, None, None, base + 1),
        HealthCheck("store", HealthStatus.UNHEALTHY, None, "database is locked", None, base + 2),
        HealthCheck("store", HealthStatus.DEGRADED, 2.5, None, "slow: 2.500s > 2s", base + 3),
        HealthCheck("store", HealthStatus.HEALTHY, 0.004, None, None, base + 4),
    ]
    for check in recorded:
        await api.ctx.store.record_health(check)

    # any logged-in user may read it (service health is nobody's own data)
    r = await api.client.get(URL.format("store"), params={"limit": 4}, headers=user)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["service"] == "store"
    assert body["checks"] == [
        {"checked_at": base + 1, "status": "healthy", "latency_ms": 12.3, "error": None},
        {"checked_at": base + 2, "status": "unhealthy", "latency_ms": None, "error": "database is locked"},
        {"checked_at": base + 3, "status": "degraded", "latency_ms": 2500.0, "error": None},
        {"checked_at": base + 4, "status": "healthy", "latency_ms": 4.0, "error": None},
    ]

    # the limit keeps the newest ones; the default includes the startup check too
    r = await api.client.get(URL.format("store"), params={"limit": 2}, headers=user)
    assert [c["checked_at"] for c in r.json()["checks"]] == [base + 3, base + 4]
    r = await api.client.get(URL.format("store"), headers=user)
    times = [c["checked_at"] for c in r.json()["checks"]]
    assert len(times) == 5
    assert times == sorted(times)
    assert times[-4:] == [base + 1, base + 2, base + 3, base + 4]


async def test_history_follows_real_checks(api: Api) -> None:
    admin = await api.admin()
    await _startup_round_done(api, "store")
    before = len(
        (await api.client.get(URL.format("store"), params={"limit": 200}, headers=admin)).json()["checks"]
    )
    for _ in range(3):
        r = await api.client.post("/api/failure-recovery/health/store/check", headers=admin)
        assert r.status_code == 200, r.text
    checks = (await api.client.get(URL.format("store"), params={"limit": 200}, headers=admin)).json()[
        "checks"
    ]
    assert len(checks) == before + 3
    assert all(c["status"] == "healthy" and c["latency_ms"] is not None for c in checks[-3:])
    # the summary's last response time is the newest check of the history
    summary = (await api.client.get("/api/failure-recovery/health/store", headers=admin)).json()
    assert summary["last_checked_at"] == checks[-1]["checked_at"]
    assert summary["last_response_ms"] == checks[-1]["latency_ms"]


async def test_unknown_service_bad_limit_and_no_login(api: Api) -> None:
    admin = await api.admin()
    r = await api.client.get(URL.format("nope"), headers=admin)
    assert r.status_code == 404
    assert "nope" in r.json()["detail"]
    for limit in ("0", "201", "x"):
        r = await api.client.get(URL.format("store"), params={"limit": limit}, headers=admin)
        assert r.status_code == 422, limit
    assert (await api.client.get(URL.format("store"))).status_code == 401


async def test_the_schema_documents_it(api: Api) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    operation = schema["paths"]["/api/failure-recovery/health/{service_name}/history"]["get"]
    assert set(operation["responses"]) >= {"200", "401", "404", "422"}
    limit = next(p for p in operation["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"], limit["schema"]["default"]) == (
        1,
        200,
        30,
    )
    check = schema["components"]["schemas"]["HealthCheckOut"]
    assert set(check["required"]) == {"checked_at", "status", "latency_ms", "error"}
