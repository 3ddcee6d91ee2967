"""How the conformance suite opens a store on each backend.

Every conformance test runs once per name in :data:`BACKENDS`. To add PostgreSQL, add ``"postgres"``
and a branch in :func:`open_backend` that connects to a fresh database (``location`` is then the
database to use); the tests themselves do not change.
"""

from __future__ import annotations

import random
from pathlib import Path

import lifeline
from fakes import FakeClock
from lifeline import RetryPolicy, Store

BACKENDS = ["sqlite"]

QUEUE = "work"
OTHER = "other"
NEXT = "next"

# Deterministic, small numbers so that the fake clock can step over every boundary.
POLICY = RetryPolicy(max_attempts=3, base_delay=2.0, max_delay=20.0, lease=30.0)
POLICIES = {QUEUE: POLICY, OTHER: POLICY, NEXT: POLICY}


def store_url(backend: str, location: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{location / 'lifeline.db'}"
    raise ValueError(f"unknown backend {backend!r}")


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
    if synchronous is not None:
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
