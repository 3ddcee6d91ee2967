"""The operator's command line. Settings are read here, once, and passed down."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from lifeline.accounts import Accounts
from lifeline.auth import TokenIssuer, load_or_create_secret
from lifeline.config import SETTINGS_HELP, Settings
from lifeline.domain import JobState, LifelineError, User
from lifeline.queue.recovery import RecoveryManager
from lifeline.runtime import load_handlers, open_store, recovery_settings, run_workers
from lifeline.store.base import Store

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


@app.command(epilog=_SETTINGS_EPILOG)
def serve(
    host: Annotated[str | None, typer.Option(help="address to listen on [LIFELINE_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on [LIFELINE_PORT]")] = None,
    no_workers: Annotated[bool, typer.Option("--no-workers", help="API only; run workers elsewhere")] = False,
    app_spec: Annotated[
        str | None, typer.Option("--app", help="extra handlers as package.module:attribute")
    ] = None,
) -> None:
    """Run the HTTP service with in-process workers and the recovery manager."""
    import uvicorn

    from lifeline.api import create_app

    _configure_logging()
    settings = _settings()
    if no_workers:
        settings = settings.replace(workers_in_api=False)
    handlers = load_handlers(app_spec) if app_spec else {}
    application = create_app(settings, handlers=handlers)
    err_console.print(
        f"lifeline: http://{host or settings.host}:{port or settings.port}"
        f"  store {settings.database_url} (synchronous={settings.sqlite_synchronous})"
    )
    uvicorn.run(
        application,
        host=host or settings.host,
        port=port or settings.port,
        access_log=False,  # our request log leaves out query strings (tokens)
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_timeout) + 5,
    )


@app.command(epilog=_SETTINGS_EPILOG)
def worker(
    app_spec: Annotated[str, typer.Option("--app", help="handlers as package.module:attribute")],
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


# -- looking ----------------------------------------------------------------------------------


@app.command()
def status() -> None:
    """Queues at a glance: counts by state, oldest waiting job, throughput, pause flags."""

    async def fn(store: Store) -> None:
        stats = await store.queue_stats()
        recovery = await store.recovery_stats()
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
                f"yes ({q.pause_reason})" if q.paused and q.pause_reason else ("yes" if q.paused else "no"),
            )
        console.print(table)
        console.print(
            f"recovery: {recovery.runs} runs, {recovery.requeued} requeued, {recovery.escalated}"
            f" dead-lettered, last run {_when(recovery.last_run_at)}"
        )

    _with_store(fn)


@app.command()
def recording(audio_uuid: str) -> None:
    """One recording's status across every stage."""

    async def fn(store: Store) -> None:
        report = await store.recording_status(audio_uuid)
        console.print(f"{report.audio_uuid}: [bold]{report.status.value}[/bold]")
        for stage, stage_report in report.stages.items():
            for info in stage_report.jobs:
                job = info.job
                console.print(
                    f"  {stage:<14} job {job.id:<8} {job.state.value:<12} attempts {job.attempts}/"
                    f"{job.max_attempts}  {job.last_error or ''}"
                )

    _with_store(fn)


@jobs_app.command("show")
def jobs_show(job_id: int) -> None:
    """A job and its attempt history."""

    async def fn(store: Store) -> None:
        info = await store.get_job(job_id)
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

    _with_store(fn)


@jobs_app.command("list")
def jobs_list(
    queue: Annotated[str | None, typer.Option()] = None,
    state: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option()] = 20,
) -> None:
    """The newest jobs, filtered by queue and state."""
    job_state = JobState(state) if state else None

    async def fn(store: Store) -> None:
        _print_jobs(await store.list_jobs(queue=queue, state=job_state, limit=limit))

    _with_store(fn)


@jobs_app.command("cancel")
def jobs_cancel(job_id: int) -> None:
    """Cancel a job that has not finished."""
    _with_store(lambda store: store.cancel(job_id))
    console.print(f"job {job_id} cancelled")


@jobs_app.command("retry")
def jobs_retry(job_id: int) -> None:
    """Put a failed, cancelled or dead job back to pending with its attempts reset."""
    _with_store(lambda store: store.requeue(job_id))
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
    queue: Annotated[str | None, typer.Argument()] = None,
    limit: Annotated[int, typer.Option()] = 50,
) -> None:
    """Dead letters with their reasons."""

    async def fn(store: Store) -> None:
        _print_jobs(await store.list_jobs(queue=queue, state=JobState.DEAD_LETTER, limit=limit))

    _with_store(fn)


@dlq_app.command("requeue")
def dlq_requeue(
    job_id: Annotated[int | None, typer.Argument()] = None,
    all_of: Annotated[str | None, typer.Option("--all", help="requeue every dead letter of QUEUE")] = None,
) -> None:
    """Back to pending with attempts reset: one job, or --all QUEUE."""
    if (job_id is None) == (all_of is None):
        raise typer.BadParameter("give either a job id or --all QUEUE")
    if all_of is not None:
        queue = all_of
        count = _with_store(lambda store: store.requeue_dead_letters(queue))
        console.print(f"{count} dead letters of {queue} requeued")
    else:
        assert job_id is not None
        jid = job_id
        _with_store(lambda store: store.requeue(jid))
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
    queue: Annotated[str | None, typer.Argument()] = None,
    job: Annotated[
        int | None, typer.Option(help="recover this job even if its lease has not expired")
    ] = None,
) -> None:
    """Run one recovery pass now."""
    settings = _settings()

    async def fn(store: Store) -> None:
        manager = RecoveryManager(store, recovery_settings(settings))
        report = await manager.recover(queue=queue, job_id=job, force=job is not None)
        console.print(
            f"found {report.found}: requeued {len(report.requeued)}, dead-lettered {len(report.escalated)}"
        )

    _with_store(fn)


@app.command()
def pause(queue: str, reason: Annotated[str | None, typer.Option()] = None) -> None:
    """Stop workers from claiming a queue's jobs (they wait; nothing is lost)."""
    _with_store(lambda store: store.pause(queue, reason))
    console.print(f"{queue} paused")


@app.command()
def resume(queue: str) -> None:
    """Let workers claim a paused queue's jobs again."""
    _with_store(lambda store: store.resume(queue))
    console.print(f"{queue} resumed")


@app.command()
def cleanup(
    days: Annotated[float | None, typer.Option(help="delete completed jobs older than this")] = None,
) -> None:
    """Retention cleanup now."""
    settings = _settings()
    age = (days if days is not None else settings.retention_days) * 86400

    async def fn(store: Store) -> None:
        report = await store.cleanup(completed_older_than=age)
        console.print(f"deleted {report.jobs_deleted} jobs and {report.attempts_deleted} attempts")

    _with_store(fn)


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


def main() -> None:
    try:
        app()
    except LifelineError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from exc
