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
from typing import TYPE_CHECKING, Any, Literal

from lifeline.breakers import BreakerConfig
from lifeline.domain import ConfigError, Stage
from lifeline.queue.policy import DEFAULT_POLICIES, RetryPolicy
from lifeline.store.url import parse_database_url

if TYPE_CHECKING:
    from lifeline.providers.factory import ProviderSettings

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
    # external services, their breakers and the health monitor
    Setting("LIFELINE_ASR", "embedded", "speech recognition: embedded, deepgram, openai or wyoming"),
    Setting("LIFELINE_ASR_URL", "", "the ASR server: http://host:port (openai, deepgram) or tcp://host:port"),
    Setting("LIFELINE_ASR_API_KEY", "", "the ASR key (Deepgram: required; OpenAI-compatible: optional)"),
    Setting("LIFELINE_LLM", "embedded", "the LLM: embedded (rule-based), ollama or openai"),
    Setting("LIFELINE_LLM_URL", "", "the LLM server, e.g. http://127.0.0.1:11434"),
    Setting("LIFELINE_LLM_MODEL", "", "the model the LLM server must list"),
    Setting("LIFELINE_LLM_API_KEY", "", "the LLM key (OpenAI-compatible servers)"),
    Setting("LIFELINE_ASR_MODEL", "", "the ASR model (embedded: a CTranslate2 directory of your own)"),
    Setting("LIFELINE_ASR_LANGUAGE", "", "the spoken language, e.g. en (empty: detected)"),
    Setting("LIFELINE_ASR_TIMEOUT", "600", "seconds one transcription call may take"),
    Setting("LIFELINE_LLM_TIMEOUT", "120", "seconds one LLM call may take"),
    Setting("LIFELINE_QDRANT_URL", "", "a Qdrant server for memory vectors (empty: full-text search only)"),
    Setting("LIFELINE_QDRANT_API_KEY", "", "its api-key"),
    Setting("LIFELINE_QDRANT_COLLECTION", "lifeline_memories", "the Qdrant collection"),
    Setting("LIFELINE_EMBEDDER", "embedded", "embeddings for Qdrant: embedded (MiniLM), ollama or openai"),
    Setting("LIFELINE_EMBEDDER_URL / _MODEL / _API_KEY", "", "the embedding server (default: the LLM's)"),
    Setting("LIFELINE_MODEL_CACHE_DIR", "<data dir>/models", "where the packaged Whisper model is assembled"),
    Setting("LIFELINE_UPLOAD_MAX_MB", "512", "largest accepted upload file, in MB (413 beyond)"),
    Setting(
        "LIFELINE_UPLOAD_MAX_SECONDS",
        "14400",
        "longest accepted upload, in seconds (413 beyond); a streamed conversation this long rolls over",
    ),
    Setting(
        "LIFELINE_STREAM_IDLE_SECONDS",
        "60",
        "a WebSocket conversation with no audio, or only silence, for this long is closed and transcribed",
    ),
    Setting("LIFELINE_MONGODB_URL", "", "a MongoDB to ping in the health monitor (mongodb://host:port)"),
    Setting(
        "LIFELINE_BREAKER_WINDOW / _MIN_CALLS / _FAILURE_RATE / _SLOW_CALL / _OPEN_BASE / _OPEN_MAX"
        " / _PROBE_LEASE / _PROBE_RETRY",
        "20 / 5 / 0.5 / 60 / 30 / 600 / 60 / 2",
        "every breaker's thresholds; LIFELINE_BREAKER_<SERVICE>_<FIELD> sets one service's"
        " (e.g. LIFELINE_BREAKER_ASR_SLOW_CALL)",
    ),
    Setting("LIFELINE_HEALTH_INTERVAL", "30", "seconds between health checks (0: no health monitor)"),
    Setting("LIFELINE_HEALTH_TIMEOUT", "5", "seconds a health check may take"),
    Setting("LIFELINE_HEALTH_SLOW", "2", "a health check slower than this makes the service degraded"),
    Setting("LIFELINE_DISK_MIN_FREE_MB", "200", "less free MB in the data dir: unhealthy (<5x: degraded)"),
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
    # external services, their breakers and the health monitor
    asr: str = "embedded"  # embedded | deepgram | openai | wyoming
    asr_url: str | None = None
    asr_api_key: str | None = None
    llm: str = "embedded"  # embedded | ollama | openai
    llm_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    mongodb_url: str | None = None
    asr_model: str | None = None
    asr_language: str | None = None
    asr_timeout: float = 600.0
    llm_timeout: float = 120.0
    qdrant_collection: str = "lifeline_memories"
    embedder: str = "embedded"  # embedded | ollama | openai
    embedder_url: str | None = None
    embedder_model: str | None = None
    embedder_api_key: str | None = None
    model_cache_dir: Path | None = None  # None: <data_dir>/models
    # ingest
    upload_max_mb: float = 512.0
    upload_max_seconds: float = 4 * 3600.0
    stream_idle_seconds: float = 60.0
    breaker: BreakerConfig = field(default_factory=BreakerConfig)  # every breaker's thresholds ...
    breakers: dict[str, BreakerConfig] = field(default_factory=dict)  # ... unless set for one service
    health_interval: float = 30.0  # 0: no health monitor
    health_timeout: float = 5.0
    health_slow: float = 2.0
    disk_min_free_mb: float = 200.0

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
            **service_settings(values),
        )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def providers(self) -> ProviderSettings:
        """The provider part of the settings, for :func:`lifeline.providers.factory.build_providers`."""
        from lifeline.providers.factory import ProviderSettings

        return ProviderSettings(
            asr=self.asr,
            asr_url=self.asr_url,
            asr_api_key=self.asr_api_key,
            asr_model=self.asr_model,
            asr_language=self.asr_language,
            llm=self.llm,
            llm_url=self.llm_url,
            llm_model=self.llm_model,
            llm_api_key=self.llm_api_key,
            embedder=self.embedder,
            embedder_url=self.embedder_url,
            embedder_model=self.embedder_model,
            embedder_api_key=self.embedder_api_key,
            qdrant_url=self.qdrant_url,
            qdrant_api_key=self.qdrant_api_key,
            qdrant_collection=self.qdrant_collection,
            model_cache_dir=self.model_cache_dir or self.data_dir / "models",
            asr_timeout=self.asr_timeout,
            llm_timeout=self.llm_timeout,
        )


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


