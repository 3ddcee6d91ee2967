"""How the conformance suite opens a store on each backend.

Every conformance test runs once per name in :data:`BACKENDS`: ``sqlite`` (a file in the test's
temporary directory) and ``postgres`` (a database cloned from the schema template in the private
cluster of ``tests/pg.py``, one per temporary directory). The tests themselves do not change.
"""

from __future__ import annotations

import random
from pathlib import Path

import lifeline
import pg
from fakes import FakeClock
from lifeline import RetryPolicy, Store

BACKENDS = ["sqlite", "postgres"]

QUEUE = "work"
OTHER = "other"
NEXT = "next"

# Deterministic, small numbers so that the fake clock can step over every boundary.
POLICY = RetryPolicy(max_attempts=3, base_delay=2.0, max_delay=20.0, lease=30.0)
POLICIES = {QUEUE: POLICY, OTHER: POLICY, NEXT: POLICY}


def store_url(backend: str, location: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{location / 'lifeline.db'}"
    if backend == "postgres":
        return pg.require().url(pg.database_for(location))
    raise ValueError(f"unknown backend {backend!r}")


def require_backend(backend: str) -> None:
    """Skip (locally) or fail (in CI) when the backend's server is not available."""
    if backend == "postgres":
        pg.require()


def forget_backend(backend: str, location: Path) -> None:
    """Drop what ``location`` held on a server (the SQLite file goes with the directory)."""
    if backend == "postgres":
        pg.drop_database_for(location)


async def open_backend(
    backend: str,
    location: Path,
    *,
    clock: FakeClock,
    rng: random.Random,
    policies: dict[str, RetryPolicy] | None = None,
    synchronous: str | None = None,
) -> Store:
    """An opened store on ``backend``; the same ``location`` reaches the same data (for reopening)."""
    url = store_url(backend, location)
    if synchronous is not None and backend == "sqlite":
        url += f"?synchronous={synchronous}"
    store = lifeline.connect(
        url,
        policies=POLICIES if policies is None else policies,
        default_policy=POLICY,
        clock=clock,
        rng=rng,
    )
    await store.open()
    return store


class StoreFactory:
    """Opens stores on one backend's database (again, after a close, to test durability)."""

    def __init__(self, backend: str, location: Path, clock: FakeClock, rng: random.Random) -> None:
        self.backend = backend
        self.location = location
        self.clock = clock
        self.rng = rng
        self._opened: list[Store] = []

    async def __call__(self, *, policies: dict[str, RetryPolicy] | None = None) -> Store:
        store = await open_backend(
            self.backend, self.location, clock=self.clock, rng=self.rng, policies=policies
        )
        self._opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in reversed(self._opened):
            await store.close()
