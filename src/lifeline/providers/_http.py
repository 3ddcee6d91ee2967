"""What every HTTP client of an external service shares: timeouts, and the error mapping.

The mapping is the contract with the queue (see ``domain.py``):

- no answer (connection refused, reset, DNS failure, timeout), HTTP 5xx, 429 and 408:
  :class:`ServiceError`, a :class:`~lifeline.domain.TransientError`: retry later;
- any other HTTP 4xx: :class:`ServiceRejected`, a :class:`~lifeline.domain.PermanentError`:
  the request itself is wrong (bad input, bad key, unknown model), retrying cannot help;
- a 2xx whose body is not what the API promises: :class:`MalformedResponse`, transient.

Messages name the service, the status and the start of the answer, never a header (keys stay out
of logs and dead-letter reasons).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import httpx

from lifeline.domain import PermanentError, TransientError

DEFAULT_TIMEOUT = 60.0
CONNECT_TIMEOUT = 5.0
_BODY_PREVIEW = 300


class ServiceError(TransientError):
    """A service did not answer usefully (unreachable, timed out, 5xx, 429): worth retrying."""

    def __init__(
        self, service: str, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.status = status
        self.retry_after = retry_after


class MalformedResponse(ServiceError):
    """A 2xx answer whose body does not have the promised shape (or an LLM's invalid JSON)."""


class ServiceRejected(PermanentError):
    """The service refused the request (HTTP 4xx other than 408/429): retrying cannot help."""

    def __init__(self, service: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.status = status


def timeout(seconds: float) -> httpx.Timeout:
    """``seconds`` for reading, writing and the pool; connecting gets at most :data:`CONNECT_TIMEOUT`."""
    return httpx.Timeout(seconds, connect=min(seconds, CONNECT_TIMEOUT))


def base_url(url: str) -> str:
    """``url`` without a trailing slash or a trailing ``/v1`` (the clients add their own paths)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _preview(response: httpx.Response) -> str:
    try:
        text = response.text
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return f"<{len(response.content)} bytes>"
    text = " ".join(text.split())
    return text[:_BODY_PREVIEW] + ("…" if len(text) > _BODY_PREVIEW else "")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from these services; the queue's backoff decides


async def request(
    client: httpx.AsyncClient,
    service: str,
    method: str,
    url: str,
    *,
    json: Any = None,
    params: Mapping[str, str] | None = None,
    content: bytes | None = None,
    files: Any = None,
    data: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    ok_statuses: tuple[int, ...] = (),
) -> httpx.Response:
    """Send one request and map every failure to the error hierarchy; returns a 2xx response.

    ``ok_statuses`` are non-2xx statuses the caller handles itself (404 "no such collection").
    """
    try:
        response = await client.request(
            method, url, json=json, params=params, content=content, files=files, data=data, headers=headers
        )
    except httpx.TimeoutException as e:
        raise ServiceError(service, f"no answer in time ({type(e).__name__}) from {method} {url}") from e
    except httpx.TransportError as e:
        raise ServiceError(service, f"cannot reach {url}: {type(e).__name__}: {e}") from e
    status = response.status_code
    if 200 <= status < 300 or status in ok_statuses:
        return response
    message = f"HTTP {status} from {method} {url}: {_preview(response)}"
    if status >= 500 or status in (408, 429):
        raise ServiceError(service, message, status=status, retry_after=_retry_after(response))
    raise ServiceRejected(service, message, status=status)


def json_body(service: str, response: httpx.Response) -> Any:
    """The JSON of a 2xx answer; a body that is not JSON is :class:`MalformedResponse`."""
    try:
        return response.json()
    except ValueError as e:
        raise MalformedResponse(service, f"answer is not JSON: {_preview(response)}") from e


def bearer(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class HttpProvider:
    """A provider that owns (or borrows) one ``httpx.AsyncClient``, created on first use."""

    service: str = "http"

    def __init__(self, *, timeout_seconds: float, client: httpx.AsyncClient | None = None) -> None:
        self._timeout = timeout(timeout_seconds)
        self._client = client
        self._owns_client = client is None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
        return self._client

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.aclose()
        if self._owns_client:
            self._client = None
