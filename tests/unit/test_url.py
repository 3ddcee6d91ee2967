"""Database URLs and ``lifeline.connect``."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import lifeline
from lifeline.domain import ConfigError, LifelineError
from lifeline.queue.policy import DEFAULT_POLICIES
from lifeline.store.postgres import PostgresStore
from lifeline.store.sqlite import SQLiteStore
from lifeline.store.url import parse_database_url, redact


@pytest.mark.parametrize(
    ("url", "path", "synchronous"),
    [
        ("sqlite:///lifeline.db", Path("lifeline.db"), None),
        ("sqlite:///data/sub/lifeline.db", Path("data/sub/lifeline.db"), None),
        ("sqlite:////var/lib/lifeline/db.sqlite", Path("/var/lib/lifeline/db.sqlite"), None),
        ("sqlite:///x.db?synchronous=normal", Path("x.db"), "normal"),
        ("sqlite:////abs/x.db?synchronous=FULL", Path("/abs/x.db"), "full"),
    ],
)
def test_parse(url: str, path: Path, synchronous: str | None) -> None:
    parsed = parse_database_url(url)
    assert (parsed.scheme, parsed.path, parsed.synchronous) == ("sqlite", path, synchronous)
    assert parsed.path.is_absolute() == url.startswith("sqlite:////")
    assert not parsed.is_postgres
    assert parsed.conninfo is None


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://lifeline:secret@db.internal:5432/lifeline",
        "postgres://lifeline@localhost/lifeline",
        "postgresql://localhost/lifeline?sslmode=require&application_name=worker",
        "postgresql:///lifeline?host=/run/postgresql",  # a Unix socket
    ],
)
def test_parse_postgres(url: str) -> None:
    parsed = parse_database_url(url)
    assert parsed.is_postgres
    assert parsed.conninfo == url  # handed to libpq as it is
    assert (parsed.path, parsed.synchronous) == (None, None)


def test_connect_builds_a_postgres_store_without_connecting() -> None:
    store = lifeline.connect(
        "postgresql://lifeline:pw@127.0.0.1:1/nothing", synchronous="normal", clock=lambda: 7.0
    )
    assert isinstance(store, PostgresStore)  # not opened: nothing was contacted yet
    assert store.conninfo == "postgresql://lifeline:pw@127.0.0.1:1/nothing"
    assert store.policies == DEFAULT_POLICIES
    assert isinstance(store, lifeline.Store)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://lifeline:s3cret@db:5432/x", "postgresql://lifeline:***@db:5432/x"),
        ("postgresql://lifeline@db/x", "postgresql://lifeline@db/x"),
        ("sqlite:///data/lifeline.db", "sqlite:///data/lifeline.db"),
    ],
)
def test_redact_hides_the_password(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql:///x.db", "scheme"),
        ("postgresql+psycopg://localhost/db", "scheme"),
        ("postgresql:///db", "needs a host"),
        ("postgresql://localhost/db?synchronous=normal", "SQLite option"),
        ("postgresql://localhost:port/db", "port"),
        ("lifeline.db", "scheme"),
        ("sqlite://host/x.db", "no host"),
        ("sqlite://", "names no file"),
        ("sqlite:///", "names no file"),
        ("sqlite:///x.db?synchronous=off", "synchronous"),
        ("sqlite:///x.db?journal=delete", "unknown"),
    ],
)
def test_bad_urls_raise_config_error(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_database_url(url)
    with pytest.raises(ConfigError):
        lifeline.connect(url)
    assert issubclass(ConfigError, LifelineError)


def test_connect_builds_an_sqlite_store(tmp_path: Path) -> None:
    store = lifeline.connect(f"sqlite:///{tmp_path}/a.db")
    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / "a.db"
    assert store.synchronous == "full"  # the safe default
    assert store.policies == DEFAULT_POLICIES
    assert isinstance(store, lifeline.Store)


def test_synchronous_argument_beats_the_url(tmp_path: Path) -> None:
    store = lifeline.connect(f"sqlite:///{tmp_path}/a.db?synchronous=normal")
    assert isinstance(store, SQLiteStore)
    assert store.synchronous == "normal"
    store = lifeline.connect(f"sqlite:///{tmp_path}/a.db?synchronous=normal", synchronous="full")
    assert isinstance(store, SQLiteStore)
    assert store.synchronous == "full"


def test_connect_passes_policies_clock_and_rng(tmp_path: Path) -> None:
    policy = lifeline.RetryPolicy(max_attempts=9)
    rng = random.Random(1)
    store = lifeline.connect(
        f"sqlite:///{tmp_path}/a.db",
        policies={"q": policy},
        default_policy=policy,
        clock=lambda: 42.0,
        rng=rng,
    )
    assert isinstance(store, SQLiteStore)
    assert store.policy("q") is policy
    assert store.policy("anything-else") is policy
    assert store.policies == {"q": policy}


def test_sqlite_store_refuses_an_unknown_durability_level(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(tmp_path / "a.db", synchronous="off")  # type: ignore[arg-type]


async def test_a_relative_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with lifeline.connect("sqlite:///nested/dir/rel.db?synchronous=normal") as store:
        await store.enqueue("q", {})
    assert (tmp_path / "nested" / "dir" / "rel.db").exists()


async def test_an_absolute_url_opens_that_file(tmp_path: Path) -> None:
    target = tmp_path / "abs.db"
    url = f"sqlite:///{target}"
    assert url.startswith("sqlite:////")
    async with lifeline.connect(url) as store:
        job_id = await store.enqueue("q", {"k": 1})
    async with lifeline.connect(url) as store:
        assert (await store.get_job(job_id)).job.payload == {"k": 1}
