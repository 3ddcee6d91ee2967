"""Health probes: each asks one service the cheapest question its own API offers.

- Ollama: ``GET /`` and ``GET /api/tags`` (the configured model must be listed);
- OpenAI-compatible LLM: ``GET /v1/models`` (the model, when configured, must be listed);
- Qdrant: ``GET /readyz``;
- Wyoming ASR: a ``describe`` event answered by ``info``;
- OpenAI-compatible ASR (faster-whisper-server and the like): ``GET /health``, else ``/v1/models``;
- Deepgram: ``GET /v1/projects`` with ``Authorization: Token KEY`` (authenticated, free);
- MongoDB: the ``ping`` command as an ``OP_MSG`` (no driver needed);
- the store: a read and a durable write; the disk: free bytes in the data dir.

A probe returns a :class:`ProbeResult` or raises; the monitor adds the timeout and the timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import shutil
import ssl
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import httpx

from lifeline.health import HealthStatus, Probe, ProbeResult

if TYPE_CHECKING:
    from lifeline.config import Settings
    from lifeline.store.base import Store

MiB = 1024 * 1024


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """Loading the CA bundle takes tens of milliseconds of CPU: once per process, not per check
    (it would block the event loop and inflate every other probe's measured response time)."""
    return httpx.create_ssl_context()


def _answer(response: httpx.Response, what: str) -> ProbeResult | None:
    """An unhealthy result for an HTTP error answer, or ``None`` when it is a 2xx."""
    if response.is_success:
        return None
    if response.status_code in (401, 403):
        return ProbeResult(
            HealthStatus.UNHEALTHY, error=f"{what}: HTTP {response.status_code}, credentials refused"
        )
    return ProbeResult(HealthStatus.UNHEALTHY, error=f"{what}: HTTP {response.status_code}")


@dataclass
class _HTTPProbe:
    """What every HTTP probe shares: a base URL, headers, and a client per check."""

    url: str
    name: str
    critical: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 10.0  # the monitor's own timeout is usually shorter
    transport: httpx.AsyncBaseTransport | None = None  # for tests

    def __post_init__(self) -> None:
        _ssl_context()  # load it now, not during the first check (it would count as response time)

    def _client(self) -> httpx.AsyncClient:
        # a fresh connection each time: a health check should prove that a new one can be made
        return httpx.AsyncClient(
            base_url=self.url.rstrip("/"),
            headers=dict(self.headers),
            timeout=self.timeout,
            transport=self.transport,
            verify=_ssl_context(),
        )


@dataclass
class OllamaProbe(_HTTPProbe):
    name: str = "llm"
    model: str | None = None

    async def check(self) -> ProbeResult:
        async with self._client() as client:
            root = await client.get("/")
            if (bad := _answer(root, "GET /")) is not None:
                return bad
            tags = await client.get("/api/tags")
            if (bad := _answer(tags, "GET /api/tags")) is not None:
                return bad
        names = [str(m.get("name") or m.get("model")) for m in tags.json().get("models", [])]
        if self.model is None:
            return ProbeResult(HealthStatus.HEALTHY, detail=f"{len(names)} models")
        if _model_listed(self.model, names):
            return ProbeResult(HealthStatus.HEALTHY, detail=f"model {self.model} listed")
        return ProbeResult(
            HealthStatus.DEGRADED,
            detail=f"model {self.model} is not pulled (listed: {', '.join(names) or 'none'})",
        )


def _model_listed(model: str, names: list[str]) -> bool:
    """Ollama lists ``llama3.2:latest`` for a model pulled as ``llama3.2``."""
    wanted = {model, model if ":" in model else f"{model}:latest"}
    return any(name in wanted for name in names)


def _v1(url: str, path: str) -> str:
    """``/v1/models`` against a base URL that may or may not already end in ``/v1``."""
    return path[len("/v1") :] if url.rstrip("/").endswith("/v1") else path


@dataclass
class OpenAIProbe(_HTTPProbe):
    """An OpenAI-compatible LLM server (vLLM, llama.cpp server, LM Studio, OpenAI itself)."""

    name: str = "llm"
    model: str | None = None

    async def check(self) -> ProbeResult:
        async with self._client() as client:
            response = await client.get(_v1(self.url, "/v1/models"))
        if (bad := _answer(response, "GET /v1/models")) is not None:
            return bad
        ids = [str(m.get("id")) for m in response.json().get("data", [])]
        if self.model is None or self.model in ids:
            return ProbeResult(HealthStatus.HEALTHY, detail=f"{len(ids)} models")
        return ProbeResult(HealthStatus.DEGRADED, detail=f"model {self.model} is not served")


@dataclass
class QdrantProbe(_HTTPProbe):
    name: str = "vectors"

    async def check(self) -> ProbeResult:
        async with self._client() as client:
            response = await client.get("/readyz")
        if (bad := _answer(response, "GET /readyz")) is not None:
            return bad
        return ProbeResult(HealthStatus.HEALTHY, detail=response.text.strip()[:80] or None)


@dataclass
class OpenAIASRProbe(_HTTPProbe):
    """An OpenAI-compatible speech server: ``GET /health``, or ``/v1/models`` where there is none."""

    name: str = "asr"

    async def check(self) -> ProbeResult:
        async with self._client() as client:
            response = await client.get("/health")
            what = "GET /health"
            if response.status_code == 404:
                response = await client.get(_v1(self.url, "/v1/models"))
                what = "GET /v1/models"
        if (bad := _answer(response, what)) is not None:
            return bad
        return ProbeResult(HealthStatus.HEALTHY, detail=what)


@dataclass
class DeepgramProbe(_HTTPProbe):
    """Deepgram: listing the key's projects is authenticated and costs nothing."""

    url: str = "https://api.deepgram.com"
    name: str = "asr"
    api_key: str = ""

    async def check(self) -> ProbeResult:
        async with self._client() as client:
            response = await client.get("/v1/projects", headers={"Authorization": f"Token {self.api_key}"})
        if (bad := _answer(response, "GET /v1/projects")) is not None:
            return bad
        return ProbeResult(HealthStatus.HEALTHY, detail="key accepted")


@dataclass
class WyomingProbe:
    """A Wyoming server (wyoming-faster-whisper and friends): ``describe`` must be answered by ``info``."""

    host: str
    port: int
    name: str = "asr"
    critical: bool = False

    async def check(self) -> ProbeResult:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(json.dumps({"type": "describe"}).encode() + b"\n")
            await writer.drain()
            while True:
                event_type, data = await read_wyoming_event(reader)
                if event_type == "info":
                    break
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        programs = data.get("asr") or []
        installed = [p.get("name") for p in programs if p.get("installed", True)]
        if not installed:
            return ProbeResult(HealthStatus.DEGRADED, detail="the server offers no installed ASR program")
        return ProbeResult(HealthStatus.HEALTHY, detail=f"asr: {', '.join(map(str, installed))}")


async def read_wyoming_event(reader: asyncio.StreamReader) -> tuple[str, dict[str, Any]]:
    """One Wyoming event: a JSON header line, then ``data_length`` bytes of JSON data (merged with
    any ``data`` in the header) and ``payload_length`` bytes of payload (skipped here)."""
    line = await reader.readline()
    if not line:
        raise ConnectionError("the Wyoming server closed the connection")
    header = json.loads(line)
    data: dict[str, Any] = dict(header.get("data") or {})
    if (length := int(header.get("data_length") or 0)) > 0:
        data.update(json.loads(await reader.readexactly(length)))
    if (length := int(header.get("payload_length") or 0)) > 0:
        await reader.readexactly(length)
    return str(header["type"]), data


# -- MongoDB: ping as one OP_MSG, no driver ---------------------------------------------------

OP_MSG = 2013


def _cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


def bson_encode(document: Mapping[str, int | str | float | bool]) -> bytes:
    """A flat BSON document of ints, floats, strings and booleans (all a command needs here)."""
    body = b""
    for key, value in document.items():
        if isinstance(value, bool):
            body += b"\x08" + _cstring(key) + (b"\x01" if value else b"\x00")
        elif isinstance(value, int):
            body += b"\x10" + _cstring(key) + struct.pack("<i", value)
        elif isinstance(value, float):
            body += b"\x01" + _cstring(key) + struct.pack("<d", value)
        else:
            raw = value.encode()
            body += b"\x02" + _cstring(key) + struct.pack("<i", len(raw) + 1) + raw + b"\x00"
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


# fixed sizes of the BSON element types a reply may carry, by type byte
_FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16}


