"""A real app (its lifespan included) on a temp data dir, driven through httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lifeline.api import create_app
from lifeline.api.context import AppContext
from lifeline.auth import PasswordHashing
from lifeline.config import Settings

ADMIN = ("admin@example.com", "admin-password-1")


@dataclass
class Api:
    client: httpx.AsyncClient
    ctx: AppContext

    async def login(self, email: str, password: str) -> dict[str, str]:
        r = await self.client.post("/auth/jwt/login", data={"username": email, "password": password})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    async def admin(self) -> dict[str, str]:
        return await self.login(*ADMIN)

    async def new_user(self, email: str, password: str = "user-password-1") -> tuple[str, dict[str, str]]:
        r = await self.client.post(
            "/api/users", json={"email": email, "password": password}, headers=await self.admin()
        )
        assert r.status_code == 201, r.text
        return r.json()["id"], await self.login(email, password)


def api_settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path}/api.db",
        sqlite_synchronous="normal",
        data_dir=tmp_path / "data",
        admin_email=ADMIN[0],
        admin_password=ADMIN[1],
        recovery_interval=3600,
    )


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    app = create_app(api_settings(tmp_path), hashing=PasswordHashing(time_cost=1, memory_cost=1024))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lifeline.test") as client:
            yield Api(client, app.state.ctx)
