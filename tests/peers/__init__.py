"""Real servers on loopback that speak the external services' APIs, with faults at will.

Use them as context managers (``with ollama_peer() as peer: ... peer.url``) or through the
fixtures in :mod:`peers.fixtures` (``ollama_server``, ``openai_server``, ``qdrant_server``,
``deepgram_server``, ``wyoming_server``, ``mongo_server``). ``peer.set_fault(Fault.REFUSE)`` and
friends switch failures on; ``peer.requests`` records what reached the service.
"""

from peers.deepgram import DeepgramAPI, deepgram_peer
from peers.mongo import MongoPeer
from peers.ollama import OllamaAPI, ollama_peer
from peers.openai import OpenAIAPI, openai_peer
from peers.qdrant import QdrantAPI, qdrant_peer
from peers.server import API, Fault, HTTPError, HTTPPeer, LoopbackServer, Request, Response
from peers.wyoming import WyomingPeer

__all__ = [
    "API",
    "DeepgramAPI",
    "Fault",
    "HTTPError",
    "HTTPPeer",
    "LoopbackServer",
    "MongoPeer",
    "OllamaAPI",
    "OpenAIAPI",
    "QdrantAPI",
    "Request",
    "Response",
    "WyomingPeer",
    "deepgram_peer",
    "ollama_peer",
    "openai_peer",
    "qdrant_peer",
]
