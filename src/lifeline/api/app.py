"""The app factory: ``create_app(settings)`` builds everything the service needs and passes it down.

Its lifespan opens the store, makes sure a superuser exists, and runs the recovery manager and
(unless disabled) the in-process workers; shutdown stops claiming, lets in-flight jobs finish up to
the shutdown timeout, and closes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response, status
from fastapi.responses import JSONResponse

from lifeline.accounts import Accounts
from lifeline.api.context import AppContext
from lifeline.api.routes_auth import router as auth_router
from lifeline.api.routes_ops import router as ops_router
from lifeline.api.routes_recovery import router as recovery_router
from lifeline.auth import PasswordHashing, TokenIssuer, load_or_create_secret
from lifeline.config import Settings
from lifeline.domain import Conflict, InvalidTransition, NotFound, StoreError
from lifeline.queue.recovery import RecoveryManager
from lifeline.queue.worker import Handler, Worker
from lifeline.runtime import open_store, recovery_settings

log = logging.getLogger("lifeline.api")


def create_app(
    settings: Settings,
    *,
    handlers: Mapping[str, Handler] | None = None,
    hashing: PasswordHashing | None = None,
) -> FastAPI:
    """A Lifeline service for ``settings``; ``handlers`` are the stage handlers its workers run."""
    stage_handlers = dict(handlers or {})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings)
        await store.open()
        tasks: list[asyncio.Task[object]] = []
        worker: Worker | None = None
        recovery = RecoveryManager(store, recovery_settings(settings))
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
            app.state.ctx = AppContext(settings=settings, store=store, accounts=accounts, recovery=recovery)
            tasks.append(asyncio.create_task(recovery.run(), name="recovery"))
            if stage_handlers and settings.workers_in_api:
                worker = Worker(
                    store,
                    stage_handlers,
                    concurrency=settings.worker_concurrency,
                    poll_interval=settings.poll_interval,
                    shutdown_timeout=settings.shutdown_timeout,
                )
                tasks.append(asyncio.create_task(worker.run(), name="worker"))
            yield
        finally:
            if worker is not None:
                worker.stop()
            recovery.stop()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await task
            await store.close()

    app = FastAPI(
        title="Lifeline",
        version="0.1.0",
        description="Audio in, transcripts, memories and action items out; never loses a recording.",
        lifespan=lifespan,
    )
    app.include_router(ops_router)
    app.include_router(auth_router)
    app.include_router(recovery_router)
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
    app.add_exception_handler(ValueError, handler(status.HTTP_422_UNPROCESSABLE_CONTENT))

    async def store_error(_: Request, exc: Exception) -> Response:
        log.error("store error: %s", exc)
        return JSONResponse(
            {"detail": "the store is unavailable"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE
        )

    app.add_exception_handler(StoreError, store_error)


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
