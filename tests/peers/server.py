"""Real servers on loopback, with faults switched on at will.

Each peer runs its own event loop in a thread, so it serves synchronous tests, async tests (whose
loop it never blocks) and worker subprocesses alike. The fault switch:

- ``ok``: answer as the real service does;
- ``refuse``: the listener is closed (and open connections dropped): connections are refused;
- ``hang``: the request is read and never answered (until the fault changes or the peer stops);
- ``reset``: the connection is closed without an answer;
- ``slow``: answered correctly after ``delay`` seconds;
- ``500``, ``429`` (with ``Retry-After``), ``400``: the service's own error body for that status.

A fault may be limited to some paths (``paths=("/api/generate",)``) and to the next ``count``
requests. Every request is recorded with the monotonic times it arrived and was answered, so a
test can count how many calls reached the service and whether any overlapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import http
import json
import re
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

T = TypeVar("T")


class Fault(enum.StrEnum):
    OK = "ok"
    REFUSE = "refuse"
    HANG = "hang"
    RESET = "reset"
    SLOW = "slow"
    ERROR_500 = "500"
    RATE_LIMIT = "429"
    BAD_REQUEST = "400"


ERROR_STATUS = {Fault.ERROR_500: 500, Fault.RATE_LIMIT: 429, Fault.BAD_REQUEST: 400}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: bytes
    received_at: float = field(default_factory=time.monotonic)
    answered_at: float | None = None
    status: int | None = None  # what it was answered with (None: no answer)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] | None = None  # sent with Transfer-Encoding: chunked (streaming answers)


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(value).encode(), "application/json", dict(headers or {}))


def text_response(text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> Response:
    return Response(status, text.encode(), content_type)


class HTTPError(Exception):
    """Raised by a route: answered with the API's own error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Route = Callable[..., Response]


class API:
    """A service's HTTP API: routes by method and path pattern, and its error body shape."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Route]] = []

    def route(self, method: str, pattern: str, fn: Route) -> None:
        """``pattern`` like ``/collections/{name}/points``; ``fn(request, **groups)``."""
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self._routes.append((method, re.compile(f"^{regex}$"), fn))

    def handle(self, request: Request) -> Response:
        allowed = False
        for method, regex, fn in self._routes:
            match = regex.match(request.path)
            if match:
                allowed = True
                if method == request.method or (method == "GET" and request.method == "HEAD"):
                    try:
                        return fn(request, **match.groupdict())
                    except HTTPError as exc:
                        return self.error(exc.status, exc.message)
        if allowed:
            return self.error(405, "Method Not Allowed")
        return self.error(404, f"no route for {request.method} {request.path}")

    def error(self, status: int, message: str) -> Response:
        return json_response({"error": message}, status)

    def fault_message(self, fault: Fault) -> str:
        return {
            Fault.ERROR_500: "internal server error",
            Fault.RATE_LIMIT: "rate limit exceeded",
            Fault.BAD_REQUEST: "invalid request",
        }[fault]


class LoopbackServer:
    """A TCP server on 127.0.0.1 in its own thread and event loop, with the fault switch."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.fault = Fault.OK
        self.delay = 1.0  # for ``slow``
        self._fault_paths: tuple[str, ...] | None = None
        self._fault_left: int | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=type(self).__name__, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._release: asyncio.Event | None = None
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Self:
        self._thread.start()
        self._started = True
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _shutdown(self) -> None:
        await self._unlisten()
        current = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not current]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        if self._release is None:
            self._release = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        self._release_hung()
        writers = list(self._writers)
        for writer in writers:
            writer.close()
        for writer in writers:  # the sockets are really closed before the listener goes
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    # -- faults ---------------------------------------------------------------------------------
    def set_fault(
        self,
        fault: Fault | str,
        *,
        paths: Iterable[str] | None = None,
        count: int | None = None,
        delay: float | None = None,
    ) -> None:
        """Switch to ``fault`` (for ``paths`` only, and the next ``count`` requests only, if given)."""
        fault = Fault(fault)
        if fault is Fault.REFUSE and (paths is not None or count is not None):
            raise ValueError("refuse closes the listener: it applies to every path, until switched off")
        with self._lock:
            before = self.fault
            self.fault = fault
            self._fault_paths = tuple(paths) if paths is not None else None
            self._fault_left = count
            if delay is not None:
                self.delay = delay
        if before is Fault.HANG:
            self._loop.call_soon_threadsafe(self._release_hung)
        if fault is Fault.REFUSE and before is not Fault.REFUSE:
            self._call(self._unlisten())
        elif fault is not Fault.REFUSE and before is Fault.REFUSE:
            self._call(self._listen())

    def ok(self) -> None:
        self.set_fault(Fault.OK)

    def _take_fault(self, path: str) -> Fault:
        with self._lock:
            fault = self.fault
            if fault is Fault.OK:
                return fault
            if self._fault_paths is not None and not any(path.startswith(p) for p in self._fault_paths):
                return Fault.OK
            if self._fault_left is not None:
                self._fault_left -= 1
                if self._fault_left <= 0:
                    self.fault, self._fault_paths, self._fault_left = Fault.OK, None, None
            return fault

    def _release_hung(self) -> None:
        if self._release is not None:
            self._release.set()
            self._release = asyncio.Event()

    async def _hang(self) -> None:
        release = self._release
        if release is not None:
            await release.wait()

    # -- connections ----------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self.serve_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class HTTPPeer(LoopbackServer):
    """An HTTP/1.1 server (keep-alive, Content-Length or chunked bodies) serving one :class:`API`."""

    def __init__(self, api: API, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.api = api
        self.requests: list[Request] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def requests_to(self, path: str, method: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    def clear(self) -> None:
        self.requests.clear()

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await _read_request(reader)
            if request is None:
                return
            self.requests.append(request)
            fault = self._take_fault(request.path)
            if fault is Fault.HANG:
                await self._hang()
                return
            if fault is Fault.RESET:
                return
            if fault is Fault.SLOW:
                await asyncio.sleep(self.delay)
            if fault in ERROR_STATUS:
                response = self.api.error(ERROR_STATUS[fault], self.api.fault_message(fault))
                if fault is Fault.RATE_LIMIT:
                    response.headers.setdefault("Retry-After", "1")
            else:
                try:
                    response = self.api.handle(request)
                except Exception:
                    response = self.api.error(500, traceback.format_exc(limit=3))
            await _write_response(writer, response, head=request.method == "HEAD")
            request.status = response.status
            request.answered_at = time.monotonic()
            if request.headers.get("connection", "").lower() == "close":
                return


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    line = await reader.readline()
    if not line.strip():
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readline()
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    parts = urlsplit(target)
    return Request(method.upper(), parts.path, parse_qs(parts.query), headers, body)


async def _write_response(writer: asyncio.StreamWriter, response: Response, *, head: bool = False) -> None:
    phrase = http.HTTPStatus(response.status).phrase
    lines = [f"HTTP/1.1 {response.status} {phrase}", f"Content-Type: {response.content_type}"]
    lines += [f"{k}: {v}" for k, v in response.headers.items()]
    if response.chunks is not None:
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {len(response.body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if head:
        pass
    elif response.chunks is not None:
        for chunk in response.chunks:
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
    else:
        writer.write(response.body)
    await writer.drain()


def fake_embedding(text: str, dim: int) -> list[float]:
    """A deterministic unit vector for ``text`` (equal texts, equal vectors)."""
    import hashlib
    import math

    values: list[float] = []
    counter = 0
    while len(values) < dim:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    values = values[:dim]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1e6) % 1_000_000:06d}Z"