# -- external services, breakers, health ---------------------------------------------------------

ASR_KINDS = ("embedded", "deepgram", "openai", "wyoming")
LLM_KINDS = ("embedded", "ollama", "openai")
_BREAKER_FIELDS = {
    "WINDOW": "window",
    "MIN_CALLS": "min_calls",
    "FAILURE_RATE": "failure_rate",
    "SLOW_CALL": "slow_call",
    "OPEN_BASE": "open_base",
    "OPEN_MAX": "open_max",
    "PROBE_LEASE": "probe_lease",
    "PROBE_RETRY": "probe_retry",
}


def service_settings(values: Mapping[str, str]) -> dict[str, Any]:
    """The services, breaker and health fields of :class:`Settings` from ``LIFELINE_*`` values."""

    def get(name: str) -> str | None:
        return values.get(ENV_PREFIX + name, "").strip() or None

    asr = (get("ASR") or "embedded").lower()
    if asr not in ASR_KINDS:
        raise ConfigError(f"LIFELINE_ASR must be one of {', '.join(ASR_KINDS)}, not {asr!r}")
    llm = (get("LLM") or "embedded").lower()
    if llm not in LLM_KINDS:
        raise ConfigError(f"LIFELINE_LLM must be one of {', '.join(LLM_KINDS)}, not {llm!r}")
    if asr in ("openai", "wyoming") and not get("ASR_URL"):
        raise ConfigError(f"LIFELINE_ASR={asr} needs LIFELINE_ASR_URL")
    if asr == "deepgram" and not get("ASR_API_KEY"):
        raise ConfigError("LIFELINE_ASR=deepgram needs LIFELINE_ASR_API_KEY")
    if llm != "embedded" and not get("LLM_URL"):
        raise ConfigError(f"LIFELINE_LLM={llm} needs LIFELINE_LLM_URL")
    embedder = (get("EMBEDDER") or "embedded").lower()
    if embedder not in LLM_KINDS:
        raise ConfigError(f"LIFELINE_EMBEDDER must be one of {', '.join(LLM_KINDS)}, not {embedder!r}")
    cache = get("MODEL_CACHE_DIR")
    default, per_service = _breaker_configs(values)
    return {
        "asr": asr,
        "asr_url": get("ASR_URL"),
        "asr_api_key": get("ASR_API_KEY"),
        "llm": llm,
        "llm_url": get("LLM_URL"),
        "llm_model": get("LLM_MODEL"),
        "llm_api_key": get("LLM_API_KEY"),
        "qdrant_url": get("QDRANT_URL"),
        "qdrant_api_key": get("QDRANT_API_KEY"),
        "mongodb_url": get("MONGODB_URL"),
        "asr_model": get("ASR_MODEL"),
        "asr_language": get("ASR_LANGUAGE"),
        "asr_timeout": _float(get("ASR_TIMEOUT") or "600", "ASR_TIMEOUT", minimum=1),
        "llm_timeout": _float(get("LLM_TIMEOUT") or "120", "LLM_TIMEOUT", minimum=1),
        "qdrant_collection": get("QDRANT_COLLECTION") or "lifeline_memories",
        "embedder": embedder,
        "embedder_url": get("EMBEDDER_URL"),
        "embedder_model": get("EMBEDDER_MODEL"),
        "embedder_api_key": get("EMBEDDER_API_KEY"),
        "model_cache_dir": Path(cache) if cache else None,
        "upload_max_mb": _float(get("UPLOAD_MAX_MB") or "512", "UPLOAD_MAX_MB", minimum=0.001),
        "upload_max_seconds": _float(get("UPLOAD_MAX_SECONDS") or "14400", "UPLOAD_MAX_SECONDS", minimum=1),
        "stream_idle_seconds": _float(get("STREAM_IDLE_SECONDS") or "60", "STREAM_IDLE_SECONDS", minimum=0.1),
        "breaker": default,
        "breakers": per_service,
        "health_interval": _float(get("HEALTH_INTERVAL") or "30", "HEALTH_INTERVAL"),
        "health_timeout": _float(get("HEALTH_TIMEOUT") or "5", "HEALTH_TIMEOUT", minimum=0.01),
        "health_slow": _float(get("HEALTH_SLOW") or "2", "HEALTH_SLOW", minimum=0.0),
        "disk_min_free_mb": _float(get("DISK_MIN_FREE_MB") or "200", "DISK_MIN_FREE_MB"),
    }


