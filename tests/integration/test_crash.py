"""Crash safety and exclusivity with real worker processes.

A worker subprocess is killed with SIGKILL at random moments, again and again, while it works
through a few thousand jobs; afterwards every job is completed exactly once: each job's output is
written in its completing transaction as an upsert whose revision counts commits, so a second
completion would show revision 2 and a lost job would have no output at all.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lifeline
from lifeline.domain import JobState

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent


def worker_command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "lifeline", "worker", "--app", "crash_app:handlers", *extra]


def worker_env(db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env["LIFELINE_DATABASE_URL"] = f"sqlite:///{db}"
    env["LIFELINE_SQLITE_SYNCHRONOUS"] = "normal"
    env["LIFELINE_POLL_INTERVAL"] = "0.05"
    env["LIFELINE_LOG_LEVEL"] = "WARNING"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


async def fill(db: Path, count: int, sleep: float) -> None:
    async with lifeline.connect(f"sqlite:///{db}", synchronous="normal") as store:
        for start in range(0, count, 500):
            await store.enqueue_many(
                "crash",
                [{"n": n, "sleep": sleep} for n in range(start, min(count, start + 500))],
                max_attempts=1000,
            )


def summary(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())


def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    jobs = 3000
    asyncio.run(fill(db, jobs, sleep=0.01))
    rng = random.Random(20261128)
    kills = 0
    env = worker_env(db)
    while kills < 12:
        proc = subprocess.Popen(worker_command("--concurrency", "8"), env=env)
        # kill only once this worker is working (start-up time depends on the machine's load),
        # then at a random moment of its work
        before = summary(db).get("completed", 0)
        deadline = time.monotonic() + 120
        while summary(db).get("completed", 0) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if summary(db).get("completed", 0) == jobs:
            break
    # the last runs drain what is left: the first one's recovery pass puts the dead worker's jobs
    # back (as retry, after a backoff of up to a few seconds), so drain until nothing is left
    for _ in range(30):
        done = subprocess.run(
            worker_command("--burst", "--concurrency", "8"), env=env, timeout=300, check=False
        )
        assert done.returncode == 0
        if summary(db).get("completed", 0) == jobs:
            break
        time.sleep(0.5)

    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        assert states == {JobState.COMPLETED.value: jobs}
        outputs = conn.execute("SELECT COUNT(*), MIN(revision), MAX(revision) FROM outputs").fetchone()
        assert outputs == (jobs, 1, 1)
        lost = conn.execute("SELECT COUNT(*) FROM attempts WHERE outcome = 'lost'").fetchone()[0]
        lost_jobs = conn.execute("SELECT COUNT(*) FROM jobs WHERE lost_count > 0").fetchone()[0]
    print(f"{kills} kills, {lost} attempts lost, {lost_jobs} jobs recovered")
    assert kills >= 3
    assert lost > 0, "no kill landed while a job was in flight: the test proved nothing"
    assert lost_jobs > 0


def test_two_worker_processes_never_hold_the_same_job(tmp_path: Path) -> None:
    db = tmp_path / "two.db"
    jobs = 2000
    asyncio.run(fill(db, jobs, sleep=0.002))
    env = worker_env(db)
    procs = [
        subprocess.Popen(worker_command("--burst", "--concurrency", "4", "--no-recovery"), env=env)
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall() == [
            ("completed", jobs)
        ]
        # one claim per job: no job was ever handed to two workers
        per_job = conn.execute("SELECT MAX(c), MIN(c) FROM (SELECT COUNT(*) c FROM attempts GROUP BY job_id)")
        assert per_job.fetchone() == (1, 1)
        assert conn.execute("SELECT COUNT(*), MAX(revision) FROM outputs").fetchone() == (jobs, 1)
        pids = conn.execute("SELECT COUNT(DISTINCT json_extract(data, '$.pid')) FROM outputs").fetchone()[0]
    assert pids == 2, "both processes must have done part of the work for the test to mean anything"
