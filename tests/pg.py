"""A private PostgreSQL cluster for the tests: never the system's, never on a fixed port.

``initdb -A trust`` and ``pg_ctl`` run as the ``postgres`` user (when the tests run as root) in a
temporary directory, on a free loopback port, with the socket in that directory. The schema is
built once into a template database; each test gets ``CREATE DATABASE … TEMPLATE …``, a copy made
in milliseconds, and drops it afterwards.

Locally the PostgreSQL tests are skipped when no server binaries are installed (or the cluster
cannot start); with ``CI`` set they fail instead, so a CI machine without PostgreSQL cannot pass
by running nothing.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

TEMPLATE = "lifeline_template"

# Fast and still safe against a killed server process (the OS keeps what was written): the tests
# restart the server with ``-m immediate`` and check that nothing acknowledged is lost.
TEST_SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "64MB",
    "listen_addresses": "127.0.0.1",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
    "deadlock_timeout": "200ms",
}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started here."""


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` holding initdb and pg_ctl; ``$PG_BINDIR``, when
    set, is the only place looked at (``PG_BINDIR=/nowhere`` shows what happens without a server)."""
    candidates = [Path(os.environ["PG_BINDIR"])] if os.environ.get("PG_BINDIR") else []
    root = Path("/usr/lib/postgresql")
    if root.is_dir() and not candidates:

        def version(path: Path) -> float:
            try:
                return float(path.name)
            except ValueError:
                return 0.0

        candidates += [v / "bin" for v in sorted(root.iterdir(), key=version, reverse=True)]
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    return None


def _scratch_dir() -> str | None:
    """Memory (tmpfs) when there is some: a test cluster creates and drops a database per test,
    hundreds of files each time, and a virtual disk makes that ten times slower."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return str(shm)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Cluster:
    """One running server in its own directory, owned by whoever runs the server binaries."""

    def __init__(self, bindir: Path, root: Path, port: int, settings: dict[str, str]) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.log = root / "server.log"
        self.port = port
        self.settings = settings
        self._lock = threading.Lock()
        self._databases: set[str] = set()

    # -- life cycle -----------------------------------------------------------------------------
    @classmethod
    def start(cls, settings: dict[str, str] | None = None, *, prefix: str = "lifeline-pg-") -> Cluster:
        bindir = find_bindir()
        if bindir is None:
            raise PostgresUnavailable("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
        root = Path(tempfile.mkdtemp(prefix=prefix, dir=_scratch_dir()))
        cluster = cls(bindir, root, free_port(), dict(TEST_SETTINGS if settings is None else settings))
        try:
            cluster._initdb()
            cluster.pg_ctl("start")
        except (OSError, subprocess.CalledProcessError) as exc:
            log = cluster.log.read_text(errors="replace")[-2000:] if cluster.log.exists() else ""
            cluster.remove()
            raise PostgresUnavailable(f"cannot start PostgreSQL: {exc}\n{log}") from exc
        return cluster

    def _as_server_user(self, argv: Sequence[str]) -> list[str]:
        if os.geteuid() != 0:
            return list(argv)
        return ["runuser", "-u", "postgres", "--", *argv]

    def _initdb(self) -> None:
        self.sockets.mkdir()
        if os.geteuid() == 0:  # initdb refuses to run as root: the directory goes to postgres
            user = pwd.getpwnam("postgres")
            for path in (self.root, self.sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.root.chmod(0o700)
        subprocess.run(
            self._as_server_user(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    def pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.sockets} " + " ".join(
            f"-c {k}={v}" for k, v in self.settings.items()
        )
        argv = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60"]
        if action in ("start", "restart"):
            argv += ["-o", options]
        subprocess.run(
            self._as_server_user([*argv, *extra, action]),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    def restart(self, mode: str = "fast") -> None:
        self.pg_ctl("restart", "-m", mode)

    def stop(self) -> None:
        if self.data.exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.pg_ctl("stop", "-m", "immediate")
        self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases ------------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, *statements: str, database: str = "postgres") -> None:
        """Run statements outside a transaction (CREATE/DROP DATABASE), from any thread."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]

    def create_database(self, name: str, template: str | None = None) -> str:
        clause = f" TEMPLATE {template}" if template else ""
        self.sql(f'CREATE DATABASE "{name}"{clause}')
        with self._lock:
            self._databases.add(name)
        return name

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        with self._lock:
            self._databases.discard(name)

    def has_database(self, name: str) -> bool:
        with self._lock:
            return name in self._databases


# -- the one cluster of a test session ------------------------------------------------------------

_cluster: Cluster | None = None
_failure: str | None = None
_start_lock = threading.Lock()


def _build_template(cluster: Cluster) -> None:
    from lifeline.store.postgres import PostgresStore

    cluster.create_database(TEMPLATE)

    async def migrate() -> None:
        async with PostgresStore(cluster.url(TEMPLATE)):
            pass

    # on a thread of its own: the first caller may be a test already inside an event loop
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, migrate()).result()


def cluster() -> Cluster:
    """The session's cluster, started on first use (with the schema in its template database)."""
    global _cluster, _failure
    with _start_lock:
        if _cluster is not None:
            return _cluster
        if _failure is not None:
            raise PostgresUnavailable(_failure)
        try:
            import psycopg  # noqa: F401  (the driver is part of the test extra)
        except ImportError as exc:
            _failure = f"psycopg is not installed: {exc}"
            raise PostgresUnavailable(_failure) from exc
        try:
            started = Cluster.start()
        except PostgresUnavailable as exc:
            _failure = str(exc)
            raise
        atexit.register(started.stop)
        _build_template(started)
        _cluster = started
        return started


def require() -> Cluster:
    """The cluster, or skip the test (locally) / fail it (with ``CI`` set) when there is none."""
    try:
        return cluster()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {exc}")
        pytest.skip(f"PostgreSQL is not available: {exc}")


def database_for(location: Path) -> str:
    """The database a test's ``location`` (its temporary directory) maps to, created on first use."""
    name = "t_" + hashlib.sha1(str(location).encode()).hexdigest()[:20]
    running = require()
    if not running.has_database(name):
        running.create_database(name, TEMPLATE)
    return name


def drop_database_for(location: Path) -> None:
    name = "t_" + hashlib.sha1(str(location).encode()).hexdigest()[:20]
    if _cluster is not None and _cluster.has_database(name):
        _cluster.drop_database(name)
