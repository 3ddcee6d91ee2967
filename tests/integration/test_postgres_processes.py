"""One Lifeline across many processes on one PostgreSQL: an API process, four worker processes.

Worker processes are killed with SIGKILL at random moments and replaced, while a few thousand jobs
run through; then the same with the PostgreSQL server itself restarted mid-run (``-m immediate``,
a crash as far as the clients can tell). Afterwards every job is completed exactly once: each
writes one output keyed by its number, as an upsert whose revision counts commits, in the
completing transaction, so a second completion would show revision 2 and a lost job no output.

The workers run without their own recovery manager (``--no-recovery``): the jobs of a killed
worker are handed out again by the API process's recovery manager, which sees that the worker's
process is gone. Every process migrates the same empty database at start-up, at the same moment.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import pg
from lifeline.store.postgres import PostgresStore

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
WORKERS = 4


def free_port() -> int:
    return pg.free_port()


def environment(url: str, data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update(
        {
            "LIFELINE_DATABASE_URL": url,
            "LIFELINE_DATA_DIR": str(data_dir),
            "LIFELINE_PORT": str(port),
            "LIFELINE_ADMIN_PASSWORD": "not-a-real-password-42",
            "LIFELINE_POLL_INTERVAL": "0.5",  # LISTEN/NOTIFY wakes them; polling is the fallback
            "LIFELINE_RECOVERY_INTERVAL": "0.3",
            "LIFELINE_LOG_LEVEL": "ERROR",
            "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
        }
    )
    return env


class Fleet:
    """The API process and the worker processes of one test."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.port = free_port()
        self.env = environment(url, tmp_path / "data", self.port)
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.kills = 0

    def start_api(self) -> None:
        self.api = subprocess.Popen(
            [sys.executable, "-m", "lifeline", "serve", "--no-workers", "--port", str(self.port)],
            env=self.env,
            stderr=subprocess.DEVNULL,
        )

    def start_worker(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lifeline",
                "worker",
                "--app",
                "crash_app:handlers",
                "--concurrency",
                "8",
                "--no-recovery",
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
        )
        self.workers.append(proc)
        return proc

    def kill_one(self, rng: random.Random) -> None:
        victim = rng.choice([w for w in self.workers if w.poll() is None])
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.workers.remove(victim)
        self.kills += 1

    def wait_until_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.api is not None
            assert self.api.poll() is None, "the API process died"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readiness", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("the API process did not become ready")

    def stop(self) -> None:
        procs = [p for p in [*self.workers, self.api] if p is not None and p.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    cluster = pg.require()
    name = cluster.create_database(f"procs_{uuid.uuid4().hex[:12]}")  # empty: every process migrates
    yield cluster.url(name)
    cluster.drop_database(name)


@pytest.fixture
def fleet(database: str, tmp_path: Path) -> Iterator[Fleet]:
    running = Fleet(database, tmp_path)
    try:
        yield running
    finally:
        running.stop()


def fill(url: str, count: int, sleep: float) -> None:
    async def run() -> None:
        async with PostgresStore(url) as store:
            for start in range(0, count, 500):
                await store.enqueue_many(
                    "crash",
                    [{"n": n, "sleep": sleep} for n in range(start, min(count, start + 500))],
                    max_attempts=1000,
                )

    asyncio.run(run())


def completed(url: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'completed'").fetchone()
            return 0 if row is None else int(row[0])
    except psycopg.OperationalError:
        return -1  # the server is restarting


def check_exactly_once(url: str, jobs: int) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        states = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        assert states == {"completed": jobs}
        assert conn.execute("SELECT COUNT(*), MIN(revision), MAX(revision) FROM outputs").fetchone() == (
            jobs,
            1,
            1,
        )
        # one completed attempt per job, and none left running
        per_job = conn.execute(
            "SELECT MIN(c), MAX(c) FROM (SELECT COUNT(*) FILTER (WHERE outcome = 'completed') c"
            " FROM attempts GROUP BY job_id) t"
        ).fetchone()
        assert per_job == (1, 1)
        assert conn.execute("SELECT COUNT(*) FROM attempts WHERE outcome = 'running'").fetchone() == (0,)
        lost = conn.execute("SELECT COUNT(*) FROM attempts WHERE outcome = 'lost'").fetchone()
        pids = conn.execute("SELECT COUNT(DISTINCT data->>'pid') FROM outputs").fetchone()
    assert lost is not None
    assert pids is not None
    return int(lost[0]), int(pids[0])


def run_until_done(fleet: Fleet, jobs: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while completed(fleet.url) != jobs:
        if time.monotonic() > deadline:
            with psycopg.connect(fleet.url) as conn:
                stuck = conn.execute(
                    "SELECT j.id, j.state, j.lease_owner, a.worker_id, a.outcome FROM jobs j"
                    " LEFT JOIN attempts a ON a.job_id = j.id AND a.claim = j.claims"
                    " WHERE j.state <> 'completed' LIMIT 5"
                ).fetchall()
            raise AssertionError(f"only {completed(fleet.url)} of {jobs} jobs completed; e.g. {stuck}")
        time.sleep(0.2)


def test_sigkill_of_worker_processes_loses_and_doubles_nothing(fleet: Fleet) -> None:
    jobs = 3000
    fleet.start_api()
    for _ in range(WORKERS):
        fleet.start_worker()  # five processes migrate one empty database at once
    fleet.wait_until_ready()
    fill(fleet.url, jobs, sleep=0.1)
    rng = random.Random(20261128)
    deadline = time.monotonic() + 150
    while completed(fleet.url) < jobs * 0.8 and fleet.kills < 8:
        assert time.monotonic() < deadline, "the workers made no progress"
        time.sleep(rng.uniform(0.6, 1.4))  # start-up takes ~1 s: most kills land mid-work
        fleet.kill_one(rng)
        fleet.start_worker()
    run_until_done(fleet, jobs, timeout=120)
    assert fleet.api is not None
    assert fleet.api.poll() is None
    lost, pids = check_exactly_once(fleet.url, jobs)
    print(f"{fleet.kills} kills, {lost} attempts lost and recovered by the API process")
    assert fleet.kills >= 3
    assert lost > 0, "no kill landed while a job was in flight: the test proved nothing"
    assert pids > WORKERS  # killed and replacement processes both did part of the work


def test_a_server_restart_mid_run_is_ridden_out(fleet: Fleet) -> None:
    jobs = 3000
    cluster = pg.require()
    fleet.start_api()
    for _ in range(WORKERS):
        fleet.start_worker()
    fleet.wait_until_ready()
    fill(fleet.url, jobs, sleep=0.02)
    deadline = time.monotonic() + 60
    while completed(fleet.url) < jobs // 4:
        assert time.monotonic() < deadline, "the workers made no progress"
        time.sleep(0.1)
    before = completed(fleet.url)
    cluster.restart("immediate")  # every connection of every process is cut mid-transaction
    run_until_done(fleet, jobs, timeout=60)
    assert before < jobs, "the restart came too late to prove anything"
    survivors = [w for w in fleet.workers if w.poll() is None]
    assert len(survivors) == WORKERS, "a worker process died instead of reconnecting"
    assert fleet.api is not None
    assert fleet.api.poll() is None
    check_exactly_once(fleet.url, jobs)
