"""The dashboard's memories and action items, page by page: more than a page of each (written
straight into the store of a real ``lifeline serve``), "Next" and "Previous" through them, the
recording's file name on each, and an item ticked on the second page of open items."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import expect

from e2e.conftest import USER
from lifeline import connect
from lifeline.domain import Output

from .conftest import Site, Tab, run_async

pytestmark = pytest.mark.slow

MEMORIES = 60
ACTION_ITEMS = 130  # every third one done: 87 open (two pages), 43 done (one page)


def seed(site: Site) -> None:
    """A recording of the user's, meeting.wav, with its memories and action items, written by a
    job of a queue the server has no worker for (its own stages leave it alone)."""

    async def write() -> None:
        async with connect(site.server.database_url) as store:
            await store.add_recording("paged", user_id=site.user_id, source="upload", filename="meeting.wav")
            await store.enqueue("seeding", {}, recording_id="paged", user_id=site.user_id)
            job = await store.claim("seeding", worker_id="test")
            assert job is not None
            outputs = [Output("paged", "memory", i, {"text": f"memory number {i}"}) for i in range(MEMORIES)]
            outputs += [
                Output(
                    "paged",
                    "action_item",
                    i,
                    {"text": f"task number {i}", "status": "done" if i % 3 == 0 else "open"},
                )
                for i in range(ACTION_ITEMS)
            ]
            await store.complete(job, outputs=outputs)

    run_async(write)


def test_paging_through_memories_and_action_items(site: Site, open_tab: Callable[..., Tab]) -> None:
    seed(site)
    tab = open_tab(viewport={"width": 1280, "height": 900})
    page = tab.page
    tab.login(site, *USER)

    page.get_by_role("link", name="Memories").click()
    memories = page.locator("#memory-list li.memory")
    expect(memories).to_have_count(50)
    expect(memories.first.locator(".memory-text")).to_have_text("memory number 0")
    expect(memories.first.locator("a.rec-link")).to_have_text("meeting.wav")
    expect(memories.first.locator(".memory-meta")).to_contain_text("updated ")
    pager = page.locator(".pager")
    expect(pager.locator("span")).to_have_text("1\u201350")
    page.get_by_role("button", name="Next page of memories").click()
    expect(memories).to_have_count(MEMORIES - 50)
    expect(memories.first.locator(".memory-text")).to_have_text("memory number 50")
    expect(pager.locator("span")).to_have_text(f"51\u2013{MEMORIES}")
    expect(page.get_by_role("button", name="Next page of memories")).to_be_disabled()
    page.get_by_role("button", name="Previous page of memories").click()
    expect(memories.first.locator(".memory-text")).to_have_text("memory number 0")
    expect(memories).to_have_count(50)

    page.get_by_role("link", name="Action items").click()
    open_items = page.locator("#items-open li.action")
    done_items = page.locator("#items-done li.action")
    open_ids = [f"paged:{i}" for i in range(ACTION_ITEMS) if i % 3]
    expect(open_items).to_have_count(50)
    expect(done_items).to_have_count(ACTION_ITEMS - len(open_ids))
    expect(open_items.first.locator("a.rec-link")).to_have_text("meeting.wav")
    expect(open_items.first.locator(".from")).to_contain_text("updated ")
    assert open_items.evaluate_all("els => els.map(e => e.dataset.item)") == open_ids[:50]
    # one page of done items: no pager there
    expect(page.locator('section[aria-labelledby="h-items-done"] .pager')).to_be_hidden()

    page.get_by_role("button", name="Next page of open action items").click()
    expect(open_items).to_have_count(len(open_ids) - 50)
    assert open_items.evaluate_all("els => els.map(e => e.dataset.item)") == open_ids[50:]
    expect(page.get_by_role("button", name="Next page of open action items")).to_be_disabled()

    # tick one on the second page: it leaves this page, the first page stays as it was
    ticked = open_ids[60]
    page.locator(f'#items-open li[data-item="{ticked}"]').get_by_role("checkbox").check()
    expect(page.locator(f'#items-done li[data-item="{ticked}"]')).to_have_count(1)
    expect(open_items).to_have_count(len(open_ids) - 51)
    page.get_by_role("button", name="Previous page of open action items").click()
    expect(open_items.first).to_have_attribute("data-item", open_ids[0])
    assert open_items.evaluate_all("els => els.map(e => e.dataset.item)") == open_ids[:50]
    assert tab.errors == []