def bson_top_level(doc: bytes) -> dict[str, Any]:
    """The top-level scalars of a BSON document (doubles, ints, strings, booleans); nested
    documents, arrays, binaries and the rest are skipped."""
    (size,) = struct.unpack_from("<i", doc, 0)
    found: dict[str, Any] = {}
    pos = 4
    while pos < size - 1:
        kind = doc[pos]
        end = doc.index(b"\x00", pos + 1)
        key = doc[pos + 1 : end].decode()
        pos = end + 1
        if kind == 0x01:
            found[key] = struct.unpack_from("<d", doc, pos)[0]
        elif kind == 0x08:
            found[key] = doc[pos] == 1
        elif kind == 0x10:
            found[key] = struct.unpack_from("<i", doc, pos)[0]
        elif kind == 0x12:
            found[key] = struct.unpack_from("<q", doc, pos)[0]
        elif kind == 0x02:
            (length,) = struct.unpack_from("<i", doc, pos)
            found[key] = doc[pos + 4 : pos + 4 + length - 1].decode()
        if kind in _FIXED:
            pos += _FIXED[kind]
        elif kind in (0x02, 0x0D, 0x0E):  # string, JavaScript, symbol: int32 length + bytes
            pos += 4 + struct.unpack_from("<i", doc, pos)[0]
        elif kind in (0x03, 0x04):  # document, array: their int32 size counts itself
            pos += struct.unpack_from("<i", doc, pos)[0]
        elif kind == 0x05:  # binary: int32 length, subtype byte, bytes
            pos += 5 + struct.unpack_from("<i", doc, pos)[0]
        elif kind == 0x0B:  # regex: two cstrings
            pos = doc.index(b"\x00", doc.index(b"\x00", pos) + 1) + 1
        elif kind in (0xFF, 0x7F):  # min key, max key
            pass
        else:
            raise ValueError(f"unsupported BSON type 0x{kind:02x}")
    return found


