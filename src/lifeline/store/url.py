"""Database URLs and ``lifeline.connect``.

- ``sqlite:///relative.db``, ``sqlite:////absolute.db``, optional ``?synchronous=normal``: the
  embedded store, one file.
- ``postgresql://user:password@host:5432/dbname`` (or ``postgres://``), with any libpq option as
  a query parameter (``?sslmode=require``, ``?host=/run/postgresql`` for a socket): the shared
  store for many processes on many hosts. Needs the ``postgres`` extra (psycopg 3).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from lifeline.domain import ConfigError
from lifeline.queue.policy import RetryPolicy
from lifeline.store.base import Store
from lifeline.store.sqlite_engine import Synchronous

POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True, slots=True)
class DatabaseURL:
    scheme: str
    path: Path | None  # the SQLite file; None for PostgreSQL
    synchronous: Synchronous | None
    conninfo: str | None = None  # the libpq URL, for PostgreSQL

    @property
    def is_postgres(self) -> bool:
        return self.scheme in POSTGRES_SCHEMES


def parse_database_url(url: str) -> DatabaseURL:
    parts = urlsplit(url)
    if parts.scheme in POSTGRES_SCHEMES:
        return _parse_postgres(url)
    if parts.scheme != "sqlite":
        raise ConfigError(
            f"unsupported database URL scheme {parts.scheme!r}"
            " (expected sqlite:///path or postgresql://user@host/dbname)"
        )
    raw = parts.path
    if parts.netloc:
        raise ConfigError(
            "a sqlite URL has no host: use sqlite:///relative/path.db or sqlite:////abs/path.db"
        )
    if not raw or raw == "/":
        raise ConfigError("the sqlite URL names no file")
    # sqlite:///data/x.db -> path "/data/x.db" -> relative "data/x.db"; sqlite:////abs -> "//abs" -> "/abs"
    path = Path(raw[1:])
    query = parse_qs(parts.query)
    sync: Synchronous | None = None
    if "synchronous" in query:
        value = query["synchronous"][-1].lower()
        if value not in ("full", "normal"):
            raise ConfigError(f"synchronous must be full or normal, not {value!r}")
        sync = "full" if value == "full" else "normal"
    unknown = set(query) - {"synchronous"}
    if unknown:
        raise ConfigError(f"unknown database URL options: {sorted(unknown)}")
    return DatabaseURL(parts.scheme, path, sync)


def _parse_postgres(url: str) -> DatabaseURL:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if "synchronous" in query:
        raise ConfigError(
            "synchronous is a SQLite option; on PostgreSQL durability is the server's synchronous_commit"
        )
    if not parts.netloc and "host" not in query:
        raise ConfigError("a postgresql URL needs a host: postgresql://user:password@host:5432/dbname")
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError as exc:
        raise ConfigError(f"bad port in the database URL: {exc}") from None
    return DatabaseURL(parts.scheme, None, None, conninfo=url)


def redact(url: str) -> str:
    """``url`` without its password, for logs and banners."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def connect(
    url: str,
    *,
    synchronous: Synchronous | None = None,
    policies: dict[str, RetryPolicy] | None = None,
    default_policy: RetryPolicy | None = None,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
) -> Store:
    """A store for ``url``, to be used as ``async with connect(url) as store``.

    ``synchronous`` (argument, else the URL's ``?synchronous=``, else ``full``): ``full`` survives
    power loss; ``normal`` survives a killed process but may lose the last commits on power loss.
    It applies to SQLite only; a PostgreSQL server's durability is its own ``synchronous_commit``.
    """
    parsed = parse_database_url(url)
    if parsed.is_postgres:
        try:
            from lifeline.store.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigError(
                f"a postgresql:// URL needs psycopg: pip install 'lifeline[postgres]' ({exc})"
            ) from exc
        assert parsed.conninfo is not None
        return PostgresStore(
            parsed.conninfo, policies=policies, default_policy=default_policy, clock=clock, rng=rng
        )

    from lifeline.store.sqlite import SQLiteStore

    assert parsed.path is not None
    level: Synchronous = synchronous or parsed.synchronous or "full"
    return SQLiteStore(
        parsed.path,
        synchronous=level,
        policies=policies,
        default_policy=default_policy,
        clock=clock,
        rng=rng,
    )
