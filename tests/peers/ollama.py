"""An Ollama server: ``GET /``, ``/api/tags``, ``/api/version``, ``POST /api/generate``, ``/api/chat``,
``/api/embed`` (and the older ``/api/embeddings``), with Ollama's answers and error bodies.

Generation is deterministic: ``reply(prompt)`` (by default an echo) is the model's answer; with
``"stream": true`` (Ollama's default) it comes as NDJSON chunks, as the real server sends it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from peers.server import (
    API,
    HTTPError,
    HTTPPeer,
    Request,
    Response,
    fake_embedding,
    iso_now,
    json_response,
    text_response,
)

DIGEST = "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72"


def _model_entry(name: str) -> dict[str, Any]:
    family = name.split(":")[0].rstrip("0123456789.") or "llama"
    return {
        "name": name,
        "model": name,
        "modified_at": "2026-10-01T12:00:00.000000000Z",
        "size": 2019393189,
        "digest": DIGEST,
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        },
    }


def default_reply(prompt: str) -> str:
    return f"You said: {prompt}"


class OllamaAPI(API):
    def __init__(
        self,
        models: list[str] | None = None,
        *,
        reply: Callable[[str], str] = default_reply,
        embedding_dim: int = 384,
    ) -> None:
        super().__init__()
        self.models = list(models if models is not None else ["llama3.2:latest", "all-minilm:latest"])
        self.reply = reply
        self.embedding_dim = embedding_dim
        self.route("GET", "/", lambda r: text_response("Ollama is running"))
        self.route("GET", "/api/version", lambda r: json_response({"version": "0.5.7"}))
        self.route(
            "GET", "/api/tags", lambda r: json_response({"models": [_model_entry(m) for m in self.models]})
        )
        self.route("POST", "/api/generate", self._generate)
        self.route("POST", "/api/chat", self._chat)
        self.route("POST", "/api/embed", self._embed)
        self.route("POST", "/api/embeddings", self._embeddings)

    def error(self, status: int, message: str) -> Response:
        return json_response({"error": message}, status)

    def _model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if not model:
            raise HTTPError(400, "model is required")
        wanted = {model, model if ":" in model else f"{model}:latest"}
        if not wanted & set(self.models):
            raise HTTPError(404, f'model "{model}" not found, try pulling it first')
        return str(model)

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        try:
            body = request.json()
        except json.JSONDecodeError as exc:
            raise HTTPError(400, f"invalid character in request body: {exc.msg}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "json: cannot unmarshal request body")
        return body

    @staticmethod
    def _stats(prompt: str, answer: str) -> dict[str, Any]:
        return {
            "total_duration": 5_043_500_667,
            "load_duration": 5_025_959,
            "prompt_eval_count": max(1, len(prompt.split())),
            "prompt_eval_duration": 325_953_000,
            "eval_count": max(1, len(answer.split())),
            "eval_duration": 4_709_213_000,
        }

    def _answer(self, body: dict[str, Any], prompt: str, key: str, wrap: Callable[[str], Any]) -> Response:
        model = self._model(body)
        answer = self.reply(prompt)
        final = {"model": model, "created_at": iso_now(), key: wrap(""), "done": True, "done_reason": "stop"}
        final.update(self._stats(prompt, answer))
        if body.get("stream", True) is False:
            final[key] = wrap(answer)
            return json_response(final)
        words = answer.split(" ")
        chunks = [
            json.dumps(
                {
                    "model": model,
                    "created_at": iso_now(),
                    key: wrap(w + (" " if i < len(words) - 1 else "")),
                    "done": False,
                }
            ).encode()
            + b"\n"
            for i, w in enumerate(words)
        ]
        chunks.append(json.dumps(final).encode() + b"\n")
        return Response(200, b"", "application/x-ndjson", chunks=chunks)

    def _generate(self, request: Request) -> Response:
        body = self._body(request)
        return self._answer(body, str(body.get("prompt", "")), "response", lambda text: text)

    def _chat(self, request: Request) -> Response:
        body = self._body(request)
        messages = body.get("messages") or []
        last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        return self._answer(body, str(last), "message", lambda text: {"role": "assistant", "content": text})

    def _embed(self, request: Request) -> Response:
        body = self._body(request)
        model = self._model(body)
        inputs = body.get("input", "")
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        return json_response(
            {
                "model": model,
                "embeddings": [fake_embedding(str(t), self.embedding_dim) for t in texts],
                "total_duration": 14_143_917,
                "load_duration": 1_019_500,
                "prompt_eval_count": sum(max(1, len(str(t).split())) for t in texts),
            }
        )

    def _embeddings(self, request: Request) -> Response:
        body = self._body(request)
        self._model(body)
        return json_response({"embedding": fake_embedding(str(body.get("prompt", "")), self.embedding_dim)})


def ollama_peer(**options: Any) -> HTTPPeer:
    """An Ollama peer (not started: use it as a context manager)."""
    return HTTPPeer(OllamaAPI(**options))
