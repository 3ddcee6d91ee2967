"""The operator's command line. Settings are read here, once, and passed down."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Protocol, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lifeline.accounts import Accounts
from lifeline.auth import TokenIssuer, load_or_create_secret
from lifeline.breakers import BreakerState
from lifeline.config import SETTINGS_HELP, Settings
from lifeline.conversations import (
    ConversationDetail,
    Conversations,
    ConversationSummary,
    LocalConversations,
    MemoryView,
    RemoteConversations,
)
from lifeline.domain import JobState, LifelineError, Stage, User
from lifeline.operations import LocalOperations, Operations, RemoteOperations
from lifeline.queue.recovery import RecoveryManager
from lifeline.runtime import (
    build_breakers,
    build_monitor,
    load_handlers,
    open_store,
    recovery_settings,
    run_workers,
)
from lifeline.store.base import Store
from lifeline.store.url import redact

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Lifeline: never lose a recording.")
dlq_app = typer.Typer(no_args_is_help=True, help="The dead-letter queue.")
jobs_app = typer.Typer(no_args_is_help=True, help="Single jobs.")
app.add_typer(dlq_app, name="dlq")
app.add_typer(jobs_app, name="jobs")
users_app = typer.Typer(no_args_is_help=True, help="User accounts.")
app.add_typer(users_app, name="users")

console = Console()
err_console = Console(stderr=True)

_SETTINGS_EPILOG = "Settings (environment or .env):\n\n" + "\n\n".join(
    f"{s.name} (default {s.default}): {s.help}" for s in SETTINGS_HELP
)


def _settings() -> Settings:
    return Settings.from_env(os.environ, Path(".env"))


def _configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LIFELINE_LOG_LEVEL", "INFO").upper(),
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r",
        stream=sys.stderr,
    )
    # httpx logs whole URLs at INFO, and a URL may carry a token: keep it to warnings
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _with_store(fn: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        async with open_store(_settings()) as store:
            return await fn(store)

    try:
        return asyncio.run(main())
    except LifelineError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


@dataclass(frozen=True, slots=True)
class Target:
    """Where operator commands act: a running service (``url``) or, by default, the local store."""

    url: str | None = None
    token: str | None = None


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(help="act on a running service instead of the local store", envvar="LIFELINE_URL"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="a token for --url: a superuser's (conversations and memories: any user's, who sees"
            " their own)",
            envvar="LIFELINE_TOKEN",
        ),
    ] = None,
) -> None:
    """Lifeline: never lose a recording."""
    ctx.obj = Target(url, token)


def _ops(ctx: typer.Context, fn: Callable[[Operations], Awaitable[T]]) -> T:
    """Run an operator action against the service given with --url, or the local store."""
    return _act(
        ctx,
        fn,
        local=lambda settings, store: LocalOperations(
            store, RecoveryManager(store, recovery_settings(settings)), build_breakers(settings, store)
        ),
        remote=RemoteOperations.connect,
    )


def _conversations(ctx: typer.Context, fn: Callable[[Conversations], Awaitable[T]]) -> T:
    """Run a conversation or memory command against the service given with --url, or the local
    store."""
    return _act(
        ctx,
        fn,
        local=lambda settings, store: LocalConversations(settings, store, build_breakers(settings, store)),
        remote=RemoteConversations.connect,
    )


class _Closable(Protocol):
    async def close(self) -> None: ...


R = TypeVar("R", bound=_Closable)
L = TypeVar("L")


def _act(
    ctx: typer.Context,
    fn: Callable[[L | R], Awaitable[T]],
    *,
    local: Callable[[Settings, Store], L],
    remote: Callable[[str, str], R],
) -> T:
    """``fn`` on what ``remote`` connects to (--url/--token), or else on what ``local`` builds on
    the store of this host; an error is printed and exits 1."""
    target = ctx.find_root().obj
    target = target if isinstance(target, Target) else Target()

    async def main() -> T:
        if target.url:
            if not target.token:
                raise typer.BadParameter("--url needs --token (or LIFELINE_TOKEN)")
            connected = remote(target.url, target.token)
            try:
                return await fn(connected)
            finally:
                await connected.close()
        settings = _settings()
        async with open_store(settings) as store:
            return await fn(local(settings, store))

    try:
        return asyncio.run(main())
    except LifelineError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


# -- running ----------------------------------------------------------------------------------


# The largest WebSocket message `lifeline serve` accepts (uvicorn's ws_max_size; its default is
# 16 MiB). Audio frames are small: 20 ms of Opus is under 100 bytes, 100 ms of 16 kHz PCM is
# 3.2 kB, and clients send a few kB at a time. A larger message closes its connection with 1009
# (message too big), so one client cannot make the server buffer 16 MiB per frame.
WS_MAX_MESSAGE_BYTES: Final = 1024 * 1024


@app.command(epilog=_SETTINGS_EPILOG)
def serve(
    host: Annotated[str | None, typer.Option(help="address to listen on [LIFELINE_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on [LIFELINE_PORT]")] = None,
    no_workers: Annotated[bool, typer.Option("--no-workers", help="API only; run workers elsewhere")] = False,
    app_spec: Annotated[
        str | None,
        typer.Option("--app", help="handlers as package.module:attribute (default: the pipeline's stages)"),
    ] = None,
) -> None:
    """Run the HTTP service with in-process workers (the pipeline) and the recovery manager."""
    import uvicorn

    from lifeline.api import create_app

    _configure_logging()
    settings = _settings()
    if no_workers:
        settings = settings.replace(workers_in_api=False)
    if app_spec:
        handlers = load_handlers(app_spec)
    else:
        from lifeline.pipeline import build_pipeline

        handlers = build_pipeline  # the app's own Pipeline runs the stages
    application = create_app(settings, handlers=handlers)
    err_console.print(
        f"lifeline: http://{host or settings.host}:{port or settings.port}"
        f"  store {redact(settings.database_url)} (synchronous={settings.sqlite_synchronous})"
    )
    uvicorn.run(
        application,
        host=host or settings.host,
        port=port or settings.port,
        access_log=False,  # our request log leaves out query strings (tokens)
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_timeout) + 5,
        ws_max_size=WS_MAX_MESSAGE_BYTES,
    )


@app.command(epilog=_SETTINGS_EPILOG)
def worker(
    app_spec: Annotated[
        str, typer.Option("--app", help="handlers as package.module:attribute")
    ] = "lifeline.pipeline:build_pipeline",
    queues: Annotated[str | None, typer.Option(help="comma-separated queues (default: all handled)")] = None,
    concurrency: Annotated[int | None, typer.Option(help="jobs in flight at once")] = None,
    burst: Annotated[bool, typer.Option(help="drain the queues, then exit")] = False,
    no_recovery: Annotated[
        bool, typer.Option("--no-recovery", help="do not run the recovery manager")
    ] = False,
) -> None:
    """Run a worker process (more of them scale out on one host)."""
    _configure_logging()
    settings = _settings()
    handlers = load_handlers(app_spec)
    selected = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    stats = asyncio.run(
        run_workers(
            settings,
            handlers,
            queues=selected,
            concurrency=concurrency,
            burst=burst,
            with_recovery=not no_recovery,
        )
    )
    if stats is not None:
        console.print(
            f"claimed {stats.claimed}, completed {stats.completed}, failed {stats.failed},"
            f" dead-lettered {stats.dead_lettered}, deferred {stats.deferred}, released {stats.released}"
        )


class _ProgressFile:
    """A binary file whose reads advance a progress bar (httpx reads multipart files in pieces)."""

    def __init__(self, f: Any, advance: Callable[[int], None]) -> None:
        self._f = f
        self._advance = advance

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._f.read(size)
        self._advance(len(data))
        return data


_DONE_STATES = frozenset({"completed", "dead_letter", "cancelled"})


def _submit_password(email: str, password_stdin: bool) -> str:
    """The password for ``--email``: from stdin, from LIFELINE_PASSWORD, or asked for."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise typer.BadParameter("--password-stdin: no password on stdin")
        return password
    from_env = os.environ.get("LIFELINE_PASSWORD")
    if from_env:
        return from_env
    prompted: str = typer.prompt(f"password for {email}", hide_input=True, err=True)
    return prompted


