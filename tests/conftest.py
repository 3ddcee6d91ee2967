"""Fixtures every suite may use: the fake clock and a seeded random generator."""

from __future__ import annotations

import logging
import random

import pytest

from fakes import FakeClock, seeded_rng

# real servers on loopback speaking Ollama, OpenAI, Qdrant, Deepgram, Wyoming and MongoDB
pytest_plugins = ["peers.fixtures"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rng() -> random.Random:
    return seeded_rng()


# httpx logs full request URLs at INFO; a URL may carry a token, and no token may reach a log.
logging.getLogger("httpx").setLevel(logging.WARNING)
