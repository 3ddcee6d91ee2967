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
from conformance.helpers import claim_one, migrate_postgres_below, migrate_sqlite_below
from fakes import FakeClock
from lifeline import NotFound, Store
from lifeline.domain import Output
from lifeline.store import postgres_recordings, sqlite_recordings
from lifeline.store.base import FoundOutput, OutputKey, StoredOutput


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


async def test_each_output_comes_with_its_recordings_filename_and_time(
    store: Store, clock: FakeClock
) -> None:
    clock.advance(1)
    await store.add_recording("up", user_id="u", source="upload", filename="meeting.wav")
    clock.advance(1)
    await store.add_recording("live", user_id="u", source="stream")
    await run_stage(
        store,
        [Output(rec, "memory", 0, {"text": f"{rec} memory"}) for rec in ("up", "live", "ghost")],
    )
    found = await store.search_outputs("memory")
    assert [(o.recording_id, o.filename, o.created_at) for o in found] == [
        ("live", None, clock.now),
        ("up", "meeting.wav", clock.now - 1),
        ("ghost", None, None),  # its recording is gone: last
    ]
    assert all(isinstance(o, FoundOutput) for o in found)
    # the stored output itself is the one get_output reads
    assert StoredOutput(*[getattr(found[1], f) for f in StoredOutput.__slots__]) == await store.get_output(
        "up", "memory", 0
    )
    [hit] = await store.search_outputs("memory", query="up memory")
    assert (hit.recording_id, hit.filename, hit.created_at) == ("up", "meeting.wav", clock.now - 1)
    assert [o.key for o in await store.search_outputs("memory", user_id="u")] == [
        OutputKey(clock.now, "live", 0),
        OutputKey(clock.now - 1, "up", 0),
    ]


# -- by status ------------------------------------------------------------------------------------


async def items(store: Store, rec: str, *statuses: object) -> None:
    """Action items of ``rec`` with those statuses (``...``: without a status at all)."""
    await run_stage(
        store,
        [
            Output(rec, "action_item", i, {"text": f"{rec} {i}"} | ({} if s is ... else {"status": s}))
            for i, s in enumerate(statuses)
        ],
    )


async def test_status_filters_in_the_store_and_no_status_is_open(store: Store, clock: FakeClock) -> None:
    clock.advance(1)
    await store.add_recording("a", user_id="alice")
    clock.advance(1)
    await store.add_recording("b", user_id="bob")
    await items(store, "a", "open", "done", ..., None, "done", "open")
    await items(store, "b", "done", "open")
    await run_stage(store, [Output("a", "memory", 0, {"text": "a memory", "status": "done"})])

    async def ids(**kwargs: object) -> list[str]:
        found = await store.search_outputs("action_item", **kwargs)  # type: ignore[arg-type]
        return [f"{o.recording_id}:{o.index}" for o in found]

    assert await ids(status="open") == ["b:1", "a:0", "a:2", "a:3", "a:5"]
    assert await ids(status="done") == ["b:0", "a:1", "a:4"]
    assert await ids(status="done", user_id="alice") == ["a:1", "a:4"]
    assert await ids(status="open", user_id="alice", limit=2, offset=1) == ["a:2", "a:3"]
    assert await ids(status="later") == []
    assert await ids(status="open", query="a 3") == ["a:3"]
    assert await ids(status="done", query="a 3") == []
    assert await ids(status="done", query="4") == ["a:4"]
    # an edit moves an item from one list to the other at once
    await store.update_output("a", "action_item", 2, {"text": "a 2", "status": "done"})
    assert await ids(status="done", user_id="alice") == ["a:1", "a:2", "a:4"]
    assert [o.index for o in await store.search_outputs("memory", status="done")] == [0]


# -- keyset paging --------------------------------------------------------------------------------


async def pages(store: Store, size: int, **kwargs: object) -> list[list[str]]:
    """Every page of ``size``, each read after the previous page's last key."""
    found: list[list[str]] = []
    after: OutputKey | None = None
    while True:
        page = await store.search_outputs("action_item", after=after, limit=size, **kwargs)  # type: ignore[arg-type]
        if not page:
            return found
        found.append([f"{o.recording_id}:{o.index}" for o in page])
        after = page[-1].key


