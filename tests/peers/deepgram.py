"""Deepgram's REST API, as much as Lifeline uses: ``GET /v1/projects`` (the health probe: cheap and
authenticated with ``Authorization: Token KEY``) and ``POST /v1/listen`` (pre-recorded audio)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from peers.server import API, Fault, HTTPError, HTTPPeer, Request, Response, json_response


def default_transcribe(audio: bytes) -> str:
    return f"transcript of {len(audio)} bytes"


class DeepgramAPI(API):
    def __init__(
        self, api_key: str = "test-key", *, transcribe: Callable[[bytes], str] = default_transcribe
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.transcribe = transcribe
        self.route("GET", "/v1/projects", self._projects)
        self.route("POST", "/v1/listen", self._listen)

    def error(self, status: int, message: str) -> Response:
        codes = {
            400: "Bad Request",
            401: "INVALID_AUTH",
            429: "TOO_MANY_REQUESTS",
            500: "INTERNAL_SERVER_ERROR",
        }
        return json_response(
            {"err_code": codes.get(status, "ERROR"), "err_msg": message, "request_id": str(uuid.uuid4())},
            status,
        )

    def fault_message(self, fault: Fault) -> str:
        return {
            Fault.ERROR_500: "An internal server error occurred.",
            Fault.RATE_LIMIT: "Too many requests. Please try again later.",
            Fault.BAD_REQUEST: "Bad Request: failed to process audio: corrupt or unsupported data",
        }[fault]

    def handle(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Token {self.api_key}":
            return self.error(401, "Invalid credentials.")
        return super().handle(request)

    def _projects(self, request: Request) -> Response:
        return json_response(
            {"projects": [{"project_id": "3c1a7a4c-0d8c-4b1f-9f5e-6d2f8c9a1b2e", "name": "Lifeline"}]}
        )

    def _listen(self, request: Request) -> Response:
        if not request.body:
            raise HTTPError(400, "Bad Request: failed to process audio: corrupt or unsupported data")
        text = self.transcribe(request.body)
        words: list[dict[str, Any]] = [
            {
                "word": w.lower(),
                "start": i * 0.5,
                "end": i * 0.5 + 0.4,
                "confidence": 0.99,
                "punctuated_word": w,
            }
            for i, w in enumerate(text.split())
        ]
        return json_response(
            {
                "metadata": {
                    "request_id": str(uuid.uuid4()),
                    "duration": len(request.body) / 32000,
                    "channels": 1,
                },
                "results": {
                    "channels": [{"alternatives": [{"transcript": text, "confidence": 0.99, "words": words}]}]
                },
            }
        )


def deepgram_peer(**options: Any) -> HTTPPeer:
    return HTTPPeer(DeepgramAPI(**options))
