"""Outputs across recordings: listing a stage, full-text search (words, never a query language),
and a user's edits and deletions, which search sees at once."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import psycopg
import pytest

import lifeline
import pg
from conformance.backends import QUEUE
from conformance.helpers import claim_one
from fakes import FakeClock
from lifeline import NotFound, Store
from lifeline.domain import Output
from lifeline.store import migrations
from lifeline.store.base import StoredOutput


async def run_stage(store: Store, outputs: list[Output]) -> int:
    job_id = await store.enqueue(QUEUE, {})
    job = await claim_one(store)
    await store.complete(job, outputs=outputs)
    return job_id


def texts(found: list[StoredOutput]) -> list[str]:
    return [str(o.data["text"]) if isinstance(o.data, dict) else "" for o in found]


async def recording(store: Store, clock: FakeClock, rec: str, user: str, *memories: str) -> None:
    """A recording (one second newer than the last) with ``memories`` as its memory outputs."""
    clock.advance(1)
    await store.add_recording(rec, user_id=user)
    await run_stage(store, [Output(rec, "memory", i, {"text": t}) for i, t in enumerate(memories)])


async def search(store: Store, query: str | None, *, user_id: str | None = None) -> list[str]:
    return texts(await store.search_outputs("memory", user_id=user_id, query=query))


# -- listing --------------------------------------------------------------------------------------


async def test_a_stage_is_listed_newest_recording_first_then_by_index(store: Store, clock: FakeClock) -> None:
    await recording(store, clock, "old", "alice", "old 0", "old 1")
    await recording(store, clock, "new", "alice", "new 0", "new 1", "new 2")
    await recording(store, clock, "bobs", "bob", "bob 0")
    await run_stage(store, [Output("new", "action_item", 0, {"text": "not a memory"})])
    assert await search(store, None) == ["bob 0", "new 0", "new 1", "new 2", "old 0", "old 1"]
    assert await search(store, None, user_id="alice") == ["new 0", "new 1", "new 2", "old 0", "old 1"]
    assert await search(store, None, user_id="carol") == []
    page = await store.search_outputs("memory", user_id="alice", limit=2, offset=2)
    assert [(o.recording_id, o.index) for o in page] == [("new", 2), ("old", 0)]
    assert texts(await store.search_outputs("action_item")) == ["not a memory"]


# -- full-text search -----------------------------------------------------------------------------


async def test_search_matches_words_case_insensitively(store: Store, clock: FakeClock) -> None:
    await recording(store, clock, "r1", "u", "I love Coffee in the morning", "My sister is called Anna")
    await recording(store, clock, "r2", "u", "coffeemaker broke", "The COFFEE was cold")
    assert sorted(await search(store, "coffee")) == ["I love Coffee in the morning", "The COFFEE was cold"]
    assert await search(store, "ANNA") == ["My sister is called Anna"]
    assert await search(store, "tea") == []


async def test_every_word_of_the_query_must_match(store: Store, clock: FakeClock) -> None:
    await recording(store, clock, "r", "u", "coffee in the morning", "coffee at night", "morning run")
    assert await search(store, "morning coffee") == ["coffee in the morning"]
    assert await search(store, "coffee, night!") == ["coffee at night"]
    assert await search(store, "coffee tea") == []


async def test_query_syntax_is_taken_as_words(store: Store, clock: FakeClock) -> None:
    await recording(
        store, clock, "r", "u", "this or that", "near the river", "x marks the spot", 'she said "hello"'
    )
    for hostile in ['"', "*", "NEAR(", "OR", "-x", "a AND", "(", ")", "^", ":", "text:x", "'", '""', "NOT"]:
        await store.search_outputs("memory", query=hostile)  # never a syntax error
    assert await search(store, "OR") == ["this or that"]
    assert await search(store, "NEAR(") == ["near the river"]
    assert await search(store, "-x") == ["x marks the spot"]
    assert await search(store, '"hello') == ['she said "hello"']
    assert await search(store, "spot*") == ["x marks the spot"]
    assert await search(store, "that OR river") == []  # OR is a word here, not an operator


@pytest.mark.parametrize("query", ["", "   ", '"', "*", "-", "()", "?!,.", '""'])
async def test_a_query_without_words_matches_nothing(store: Store, clock: FakeClock, query: str) -> None:
    await recording(store, clock, "r", "u", "anything at all")
    assert await search(store, query) == []


async def test_search_is_per_user_and_per_stage(store: Store, clock: FakeClock) -> None:
    await recording(store, clock, "a", "alice", "alice likes jazz")
    await recording(store, clock, "b", "bob", "bob likes jazz")
    await run_stage(store, [Output("a", "action_item", 0, {"text": "buy jazz records"})])
    assert await search(store, "jazz", user_id="alice") == ["alice likes jazz"]
    assert await search(store, "jazz", user_id="bob") == ["bob likes jazz"]
    assert await search(store, "jazz", user_id="carol") == []
    assert sorted(await search(store, "jazz")) == ["alice likes jazz", "bob likes jazz"]
    found = await store.search_outputs("action_item", user_id="alice", query="jazz")
    assert [(o.recording_id, o.stage, o.index) for o in found] == [("a", "action_item", 0)]


async def test_the_best_match_comes_first(store: Store, clock: FakeClock) -> None:
    await recording(
        store,
        clock,
        "r",
        "u",
        "we talked about the garden, the weather, the neighbours and then some tea",
        "tea tea tea",
        "no match here",
    )
    await recording(store, clock, "newer", "u", "a long story about trains and one cup of tea at the end")
    found = await search(store, "tea")
    assert found[0] == "tea tea tea"
    assert len(found) == 3


async def test_equal_matches_come_newest_recording_first(store: Store, clock: FakeClock) -> None:
    await recording(store, clock, "first", "u", "walk the dog")
    await recording(store, clock, "second", "u", "walk the dog")
    found = await store.search_outputs("memory", query="dog")
    assert [o.recording_id for o in found] == ["second", "first"]


async def test_outputs_without_text_are_listed_but_never_found(store: Store, clock: FakeClock) -> None:
    await store.add_recording("r")
    await run_stage(store, [Output("r", "memory", 0, {"fact": "tea"}), Output("r", "memory", 1, ["tea"])])
    assert len(await store.search_outputs("memory")) == 2
    assert await search(store, "tea") == []


async def test_an_edit_changes_what_search_finds(store: Store, clock: FakeClock) -> None:
    await recording(store, clock, "r", "u", "I like tea", "I own a bike")
    before = (await store.get_output("r", "memory", 0)).revision
    clock.advance(30)
    edited = await store.update_output("r", "memory", 0, {"text": "I like coffee", "edited": True})
    assert edited.data == {"text": "I like coffee", "edited": True}
    assert (edited.revision, edited.updated_at) == (before + 1, clock.now)
    assert await store.get_output("r", "memory", 0) == edited
    assert await search(store, "tea") == []
    assert await search(store, "coffee") == ["I like coffee"]
    # a re-run's upsert is seen by search too
    await run_stage(store, [Output("r", "memory", 1, {"text": "I own a car"})])
    assert await search(store, "bike") == []
    assert await search(store, "car") == ["I own a car"]


async def test_a_deleted_output_is_gone_from_search(store: Store, clock: FakeClock) -> None:
    await recording(store, clock, "r", "u", "I like tea", "tea is great")
    await store.delete_output("r", "memory", 0)
    assert await search(store, "tea") == ["tea is great"]
    with pytest.raises(NotFound):
        await store.get_output("r", "memory", 0)
    assert [o.index for o in await store.get_outputs("r")] == [1]


async def test_unknown_outputs_are_not_found(store: Store, clock: FakeClock) -> None:
    await recording(store, clock, "r", "u", "something")
    for rec, stage, index in (("r", "memory", 1), ("r", "transcript", 0), ("x", "memory", 0)):
        with pytest.raises(NotFound):
            await store.get_output(rec, stage, index)
        with pytest.raises(NotFound):
            await store.update_output(rec, stage, index, {"text": "new"})
        with pytest.raises(NotFound):
            await store.delete_output(rec, stage, index)
    assert [o.data for o in await store.get_outputs("r")] == [{"text": "something"}]
    assert await store.get_outputs("x") == []


# -- outputs written before the search existed ----------------------------------------------------


def _old_rows() -> list[tuple[str, str, int, str, int, int, float]]:
    return [
        ("rec", "memory", 0, '{"text":"old tea memory"}', 1, 1, 1.0),
        ("rec", "memory", 1, '{"text":"old bike memory"}', 1, 1, 1.0),
    ]


async def _search_after_upgrade(url: str) -> None:
    async with lifeline.connect(url) as store:
        assert texts(await store.search_outputs("memory", query="tea")) == ["old tea memory"]
        assert texts(await store.search_outputs("memory")) == ["old tea memory", "old bike memory"]
        await store.delete_output("rec", "memory", 0)  # the backfilled entry is removed exactly
        assert texts(await store.search_outputs("memory", query="memory")) == ["old bike memory"]


async def test_sqlite_outputs_from_before_the_upgrade_are_searchable(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)"
        )
        for migration in migrations.load("sqlite"):
            if migration.version < 4:
                conn.executescript(migration.sql)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, 0)", (migration.version, migration.name)
                )
        conn.execute("INSERT INTO recordings (audio_uuid, user_id, created_at) VALUES ('rec', 'u', 1.0)")
        conn.executemany("INSERT INTO outputs VALUES (?, ?, ?, ?, ?, ?, ?)", _old_rows())
    finally:
        conn.close()
    await _search_after_upgrade(f"sqlite:///{path}")


async def test_postgres_outputs_from_before_the_upgrade_are_searchable(tmp_path: Path) -> None:
    cluster = pg.require()
    name = "t_old_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:20]
    cluster.create_database(name)  # empty: migrated below to version 3 only
    try:
        url = cluster.url(name)

        def prepare() -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(
                    "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                    " applied_at DOUBLE PRECISION NOT NULL)"
                )
                for migration in migrations.load("postgres"):
                    if migration.version < 4:
                        conn.execute(migration.sql.encode())
                        conn.execute(
                            "INSERT INTO schema_migrations VALUES (%s, %s, 0)",
                            (migration.version, migration.name),
                        )
                conn.execute(
                    "INSERT INTO recordings (audio_uuid, user_id, created_at) VALUES ('rec', 'u', 1.0)"
                )
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO outputs VALUES (%s, %s, %s, %s, %s, %s, %s)", _old_rows())

        await asyncio.to_thread(prepare)
        await _search_after_upgrade(url)
    finally:
        cluster.drop_database(name)
