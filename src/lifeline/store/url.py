"""Database URLs: ``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``?synchronous=normal``."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from lifeline.domain import ConfigError
from lifeline.queue.policy import RetryPolicy
from lifeline.store.base import Store
from lifeline.store.sqlite_engine import Synchronous


@dataclass(frozen=True, slots=True)
class DatabaseURL:
    scheme: str
    path: Path
    synchronous: Synchronous | None


def parse_database_url(url: str) -> DatabaseURL:
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigError(f"unsupported database URL scheme {parts.scheme!r} (expected sqlite:///path)")
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
    """
    from lifeline.store.sqlite import SQLiteStore

    parsed = parse_database_url(url)
    level: Synchronous = synchronous or parsed.synchronous or "full"
    return SQLiteStore(
        parsed.path,
        synchronous=level,
        policies=policies,
        default_policy=default_policy,
        clock=clock,
        rng=rng,
    )