def _log_in(client: Any, email: str, password: str) -> str:
    """A bearer token for ``email`` from ``/auth/jwt/login`` (exit 1 if the service refuses)."""
    r = client.post("/auth/jwt/login", data={"username": email, "password": password})
    if r.status_code != 200:
        err_console.print(
            f"[red]error:[/red] login as {email} failed ({r.status_code}): {_response_detail(r)}"
        )
        raise typer.Exit(1)
    token = r.json().get("access_token")
    if not isinstance(token, str) or not token:
        err_console.print("[red]error:[/red] the login answer has no access_token")
        raise typer.Exit(1)
    return token


@app.command()
def submit(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="audio files to upload", exists=True, dir_okay=False)],
    device: Annotated[
        str | None, typer.Option("--device", help="the device name the files came from")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="show each file's stages until it is done")] = False,
    timeout: Annotated[float, typer.Option(help="seconds --wait waits at most")] = 3600.0,
    email: Annotated[
        str | None,
        typer.Option(
            "--email",
            help="log in as this user first (instead of --token); the password comes from"
            " --password-stdin, LIFELINE_PASSWORD, or is asked for",
        ),
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the --email user's password from stdin")
    ] = False,
) -> None:
    """Upload audio files to a running service (--url, with --token or --email) and, with --wait,
    follow them."""
    import httpx

    target = ctx.find_root().obj
    target = target if isinstance(target, Target) else Target()
    settings = _settings()
    url = (target.url or f"http://{settings.host}:{settings.port}").rstrip("/")
    if password_stdin and email is None:
        raise typer.BadParameter("--password-stdin needs --email")
    if email is None and not target.token:
        raise typer.BadParameter(
            "submit needs --token (or LIFELINE_TOKEN), a user's token, or --email to log in"
        )
    password = _submit_password(email, password_stdin) if email is not None else None
    with httpx.Client(base_url=url, timeout=httpx.Timeout(30.0, read=600.0)) as client:
        try:
            if email is not None and password is not None:
                token = _log_in(client, email, password)
            else:
                token = str(target.token)
            client.headers["Authorization"] = f"Bearer {token}"
            failures = _upload_all(client, files, device, wait, timeout)
        except httpx.HTTPError as exc:
            err_console.print(f"[red]error:[/red] {url}: {type(exc).__name__}: {exc}")
            raise typer.Exit(1) from exc
        finally:
            if email is not None and "Authorization" in client.headers:
                # the token was ours for this run only: revoke it (a failure here changes nothing)
                with contextlib.suppress(httpx.HTTPError):
                    client.post("/auth/jwt/logout")
    if failures:
        raise typer.Exit(1)