def op_msg(request_id: int, command: Mapping[str, int | str | float | bool]) -> bytes:
    body = struct.pack("<I", 0) + b"\x00" + bson_encode(command)  # flags, section kind 0, document
    return struct.pack("<iiii", 16 + len(body), request_id, 0, OP_MSG) + body


async def read_op_msg(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The body document of one OP_MSG reply (its top-level scalars)."""
    header = await reader.readexactly(16)
    length, _, _, opcode = struct.unpack("<iiii", header)
    rest = await reader.readexactly(length - 16)
    if opcode != OP_MSG:
        raise ValueError(f"unexpected MongoDB opcode {opcode}")
    if rest[4] != 0:
        raise ValueError("the reply does not start with a body section")
    return bson_top_level(rest[5:])


@dataclass
class MongoProbe:
    """``{ping: 1}`` on the ``admin`` database of the first host of a ``mongodb://`` URL."""

    url: str
    name: str = "mongodb"
    critical: bool = False

    def _address(self) -> tuple[str, int, bool]:
        parts = urlsplit(self.url)
        if parts.scheme != "mongodb":
            raise ValueError(f"only mongodb:// URLs can be pinged, not {parts.scheme}://")
        first = parts.netloc.rpartition("@")[2].split(",")[0]
        host, _, port = first.rpartition(":") if first.count(":") == 1 else (first, "", "")
        query = {k.lower(): v[-1].lower() for k, v in parse_qs(parts.query).items()}
        tls = query.get("tls") == "true" or query.get("ssl") == "true"
        return host or "localhost", int(port or 27017), tls

    async def check(self) -> ProbeResult:
        host, port, tls = self._address()
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl.create_default_context() if tls else None
        )
        try:
            writer.write(op_msg(1, {"ping": 1, "$db": "admin"}))
            await writer.drain()
            reply = await read_op_msg(reader)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if reply.get("ok") in (1, 1.0, True):
            return ProbeResult(HealthStatus.HEALTHY, detail="ping ok")
        return ProbeResult(HealthStatus.UNHEALTHY, error=str(reply.get("errmsg") or f"ping answered {reply}"))


