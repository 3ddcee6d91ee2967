"""The operator commands against a running service (--url/--token), as an operator runs them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import lifeline
from lifeline.domain import JobState

from .conftest import ADMIN, USER, Server, lifeline_serve


@dataclass
class Deployment:
    server: Server
    admin_token: str
    user_token: str
    dead_job: int


async def _seed(database_url: str) -> int:
    async with lifeline.connect(database_url) as store:
        job_id = await store.enqueue("chunk", {"n": 1})
        job = await store.claim("chunk", worker_id="seed")
        assert job is not None
        await store.fail(job, "undecodable audio", permanent=True)
        return job_id


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # an API-only process (as when workers run elsewhere): the jobs the tests set up stay put
    with lifeline_serve(tmp_path_factory.mktemp("remote"), "--no-workers") as server:
        admin_token = server.login(*ADMIN)
        server.create_user(admin_token, *USER)
        dead_job = asyncio.run(_seed(server.database_url))
        yield Deployment(server, admin_token, server.login(*USER), dead_job)


def cli(deployment: Deployment, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env["COLUMNS"] = "200"
    env["LIFELINE_DATABASE_URL"] = "sqlite:////nonexistent/not-used.db"  # remote mode must not open it
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "lifeline",
            "--url",
            deployment.server.url,
            "--token",
            token or deployment.admin_token,
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_status_shows_the_queues_of_the_running_service(deployment: Deployment) -> None:
    out = cli(deployment, "status")
    assert out.returncode == 0, out.stderr
    assert "transcription" in out.stdout
    lines = out.stdout.splitlines()
    header = [cell.strip() for cell in next(line for line in lines if "dead_letter" in line).split("┃")]
    chunk = [cell.strip() for cell in next(line for line in lines if "│ chunk" in line).split("│")]
    assert chunk[header.index("dead_letter")] == "1"


def test_dead_letters_are_listed_requeued_and_shown(deployment: Deployment) -> None:
    listed = cli(deployment, "dlq", "list", "chunk")
    assert listed.returncode == 0, listed.stderr
    assert str(deployment.dead_job) in listed.stdout
    assert "undecodable audio" in listed.stdout
    requeued = cli(deployment, "dlq", "requeue", str(deployment.dead_job))
    assert requeued.returncode == 0, requeued.stderr
    shown = cli(deployment, "jobs", "show", str(deployment.dead_job))
    assert shown.returncode == 0, shown.stderr
    assert f"state={JobState.PENDING.value}" in shown.stdout
    again = cli(deployment, "dlq", "requeue", str(deployment.dead_job))
    assert again.returncode == 1
    assert "it is pending" in again.stderr


def test_recover_and_breaker_reset_go_through_the_service(deployment: Deployment) -> None:
    recovered = cli(deployment, "recover", "chunk")
    assert recovered.returncode == 0, recovered.stderr
    assert "found 0" in recovered.stdout
    reset = cli(deployment, "breakers", "reset")
    assert reset.returncode == 0, reset.stderr
    assert "all breakers closed" in reset.stdout


def test_errors_are_reported_not_hidden(deployment: Deployment) -> None:
    missing = cli(deployment, "jobs", "show", "987654")
    assert missing.returncode == 1
    assert "no job 987654" in missing.stderr
    forbidden = cli(deployment, "dlq", "requeue", "--all", "chunk", token=deployment.user_token)
    assert forbidden.returncode == 1
    assert "403" in forbidden.stderr
    bad_token = cli(deployment, "status", token="not-a-token")
    assert bad_token.returncode == 1
    assert "401" in bad_token.stderr


def test_without_url_the_same_commands_use_the_local_store(deployment: Deployment, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env["COLUMNS"] = "200"
    env["LIFELINE_DATABASE_URL"] = deployment.server.database_url
    out = subprocess.run(
        [sys.executable, "-m", "lifeline", "jobs", "show", str(deployment.dead_job)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert f"job {deployment.dead_job} queue=chunk" in out.stdout
