"""Settings, read once at the edge (the CLI, later the app factory) and passed down.

Library code never reads the environment: :meth:`Settings.from_env` is called by the CLI with
``os.environ`` (plus an optional ``.env`` file) and the resulting object is handed to whatever
needs it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lifeline.domain import ConfigError, Stage
from lifeline.queue.policy import DEFAULT_POLICIES, RetryPolicy
from lifeline.store.url import parse_database_url

ENV_PREFIX = "LIFELINE_"


@dataclass(frozen=True, slots=True)
class Setting:
    """One documented environment variable (``lifeline serve --help`` lists them)."""

    name: str
    default: str
    help: str


SETTINGS_HELP: tuple[Setting, ...] = (
    Setting("LIFELINE_DATABASE_URL", "sqlite:///data/lifeline.db", "where the store lives"),
    Setting(
        "LIFELINE_SQLITE_SYNCHRONOUS",
        "full",
        "full: survives power loss; normal: survives a killed process,"
        " may lose the last commits on power loss",
    ),
    Setting("LIFELINE_DATA_DIR", "data", "the signing secret and the generated admin password live here"),
    Setting("LIFELINE_HOST", "127.0.0.1", "address lifeline serve listens on"),
    Setting("LIFELINE_PORT", "8000", "port lifeline serve listens on"),
    Setting("LIFELINE_AUTH_SECRET", "(generated)", "JWT signing secret; generated once into the data dir"),
    Setting("LIFELINE_JWT_LIFETIME", "3600", "seconds a login token is valid"),
    Setting("LIFELINE_ADMIN_EMAIL", "admin@example.com", "the first superuser, created at first start"),
    Setting(
        "LIFELINE_ADMIN_PASSWORD",
        "(generated)",
        "its password; if unset one is generated, printed once and kept in the data dir (0600)",
    ),
    Setting("LIFELINE_WORKER_CONCURRENCY", "4", "jobs a worker process runs at once"),
    Setting("LIFELINE_POLL_INTERVAL", "1.0", "seconds an idle worker waits before looking again"),
    Setting("LIFELINE_SHUTDOWN_TIMEOUT", "30", "seconds in-flight jobs get to finish on SIGTERM"),
    Setting("LIFELINE_RECOVERY_INTERVAL", "15", "seconds between recovery passes"),
    Setting("LIFELINE_RETENTION_DAYS", "7", "completed jobs older than this are deleted"),
    Setting(
        "LIFELINE_QUEUE_<STAGE>_MAX_ATTEMPTS / _BASE_DELAY / _MAX_DELAY / _LEASE",
        "see docs",
        "per-queue retry policy, e.g. LIFELINE_QUEUE_TRANSCRIPTION_MAX_ATTEMPTS=5",
    ),
)


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = "sqlite:///data/lifeline.db"
    sqlite_synchronous: Literal["full", "normal"] = "full"
    worker_concurrency: int = 4
    poll_interval: float = 1.0
    shutdown_timeout: float = 30.0
    recovery_interval: float = 15.0
    retention_days: float = 7.0
    policies: dict[str, RetryPolicy] = field(default_factory=lambda: dict(DEFAULT_POLICIES))
    # the HTTP service
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8000
    auth_secret: str | None = None
    jwt_lifetime: float = 3600.0
    admin_email: str = "admin@example.com"
    admin_password: str | None = None
    workers_in_api: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str], dotenv: Path | None = None) -> Settings:
        """Settings from ``environ``, with values from ``dotenv`` (if it exists) as fallbacks."""
        values: dict[str, str] = {}
        if dotenv is not None and dotenv.is_file():
            values.update(read_dotenv(dotenv))
        values.update({k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)})

        def get(name: str, default: str) -> str:
            return values.get(ENV_PREFIX + name, default)

        base = cls()
        synchronous = get("SQLITE_SYNCHRONOUS", base.sqlite_synchronous).lower()
        if synchronous not in ("full", "normal"):
            raise ConfigError(f"LIFELINE_SQLITE_SYNCHRONOUS must be full or normal, not {synchronous!r}")
        database_url = get("DATABASE_URL", base.database_url)
        parse_database_url(database_url)  # fail early on a malformed URL
        policies: dict[str, RetryPolicy] = {}
        for stage in Stage:
            default = DEFAULT_POLICIES[stage]
            prefix = f"QUEUE_{stage.value.upper()}_"
            try:
                policies[stage.value] = RetryPolicy(
                    max_attempts=_int(get(prefix + "MAX_ATTEMPTS", str(default.max_attempts)), prefix),
                    base_delay=_float(get(prefix + "BASE_DELAY", str(default.base_delay)), prefix),
                    max_delay=_float(get(prefix + "MAX_DELAY", str(default.max_delay)), prefix),
                    lease=_float(get(prefix + "LEASE", str(default.lease)), prefix),
                )
            except ValueError as exc:
                raise ConfigError(f"LIFELINE_{prefix}*: {exc}") from exc
        return cls(
            database_url=database_url,
            sqlite_synchronous="normal" if synchronous == "normal" else "full",
            worker_concurrency=_int(get("WORKER_CONCURRENCY", "4"), "WORKER_CONCURRENCY", minimum=1),
            poll_interval=_float(get("POLL_INTERVAL", "1.0"), "POLL_INTERVAL", minimum=0.01),
            shutdown_timeout=_float(get("SHUTDOWN_TIMEOUT", "30"), "SHUTDOWN_TIMEOUT"),
            recovery_interval=_float(get("RECOVERY_INTERVAL", "15"), "RECOVERY_INTERVAL", minimum=0.1),
            retention_days=_float(get("RETENTION_DAYS", "7"), "RETENTION_DAYS"),
            policies=policies,
            data_dir=Path(get("DATA_DIR", str(base.data_dir))),
            host=get("HOST", base.host),
            port=_int(get("PORT", str(base.port)), "PORT", minimum=1),
            auth_secret=get("AUTH_SECRET", "") or None,
            jwt_lifetime=_float(get("JWT_LIFETIME", "3600"), "JWT_LIFETIME", minimum=1),
            admin_email=get("ADMIN_EMAIL", base.admin_email),
            admin_password=get("ADMIN_PASSWORD", "") or None,
        )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=value`` lines; ``#`` comments and blank lines ignored; optional quotes stripped."""
    found: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{number}: expected KEY=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[key.strip()] = value
    return found


def _int(value: str, name: str, minimum: int = 0) -> int:
    try:
        parsed = int(value)
    except ValueError:
        raise ConfigError(f"LIFELINE_{name} must be an integer, not {value!r}") from None
    if parsed < minimum:
        raise ConfigError(f"LIFELINE_{name} must be at least {minimum}")
    return parsed


def _float(value: str, name: str, minimum: float = 0.0) -> float:
    try:
        parsed = float(value)
    except ValueError:
        raise ConfigError(f"LIFELINE_{name} must be a number, not {value!r}") from None
    if parsed < minimum:
        raise ConfigError(f"LIFELINE_{name} must be at least {minimum}")
    return parsed