# -- this host's own ---------------------------------------------------------------------------


@dataclass
class StoreProbe:
    """The store answers a read and commits a write."""

    store: Store
    name: str = "store"
    critical: bool = True

    async def check(self) -> ProbeResult:
        await self.store.ping()
        return ProbeResult(HealthStatus.HEALTHY, detail="read and write ok")


@dataclass
class DiskProbe:
    """Free bytes in the data dir: ``degraded`` under ``warn_free``, ``unhealthy`` under ``min_free``."""

    path: Path
    min_free: int = 200 * MiB
    warn_free: int = 1000 * MiB
    name: str = "disk"
    critical: bool = True

    async def check(self) -> ProbeResult:
        usage = await asyncio.to_thread(shutil.disk_usage, self._existing())
        detail = f"{usage.free / MiB:.0f} MiB free of {usage.total / MiB:.0f} MiB"
        if usage.free < self.min_free:
            return ProbeResult(HealthStatus.UNHEALTHY, detail=detail, error=f"only {detail}")
        if usage.free < self.warn_free:
            return ProbeResult(HealthStatus.DEGRADED, detail=f"low: {detail}")
        return ProbeResult(HealthStatus.HEALTHY, detail=detail)

    def _existing(self) -> Path:
        """The data dir, or its nearest existing parent (before the first start creates it)."""
        path = self.path.absolute()
        while not path.exists() and path.parent != path:
            path = path.parent
        return path


# -- from settings ----------------------------------------------------------------------------


def probes_from_settings(settings: Settings, store: Store) -> list[Probe]:
    """A probe for each configured external service, plus the store and the disk."""
    probes: list[Probe] = [
        StoreProbe(store),
        DiskProbe(
            settings.data_dir,
            min_free=int(settings.disk_min_free_mb * MiB),
            warn_free=int(settings.disk_min_free_mb * 5 * MiB),
        ),
    ]
    if settings.asr == "wyoming" and settings.asr_url:
        parts = urlsplit(settings.asr_url)
        probes.append(WyomingProbe(parts.hostname or "127.0.0.1", parts.port or 10300))
    elif settings.asr == "openai" and settings.asr_url:
        probes.append(OpenAIASRProbe(settings.asr_url, "asr", headers=_bearer(settings.asr_api_key)))
    elif settings.asr == "deepgram" and settings.asr_api_key:
        probes.append(DeepgramProbe(settings.asr_url or DeepgramProbe.url, api_key=settings.asr_api_key))
    if settings.llm == "ollama" and settings.llm_url:
        probes.append(OllamaProbe(settings.llm_url, "llm", model=settings.llm_model))
    elif settings.llm == "openai" and settings.llm_url:
        probes.append(
            OpenAIProbe(
                settings.llm_url, "llm", headers=_bearer(settings.llm_api_key), model=settings.llm_model
            )
        )
    if settings.qdrant_url:
        headers = {"api-key": settings.qdrant_api_key} if settings.qdrant_api_key else {}
        probes.append(QdrantProbe(settings.qdrant_url, "vectors", headers=headers))
    if settings.mongodb_url:
        probes.append(MongoProbe(settings.mongodb_url))
    return probes


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


__all__ = [
    "DeepgramProbe",
    "DiskProbe",
    "MongoProbe",
    "OllamaProbe",
    "OpenAIASRProbe",
    "OpenAIProbe",
    "QdrantProbe",
    "StoreProbe",
    "WyomingProbe",
    "probes_from_settings",
]