def _upload_all(client: Any, files: list[Path], device: str | None, wait: bool, timeout: float) -> int:
    """Upload each file with a progress bar, then (``wait``) follow them; how many failed."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    accepted: list[tuple[str, str]] = []  # (how the file is shown, its audio_uuid)
    failures = 0
    # files are shown by their name, or by their path where two names are the same (a/x.wav b/x.wav)
    names = collections.Counter(path.name for path in files)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
    ) as progress:
        for path in files:
            task = progress.add_task(path.name, total=path.stat().st_size)
            data = {"device_name": device} if device else {}
            with path.open("rb") as f:
                wrapped = _ProgressFile(f, functools.partial(progress.advance, task))
                r = client.post(
                    "/api/audio/upload",
                    files=[("files", (path.name, wrapped, "application/octet-stream"))],
                    data=data,
                )
            if r.status_code == 202:
                item = r.json()["files"][0]
                if item.get("status") == "queued":
                    accepted.append((path.name if names[path.name] == 1 else str(path), item["audio_uuid"]))
                    progress.console.print(
                        f"{path.name}: queued as {item['audio_uuid']} ({item['duration_seconds']:.1f} s)"
                    )
                    continue
                detail = item.get("error")
            else:
                detail = _response_detail(r)
            failures += 1
            progress.console.print(f"[red]{path.name}: refused ({r.status_code}):[/red] {detail}")
    if wait and accepted:
        failures += _follow(client, accepted, timeout)
    return failures


def _response_detail(r: Any) -> str:
    try:
        detail = r.json().get("detail")
    except ValueError:
        return str(r.text)[:200]
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        return str(detail[0].get("msg", detail))
    return str(detail)


# --wait polls every conversation this often; while the service is unreachable or unavailable
# (restarting, overloaded), the wait doubles from there up to FOLLOW_BACKOFF_MAX
FOLLOW_POLL: Final = 1.0
FOLLOW_BACKOFF_MAX: Final = 10.0
# answers that say the conversation is gone, and answers that say no request will do any better
_GONE = 404
_NOT_ALLOWED = frozenset({401, 403})  # the token expired or was revoked meanwhile


def _follow(
    client: Any,
    accepted: list[tuple[str, str]],
    timeout: float,
    *,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> int:
    """Poll each conversation (``accepted``: (how it is shown, audio_uuid) pairs) until it is
    done, printing its stages whenever they change; returns how many did not complete.

    Followed by audio_uuid: two files may have the same name. A service that cannot answer for a
    while (a connection error, 5xx, 429: a restart, a proxy in front of a restart) is polled again
    with a growing wait until the ``timeout`` deadline, reported once per outage; a conversation
    fails only when it is gone (404) or not done by the deadline. A 401/403 (the token expired or
    was revoked) ends the following: no later poll can succeed. ``clock`` and ``sleep`` default to
    :func:`time.monotonic` and :func:`time.sleep`."""
    import httpx

    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    deadline = clock() + timeout
    shown: dict[str, str] = {}
    pending = {audio_uuid: name for name, audio_uuid in accepted}
    details: dict[str, tuple[str, dict[str, Any]]] = {}
    lost = 0
    trouble: str | None = None  # why the service could not answer, while it cannot
    delay = FOLLOW_POLL
    while pending and clock() < deadline:
        problem = None
        for audio_uuid, name in list(pending.items()):
            try:
                r = client.get(f"/api/conversations/{audio_uuid}")
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                break  # the others would not get through either: wait, then poll them all again
            if r.status_code >= 500 or r.status_code == 429:
                # this conversation could not be read now; the others may well be: go on with them
                problem = f"HTTP {r.status_code}: {_response_detail(r)}"
                continue
            if r.status_code in _NOT_ALLOWED:
                console.print(f"[red]HTTP {r.status_code}:[/red] {_response_detail(r)}; stopped following")
                lost += len(pending)
                pending.clear()
                break
            if r.status_code != 200:
                gone = " (deleted)" if r.status_code == _GONE else ""
                console.print(f"[red]{name}: HTTP {r.status_code}{gone}:[/red] {_response_detail(r)}")
                pending.pop(audio_uuid)
                lost += 1
                continue
            body = r.json()
            stages = "  ".join(f"{stage}={state or '-'}" for stage, state in body["stages"].items())
            line = f"{name}: {body['status']:<11} {stages}"
            if shown.get(audio_uuid) != line:
                console.print(line)
                shown[audio_uuid] = line
            if body["status"] in _DONE_STATES:
                details[audio_uuid] = (name, body)
                pending.pop(audio_uuid)
        if problem is not None:
            if trouble is None:
                console.print(
                    f"[yellow]the service cannot answer ({escape(problem)}); retrying for up to"
                    f" {max(0.0, deadline - clock()):.0f} s more[/yellow]"
                )
                delay = FOLLOW_POLL
            else:
                delay = min(delay * 2, FOLLOW_BACKOFF_MAX)
            trouble = problem
        elif trouble is not None:
            console.print("[green]the service answers again[/green]")
            trouble, delay = None, FOLLOW_POLL
        if pending:
            sleep(max(0.0, min(delay, deadline - clock())))
    for audio_uuid, (name, body) in details.items():
        console.print(f"[bold]{name}[/bold] ({audio_uuid}): {body['status']}")
        if body.get("transcript"):
            console.print(f"  transcript: {body['transcript']['text']}")
        for memory in body.get("memories", []):
            console.print(f"  memory: {memory['text']}")
        for item in body.get("action_items", []):
            due = f" (due {item['due']})" if item.get("due") else ""
            console.print(f"  action item: {item['text']}{due}")
    last = "" if trouble is None else f" (the service still cannot answer: {escape(trouble)})"
    for name in pending.values():
        console.print(f"[yellow]{name}: not done after {timeout:.0f} s{last}[/yellow]")
    return lost + len(pending) + sum(1 for _, b in details.values() if b["status"] != "completed")


@app.command()
def check(
    url: Annotated[str, typer.Option(help="the deployment, e.g. http://127.0.0.1:8000")],
    token: Annotated[
        str | None, typer.Option(envvar="LIFELINE_CHECK_TOKEN", help="a bearer token to read with")
    ] = None,
    email: Annotated[str | None, typer.Option(help="log in as this user (instead of --token)")] = None,
    password: Annotated[
        str | None, typer.Option(envvar="LIFELINE_CHECK_PASSWORD", help="its password (asked for if unset)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds each request may take")] = 10.0,
) -> None:
    """Check a running deployment: probes, login, every read endpoint, metrics. Exit 1 on a failure."""
    from lifeline.check import run_checks

    if email is not None and password is None and token is None:
        password = typer.prompt("password", hide_input=True)
    results = run_checks(url, token=token, email=email, password=password, timeout=timeout)
    table = Table(title=f"lifeline check {url}")
    for col in ("check", "result", "status", "ms", "detail"):
        table.add_column(col, justify="right" if col in ("status", "ms") else "left")
    for r in results:
        table.add_row(
            r.name,
            "[green]pass[/green]" if r.ok else "[red]FAIL[/red]",
            "-" if r.status is None else str(r.status),
            f"{r.ms:.0f}",
            r.detail,
        )
    console.print(table)
    if token is None and email is None:
        console.print("no --token or --email: the authenticated checks were not run")
    failed = [r.name for r in results if not r.ok]
    if failed:
        err_console.print(f"[red]{len(failed)} of {len(results)} checks failed:[/red] {', '.join(failed)}")
        raise typer.Exit(1)
    console.print(f"all {len(results)} checks passed")


# -- looking ----------------------------------------------------------------------------------


@app.command()
def status(ctx: typer.Context) -> None:
    """Queues at a glance: counts by state, oldest waiting job, throughput, pauses, breakers."""

    async def fn(ops: Operations) -> None:
        stats = await ops.queue_stats()
        recovery = await ops.recovery_stats()
        table = Table(title="queues")
        table.add_column("queue")
        for state in JobState:
            table.add_column(state.value, justify="right")
        table.add_column("oldest waiting", justify="right")
        table.add_column("done/min", justify="right")
        table.add_column("paused")
        for name, q in stats.items():
            table.add_row(
                name,
                *(str(q.counts[s]) for s in JobState),
                _age(q.oldest_pending_age),
                str(q.completed_last_minute),
                f"yes ({q.pause_reason})"
                if q.paused and q.pause_reason
                else ("yes" if q.paused else (f"blocked: {q.blocked_by}" if q.blocked_by else "no")),
            )
        console.print(table)
        console.print(
            f"recovery: {recovery.runs} runs, {recovery.requeued} requeued, {recovery.escalated}"
            f" dead-lettered, last run {_when(recovery.last_run_at)}"
        )
        _print_breakers([b.details for b in await ops.breakers()])

    _ops(ctx, fn)


@app.command()
def recording(ctx: typer.Context, audio_uuid: str) -> None:
    """One recording's status across every stage."""

    async def fn(ops: Operations) -> None:
        report = await ops.recording_status(audio_uuid)
        console.print(f"{report.audio_uuid}: [bold]{report.status.value}[/bold]")
        for stage, stage_report in report.stages.items():
            for info in stage_report.jobs:
                job = info.job
                console.print(
                    f"  {stage:<14} job {job.id:<8} {job.state.value:<12} attempts {job.attempts}/"
                    f"{job.max_attempts}  {job.last_error or ''}"
                )

    _ops(ctx, fn)


