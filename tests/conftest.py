"""Fixtures every suite may use: the fake clock and a seeded random generator."""

from __future__ import annotations

import random

import pytest

from fakes import FakeClock, seeded_rng


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rng() -> random.Random:
    return seeded_rng()
