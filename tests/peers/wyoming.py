"""A Wyoming speech-to-text server: ``describe`` -> ``info``; ``transcribe``, ``audio-start``,
``audio-chunk``..., ``audio-stop`` -> ``transcript``. Events are JSON header lines with
``data_length`` and ``payload_length`` bytes after them, as the wyoming library writes them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from peers.server import Fault, LoopbackServer

VERSION = "1.5.4"


def default_transcribe(audio: bytes) -> str:
    return f"transcript of {len(audio)} bytes"


INFO: dict[str, Any] = {
    "asr": [
        {
            "name": "faster-whisper",
            "attribution": {
                "name": "Guillaume Klein",
                "url": "https://github.com/guillaumekln/faster-whisper/",
            },
            "installed": True,
            "description": "Faster Whisper transcription with CTranslate2",
            "version": "2.2.0",
            "models": [
                {
                    "name": "base",
                    "attribution": {"name": "Systran", "url": "https://huggingface.co/Systran"},
                    "installed": True,
                    "description": "base",
                    "version": "2.2.0",
                    "languages": ["en"],
                }
            ],
        }
    ],
    "tts": [],
    "handle": [],
    "intent": [],
    "wake": [],
}


async def write_event(
    writer: asyncio.StreamWriter, event_type: str, data: dict[str, Any] | None = None
) -> None:
    header: dict[str, Any] = {"type": event_type, "version": VERSION}
    raw = json.dumps(data).encode() if data else b""
    if raw:
        header["data_length"] = len(raw)
    writer.write(json.dumps(header).encode() + b"\n" + raw)
    await writer.drain()


async def read_event(reader: asyncio.StreamReader) -> tuple[str, dict[str, Any], bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    header = json.loads(line)
    data = dict(header.get("data") or {})
    if header.get("data_length"):
        data.update(json.loads(await reader.readexactly(header["data_length"])))
    payload = await reader.readexactly(header["payload_length"]) if header.get("payload_length") else b""
    return header["type"], data, payload


class WyomingPeer(LoopbackServer):
    def __init__(
        self, *, info: dict[str, Any] | None = None, transcribe: Callable[[bytes], str] = default_transcribe
    ) -> None:
        super().__init__()
        self.info = INFO if info is None else info
        self.transcribe = transcribe
        self.events: list[str] = []

    @property
    def uri(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        audio = b""
        while True:
            event = await read_event(reader)
            if event is None:
                return
            kind, _, payload = event
            self.events.append(kind)
            fault = self._take_fault(kind)
            if fault is Fault.HANG:
                await self._hang()
                return
            if fault in (Fault.RESET, Fault.ERROR_500, Fault.RATE_LIMIT, Fault.BAD_REQUEST):
                return  # Wyoming has no error answers: a broken server just drops the connection
            if fault is Fault.SLOW:
                await asyncio.sleep(self.delay)
            if kind == "describe":
                await write_event(writer, "info", self.info)
            elif kind in ("transcribe", "audio-start"):
                audio = b""
            elif kind == "audio-chunk":
                audio += payload
            elif kind == "audio-stop":
                await write_event(writer, "transcript", {"text": self.transcribe(audio)})