@jobs_app.command("show")
def jobs_show(ctx: typer.Context, job_id: int) -> None:
    """A job and its attempt history."""

    async def fn(ops: Operations) -> None:
        info = await ops.get_job(job_id)
        job = info.job
        console.print(
            f"job {job.id} queue={job.queue} state={job.state.value} attempts={job.attempts}/"
            f"{job.max_attempts} priority={job.priority} recording={job.recording_id or '-'}"
        )
        if job.last_error:
            console.print(f"last error: {job.last_error}")
        table = Table(title="attempts")
        for col in ("#", "worker", "started", "duration", "outcome", "error"):
            table.add_column(col)
        for a in info.attempts:
            duration = a.duration
            table.add_row(
                str(a.claim),
                a.worker_id,
                _when(a.started_at),
                "-" if duration is None else f"{duration:.3f}s",
                a.outcome.value,
                a.error or "",
            )
        console.print(table)

    _ops(ctx, fn)


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    queue: Annotated[str | None, typer.Option()] = None,
    state: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option()] = 20,
) -> None:
    """The newest jobs, filtered by queue and state."""
    job_state = JobState(state) if state else None

    async def fn(ops: Operations) -> None:
        _print_jobs(await ops.list_jobs(queue=queue, state=job_state, limit=limit))

    _ops(ctx, fn)


