"""``lifeline conversations …`` and ``lifeline memories`` against a running service (--url/--token):
through the pipeline API, as the token's user sees it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

import lifeline
from lifeline.domain import NextJob, Output

from .conftest import ADMIN, USER, Server, lifeline_serve

TRANSCRIPT = "I love green tea. Remind me to call Anna by Friday."


@dataclass
class Deployment:
    server: Server
    admin_token: str
    user_token: str
    user_id: str
    admin_id: str


async def _conversation(database_url: str, audio_uuid: str, user_id: str, memory: str) -> None:
    """A conversation whose chunk job wrote a transcript, a memory and an action item (as the
    stages would); its memory job failed once."""
    async with lifeline.connect(database_url) as store:
        await store.add_recording(
            audio_uuid,
            user_id=user_id,
            client_id=f"{user_id[-6:]}-phone",
            source="upload",
            device_name="phone",
            filename=f"{audio_uuid}.wav",
        )
        await store.append_audio(audio_uuid, 0, bytes(48_000))
        await store.enqueue("chunk", {}, recording_id=audio_uuid, user_id=user_id)
        job = await store.claim("chunk", worker_id="seed-worker")
        assert job is not None
        await store.complete(
            job,
            outputs=[
                Output(audio_uuid, "transcription", 0, {"text": TRANSCRIPT, "segments": []}),
                Output(audio_uuid, "memory", 0, {"text": memory, "category": "preference"}),
                Output(audio_uuid, "action_item", 0, {"text": "Call Anna", "due": "Friday"}),
            ],
            then=[NextJob("memory", {})],
        )
        memory_job = await store.claim("memory", worker_id="seed-worker")
        assert memory_job is not None
        await store.fail(memory_job, "the LLM was not there")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # an API-only process: the jobs the tests set up stay as they are
    with lifeline_serve(tmp_path_factory.mktemp("conversations"), "--no-workers") as server:
        admin_token = server.login(*ADMIN)
        user_id = server.create_user(admin_token, *USER)
        me = httpx.get(
            f"{server.url}/users/me", headers={"Authorization": f"Bearer {admin_token}"}, timeout=30
        )
        admin_id = me.json()["id"]
        asyncio.run(_conversation(server.database_url, "user-rec", user_id, "User loves green tea [daily]"))
        asyncio.run(_conversation(server.database_url, "admin-rec", admin_id, "User loves black tea"))
        asyncio.run(_conversation(server.database_url, "user-doomed", user_id, "User loves coffee"))
        yield Deployment(server, admin_token, server.login(*USER), user_id, admin_id)


def cli(
    deployment: Deployment, *args: str, token: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env["COLUMNS"] = "250"
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
        input=stdin,
        timeout=120,
        check=False,
    )


def rows(output: str) -> dict[str, list[str]]:
    """The table's rows by their first cell."""
    found = {}
    for line in output.splitlines():
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            found[cells[0]] = cells
    return found


def test_a_superuser_lists_everybodys_and_a_user_only_their_own(deployment: Deployment) -> None:
    everybody = cli(deployment, "conversations", "list")
    assert everybody.returncode == 0, everybody.stderr
    listed = rows(everybody.stdout)
    assert {"user-rec", "admin-rec"} <= set(listed)
    # user (not told by the API), device, source, created, duration, status, the four stages
    assert listed["user-rec"][1:4] == ["-", "phone", "upload"]
    assert listed["user-rec"][5:] == ["0:02", "failed", "completed", "-", "failed", "-"]

    own = cli(deployment, "conversations", "list", "--limit", "50", token=deployment.user_token)
    assert own.returncode == 0, own.stderr
    assert "user-rec" in rows(own.stdout)
    assert "admin-rec" not in own.stdout


def test_show_has_the_transcript_outputs_and_each_jobs_attempts(deployment: Deployment) -> None:
    shown = cli(deployment, "conversations", "show", "user-rec", token=deployment.user_token)
    assert shown.returncode == 0, shown.stderr
    assert "user-rec: failed" in shown.stdout
    assert "file user-rec.wav" in shown.stdout
    assert TRANSCRIPT in shown.stdout
    assert "User loves green tea [daily]" in shown.stdout  # user text is not taken for markup
    table = rows(shown.stdout)
    assert table["user-rec:0"][1:5] == ["Call Anna", "-", "Friday", "open"]
    failed = next(line for line in shown.stdout.splitlines() if "│ memory" in line)
    assert "failed" in failed
    assert "1/" in failed
    assert "the LLM was not there" in failed
    attempt = next(line for line in shown.stdout.splitlines() if "seed-worker" in line and "│ failed" in line)
    assert "the LLM was not there" in attempt


def test_another_users_conversation_is_not_found(deployment: Deployment) -> None:
    for args in (
        ("conversations", "show", "admin-rec"),
        ("conversations", "reprocess", "admin-rec", "--from", "memory"),
        ("conversations", "delete", "admin-rec", "--yes"),
    ):
        out = cli(deployment, *args, token=deployment.user_token)
        assert out.returncode == 1, (args, out.stdout)
        assert "no conversation 'admin-rec'" in out.stderr
    still = cli(deployment, "conversations", "show", "admin-rec")
    assert still.returncode == 0, still.stderr


def test_memories_are_searched_among_the_users_own(deployment: Deployment) -> None:
    mine = cli(deployment, "memories", "tea", token=deployment.user_token)
    assert mine.returncode == 0, mine.stderr
    assert "user-rec:0" in mine.stdout
    assert "black tea" not in mine.stdout
    assert "coffee" not in mine.stdout
    everybody = cli(deployment, "memories", "tea")
    assert everybody.returncode == 0, everybody.stderr
    assert {"user-rec:0", "admin-rec:0"} <= set(rows(everybody.stdout))
    by_user = cli(deployment, "memories", "--user", USER[0])
    assert by_user.returncode == 1
    assert "--user works on the local store only" in by_user.stderr


def test_reprocess_queues_one_job_and_refuses_a_second(deployment: Deployment) -> None:
    out = cli(
        deployment,
        "conversations",
        "reprocess",
        "user-rec",
        "--from",
        "action_item",
        token=deployment.user_token,
    )
    assert out.returncode == 0, out.stderr
    assert "action_item of user-rec queued again as job" in out.stdout
    job_id = int(out.stdout.rsplit("job", 1)[1])
    shown = cli(deployment, "jobs", "show", str(job_id))
    assert shown.returncode == 0, shown.stderr
    assert "queue=action_item state=pending" in shown.stdout
    assert "recording=user-rec" in shown.stdout
    again = cli(deployment, "conversations", "reprocess", "user-rec", "--from", "action_item")
    assert again.returncode == 1
    assert "already queued or running" in again.stderr


def test_delete_asks_then_removes_the_conversation(deployment: Deployment) -> None:
    declined = cli(
        deployment, "conversations", "delete", "user-doomed", token=deployment.user_token, stdin="n\n"
    )
    assert declined.returncode == 1
    assert cli(deployment, "conversations", "show", "user-doomed").returncode == 0
    deleted = cli(
        deployment, "conversations", "delete", "user-doomed", token=deployment.user_token, stdin="y\n"
    )
    assert deleted.returncode == 0, deleted.stderr
    assert "user-doomed deleted" in deleted.stdout
    gone = cli(deployment, "conversations", "show", "user-doomed")
    assert gone.returncode == 1
    assert "no conversation 'user-doomed'" in gone.stderr
    assert "user-doomed" not in cli(deployment, "conversations", "list").stdout
