"""Lifeline's PostgreSQL store against procrastinate and a plain ``FOR UPDATE SKIP LOCKED`` loop.

Side by side in one run, on one private PostgreSQL server started for the run (``initdb`` in a
temporary directory on disk, a free loopback port, default durability: ``fsync=on``,
``synchronous_commit=on``), or on the server given with ``--url`` (a database is created per run).

For each system and 1, 2 and 4 processes, on a fresh database:

1. enqueue: the processes add ``--jobs`` jobs between them, each process with ``--clients``
   concurrent producers (lifeline ``enqueue``, procrastinate ``defer_async``); the plain reference
   inserts one row per transaction, one after another, in each process;
2. claim+complete: the processes drain those jobs with a no-op handler (lifeline ``Worker`` with
   ``--concurrency`` jobs in flight, burst mode; procrastinate ``run_worker_async(concurrency=…,
   wait=False)``; plain: ``BEGIN; SELECT … FOR UPDATE SKIP LOCKED LIMIT 1; UPDATE …; COMMIT``
   per job, one loop per process);
3. latency: with the workers idle, ``--probes`` jobs are enqueued one at a time (every 20 ms) and
   each handler records how long after its enqueue began it started (lifeline and procrastinate
   wake on LISTEN/NOTIFY; the plain loop polls every 10 ms).

Processes are started first and wait at a barrier, so start-up is not measured.

    .venv/bin/python bench/postgres.py                 # the full run, about 4 minutes on 2 cores
    .venv/bin/python bench/postgres.py --quick         # a smoke run
    .venv/bin/python bench/postgres.py --url postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/postgres.py --json results.json --markdown results.md
    .venv/bin/python bench/postgres.py --processes 1 --systems lifeline --writer-vs-pool

``--writer-vs-pool`` adds why the store batches its writes: the same completions through the
store's batching writer and through a connection pool with a transaction each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

SYSTEMS = ("lifeline", "procrastinate", "plain")
QUEUE = "bench"

PLAIN_SCHEMA = """
CREATE TABLE plain_jobs (
    id      BIGSERIAL PRIMARY KEY,
    state   TEXT NOT NULL DEFAULT 'todo',
    payload JSON NOT NULL
);
CREATE INDEX plain_jobs_todo ON plain_jobs (id) WHERE state = 'todo';
"""


# -- a private server -----------------------------------------------------------------------------


class Server:
    """``initdb`` + ``pg_ctl`` in a temporary directory (as the postgres user when run as root)."""

    def __init__(self) -> None:
        bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
        found = [b for b in bindirs if (b / "initdb").exists()]
        if not found:
            raise SystemExit(
                "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt install postgresql)"
            )
        self.bindir = found[0]
        self.root = Path(tempfile.mkdtemp(prefix="lifeline-bench-pg-", dir=os.environ.get("TMPDIR", "/tmp")))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.root / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
        )
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=300"
            " -c shared_buffers=256MB"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.root / "data"),
            "-l",
            str(self.root / "log"),
            "-w",
            "-o",
            options,
            "start",
        )

    def _run(self, tool: str, *args: str) -> None:
        argv = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def with_database(base_url: str, name: str) -> str:
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    return base_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(base_url: str, name: str) -> None:
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


# -- the systems, as each child process runs them -------------------------------------------------


@dataclass
class Task:
    """What one child process is asked to do."""

    system: str
    phase: str  # enqueue | drain | latency
    url: str
    jobs: int = 0  # enqueue: how many this process adds
    clients: int = 64
    concurrency: int = 64


def procrastinate_app(
    url: str, concurrency: int, record: Callable[[dict[str, Any]], None] | None = None
) -> Any:
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=min(20, concurrency + 2))
    )

    @app.task(name="noop", queue=QUEUE)
    async def noop(**payload: Any) -> None:
        if record is not None:
            record(payload)

    return app


async def lifeline_child(task: Task, start: Any, stop: Any, out: Any) -> None:
    from lifeline.domain import Job
    from lifeline.queue.worker import Worker
    from lifeline.store.postgres import PostgresStore

    async with PostgresStore(task.url, pool_size=2) as store:
        if task.phase == "enqueue":
            await asyncio.to_thread(start.wait)
            per_client = [
                task.jobs // task.clients + (1 if i < task.jobs % task.clients else 0)
                for i in range(task.clients)
            ]

            async def client(n: int) -> None:
                for _ in range(n):
                    await store.enqueue(QUEUE, {"t": 0})

            await asyncio.gather(*(client(n) for n in per_client))
            out.put(time.time())
            return

        async def handler(job: Job) -> None:
            if task.phase == "latency":
                out.put(time.time() - job.payload["t"])

        worker = Worker(store, {QUEUE: handler}, concurrency=task.concurrency, poll_interval=1.0)
        if task.phase == "drain":
            await asyncio.to_thread(start.wait)
            await worker.run(burst=True)
            out.put(time.time())
            return
        running = asyncio.ensure_future(worker.run())
        await store.listening()
        out.put("ready")
        await asyncio.to_thread(stop.wait)
        worker.stop()
        await running


async def procrastinate_child(task: Task, start: Any, stop: Any, out: Any) -> None:
    def record(payload: dict[str, Any]) -> None:
        if task.phase == "latency":
            out.put(time.time() - payload["t"])

    app = procrastinate_app(task.url, task.concurrency, record)
    async with app.open_async():
        if task.phase == "enqueue":
            noop = app.tasks["noop"]
            await asyncio.to_thread(start.wait)
            per_client = [
                task.jobs // task.clients + (1 if i < task.jobs % task.clients else 0)
                for i in range(task.clients)
            ]

            async def client(n: int) -> None:
                for _ in range(n):
                    await noop.defer_async(t=0)

            await asyncio.gather(*(client(n) for n in per_client))
            out.put(time.time())
            return
        if task.phase == "drain":
            await asyncio.to_thread(start.wait)
            await app.run_worker_async(
                queues=[QUEUE], concurrency=task.concurrency, wait=False, install_signal_handlers=False
            )
            out.put(time.time())
            return
        running = asyncio.ensure_future(
            app.run_worker_async(
                queues=[QUEUE], concurrency=task.concurrency, wait=True, install_signal_handlers=False
            )
        )
        await asyncio.sleep(1.0)  # its LISTEN connection
        out.put("ready")
        await asyncio.to_thread(stop.wait)
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


def plain_child(task: Task, start: Any, stop: Any, out: Any) -> None:
    with psycopg.connect(task.url, autocommit=True) as conn:
        if task.phase == "enqueue":
            start.wait()
            for _ in range(task.jobs):  # one transaction per job
                conn.execute("INSERT INTO plain_jobs (payload) VALUES (%s::json)", ('{"t": 0}',))
            out.put(time.time())
            return
        if task.phase == "latency":
            out.put("ready")
        else:
            start.wait()
        while True:
            with conn.transaction():
                row = conn.execute(
                    "SELECT id, payload FROM plain_jobs WHERE state = 'todo' ORDER BY id LIMIT 1"
                    " FOR UPDATE SKIP LOCKED"
                ).fetchone()
                if row is not None:
                    if task.phase == "latency":
                        out.put(time.time() - row[1]["t"])
                    conn.execute("UPDATE plain_jobs SET state = 'done' WHERE id = %s", (row[0],))
            if row is None:
                if task.phase == "drain":
                    out.put(time.time())
                    return
                if stop.is_set():
                    return
                time.sleep(0.01)


def child(task: Task, start: Any, stop: Any, out: Any) -> None:
    logging.getLogger("procrastinate").setLevel(logging.ERROR)
    try:
        if task.system == "lifeline":
            asyncio.run(lifeline_child(task, start, stop, out))
        elif task.system == "procrastinate":
            asyncio.run(procrastinate_child(task, start, stop, out))
        else:
            plain_child(task, start, stop, out)
    except BaseException as exc:
        out.put(f"error: {type(exc).__name__}: {exc}")
        raise


# -- the parent -----------------------------------------------------------------------------------


@dataclass
class Row:
    system: str
    processes: int
    enqueue_per_s: float
    drain_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_max_ms: float
    notes: dict[str, Any] = field(default_factory=dict)


def prepare(system: str, url: str) -> None:
    if system == "lifeline":
        from lifeline.store.postgres import PostgresStore

        async def migrate() -> None:
            async with PostgresStore(url):
                pass

        asyncio.run(migrate())
    elif system == "procrastinate":
        app = procrastinate_app(url, 4)

        async def schema() -> None:
            async with app.open_async():
                await app.schema_manager.apply_schema_async()

        asyncio.run(schema())
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(PLAIN_SCHEMA)


def remaining(system: str, url: str) -> int:
    query = {
        "lifeline": "SELECT COUNT(*) FROM jobs WHERE state <> 'completed'",
        "procrastinate": "SELECT COUNT(*) FROM procrastinate_jobs WHERE status <> 'succeeded'",
        "plain": "SELECT COUNT(*) FROM plain_jobs WHERE state <> 'done'",
    }[system]
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()  # type: ignore[arg-type]
        return -1 if row is None else int(row[0])


@contextlib.contextmanager
def processes(tasks: list[Task]) -> Iterator[tuple[Any, Any, Any, list[Any]]]:
    ctx = mp.get_context("spawn")
    start, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=child, args=(t, start, stop, out), daemon=True) for t in tasks]
    for p in procs:
        p.start()
    try:
        yield start, stop, out, procs
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


def collect(out: Any, count: int, timeout: float) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        item = out.get(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(item, str) and item.startswith("error"):
            raise RuntimeError(item)
        got.append(item)
    return got


def settle(seconds: float = 2.5) -> None:
    """Let the children import and connect before the barrier opens."""
    time.sleep(seconds)


def run_one(system: str, n: int, base_url: str, args: argparse.Namespace) -> Row:
    name = f"bench_{system}_{n}"
    url = with_database(base_url, name)
    try:
        prepare(system, url)
        jobs = args.jobs
        # 1. enqueue
        share = [jobs // n + (1 if i < jobs % n else 0) for i in range(n)]
        tasks = [Task(system, "enqueue", url, jobs=s, clients=args.clients) for s in share]
        with processes(tasks) as (start, _, out, _procs):
            settle()
            began = time.time()
            start.set()
            enqueue_s = max(collect(out, n, 600)) - began
        # 2. claim + complete
        tasks = [Task(system, "drain", url, concurrency=args.concurrency) for _ in range(n)]
        with processes(tasks) as (start, _, out, _procs):
            settle()
            began = time.time()
            start.set()
            drain_s = max(collect(out, n, 900)) - began
        left = remaining(system, url)
        if left:
            raise RuntimeError(f"{system} left {left} jobs undone")
        # 3. latency with idle workers
        latencies = probe_latency(system, url, n, args)
        return Row(
            system,
            n,
            round(jobs / enqueue_s, 1),
            round(jobs / drain_s, 1),
            round(statistics.median(latencies) * 1000, 1),
            round(quantile(latencies, 0.95) * 1000, 1),
            round(max(latencies) * 1000, 1),
            {"enqueue_s": round(enqueue_s, 3), "drain_s": round(drain_s, 3)},
        )
    finally:
        drop_database(base_url, name)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def probe_latency(system: str, url: str, n: int, args: argparse.Namespace) -> list[float]:
    tasks = [Task(system, "latency", url, concurrency=args.concurrency) for _ in range(n)]
    with processes(tasks) as (_, _stop, out, _procs):
        collect(out, n, 120)  # every worker is up and listening
        time.sleep(0.5)
        if system == "lifeline":
            asyncio.run(lifeline_probes(url, args.probes))
        elif system == "procrastinate":
            asyncio.run(procrastinate_probes(url, args.probes))
        else:
            with psycopg.connect(url, autocommit=True) as conn:
                for _ in range(args.probes):
                    conn.execute(
                        "INSERT INTO plain_jobs (payload) VALUES (%s::json)",
                        (json.dumps({"t": time.time()}),),
                    )
                    time.sleep(0.02)
        latencies: list[float] = collect(out, args.probes, 120)
    return latencies


async def lifeline_probes(url: str, probes: int) -> None:
    from lifeline.store.postgres import PostgresStore

    async with PostgresStore(url, pool_size=1) as store:
        for _ in range(probes):
            await store.enqueue(QUEUE, {"t": time.time()})
            await asyncio.sleep(0.02)


async def procrastinate_probes(url: str, probes: int) -> None:
    app = procrastinate_app(url, 1)
    async with app.open_async():
        noop = app.tasks["noop"]
        for _ in range(probes):
            await noop.defer_async(t=time.time())
            await asyncio.sleep(0.02)


def writer_vs_pool(base_url: str, jobs: int = 4000) -> str:
    """Why a batching writer: the same completions (compare-and-set + attempt metrics), 64 at a
    time, through the store (group commit) and through a connection pool, one transaction each."""
    from psycopg_pool import AsyncConnectionPool

    from lifeline.store.postgres import _CAS_END, _COMPLETE_SET, PostgresStore

    async def claimed(url: str) -> list[Any]:
        async with PostgresStore(url) as store:
            await store.enqueue_many(QUEUE, [{} for _ in range(jobs)])
            held: list[Any] = []
            while len(held) < jobs:
                held += await store.claim_many(QUEUE, worker_id="w", limit=500)
            return held

    async def through_store(url: str) -> float:
        held = await claimed(url)
        async with PostgresStore(url) as store:
            gate = asyncio.Semaphore(64)

            async def one(job: Any) -> None:
                async with gate:
                    await store.complete(job)

            began = time.perf_counter()
            await asyncio.gather(*(one(j) for j in held))
            return jobs / (time.perf_counter() - began)

    async def through_pool(url: str, size: int) -> float:
        held = await claimed(url)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url, min_size=size, max_size=size, open=False, kwargs={"autocommit": True}
        )
        await pool.open(wait=True)
        cas = _CAS_END.format(set=_COMPLETE_SET, more="")
        gate = asyncio.Semaphore(64)

        async def one(job: Any) -> None:
            async with gate, pool.connection() as conn, conn.transaction():
                params = {"id": job.id, "owner": job.lease_owner, "claim": job.claims, "now": time.time()}
                await conn.execute(cas, {**params, "outcome": "completed", "error": None})
                await conn.execute(
                    "INSERT INTO attempt_metrics AS m (queue, outcome, bucket, count, duration_sum)"
                    " VALUES (%s, 'completed', 0, 1, 0.001) ON CONFLICT (queue, outcome, bucket)"
                    " DO UPDATE SET count = m.count + 1,"
                    " duration_sum = m.duration_sum + excluded.duration_sum",
                    (QUEUE,),
                )

        began = time.perf_counter()
        await asyncio.gather(*(one(j) for j in held))
        rate = jobs / (time.perf_counter() - began)
        await pool.close()
        return rate

    lines = ["| completions of claimed jobs, 64 at a time, one process | jobs/s |", "|---|---:|"]
    runs: list[tuple[str, Callable[[str], Any]]] = [("batching writer (lifeline)", through_store)]
    for size in (4, 16, 32):
        runs.append((f"connection pool of {size}, a transaction each", lambda u, n=size: through_pool(u, n)))
    for label, run in runs:
        name = "bench_writer_vs_pool"
        url = with_database(base_url, name)
        try:
            lines.append(f"| {label} | {asyncio.run(run(url)):,.0f} |")
        finally:
            drop_database(base_url, name)
    return "\n".join(lines)


def render(rows: list[Row], meta: dict[str, Any]) -> str:
    lines = [
        "| system | processes | enqueue jobs/s | claim+complete jobs/s"
        " | enqueue→start p50 ms | p95 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.system} | {r.processes} | {r.enqueue_per_s:,.0f} | {r.drain_per_s:,.0f} |"
            f" {r.latency_p50_ms} | {r.latency_p95_ms} | {r.latency_max_ms} |"
        )
    by = {(r.system, r.processes): r for r in rows}
    lines.append("")
    lines.append(
        "| processes | lifeline ÷ procrastinate (claim+complete) | lifeline ÷ plain loop (claim+complete) |"
    )
    lines.append("|---:|---:|---:|")
    for n in sorted({r.processes for r in rows}):
        life, proc, plain = by.get(("lifeline", n)), by.get(("procrastinate", n)), by.get(("plain", n))
        ratio_p = f"{life.drain_per_s / proc.drain_per_s:.1f}x" if life and proc else "-"
        ratio_l = f"{life.drain_per_s / plain.drain_per_s:.1f}x" if life and plain else "-"
        lines.append(f"| {n} | {ratio_p} | {ratio_l} |")
    lines.append("")
    lines.append(
        f"{meta['jobs']} jobs per run; {meta['clients']} producers per enqueuing process; "
        f"{meta['concurrency']} jobs in flight per lifeline/procrastinate worker process; "
        f"{meta['probes']} latency probes 20 ms apart. PostgreSQL {meta['server']} "
        f"(fsync on, synchronous_commit on), {meta['cpus']} CPUs, Python {meta['python']}, "
        f"psycopg {meta['psycopg']}, procrastinate {meta['procrastinate']}."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url", help="an existing server (a database is created per run); default: a private one"
    )
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--clients", type=int, default=64, help="concurrent producers per enqueuing process")
    parser.add_argument("--concurrency", type=int, default=64, help="jobs in flight per worker process")
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="1000 jobs, 30 probes")
    parser.add_argument(
        "--writer-vs-pool", action="store_true", help="also: group commit against a pool, a transaction each"
    )
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    args = parser.parse_args()
    logging.getLogger("procrastinate").setLevel(logging.ERROR)  # "App is instantiated in __main__"
    if args.quick:
        args.jobs, args.probes = 1000, 30
    server = None if args.url else Server()
    base_url = args.url or (server.url() if server else "")
    try:
        with psycopg.connect(base_url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        meta = {
            "jobs": args.jobs,
            "clients": args.clients,
            "concurrency": args.concurrency,
            "probes": args.probes,
            "server": version[0] if version else "?",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "psycopg": metadata.version("psycopg"),
            "procrastinate": metadata.version("procrastinate"),
        }
        rows: list[Row] = []
        for n in [int(p) for p in args.processes.split(",")]:
            for system in args.systems.split(","):
                row = run_one(system, n, base_url, args)
                rows.append(row)
                print(
                    f"{system:14} {n} processes: enqueue {row.enqueue_per_s:8.0f}/s"
                    f"  claim+complete {row.drain_per_s:8.0f}/s"
                    f"  latency p50 {row.latency_p50_ms} ms p95 {row.latency_p95_ms} ms",
                    file=sys.stderr,
                    flush=True,
                )
        table = render(rows, meta)
        if args.writer_vs_pool:
            table += "\n\n" + writer_vs_pool(base_url, args.jobs)
        print(table)
        if args.json:
            args.json.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))
        if args.markdown:
            args.markdown.write_text(table + "\n")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