@jobs_app.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: int) -> None:
    """Cancel a job that has not finished."""
    _ops(ctx, lambda ops: ops.cancel(job_id))
    console.print(f"job {job_id} cancelled")


@jobs_app.command("retry")
def jobs_retry(ctx: typer.Context, job_id: int) -> None:
    """Put a failed, cancelled or dead job back to pending with its attempts reset."""
    _ops(ctx, lambda ops: ops.requeue(job_id))
    console.print(f"job {job_id} requeued")


@jobs_app.command("enqueue")
def jobs_enqueue(
    queue: str,
    payload: Annotated[str, typer.Argument(help="the payload as a JSON object")] = "{}",
    priority: Annotated[int, typer.Option()] = 0,
    delay: Annotated[float, typer.Option()] = 0.0,
) -> None:
    """Add a job by hand."""
    try:
        data: Any = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"payload is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise typer.BadParameter("payload must be a JSON object")
    job_id = _with_store(lambda store: store.enqueue(queue, data, priority=priority, delay=delay))
    console.print(f"job {job_id} enqueued on {queue}")


def _print_jobs(jobs: list[Any]) -> None:
    table = Table()
    for col in ("id", "queue", "state", "attempts", "updated", "last error"):
        table.add_column(col)
    for job in jobs:
        table.add_row(
            str(job.id),
            job.queue,
            job.state.value,
            f"{job.attempts}/{job.max_attempts}",
            _when(job.updated_at),
            (job.last_error or "")[:80],
        )
    console.print(table)


# -- dead letters -----------------------------------------------------------------------------


@dlq_app.command("list")
def dlq_list(
    ctx: typer.Context,
    queue: Annotated[str | None, typer.Argument()] = None,
    limit: Annotated[int, typer.Option()] = 50,
) -> None:
    """Dead letters with their reasons."""

    async def fn(ops: Operations) -> None:
        _print_jobs(await ops.list_jobs(queue=queue, state=JobState.DEAD_LETTER, limit=limit))

    _ops(ctx, fn)


