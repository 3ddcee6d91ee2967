"""``lifeline check`` against a real ``lifeline serve``: passes on a healthy deployment, and says
which check failed (exit 1) on a wrong address, a bad token or a wrong password."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lifeline.check import CheckResult, all_passed, run_checks

from .conftest import ADMIN, USER, Server, free_port, lifeline_serve

READS = {
    "users/me",
    "system-overview",
    "queue-stats",
    "queue-stats/chunk",
    "recovery-stats",
    "circuit-breakers",
    "health (api)",
    "persistent-queues",
    "persistent-queues/chunk",
    "jobs",
}
DEAD_LETTER = "persistent-queues/chunk/dead-letter"


@dataclass
class Deployment:
    server: Server
    admin_token: str


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with lifeline_serve(tmp_path_factory.mktemp("check")) as server:
        admin_token = server.login(*ADMIN)
        server.create_user(admin_token, *USER)
        yield Deployment(server, admin_token)


def lifeline_check(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env["COLUMNS"] = "200"  # one table row per line
    return subprocess.run(
        [sys.executable, "-m", "lifeline", "check", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parent,
        timeout=120,
        check=False,
    )


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def test_a_healthy_deployment_passes_every_check_as_the_superuser(deployment: Deployment) -> None:
    results = run_checks(deployment.server.url, email=ADMIN[0], password=ADMIN[1])
    assert all_passed(results), [r for r in results if not r.ok]
    names = [r.name for r in results]
    assert set(names) == {"health", "readiness", "login", "metrics", DEAD_LETTER} | READS
    assert all(r.status == 200 and r.ms >= 0 for r in results)
    assert by_name(results)["users/me"].detail == f"{ADMIN[0]} (superuser)"


def test_a_normal_user_is_not_asked_for_the_dead_letters(deployment: Deployment) -> None:
    results = run_checks(deployment.server.url, email=USER[0], password=USER[1])
    assert all_passed(results), [r for r in results if not r.ok]
    assert {r.name for r in results} == {"health", "readiness", "login", "metrics"} | READS


def test_the_command_passes_with_a_token(deployment: Deployment) -> None:
    result = lifeline_check("--url", deployment.server.url, "--token", deployment.admin_token)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 14 checks passed" in result.stdout
    assert "FAIL" not in result.stdout
    for name in READS | {DEAD_LETTER, "metrics"}:
        assert f"│ {name} " in result.stdout


def test_the_command_passes_with_credentials(deployment: Deployment) -> None:
    result = lifeline_check("--url", deployment.server.url, "--email", USER[0], "--password", USER[1])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 14 checks passed" in result.stdout  # login, no dead letters


def test_a_wrong_port_fails_at_health() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    results = run_checks(url, token="whatever", timeout=5)
    assert [(r.name, r.ok, r.status) for r in results] == [("health", False, None)]
    assert "ConnectError" in results[0].detail
    result = lifeline_check("--url", url, "--token", "whatever", "--timeout", "5")
    assert result.returncode == 1
    assert "1 of 1 checks failed: health" in result.stderr


def test_a_bad_token_fails_and_names_the_check(deployment: Deployment) -> None:
    results = run_checks(deployment.server.url, token="not-a-token")
    failed = [(r.name, r.status) for r in results if not r.ok]
    assert failed == [("users/me", 401), ("authenticated reads", None)]
    assert by_name(results)["health"].ok
    assert by_name(results)["metrics"].ok
    result = lifeline_check("--url", deployment.server.url, "--token", "not-a-token")
    assert result.returncode == 1
    assert "2 of 5 checks failed: users/me, authenticated reads" in result.stderr


def test_a_wrong_password_fails_at_login(deployment: Deployment) -> None:
    result = lifeline_check("--url", deployment.server.url, "--email", USER[0], "--password", "wrong-pass")
    assert result.returncode == 1
    assert "2 of 5 checks failed: login, authenticated reads" in result.stderr
    assert "LOGIN_BAD_CREDENTIALS" in result.stdout


def test_without_credentials_only_the_probes_are_checked(deployment: Deployment) -> None:
    results = run_checks(deployment.server.url)
    assert [r.name for r in results] == ["health", "readiness", "metrics"]
    assert all_passed(results)
