"""``lifeline check``: verify a running deployment the way an operator would after an upgrade.

It calls the probes (/health, /readiness, /metrics), logs in when given credentials, and reads
every read endpoint of the failure-recovery API, checking each answers 200 with the shape it
should. The result is a list of :class:`CheckResult`, one per call, so that the CLI can print it
and tests can assert on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

PREFIX = "/api/failure-recovery"
DEFAULT_QUEUE = "transcription"


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    status: int | None  # the HTTP status, None when no answer came
    detail: str
    ms: float


class CheckFailed(Exception):
    """A response that arrived but is not what a healthy deployment answers."""


Validate = Callable[[httpx.Response], str]


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise CheckFailed(f"not JSON: {response.text[:80]!r}") from None


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


class _Checker:
    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.results: list[CheckResult] = []
        self.headers: dict[str, str] = {}

    def call(
        self,
        name: str,
        method: str,
        path: str,
        validate: Validate,
        *,
        data: dict[str, str] | None = None,
        params: dict[str, str | int] | None = None,
    ) -> httpx.Response | None:
        """One check; the response when it passed, else ``None`` (and a failed result)."""
        started = time.perf_counter()
        try:
            response = self.client.request(method, path, headers=self.headers, data=data, params=params)
        except httpx.HTTPError as exc:
            self._add(name, False, None, f"no answer: {type(exc).__name__}: {exc}", started)
            return None
        if response.status_code != 200:
            detail = response.text[:120].replace("\n", " ")
            self._add(name, False, response.status_code, f"expected 200: {detail}", started)
            return None
        try:
            detail = validate(response)
        except CheckFailed as exc:
            self._add(name, False, response.status_code, str(exc), started)
            return None
        self._add(name, True, response.status_code, detail, started)
        return response

    def skip(self, name: str, reason: str) -> None:
        self.results.append(CheckResult(name, False, None, f"not run: {reason}", 0.0))

    def _add(self, name: str, ok: bool, status: int | None, detail: str, started: float) -> None:
        ms = round((time.perf_counter() - started) * 1000, 1)
        self.results.append(CheckResult(name, ok, status, detail, ms))


# -- what each answer must look like ------------------------------------------------------------


def _health(r: httpx.Response) -> str:
    body = _json(r)
    status = body.get("status")
    _expect(status in ("ok", "degraded"), f"status {status!r}")
    components = body.get("components", {})
    degraded = sorted(n for n, c in components.items() if c.get("status") in ("degraded", "unhealthy"))
    return f"{status}" + (f" ({', '.join(degraded)})" if degraded else "")


def _readiness(r: httpx.Response) -> str:
    _expect(_json(r) == {"ready": True}, f"not ready: {r.text[:80]}")
    return "ready"


def _login(r: httpx.Response) -> str:
    _expect(bool(_json(r).get("access_token")), "no access_token in the answer")
    return "token issued"


def _me(r: httpx.Response) -> str:
    body = _json(r)
    _expect("email" in body and "is_superuser" in body, "no user in the answer")
    return f"{body['email']}" + (" (superuser)" if body["is_superuser"] else "")


def _queues(r: httpx.Response) -> str:
    body = _json(r)
    _expect(isinstance(body, dict) and len(body) > 0, "no queues")
    _expect(all(isinstance(q, dict) and "counts" in q for q in body.values()), "a queue without counts")
    total = sum(int(q.get("total", 0)) for q in body.values())
    paused = sorted(name for name, q in body.items() if q.get("paused"))
    return f"{len(body)} queues, {total} jobs" + (f", paused: {', '.join(paused)}" if paused else "")


def _one_queue(queue: str) -> Validate:
    def validate(r: httpx.Response) -> str:
        body = _json(r)
        _expect(body.get("queue") == queue, f"answered for {body.get('queue')!r}")
        counts = body.get("counts", {})
        waiting = sum(int(counts.get(s, 0)) for s in ("pending", "retry", "failed"))
        detail = f"{waiting} waiting, {counts.get('dead_letter', 0)} dead letters"
        if "recent_failures" in body:
            detail += f", {len(body['recent_failures'])} recent failures"
        return detail

    return validate


def _overview(r: httpx.Response) -> str:
    body = _json(r)
    missing = [k for k in ("queues", "recovery", "circuit_breakers", "health") if k not in body]
    _expect(not missing, f"missing {', '.join(missing)}")
    return f"{len(body['queues'])} queues, health {body['health'].get('status', '?')}"


def _recovery(r: httpx.Response) -> str:
    body = _json(r)
    _expect("runs" in body, "no recovery counters")
    return (
        f"{body['runs']} runs, {body.get('requeued', 0)} requeued, {body.get('escalated', 0)} dead-lettered"
    )


def _breakers(r: httpx.Response) -> str:
    body = _json(r)
    _expect(isinstance(body, list), "not a list")
    not_closed = sorted(f"{b.get('name')} {b.get('state')}" for b in body if b.get("state") != "closed")
    return f"{len(body)} breakers" + (f"; {', '.join(not_closed)}" if not_closed else ", all closed")


def _health_api(r: httpx.Response) -> str:
    body = _json(r)
    _expect("status" in body, "no status")
    return f"{body['status']}, {len(body.get('services', {}))} services"


def _page(what: str) -> Validate:
    def validate(r: httpx.Response) -> str:
        body = _json(r)
        _expect(isinstance(body.get("items"), list), "no items")
        return f"{len(body['items'])} {what} on the first page"

    return validate


def _metrics(r: httpx.Response) -> str:
    lines = [line for line in r.text.splitlines() if line.startswith("lifeline_queue_jobs{")]
    _expect(bool(lines), "no lifeline_queue_jobs samples")
    return f"{len(lines)} lifeline_queue_jobs samples"


# -- the run --------------------------------------------------------------------------------------


def run_checks(
    url: str,
    *,
    token: str | None = None,
    email: str | None = None,
    password: str | None = None,
    timeout: float = 10.0,
    transport: httpx.BaseTransport | None = None,
) -> list[CheckResult]:
    """Check the deployment at ``url``. With ``token``, or ``email`` and ``password`` (logged in
    first), the authenticated read endpoints are checked too. Never raises for what it finds."""
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout, transport=transport) as client:
        checker = _Checker(client)
        if checker.call("health", "GET", "/health", _health) is None and checker.results[-1].status is None:
            return checker.results  # nothing answers there: every other check would say the same
        checker.call("readiness", "GET", "/readiness", _readiness)
        if token is None and email is not None and password is not None:
            login = checker.call(
                "login", "POST", "/auth/jwt/login", _login, data={"username": email, "password": password}
            )
            token = None if login is None else str(login.json()["access_token"])
            if token is None:
                checker.skip("authenticated reads", "login failed")
        if token is not None:
            checker.headers = {"Authorization": f"Bearer {token}"}
            _authenticated(checker)
        checker.headers = {}
        checker.call("metrics", "GET", "/metrics", _metrics)
        return checker.results


def _authenticated(checker: _Checker) -> None:
    me = checker.call("users/me", "GET", "/users/me", _me)
    if me is None and checker.results[-1].status == 401:
        checker.skip("authenticated reads", "the token was not accepted")
        return
    superuser = me is not None and bool(me.json().get("is_superuser"))
    checker.call("system-overview", "GET", f"{PREFIX}/system-overview", _overview)
    stats = checker.call("queue-stats", "GET", f"{PREFIX}/queue-stats", _queues)
    queue = next(iter(stats.json()), DEFAULT_QUEUE) if stats is not None else DEFAULT_QUEUE
    checker.call(f"queue-stats/{queue}", "GET", f"{PREFIX}/queue-stats/{queue}", _one_queue(queue))
    checker.call("recovery-stats", "GET", f"{PREFIX}/recovery-stats", _recovery)
    checker.call("circuit-breakers", "GET", f"{PREFIX}/circuit-breakers", _breakers)
    checker.call("health (api)", "GET", f"{PREFIX}/health", _health_api)
    checker.call("persistent-queues", "GET", f"{PREFIX}/persistent-queues", _queues)
    checker.call(
        f"persistent-queues/{queue}", "GET", f"{PREFIX}/persistent-queues/{queue}", _one_queue(queue)
    )
    if superuser:
        checker.call(
            f"persistent-queues/{queue}/dead-letter",
            "GET",
            f"{PREFIX}/persistent-queues/{queue}/dead-letter",
            _page("dead letters"),
            params={"limit": 10},
        )
    checker.call("jobs", "GET", f"{PREFIX}/jobs", _page("jobs"), params={"limit": 10})


def all_passed(results: list[CheckResult]) -> bool:
    return bool(results) and all(r.ok for r in results)