@dlq_app.command("requeue")
def dlq_requeue(
    ctx: typer.Context,
    job_id: Annotated[int | None, typer.Argument()] = None,
    all_of: Annotated[str | None, typer.Option("--all", help="requeue every dead letter of QUEUE")] = None,
) -> None:
    """Back to pending with attempts reset: one job, or --all QUEUE."""
    if (job_id is None) == (all_of is None):
        raise typer.BadParameter("give either a job id or --all QUEUE")
    if all_of is not None:
        queue = all_of
        count = _ops(ctx, lambda ops: ops.requeue_dead_letters(queue))
        console.print(f"{count} dead letters of {queue} requeued")
    else:
        assert job_id is not None
        jid = job_id
        _ops(ctx, lambda ops: ops.requeue(jid))
        console.print(f"job {jid} requeued")


@dlq_app.command("purge")
def dlq_purge(
    queue: str,
    older_than_days: Annotated[float, typer.Option(help="only dead letters older than this")] = 0.0,
) -> None:
    """Delete dead letters for good."""
    count = _with_store(lambda store: store.purge_dead_letters(queue, older_than=older_than_days * 86400))
    console.print(f"{count} dead letters of {queue} purged")


# -- operating --------------------------------------------------------------------------------


@app.command()
def recover(
    ctx: typer.Context,
    queue: Annotated[str | None, typer.Argument()] = None,
    job: Annotated[
        int | None, typer.Option(help="recover this job even if its lease has not expired")
    ] = None,
) -> None:
    """Run one recovery pass now."""

    async def fn(ops: Operations) -> None:
        report = await ops.recover(queue, job)
        console.print(
            f"found {report.found}: requeued {len(report.requeued)}, dead-lettered {len(report.escalated)}"
        )

    _ops(ctx, fn)


@app.command()
def pause(ctx: typer.Context, queue: str, reason: Annotated[str | None, typer.Option()] = None) -> None:
    """Stop workers from claiming a queue's jobs (they wait; nothing is lost)."""
    _ops(ctx, lambda ops: ops.pause(queue, reason))
    console.print(f"{queue} paused")


@app.command()
def resume(ctx: typer.Context, queue: str) -> None:
    """Let workers claim a paused queue's jobs again."""
    _ops(ctx, lambda ops: ops.resume(queue))
    console.print(f"{queue} resumed")


@app.command()
def cleanup(
    ctx: typer.Context,
    days: Annotated[float | None, typer.Option(help="delete completed jobs older than this")] = None,
) -> None:
    """Retention cleanup now."""
    age_days = days if days is not None else _settings().retention_days

    async def fn(ops: Operations) -> None:
        report = await ops.cleanup(age_days)
        console.print(f"deleted {report.jobs_deleted} jobs and {report.attempts_deleted} attempts")

    _ops(ctx, fn)


# -- conversations and memories ---------------------------------------------------------------

conversations_app = typer.Typer(
    no_args_is_help=True, help="Conversations: recordings and what the pipeline made of them."
)
app.add_typer(conversations_app, name="conversations")

_USER_HELP = "only this user's (an e-mail or a user id; local store only)"


class FromStage(enum.StrEnum):
    """The stages a conversation can be re-run from."""

    TRANSCRIPTION = Stage.TRANSCRIPTION.value
    MEMORY = Stage.MEMORY.value
    ACTION_ITEM = Stage.ACTION_ITEM.value


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}" if minutes < 60 else f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _user_of(c: ConversationSummary) -> str:
    return c.user_email or c.user_id or "-"


@conversations_app.command("list")
def conversations_list(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", help=_USER_HELP)] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="how many (newest first)")] = 20,
) -> None:
    """The newest conversations with their status and each stage's state."""

    async def fn(conv: Conversations) -> None:
        table = Table()
        table.add_column("audio_uuid", no_wrap=True)
        for col in ("user", "device", "source", "created", "duration", "status", *(s.value for s in Stage)):
            table.add_column(col)
        for c in await conv.list_conversations(user=user, limit=limit):
            table.add_row(
                escape(c.audio_uuid),
                escape(_user_of(c)),
                escape(c.device_name or c.client_id or "-"),
                c.source,
                _when(c.created_at),
                _duration(c.duration_seconds),
                c.status,
                *(c.stages.get(s.value) or "-" for s in Stage),
            )
        console.print(table)

    _conversations(ctx, fn)


@conversations_app.command("show")
def conversations_show(ctx: typer.Context, audio_uuid: str) -> None:
    """One conversation: transcript, memories, action items, and every job with its attempts."""

    async def fn(conv: Conversations) -> None:
        _print_conversation(await conv.conversation(audio_uuid))

    _conversations(ctx, fn)


