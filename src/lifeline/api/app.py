"""The app factory: ``create_app(settings)`` builds everything the service needs and passes it down.

Its lifespan opens the store, makes sure a superuser exists, builds the pipeline (the API needs its
deletions even without workers), and runs the recovery manager, the ingest sweeper and (when
``handlers`` are given and not disabled) the in-process workers; shutdown stops claiming, lets
in-flight jobs finish up to the shutdown timeout, and closes the store.

``handlers=build_pipeline`` (what ``lifeline serve`` passes by default) runs the stages of the very
:class:`~lifeline.pipeline.Pipeline` the routes use, rather than building a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lifeline.accounts import Accounts
from lifeline.api.context import AppContext
from lifeline.api.responses import errors
from lifeline.api.routes_audio import router as audio_router
from lifeline.api.routes_auth import router as auth_router
from lifeline.api.routes_dashboard import router as dashboard_router
from lifeline.api.routes_ops import router as ops_router
from lifeline.api.routes_pipeline import router as pipeline_router
from lifeline.api.routes_recovery import router as recovery_router
from lifeline.api.routes_streams import router as streams_router
from lifeline.auth import PasswordHashing, TokenIssuer, load_or_create_secret
from lifeline.config import Settings
from lifeline.domain import (
    Conflict,
    DependencyUnavailable,
    InvalidTransition,
    NotFound,
    StoreError,
    TransientError,
)
from lifeline.ingest import run_sweeper
from lifeline.logs import install_redaction
from lifeline.pipeline import Pipeline, build_pipeline
from lifeline.queue.recovery import RecoveryManager
from lifeline.queue.worker import Worker
from lifeline.runtime import (
    HandlerContext,
    Handlers,
    build_breakers,
    build_monitor,
    open_store,
    recovery_settings,
    resolve_handlers,
)

log = logging.getLogger("lifeline.api")


def create_app(
    settings: Settings,
    *,
    handlers: Handlers | None = None,
    hashing: PasswordHashing | None = None,
) -> FastAPI:
    """A Lifeline service for ``settings``; ``handlers`` are the stage handlers its workers run."""
    install_redaction()  # WebSocket clients send their token in the query string

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings)
        await store.open()
        tasks: list[asyncio.Task[object]] = []
        worker: Worker | None = None
        recovery = RecoveryManager(store, recovery_settings(settings))
        breakers = build_breakers(settings, store)
        monitor = build_monitor(settings, store, breakers)
        pipeline: Pipeline | None = None
        handler_context = HandlerContext(settings, store, breakers)
        sweeping = asyncio.Event()
        try:
            secret = settings.auth_secret or load_or_create_secret(settings.data_dir / "auth-secret")
            accounts = Accounts(store, TokenIssuer(secret, settings.jwt_lifetime), hashing=hashing)
            generated = await accounts.ensure_admin(
                settings.admin_email, settings.admin_password, settings.data_dir
            )
            if generated is not None:
                # shown once, on the operator's terminal; never logged
                print(
                    f"lifeline: created superuser {settings.admin_email} with password {generated}"
                    f" (also in {settings.data_dir / 'admin-password'}, mode 0600)",
                    file=sys.stderr,
                    flush=True,
                )
            app.state.ctx = AppContext(
                settings=settings,
                store=store,
                accounts=accounts,
                recovery=recovery,
                breakers=breakers,
                health=monitor,
            )
            pipeline = Pipeline(settings, store, breakers)
            app.state.ctx.pipeline = pipeline
            tasks.append(asyncio.create_task(recovery.run(), name="recovery"))
            tasks.append(
                asyncio.create_task(
                    run_sweeper(
                        store,
                        idle_seconds=settings.stream_idle_seconds,
                        interval=settings.recovery_interval,
                        stop=sweeping,
                    ),
                    name="sweeper",
                )
            )
            if monitor is not None:
                tasks.append(asyncio.create_task(monitor.run(), name="health"))
            if handlers is build_pipeline:
                stage_handlers = pipeline.handlers()
            else:
                stage_handlers = resolve_handlers(handlers or {}, handler_context)
            if stage_handlers and settings.workers_in_api:
                worker = Worker(
                    store,
                    stage_handlers,
                    concurrency=settings.worker_concurrency,
                    poll_interval=settings.poll_interval,
                    shutdown_timeout=settings.shutdown_timeout,
                    gate=breakers.gate,
                )
                tasks.append(asyncio.create_task(worker.run(), name="worker"))
            yield
        finally:
            if worker is not None:
                worker.stop()
            recovery.stop()
            sweeping.set()
            if monitor is not None:
                monitor.stop()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await task
            await handler_context.close()
            if pipeline is not None:
                with contextlib.suppress(Exception):
                    await pipeline.aclose()
            await store.close()

    app = FastAPI(
        title="Lifeline",
        version="0.1.0",
        description="Audio in, transcripts, memories and action items out; never loses a recording.",
        lifespan=lifespan,
    )
    # any route that reads or writes the store answers 503 when the store does not answer
    app.include_router(ops_router, responses=errors(503))
    app.include_router(auth_router, responses=errors(503))
    app.include_router(recovery_router, responses=errors(503))
    app.include_router(audio_router)
    app.include_router(streams_router)
    app.include_router(pipeline_router)
    app.include_router(dashboard_router)  # the page and its files; not in the schema
    _install_error_handlers(app)
    _install_request_log(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    def handler(code: int) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def respond(_: Request, exc: Exception) -> Response:
            return JSONResponse({"detail": str(exc)}, status_code=code)

        return respond

    app.add_exception_handler(NotFound, handler(status.HTTP_404_NOT_FOUND))
    app.add_exception_handler(InvalidTransition, handler(status.HTTP_409_CONFLICT))
    app.add_exception_handler(Conflict, handler(status.HTTP_409_CONFLICT))

    async def value_error(_: Request, exc: Exception) -> Response:
        # the body every route documents for 422: FastAPI's list of validation errors
        error: dict[str, object] = {"type": "value_error", "loc": [], "msg": str(exc), "input": None}
        return JSONResponse({"detail": [error]}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    app.add_exception_handler(ValueError, value_error)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            # Starlette names only the methods of the first route whose path matched; a path
            # served by several routes (GET and DELETE /jobs/{id}) must list them all
            allowed = _allowed_methods(request.app, request.url.path)
            if allowed:
                exc = StarletteHTTPException(exc.status_code, exc.detail, {"Allow": ", ".join(allowed)})
        return await http_exception_handler(request, exc)

    app.add_exception_handler(StarletteHTTPException, http_error)

    async def store_error(_: Request, exc: Exception) -> Response:
        log.error("store error: %s", exc)
        return JSONResponse(
            {"detail": "the store is unavailable"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE
        )

    app.add_exception_handler(StoreError, store_error)

    async def dependency_error(_: Request, exc: Exception) -> Response:
        # a route that must reach an external service (deleting a recording's Qdrant points) while
        # that service or its breaker is down: nothing was changed, the client may try again
        retry_after = exc.retry_after if isinstance(exc, DependencyUnavailable) else 30.0
        return JSONResponse(
            {"detail": f"a service this needs is unavailable: {exc}"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(max(1, round(retry_after)))},
        )

    app.add_exception_handler(DependencyUnavailable, dependency_error)
    app.add_exception_handler(TransientError, dependency_error)


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the OpenAPI schema documents for ``path`` (a concrete path, not a template)."""
    patterns: list[tuple[re.Pattern[str], list[str]]] | None = getattr(app.state, "allow_patterns", None)
    if patterns is None:
        patterns = []
        for template, operations in app.openapi()["paths"].items():
            regex = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
            patterns.append((re.compile(regex), sorted(m.upper() for m in operations)))
        app.state.allow_patterns = patterns
    # the most specific templates win: /circuit-breakers/reset-all over /circuit-breakers/{name}
    matching = [
        (pattern.pattern.count("[^/]+"), methods) for pattern, methods in patterns if pattern.fullmatch(path)
    ]
    fewest = min((params for params, _ in matching), default=0)
    return sorted({m for params, methods in matching if params == fewest for m in methods})


def _install_request_log(app: FastAPI) -> None:
    @app.middleware("http")
    async def request_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        # the path only: query strings can carry tokens (?token= on WebSockets)
        log.info(
            "method=%s path=%s status=%d ms=%.1f",
            request.method,
            request.url.path,
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )
        return response
