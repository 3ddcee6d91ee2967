"""Logging in and out, tokens, users, and who may call what."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jwt
import pytest

from api.conftest import ADMIN, Api
from lifeline.api import create_app
from lifeline.auth import AUDIENCE

from .conftest import api_settings

SAMPLE = {
    "queue_type": "memory",
    "queue_name": "memory",
    "service_name": "database",
    "name": "asr",
    "audio_uuid": "rec-x",
    "client_id": "client-x",
    "job_id": "1",
    "message_id": "1",
    "user_id": "nobody",
    "memory_id": "rec-x:0",
    "item_id": "rec-x:0",
}

SUPERUSER_ONLY = {
    ("POST", "/api/failure-recovery/health/{service_name}/check"),
    ("POST", "/api/failure-recovery/recovery/{queue_type}/trigger"),
    ("POST", "/api/failure-recovery/circuit-breakers/{name}/reset"),
    ("POST", "/api/failure-recovery/circuit-breakers/reset-all"),
    ("GET", "/api/failure-recovery/persistent-queues/{queue_name}/dead-letter"),
    ("POST", "/api/failure-recovery/persistent-queues/{queue_name}/dead-letter/{message_id}/requeue"),
    ("POST", "/api/failure-recovery/persistent-queues/{queue_name}/dead-letter/requeue-all"),
    ("POST", "/api/failure-recovery/persistent-queues/{queue_name}/pause"),
    ("POST", "/api/failure-recovery/persistent-queues/{queue_name}/resume"),
    ("POST", "/api/failure-recovery/maintenance/cleanup"),
    ("POST", "/api/users"),
    ("GET", "/api/users"),
    ("DELETE", "/api/users/{user_id}"),
}

PUBLIC = {("GET", "/health"), ("GET", "/readiness"), ("GET", "/metrics"), ("POST", "/auth/jwt/login")}


def protected_routes() -> list[tuple[str, str]]:
    """Every operation of the OpenAPI schema that is not public."""
    schema = create_app(api_settings(Path("/nonexistent"))).openapi()
    found = []
    for path, operations in schema["paths"].items():
        for method in operations:
            if (method.upper(), path) not in PUBLIC:
                found.append((method.upper(), path))
    return sorted(found)


ROUTES = protected_routes()


def test_the_superuser_table_names_real_routes() -> None:
    assert set(ROUTES) >= SUPERUSER_ONLY
    assert len(ROUTES) >= 30


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_protected_endpoint_rejects_missing_expired_and_forged_tokens(
    api: Api, method: str, path: str
) -> None:
    url = path.format(**SAMPLE)
    r = await api.client.request(method, url)
    assert r.status_code == 401, (method, url, r.status_code)
    now = int(time.time())
    user_id = (await api.ctx.store.list_users())[0].id
    claims = {"sub": user_id, "aud": AUDIENCE, "iat": now - 7200, "exp": now - 3600, "jti": "x"}
    secret = (api.ctx.settings.data_dir / "auth-secret").read_text().strip()
    expired = jwt.encode(claims, secret, algorithm="HS256")
    forged = jwt.encode({**claims, "exp": now + 3600}, "not-the-secret" * 4, algorithm="HS256")
    for token in (expired, forged, "garbage"):
        r = await api.client.request(method, url, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, (method, url, token[:10])


@pytest.mark.parametrize(("method", "path"), sorted(SUPERUSER_ONLY))
async def test_superuser_endpoints_forbid_normal_users(api: Api, method: str, path: str) -> None:
    _, headers = await api.new_user("someone@example.com")
    r = await api.client.request(method, path.format(**SAMPLE), headers=headers)
    assert r.status_code == 403, r.text


async def test_login_me_logout(api: Api) -> None:
    headers = await api.admin()
    me = await api.client.get("/users/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["email"] == ADMIN[0]
    assert me.json()["is_superuser"] is True
    assert (await api.client.post("/auth/jwt/logout", headers=headers)).status_code == 204
    assert (await api.client.get("/users/me", headers=headers)).status_code == 401


async def test_wrong_credentials_get_one_generic_message(api: Api) -> None:
    await api.new_user("known@example.com")
    wrong_password = await api.client.post(
        "/auth/jwt/login", data={"username": "known@example.com", "password": "nope-nope"}
    )
    unknown_user = await api.client.post(
        "/auth/jwt/login", data={"username": "ghost@example.com", "password": "nope-nope"}
    )
    assert wrong_password.status_code == unknown_user.status_code == 400
    assert wrong_password.json() == unknown_user.json() == {"detail": "LOGIN_BAD_CREDENTIALS"}


async def test_brute_force_is_slowed_down_per_account(api: Api) -> None:
    await api.new_user("target@example.com", "right-password-1")
    codes = []
    for attempt in range(8):
        r = await api.client.post(
            "/auth/jwt/login", data={"username": "target@example.com", "password": f"guess-{attempt}"}
        )
        codes.append(r.status_code)
    assert codes[:5] == [400] * 5
    assert 429 in codes[5:]
    throttled = await api.client.post(
        "/auth/jwt/login", data={"username": "target@example.com", "password": "right-password-1"}
    )
    assert throttled.status_code == 429  # even the right password waits its turn
    assert int(throttled.headers["Retry-After"]) >= 1


async def test_users_are_managed_by_superusers(api: Api) -> None:
    admin = await api.admin()
    user_id, user_headers = await api.new_user("member@example.com")
    listed = await api.client.get("/api/users", headers=admin)
    assert {u["email"] for u in listed.json()} == {ADMIN[0], "member@example.com"}
    dup = await api.client.post(
        "/api/users", json={"email": "MEMBER@example.com", "password": "another-pass-1"}, headers=admin
    )
    assert dup.status_code == 409
    assert (await api.client.delete(f"/api/users/{user_id}", headers=admin)).status_code == 204
    assert (await api.client.get("/users/me", headers=user_headers)).status_code == 401
    assert (await api.client.delete(f"/api/users/{user_id}", headers=admin)).status_code == 404


async def test_a_generated_admin_password_is_kept_private(tmp_path: Path) -> None:
    settings = api_settings(tmp_path).replace(admin_password=None)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        pass
    kept = settings.data_dir / "admin-password"
    assert kept.stat().st_mode & 0o777 == 0o600
    assert (settings.data_dir / "auth-secret").stat().st_mode & 0o777 == 0o600
    email, password = kept.read_text().split()
    assert email == ADMIN[0]
    assert len(password) >= 16


async def test_logs_carry_no_token_or_password(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    headers = await api.admin()
    token = headers["Authorization"].split()[1]
    await api.client.get("/users/me", headers=headers)
    await api.client.get(f"/api/failure-recovery/queue-stats?token={token}", headers=headers)
    await api.client.post("/auth/jwt/login", data={"username": ADMIN[0], "password": "wrong-secret-pw"})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "path=/users/me" in text  # the request log is there ...
    for secret in (token, ADMIN[1], "wrong-secret-pw"):
        assert secret not in text  # ... without secrets