def _print_conversation(d: ConversationDetail) -> None:
    c = d.summary
    console.print(f"{escape(c.audio_uuid)}: [bold]{c.status}[/bold]", highlight=False)
    console.print(
        f"user {_user_of(c)}  device {c.device_name or c.client_id or '-'}  source {c.source}"
        f"  file {c.filename or '-'}  created {_when(c.created_at)}"
        f"  duration {_duration(c.duration_seconds)}",
        highlight=False,
        markup=False,
    )
    console.print(
        "stages: " + "  ".join(f"{s.value} {c.stages.get(s.value) or '-'}" for s in Stage), highlight=False
    )
    if d.transcript is None:
        console.print("transcript: -")
    else:
        console.print("transcript:")
        for seg in d.transcript.segments or []:
            console.print(f"  [{seg.start:7.1f}-{seg.end:7.1f}] {seg.text}", highlight=False, markup=False)
        if not d.transcript.segments:
            console.print(f"  {d.transcript.text}", highlight=False, markup=False)
    _print_memories(d.memories, title="memories")
    actions = Table(title="action items")
    for col in ("id", "action item", "assignee", "due", "status", "at"):
        actions.add_column(col)
    for item in d.action_items:
        at = "-" if item.at_seconds is None else f"{item.at_seconds:.1f}s"
        actions.add_row(
            escape(item.id),
            escape(item.text),
            escape(item.assignee or "-"),
            escape(item.due or "-"),
            item.status,
            at,
        )
    console.print(actions)
    jobs = Table(title="jobs")
    for col in ("stage", "job", "state", "attempts", "created", "updated", "last error"):
        jobs.add_column(col)
    attempts = Table(title="attempts")
    for col in ("job", "#", "worker", "started", "duration", "outcome", "error"):
        attempts.add_column(col)
    for job in d.jobs:
        jobs.add_row(
            job.queue,
            str(job.id),
            job.state.value,
            f"{job.attempts}/{job.max_attempts}",
            _when(job.created_at),
            _when(job.updated_at),
            escape(job.last_error or ""),
        )
        for a in job.history:
            attempts.add_row(
                str(job.id),
                str(a.claim),
                a.worker_id,
                _when(a.started_at),
                "-" if a.duration is None else f"{a.duration:.3f}s",
                a.outcome.value,
                escape(a.error or ""),
            )
    console.print(jobs)
    console.print(attempts)


@conversations_app.command("delete")
def conversations_delete(
    ctx: typer.Context,
    audio_uuid: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask first")] = False,
) -> None:
    """Delete a conversation and all made of it: audio, outputs, Qdrant points, jobs."""
    if not yes:
        typer.confirm(f"delete {audio_uuid} and everything made of it?", abort=True, err=True)
    _conversations(ctx, lambda conv: conv.delete_conversation(audio_uuid))
    console.print(f"{audio_uuid} deleted")


@conversations_app.command("reprocess")
def conversations_reprocess(
    ctx: typer.Context,
    audio_uuid: str,
    from_stage: Annotated[
        FromStage,
        typer.Option("--from", help="the stage to re-run; transcription re-runs everything after it"),
    ],
) -> None:
    """Re-run a conversation from one stage (keeping the earlier stages' outputs)."""
    stage = from_stage.value
    job_id = _conversations(ctx, lambda conv: conv.reprocess(audio_uuid, stage))
    console.print(f"{stage} of {audio_uuid} queued again as job {job_id}")


@app.command()
def memories(
    ctx: typer.Context,
    query: Annotated[str | None, typer.Argument(help="words every memory shown must contain")] = None,
    user: Annotated[str | None, typer.Option("--user", help=_USER_HELP)] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="how many")] = 50,
) -> None:
    """Memories, newest conversation first; with QUERY, a full-text search, best match first."""

    async def fn(conv: Conversations) -> None:
        _print_memories(await conv.memories(query=query, user=user, limit=limit), title=None)

    _conversations(ctx, fn)


def _print_memories(found: list[MemoryView], *, title: str | None) -> None:
    table = Table(title=title)
    for col in ("id", "memory", "category", "updated"):
        table.add_column(col)
    for m in found:
        table.add_row(escape(m.id), escape(m.text), escape(m.category or "-"), _when(m.updated_at))
    console.print(table)


# -- users ------------------------------------------------------------------------------------


def _accounts(store: Store) -> Accounts:
    settings = _settings()
    secret = settings.auth_secret or load_or_create_secret(settings.data_dir / "auth-secret")
    return Accounts(store, TokenIssuer(secret, settings.jwt_lifetime))