def _breaker_configs(values: Mapping[str, str]) -> tuple[BreakerConfig, dict[str, BreakerConfig]]:
    """``LIFELINE_BREAKER_<FIELD>`` for every breaker, ``LIFELINE_BREAKER_<NAME>_<FIELD>`` for one."""
    prefix = ENV_PREFIX + "BREAKER_"
    common: dict[str, str] = {}
    named: dict[str, dict[str, str]] = {}
    for key, value in values.items():
        if not key.startswith(prefix) or not value.strip():
            continue
        rest = key[len(prefix) :]
        for suffix in sorted(_BREAKER_FIELDS, key=len, reverse=True):
            if rest == suffix:
                common[suffix] = value
                break
            if rest.endswith("_" + suffix):
                named.setdefault(rest[: -len(suffix) - 1].lower(), {})[suffix] = value
                break
        else:
            raise ConfigError(f"{key}: unknown breaker setting (fields: {', '.join(_BREAKER_FIELDS)})")

    def build(base: BreakerConfig, raw: dict[str, str], label: str) -> BreakerConfig:
        changes: dict[str, Any] = {}
        for suffix, text in raw.items():
            name = f"BREAKER_{label}{suffix}"
            attribute = _BREAKER_FIELDS[suffix]
            if attribute in ("window", "min_calls"):
                changes[attribute] = _int(text, name, minimum=1)
            elif attribute == "slow_call":
                seconds = _float(text, name)
                changes[attribute] = seconds if seconds > 0 else None  # 0 turns slow calls off
            else:
                changes[attribute] = _float(text, name)
        try:
            return dataclasses.replace(base, **changes)
        except ValueError as exc:
            raise ConfigError(f"LIFELINE_BREAKER_{label}*: {exc}") from exc

    default = build(BreakerConfig(), common, "")
    return default, {name: build(default, raw, name.upper() + "_") for name, raw in named.items()}
