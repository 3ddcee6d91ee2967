"""An OpenAI-compatible server: ``GET /v1/models``, ``POST /v1/chat/completions`` (also streamed as
server-sent events), ``/v1/embeddings`` and ``/v1/audio/transcriptions`` (multipart upload; ``json``,
``text`` and ``verbose_json`` answers), plus ``GET /health`` as faster-whisper-server has it.

With ``api_key`` set, a request without ``Authorization: Bearer <key>`` gets OpenAI's 401.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from peers.server import (
    API,
    Fault,
    HTTPError,
    HTTPPeer,
    Request,
    Response,
    fake_embedding,
    json_response,
    text_response,
)


def default_reply(prompt: str) -> str:
    return f"You said: {prompt}"


def default_transcribe(audio: bytes, fields: dict[str, str]) -> str:
    return f"transcript of {len(audio)} bytes"


_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
}


class OpenAIAPI(API):
    def __init__(
        self,
        models: list[str] | None = None,
        *,
        api_key: str | None = None,
        reply: Callable[[str], str] = default_reply,
        transcribe: Callable[[bytes, dict[str, str]], str] = default_transcribe,
        embedding_dim: int = 384,
        health_endpoint: bool = True,
    ) -> None:
        super().__init__()
        self.models = list(
            models if models is not None else ["gpt-4o-mini", "text-embedding-3-small", "whisper-1"]
        )
        self.api_key = api_key
        self.reply = reply
        self.transcribe = transcribe
        self.embedding_dim = embedding_dim
        if health_endpoint:
            self.route("GET", "/health", lambda r: text_response("OK"))
        self.route("GET", "/v1/models", self._list_models)
        self.route("POST", "/v1/chat/completions", self._chat)
        self.route("POST", "/v1/embeddings", self._embeddings)
        self.route("POST", "/v1/audio/transcriptions", self._transcriptions)

    def error(self, status: int, message: str) -> Response:
        kind, code = _ERROR_TYPES.get(status, ("invalid_request_error", None))
        return json_response(
            {"error": {"message": message, "type": kind, "param": None, "code": code}}, status
        )

    def fault_message(self, fault: Fault) -> str:
        if fault is Fault.RATE_LIMIT:
            return "Rate limit reached for requests. Please try again in 1s."
        if fault is Fault.ERROR_500:
            return "The server had an error while processing your request. Sorry about that!"
        return "We could not parse the JSON body of your request."

    def handle(self, request: Request) -> Response:
        if (
            self.api_key is not None
            and request.path.startswith("/v1/")
            and request.headers.get("authorization") != f"Bearer {self.api_key}"
        ):
            return self.error(
                401, "Incorrect API key provided. You can find your API key at your account page."
            )
        return super().handle(request)

    def _model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if not model:
            raise HTTPError(400, "you must provide a model parameter")
        if model not in self.models:
            raise HTTPError(404, f"The model `{model}` does not exist or you do not have access to it.")
        return str(model)

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        try:
            body = request.json()
        except json.JSONDecodeError:
            raise HTTPError(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "We could not parse the JSON body of your request.")
        return body

    def _list_models(self, request: Request) -> Response:
        return json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 1686935002, "owned_by": "system"}
                    for m in self.models
                ],
            }
        )

    def _chat(self, request: Request) -> Response:
        body = self._body(request)
        model = self._model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HTTPError(400, "'messages' is a required property")
        prompt = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
        answer = self.reply(prompt)
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        usage = {
            "prompt_tokens": max(1, len(prompt.split())),
            "completion_tokens": max(1, len(answer.split())),
            "total_tokens": max(1, len(prompt.split())) + max(1, len(answer.split())),
        }
        if not body.get("stream"):
            return json_response(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer, "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                    "system_fingerprint": "fp_lifeline",
                }
            )

        def event(delta: dict[str, Any], finish: str | None) -> bytes:
            chunk = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        words = answer.split(" ")
        chunks = [event({"role": "assistant", "content": ""}, None)]
        chunks += [
            event({"content": w + (" " if i < len(words) - 1 else "")}, None) for i, w in enumerate(words)
        ]
        chunks += [event({}, "stop"), b"data: [DONE]\n\n"]
        return Response(200, b"", "text/event-stream", chunks=chunks)

    def _embeddings(self, request: Request) -> Response:
        body = self._body(request)
        model = self._model(body)
        inputs = body.get("input")
        if inputs is None or inputs == "" or inputs == []:
            raise HTTPError(400, "'input' is a required property")
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        tokens = sum(max(1, len(str(t).split())) for t in texts)
        return json_response(
            {
                "object": "list",
                "data": [
                    {
                        "object": "embedding",
                        "index": i,
                        "embedding": fake_embedding(str(t), self.embedding_dim),
                    }
                    for i, t in enumerate(texts)
                ],
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def _transcriptions(self, request: Request) -> Response:
        fields, files = parse_multipart(request)
        if "file" not in files:
            raise HTTPError(400, "1 validation error: file: field required")
        model = fields.get("model")
        if not model:
            raise HTTPError(400, "you must provide a model parameter")
        audio = files["file"][1]
        if not audio:
            raise HTTPError(400, "The audio file could not be decoded or its format is not supported.")
        text = self.transcribe(audio, fields)
        response_format = fields.get("response_format", "json")
        if response_format == "text":
            return text_response(text + "\n")
        if response_format == "verbose_json":
            duration = round(len(audio) / 32000, 2)  # 16 kHz, 16-bit mono
            return json_response(
                {
                    "task": "transcribe",
                    "language": fields.get("language", "english"),
                    "duration": duration,
                    "text": text,
                    "segments": [
                        {
                            "id": 0,
                            "seek": 0,
                            "start": 0.0,
                            "end": duration,
                            "text": text,
                            "tokens": [50364, 50414],
                            "temperature": 0.0,
                            "avg_logprob": -0.25,
                            "compression_ratio": 1.2,
                            "no_speech_prob": 0.01,
                        }
                    ],
                }
            )
        if response_format != "json":
            raise HTTPError(400, f"Unsupported response_format: {response_format}")
        return json_response({"text": text})


def parse_multipart(request: Request) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """The text fields and the files (filename, bytes) of a multipart/form-data body."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise HTTPError(400, "the request must be multipart/form-data")
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + request.body
    )
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    if not isinstance(message, Message) or not message.is_multipart():
        raise HTTPError(400, "malformed multipart body")
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        payload = part.get_payload(decode=True) or b""
        if filename is not None:
            files[str(name)] = (filename, payload)
        else:
            fields[str(name)] = payload.decode()
    return fields, files


def openai_peer(**options: Any) -> HTTPPeer:
    """An OpenAI-compatible peer (not started: use it as a context manager)."""
    return HTTPPeer(OpenAIAPI(**options))