@users_app.command("create")
def users_create(
    email: str,
    superuser: Annotated[bool, typer.Option("--superuser", help="may manage queues and users")] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from stdin")
    ] = False,
) -> None:
    """Create a user (the password is asked for, or read from stdin)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)

    async def fn(store: Store) -> User:
        return await _accounts(store).create_user(email, password, superuser=superuser)

    try:
        user = _with_store(fn)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(f"user {user.email} created (id {user.id}{', superuser' if user.is_superuser else ''})")


@users_app.command("list")
def users_list() -> None:
    """Every account."""

    async def fn(store: Store) -> None:
        table = Table()
        for col in ("id", "email", "superuser", "active"):
            table.add_column(col)
        for user in await store.list_users(limit=1000):
            table.add_row(
                user.id, user.email, "yes" if user.is_superuser else "", "yes" if user.is_active else "no"
            )
        console.print(table)

    _with_store(fn)


# -- breakers and health ----------------------------------------------------------------------

breakers_app = typer.Typer(help="Circuit breakers (shared by every process through the store).")
app.add_typer(breakers_app, name="breakers")


def _print_breakers(records: list[dict[str, Any]]) -> None:
    """Breakers as ``BreakerRecord.to_dict()`` (local) or the API (remote) show them."""
    table = Table(title="circuit breakers")
    for col in ("breaker", "state", "failures", "open until", "opens in a row", "probe", "last error"):
        table.add_column(col)
    now = time.time()
    for rec in records:
        until = "-"
        if rec["state"] == BreakerState.OPEN.value and rec.get("open_until") is not None:
            until = f"{_when(rec['open_until'])} ({_age(max(0.0, rec['open_until'] - now))})"
        probe_busy = rec.get("probe_owner") and (rec.get("probe_expires_at") or 0) > now
        table.add_row(
            rec["name"],
            rec["state"],
            f"{rec.get('failures', 0)}/{rec.get('calls', 0)}",
            until,
            str(rec.get("consecutive_opens", 0)),
            str(rec["probe_owner"]) if probe_busy else "-",
            (rec.get("last_error") or "")[:80],
        )
    console.print(table)


@breakers_app.callback(invoke_without_command=True)
def breakers_main(ctx: typer.Context) -> None:
    """Without a command: list the breakers."""
    if ctx.invoked_subcommand is None:
        breakers_list()


@breakers_app.command("list")
def breakers_list(events: Annotated[int, typer.Option(help="also show the last N transitions")] = 0) -> None:
    """Every breaker: state, recent failures, open until, the probe, the last error."""

    async def fn(store: Store) -> None:
        breakers = build_breakers(_settings(), store)
        _print_breakers([r.to_dict() for r in await breakers.list()])
        if events:
            table = Table(title="transitions")
            for col in ("when", "breaker", "from", "to", "reason"):
                table.add_column(col)
            for t in await breakers.events(limit=events):
                table.add_row(_when(t.at), t.name, t.from_state.value, t.to_state.value, t.reason)
            console.print(table)

    _with_store(fn)


@breakers_app.command("reset")
def breakers_reset(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="one breaker (default: all)")] = None,
) -> None:
    """Close a breaker (or all) by hand; the stage's jobs are claimed again at once."""

    async def fn(ops: Operations) -> None:
        count = await ops.reset_breakers(name)
        if name is None:
            console.print(f"all breakers closed ({count} were open or half-open)")
        else:
            console.print(f"breaker {name} closed")

    _ops(ctx, fn)


@app.command()
def health(
    check: Annotated[bool, typer.Option(help="check every service now (else: the last results)")] = True,
) -> None:
    """Each configured service's health: status, response times (last, p50, p95), failures, last error."""
    settings = _settings()

    async def fn(store: Store) -> str:
        breakers = build_breakers(settings, store)
        monitor = build_monitor(
            settings.replace(health_interval=max(settings.health_interval, 1.0)), store, breakers
        )
        assert monitor is not None
        if check:
            await monitor.check_all()
        summary = await monitor.summary()
        table = Table(title=f"health: {summary['status']}")
        for col in (
            "service",
            "status",
            "last",
            "p50",
            "p95",
            "failures in a row",
            "since",
            "breaker",
            "error / detail",
        ):
            table.add_column(col)
        for service, s in summary["services"].items():
            table.add_row(
                service,
                s["status"],
                _ms(s["last_response_ms"]),
                _ms(s["p50_ms"]),
                _ms(s["p95_ms"]),
                str(s["consecutive_failures"]),
                _when(s["last_change_at"]),
                s["breaker"] or "-",
                (s["last_error"] if s["status"] == "unhealthy" else s["detail"] or "") or "",
            )
        console.print(table)
        for warning in summary["warnings"]:
            console.print(f"[yellow]warning:[/yellow] {warning}")
        for failure in summary["failures"]:
            console.print(f"[red]failure:[/red] {failure}")
        status_text: str = summary["status"]
        return status_text

    if _with_store(fn) == "unhealthy":
        raise typer.Exit(1)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms"


def main() -> None:
    try:
        app()
    except LifelineError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from exc
