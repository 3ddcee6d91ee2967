"""Pytest fixtures for the peers (registered for the whole suite by ``tests/conftest.py``).

Each yields a started peer in the ``ok`` state and stops it afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from peers.deepgram import deepgram_peer
from peers.mongo import MongoPeer
from peers.ollama import ollama_peer
from peers.openai import openai_peer
from peers.qdrant import qdrant_peer
from peers.server import HTTPPeer
from peers.wyoming import WyomingPeer


@pytest.fixture
def ollama_server() -> Iterator[HTTPPeer]:
    with ollama_peer() as peer:
        yield peer


@pytest.fixture
def openai_server() -> Iterator[HTTPPeer]:
    with openai_peer() as peer:
        yield peer


@pytest.fixture
def qdrant_server() -> Iterator[HTTPPeer]:
    with qdrant_peer() as peer:
        yield peer


@pytest.fixture
def deepgram_server() -> Iterator[HTTPPeer]:
    with deepgram_peer() as peer:
        yield peer


@pytest.fixture
def wyoming_server() -> Iterator[WyomingPeer]:
    with WyomingPeer() as peer:
        yield peer


@pytest.fixture
def mongo_server() -> Iterator[MongoPeer]:
    with MongoPeer() as peer:
        yield peer