async def test_paging_after_a_key_reads_the_same_items_as_one_read(store: Store, clock: FakeClock) -> None:
    # recordings of the same time (ordered by id), outputs without a recording (last, superuser
    # only), statuses mixed
    for rec, user in (("r1", "u"), ("r2", "v"), ("r3", "u"), ("r4", "u"), ("r5", "v")):
        if rec in ("r1", "r3", "r5"):
            clock.advance(1)
        await store.add_recording(rec, user_id=user)
        await items(store, rec, "open", "done", "open", ..., "open")
    await items(store, "ghost-a", "open", "done", "open")
    await items(store, "ghost-b", "open")
    for kwargs in (
        {},
        {"user_id": "u"},
        {"user_id": "v"},
        {"status": "open"},
        {"user_id": "u", "status": "done"},
    ):
        everything = [
            f"{o.recording_id}:{o.index}"
            for o in await store.search_outputs("action_item", limit=1000, **kwargs)  # type: ignore[arg-type]
        ]
        assert everything, kwargs
        for size in (1, 2, 3, 7):
            got = await pages(store, size, **kwargs)
            assert [i for p in got for i in p] == everything, (kwargs, size)
            assert all(len(p) == size for p in got[:-1]), (kwargs, size)
    everything = await store.search_outputs("action_item", limit=1000)
    assert [o.recording_id for o in everything][:8] == ["r5"] * 5 + ["r3"] * 3  # r5 is newest
    assert {o.recording_id for o in everything[-4:]} == {"ghost-a", "ghost-b"}
    # offset skips that many more after the key
    after = everything[3].key
    assert await store.search_outputs("action_item", after=after, offset=2, limit=3) == everything[6:9]
    # a key past the last output, or of an output whose recording is gone, for a user: nothing
    assert await store.search_outputs("action_item", after=everything[-1].key) == []
    assert await store.search_outputs("action_item", user_id="u", after=everything[-3].key) == []


async def test_a_key_still_places_the_page_after_its_output_is_deleted(
    store: Store, clock: FakeClock
) -> None:
    for rec in ("old", "mid", "new"):
        clock.advance(1)
        await store.add_recording(rec, user_id="u")
        await items(store, rec, "open", "open")
    first = await store.search_outputs("action_item", user_id="u", status="open", limit=3)
    assert [(o.recording_id, o.index) for o in first] == [("new", 0), ("new", 1), ("mid", 0)]
    await store.delete_output("mid", "action_item", 0)
    await store.delete_output("new", "action_item", 0)
    nxt = await store.search_outputs("action_item", user_id="u", status="open", after=first[-1].key)
    assert [(o.recording_id, o.index) for o in nxt] == [("mid", 1), ("old", 0), ("old", 1)]


async def test_a_search_by_words_pages_by_offset_only(store: Store, clock: FakeClock) -> None:
    await recording(store, clock, "r", "u", "tea")
    [found] = await store.search_outputs("memory", query="tea")
    with pytest.raises(ValueError, match="offset"):
        await store.search_outputs("memory", query="tea", after=found.key)


# -- the plan of "open action items of one user, newest first" -------------------------------------

_PLAN_CASES = [
    ("first page", None),
    ("a later page", OutputKey(1_000_000.0, "rec", 3)),
]


@pytest.mark.parametrize(("case", "after"), _PLAN_CASES)
async def test_sqlite_plan_seeks_the_users_recordings_and_the_status_index(
    tmp_path: Path, case: str, after: OutputKey | None
) -> None:
    async with lifeline.connect(f"sqlite:///{tmp_path / 'plan.db'}"):
        pass  # migrated
    sql, args = sqlite_recordings.search_sql(
        "action_item", user_id="u", query=None, status="open", after=after, limit=51, offset=0
    )
    conn = sqlite3.connect(tmp_path / "plan.db")
    try:
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
    finally:
        conn.close()
    bound = "user_id=? AND created_at<?" if after is not None else "user_id=?"
    assert plan[:2] == [
        f"SEARCH r USING INDEX recordings_user ({bound})",
        "SEARCH o USING INDEX outputs_status (recording_id=? AND stage=? AND <expr>=?)",
    ], plan
    assert not any(step.startswith("SCAN") for step in plan), plan


@pytest.mark.parametrize(("case", "after"), _PLAN_CASES)
async def test_postgres_plan_seeks_the_users_recordings_and_the_status_index(
    tmp_path: Path, case: str, after: OutputKey | None
) -> None:
    """With sequential scans priced out (the test tables are tiny), the statement can be answered
    from the indexes alone: the status, spelled as in outputs_status, is an index condition."""
    url = pg.require().url(pg.database_for(tmp_path))
    async with lifeline.connect(url):
        pass  # migrated (a copy of the template)
    sql, params = postgres_recordings.search_sql(
        "action_item", user_id="u", query=None, status="open", after=after, limit=51, offset=0
    )

    def explain() -> str:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET enable_seqscan = off")
            conn.execute("SET enable_bitmapscan = off")
            rows = conn.execute("EXPLAIN (COSTS OFF) " + sql, params).fetchall()
            return "\n".join(str(r[0]) for r in rows)

    try:
        plan = await asyncio.to_thread(explain)
    finally:
        pg.drop_database_for(tmp_path)
    assert "Index Scan Backward using recordings_user on recordings r" in plan, plan
    assert "Index Scan using outputs_status on outputs o" in plan, plan
    assert "(COALESCE((data ->> 'status'::text), 'open'::text) = 'open'::text)" in plan, plan
    assert ("(created_at <= " in plan) == (after is not None), plan


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
        migrate_sqlite_below(conn, 4)
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
                migrate_postgres_below(conn, 4)
                conn.execute(
                    "INSERT INTO recordings (audio_uuid, user_id, created_at) VALUES ('rec', 'u', 1.0)"
                )
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO outputs VALUES (%s, %s, %s, %s, %s, %s, %s)", _old_rows())

        await asyncio.to_thread(prepare)
        await _search_after_upgrade(url)
    finally:
        cluster.drop_database(name)
