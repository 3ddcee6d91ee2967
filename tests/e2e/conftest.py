"""A real ``lifeline serve`` process on a free loopback port, for tests that talk to it over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ADMIN = ("admin@example.com", "admin-password-1")
USER = ("user@example.com", "user-password-1")
# generous: CI machines are small and busy; a healthy start takes about a second
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    database_url: str
    root: Path
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def login(self, email: str, password: str) -> str:
        r = httpx.post(
            f"{self.url}/auth/jwt/login", data={"username": email, "password": password}, timeout=30
        )
        assert r.status_code == 200, r.text
        token: str = r.json()["access_token"]
        return token

    def create_user(self, admin_token: str, email: str, password: str) -> str:
        r = httpx.post(
            f"{self.url}/api/users",
            json={"email": email, "password": password},
            headers={"Authorization": f"Bearer {admin_token}"},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        user_id: str = r.json()["id"]
        return user_id


def server_env(root: Path, port: int, **extra: str) -> dict[str, str]:
    """The process environment without the caller's LIFELINE_* settings, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update(
        LIFELINE_DATABASE_URL=f"sqlite:///{root / 'lifeline.db'}",
        LIFELINE_SQLITE_SYNCHRONOUS="normal",
        LIFELINE_DATA_DIR=str(root / "data"),
        LIFELINE_HOST="127.0.0.1",
        LIFELINE_PORT=str(port),
        LIFELINE_ADMIN_EMAIL=ADMIN[0],
        LIFELINE_ADMIN_PASSWORD=ADMIN[1],
        LIFELINE_SHUTDOWN_TIMEOUT="5",
        **extra,
    )
    return env


@contextmanager
def lifeline_serve(root: Path, *args: str, **extra_env: str) -> Iterator[Server]:
    """``lifeline serve [args]`` on a free port with its store and data dir under ``root``; stopped
    with SIGTERM (then SIGKILL) when the block ends."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = server_env(root, port, **extra_env)
    log = root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lifeline", "serve", "--port", str(port), *args],
            cwd=root,  # no .env of the developer's working directory
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", env["LIFELINE_DATABASE_URL"], root, process, log)
    try:
        wait_ready(server)
        yield server
    finally:
        stop(process)


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"lifeline serve exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/readiness", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"lifeline serve not ready after {START_TIMEOUT:.0f} s:\n{server.log_tail()}")
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
