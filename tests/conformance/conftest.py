"""The ``store`` fixture: every conformance test runs on every backend in ``BACKENDS``."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conformance.backends import BACKENDS, StoreFactory, forget_backend, require_backend
from fakes import FakeClock
from lifeline import Store


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    require_backend(name)
    return name


@pytest.fixture
async def open_store(
    backend: str, tmp_path: Path, clock: FakeClock, rng: random.Random
) -> AsyncIterator[StoreFactory]:
    factory = StoreFactory(backend, tmp_path, clock, rng)
    yield factory
    await factory.close_all()
    forget_backend(backend, tmp_path)


@pytest.fixture
async def store(open_store: StoreFactory) -> Store:
    return await open_store()
