"""The dashboard, end to end in chromium: log in, upload speech and watch it complete, read its
page; operate the dead-letter queue, queues, breakers, health and cleanup as the superuser; and a
normal user who sees only their own recordings and no operations; search memories and tick off
action items across recordings; the services' response-time trends drawn from their recorded
checks. Screenshots of the overview, a recording's page and the memories page are written to
tests/artifacts/ on every run."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from e2e.conftest import ADMIN, USER
from lifeline import connect
from lifeline.breakers import BreakerState, CircuitBreakers, Outcome
from lifeline.domain import JobState
from speech import SHORT, espeak_wav

from .conftest import OTHER, Site, Tab, run_async

pytestmark = pytest.mark.slow

COMPLETED_WITHIN = 240_000  # ms: model load and transcription on a small, busy CI machine


def _upload_via_api(site: Site, token: str, filename: str) -> str:
    r = site.api(
        "POST", "/api/audio/upload", token, files=[("files", (filename, espeak_wav(SHORT), "audio/wav"))]
    )
    assert r.status_code == 202, r.text
    audio_uuid: str = r.json()["files"][0]["audio_uuid"]
    return audio_uuid


def _completed(site: Site, token: str, audio_uuid: str) -> dict[str, Any]:
    deadline = time.monotonic() + COMPLETED_WITHIN / 1000
    while True:
        r = site.api("GET", f"/api/conversations/{audio_uuid}", token)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["status"] in ("completed", "dead_letter", "cancelled"):
            assert body["status"] == "completed", body
            return body
        assert time.monotonic() < deadline, f"{audio_uuid} not done: {body}\n{site.server.log_tail()}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def hiking(site: Site) -> dict[str, Any]:
    """A recording of the superuser's, completed, with its memories and action items."""
    return _completed(site, site.admin_token, _upload_via_api(site, site.admin_token, "hiking.wav"))


def test_upload_watch_it_complete_and_read_its_page(site: Site, open_tab: Callable[..., Tab]) -> None:
    tab = open_tab(viewport={"width": 1280, "height": 900})
    page = tab.page
    tab.login(site, *ADMIN)
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    expect(page.get_by_role("link", name="Operations")).to_be_visible()

    page.get_by_role("link", name="Recordings").click()
    page.get_by_label("Audio files").set_input_files(
        files=[{"name": "dentist.wav", "mimeType": "audio/wav", "buffer": espeak_wav(SHORT)}]
    )
    page.get_by_label("Device name (optional)").fill("browser-test")
    page.get_by_role("button", name="Upload").click()
    queued = page.locator("#upload-results li.ok a")
    expect(queued).to_have_count(1)
    audio_uuid = queued.inner_text()
    assert re.fullmatch(r"[0-9a-f-]{20,}", audio_uuid), audio_uuid

    # the list updates by itself until every stage is done
    row = page.locator("tr", has=page.locator(f'a[data-uuid="{audio_uuid}"]'))
    expect(row).to_have_count(1)
    expect(row.locator('td[data-label="Device"]')).to_have_text("browser-test")
    expect(row.locator('td[data-label="Status"]')).to_have_text("completed", timeout=COMPLETED_WITHIN)
    for stage in ("transcription", "memory", "action_item"):
        expect(row.locator(f'li[data-stage="{stage}"] .badge')).to_have_text("completed")

    row.get_by_role("link", name="dentist.wav").click()
    expect(page).to_have_url(re.compile(f"#/recordings/{audio_uuid}$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("dentist.wav")
    transcript = page.locator("#transcript-text")
    expect(transcript).to_contain_text(re.compile("dentist", re.IGNORECASE))
    expect(transcript).to_contain_text(re.compile("hiking", re.IGNORECASE))
    expect(page.locator("#action-items")).to_contain_text(re.compile("call the dentist", re.IGNORECASE))
    expect(page.locator("#memories li").first).to_be_visible()
    jobs = page.locator("#jobs article.job")
    expect(jobs.filter(has_text="transcription")).to_have_count(1)
    expect(jobs.filter(has_text="transcription").locator("table tbody tr")).to_have_count(1)  # one attempt
    expect(jobs.filter(has_text="transcription").locator('td[data-label="Outcome"]')).to_have_text(
        "completed"
    )

    # the player's source is the recording's audio, and the cookie session may fetch it
    src = page.locator("audio#player").get_attribute("src")
    assert src == f"/api/conversations/{audio_uuid}/audio"
    audio = page.request.get(f"{site.server.url}{src}")
    assert audio.status == 200
    assert audio.headers["content-type"].startswith("audio/wav")
    assert audio.body()[:4] == b"RIFF"

    # an action item can be ticked off (a PATCH with the CSRF header)
    box = page.locator("#action-items input[type=checkbox]").first
    box.check()
    expect(page.locator("#status")).to_contain_text("Marked done")
    expect(box).to_be_checked()

    # reprocess from memory: a second memory job appears and completes
    page.get_by_label("Run again from").select_option("memory")
    page.get_by_role("button", name="Reprocess").click()
    expect(page.locator("#status")).to_contain_text("Reprocessing from memory")
    memory_jobs = jobs.filter(has_text="memory · job")
    expect(memory_jobs.locator(".badge").first).to_have_text("completed", timeout=COMPLETED_WITHIN)
    tab.screenshot("dashboard-recording.png")

    # the overview counts it, draws its throughput and lists the services and breakers
    page.get_by_role("link", name="Overview").click()
    completed = page.locator('[data-stage="transcription"] [data-state="completed"] dd')
    expect(completed).not_to_have_text("0")
    expect(page.locator("#throughput svg.chart path.line").first).to_be_attached(timeout=15_000)
    # drawn from the stored completions, so a freshly opened overview shows them: the last hour
    # has a non-zero minute for every stage the upload went through
    page.reload()
    chart = page.locator("#throughput svg.chart")
    expect(chart).to_have_attribute("aria-label", re.compile(r"^Jobs completed per minute.*last 60 minutes"))
    for stage in ("chunk", "transcription", "memory", "action_item"):
        line = chart.locator(f'path.line[data-series="{stage}"]')
        expect(line).to_have_attribute("data-max", re.compile(r"^[1-9][0-9]*$"))
    expect(page.locator("#services")).to_contain_text("asr")
    expect(page.locator("#services table").first).to_be_visible()
    tab.screenshot("dashboard-overview.png")
    assert tab.errors == []


def test_superuser_operations(site: Site, open_tab: Callable[..., Tab]) -> None:
    # a real dead letter: a memory job with no recording is refused by the pipeline for good
    async def dead_letter() -> int:
        async with connect(site.server.database_url) as store:
            job_id = await store.enqueue("memory", {}, max_attempts=1)
            deadline = time.monotonic() + 60
            while (await store.get_job(job_id)).job.state is not JobState.DEAD_LETTER:
                assert time.monotonic() < deadline, "the worker never dead-lettered the job"
                await asyncio_sleep(0.2)
            return job_id

    job_id = run_async(dead_letter)
    tab = open_tab(viewport={"width": 1280, "height": 900})
    page = tab.page
    tab.login(site, *ADMIN)
    page.get_by_role("link", name="Operations").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Operations")

    entry = page.locator(f'.dead-letter[data-job="{job_id}"]')
    row = page.locator("tr", has=entry)
    expect(row.locator('td[data-label="Reason"]')).to_contain_text("has no recording_id")
    memory = page.locator("#ops-queues tr", has=page.get_by_role("button", name="Recover memory"))

    # pause memory so that the requeued job stays put, then requeue it from the list
    page.get_by_label("Reason for pausing (optional)").fill("dashboard test")
    memory.get_by_role("button", name="Pause memory").click()
    expect(memory.locator('td[data-label="State"]')).to_contain_text("paused dashboard test")
    page.get_by_role("button", name=f"Requeue #{job_id}").click()
    expect(entry).to_have_count(0)
    expect(page.locator("#status")).to_contain_text(f"job {job_id} requeued")
    state = site.api("GET", f"/api/failure-recovery/jobs/{job_id}", site.admin_token).json()["state"]
    assert state == "pending"

    # resumed, the worker refuses it again and it is back, live; requeue all takes it out again
    memory.get_by_role("button", name="Resume memory").click()
    expect(memory.locator('td[data-label="State"]')).to_have_text("running")
    expect(entry).to_have_count(1, timeout=30_000)
    memory.get_by_role("button", name="Pause memory").click()
    expect(memory.get_by_role("button", name="Resume memory")).to_be_visible()
    page.get_by_role("button", name="Requeue all memory").click()
    expect(entry).to_have_count(0)
    assert site.api("DELETE", f"/api/failure-recovery/jobs/{job_id}", site.admin_token).status_code == 200
    memory.get_by_role("button", name="Resume memory").click()
    expect(memory.locator('td[data-label="State"]')).to_have_text("running")

    # open the ASR breaker the way calls do (failures), then reset it from the page
    async def open_breaker() -> BreakerState:
        async with connect(site.server.database_url) as store:
            breakers = CircuitBreakers(store)
            for _ in range(5):
                permit = await breakers.acquire("asr")
                await breakers.record(permit, Outcome.FAILURE, error="connection refused (dashboard test)")
            return (await breakers.get("asr")).state

    assert run_async(open_breaker) is BreakerState.OPEN
    breaker = page.locator("#ops-breakers tr", has=page.locator('[data-breaker="asr"]'))
    expect(breaker.locator('td[data-label="State"]')).to_have_text("open")
    expect(breaker.locator('td[data-label="Last error"]')).to_have_text("connection refused (dashboard test)")
    breaker.get_by_role("button", name="Reset asr").click()
    expect(breaker.locator('td[data-label="State"]')).to_have_text("closed")
    r = site.api("GET", "/api/failure-recovery/circuit-breakers/asr", site.admin_token)
    assert r.json()["state"] == "closed"

    # a health check now, recovery, and the retention cleanup
    first_check = page.locator("#ops-health button").first
    service = (first_check.inner_text()).removeprefix("Check ").removesuffix(" now")
    first_check.click()
    expect(page.locator("#status")).to_contain_text(f"{service}: ")
    page.get_by_role("button", name="Recover transcription").click()
    expect(page.locator("#status")).to_contain_text("Recovery of transcription: 0 stalled")
    page.get_by_label(re.compile("Delete finished jobs older than")).fill("30")
    page.get_by_role("button", name="Run cleanup").click()
    expect(page.locator("#cleanup-result")).to_contain_text(re.compile(r"Cleanup: \d+ jobs"))
    tab.screenshot("dashboard-operations.png")
    assert tab.errors == []


def test_a_normal_user_sees_only_their_own_on_a_phone(site: Site, open_tab: Callable[..., Tab]) -> None:
    user_token = site.server.login(*USER)
    other_token = site.server.login(*OTHER)
    own = _upload_via_api(site, user_token, "mine.wav")
    theirs = _upload_via_api(site, other_token, "not-mine.wav")

    tab = open_tab(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = tab.page
    tab.login(site, *USER)
    expect(page.get_by_role("link", name="Operations")).to_be_hidden()
    page.get_by_role("link", name="Recordings").click()
    expect(page.locator(f'a[data-uuid="{own}"]')).to_have_text("mine.wav")
    expect(page.locator("#recordings tbody tr")).to_have_count(1)  # not theirs, not the admin's
    assert theirs not in page.content()
    # on a phone the table turns into cards: the page is no wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    tab.screenshot("dashboard-phone-recordings.png")

    # their memories and action items: only from their own recordings, and no wider than the phone
    _completed(site, user_token, own)
    for nav, heading in (("Memories", "Memories"), ("Action items", "Action items")):
        page.get_by_role("link", name=nav).click()
        expect(page.get_by_role("heading", level=1)).to_have_text(heading)
        expect(page.locator("main .muted").first).to_contain_text("Your ")
        links = page.locator("main a.rec-link")
        expect(links.first).to_be_visible()
        assert set(links.evaluate_all("els => els.map(e => e.dataset.uuid)")) == {own}
        assert page.evaluate("document.documentElement.scrollWidth") <= 390

    page.goto(f"{site.dashboard}#/operations")
    expect(page.get_by_role("heading", level=1)).to_have_text("Operations")
    expect(page.get_by_role("alert")).to_contain_text("superusers only")
    expect(page.get_by_role("button", name=re.compile("Requeue|Reset|Pause"))).to_have_count(0)

    # and the server refuses them anyway, with the very cookie session the page holds
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "lifeline_csrf")
    dead = page.request.get(f"{site.server.url}/api/failure-recovery/persistent-queues/memory/dead-letter")
    assert dead.status == 403
    reset = page.request.post(
        f"{site.server.url}/api/failure-recovery/circuit-breakers/asr/reset", headers={"X-CSRF-Token": csrf}
    )
    assert reset.status == 403
    other = page.request.get(f"{site.server.url}/api/conversations/{theirs}")
    assert other.status == 404
    assert tab.errors == []


def test_keyboard_login_and_logout(site: Site, open_tab: Callable[..., Tab]) -> None:
    tab = open_tab()
    page = tab.page
    page.goto(site.dashboard)
    expect(page.get_by_label("E-mail")).to_be_focused()
    page.keyboard.type(USER[0])
    page.keyboard.press("Tab")
    page.keyboard.type(USER[1])
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    session = next(c for c in page.context.cookies() if c["name"] == "lifeline_session")
    assert session["httpOnly"]
    assert session["sameSite"] == "Strict"
    assert page.evaluate("document.cookie").count("lifeline_session") == 0  # not readable by scripts

    page.get_by_role("button", name="Log out").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Log in")
    assert "lifeline_session" not in {c["name"] for c in page.context.cookies()}
    # the token itself is revoked on the server
    r = site.api("GET", "/users/me", session["value"])
    assert r.status_code == 401
    assert tab.errors == []


def test_search_memories_and_delete_one(
    site: Site, open_tab: Callable[..., Tab], hiking: dict[str, Any]
) -> None:
    audio_uuid = hiking["audio_uuid"]
    mine = [m for m in hiking["memories"] if "hiking" in m["text"].lower()]
    assert mine, hiking["memories"]
    tab = open_tab(viewport={"width": 1280, "height": 900})
    page = tab.page
    tab.login(site, *ADMIN)
    page.get_by_role("link", name="Memories").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Memories")
    expect(page.get_by_role("link", name="Memories")).to_have_attribute("aria-current", "page")

    # search with the keyboard: type the word, Enter
    page.get_by_label("Search memories").fill("hiking")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#/memories\?q=hiking$"))
    found = page.locator("#memory-list li.memory")
    expected = site.api("GET", "/api/memories", site.admin_token, params={"q": "hiking"}).json()["items"]
    expect(found).to_have_count(len(expected))
    for text in found.locator(".memory-text").all_inner_texts():
        assert "hiking" in text.lower(), text
    ours = page.locator(f'#memory-list li.memory[data-memory="{mine[0]["id"]}"]')
    expect(ours.locator(".memory-text")).to_have_text(mine[0]["text"])
    expect(ours.locator(f'a[data-uuid="{audio_uuid}"]')).to_have_attribute(
        "href", f"#/recordings/{audio_uuid}"
    )
    tab.screenshot("dashboard-memories.png")

    # words it does not hold find nothing; "Show all" lists every memory again
    page.get_by_label("Search memories").fill("xylophone zeppelin")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#memory-list")).to_have_text("No memories match “xylophone zeppelin”.")
    page.get_by_role("button", name="Show all").click()
    expect(page).to_have_url(re.compile(r"#/memories$"))
    expect(found.first).to_be_visible()

    # the address keeps the search: opened anew, it shows the same; the link leads to the recording
    page.goto(f"{site.dashboard}#/memories?q=hiking")
    expect(page.get_by_label("Search memories")).to_have_value("hiking")
    expect(found).to_have_count(len(expected))
    ours.get_by_role("link", name="hiking.wav").click()  # the recording's file name
    expect(page.get_by_role("heading", level=1)).to_have_text("hiking.wav")
    expect(page.locator("#memories")).to_contain_text(mine[0]["text"])

    # delete it (after confirming): gone from the page and from the server
    page.go_back()
    expect(page.get_by_label("Search memories")).to_have_value("hiking")
    page.once("dialog", lambda dialog: dialog.accept())
    ours.get_by_role("button", name=f"Delete memory: {mine[0]['text']}").click()
    expect(page.locator("#status")).to_contain_text("Memory deleted")
    expect(ours).to_have_count(0)
    expect(found).to_have_count(len(expected) - 1)
    left = site.api("GET", f"/api/conversations/{audio_uuid}", site.admin_token).json()["memories"]
    assert mine[0]["id"] not in {m["id"] for m in left}
    assert tab.errors == []


def test_tick_action_items_done_and_open_again(
    site: Site, open_tab: Callable[..., Tab], hiking: dict[str, Any]
) -> None:
    [item] = [a for a in hiking["action_items"] if "dentist" in a["text"].lower()]
    assert item["status"] == "open"
    tab = open_tab(viewport={"width": 1280, "height": 900})
    page = tab.page
    tab.login(site, *ADMIN)
    page.get_by_role("link", name="Action items").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Action items")
    in_open = page.locator(f'#items-open li[data-item="{item["id"]}"]')
    in_done = page.locator(f'#items-done li[data-item="{item["id"]}"]')
    expect(in_open).to_have_count(1)
    expect(in_done).to_have_count(0)
    expect(in_open.locator("label")).to_have_text(item["text"])
    expect(in_open.locator(f'a[data-uuid="{hiking["audio_uuid"]}"]')).to_be_visible()

    # tick it with the keyboard (a PATCH with the CSRF header): it moves to "Done"
    in_open.get_by_role("checkbox").focus()
    page.keyboard.press("Space")
    expect(page.locator("#status")).to_contain_text(f"Marked done: {item['text']}")
    expect(in_done).to_have_count(1)
    expect(in_open).to_have_count(0)
    expect(in_done.get_by_role("checkbox")).to_be_checked()
    r = site.api("GET", "/api/action-items", site.admin_token, params={"status": "done", "limit": 200})
    assert item["id"] in {a["id"] for a in r.json()["items"]}

    # and back
    in_done.get_by_role("checkbox").uncheck()
    expect(in_open).to_have_count(1)
    expect(in_done).to_have_count(0)
    expect(in_open.get_by_role("checkbox")).not_to_be_checked()
    detail = site.api("GET", f"/api/conversations/{hiking['audio_uuid']}", site.admin_token).json()
    assert [a["status"] for a in detail["action_items"] if a["id"] == item["id"]] == ["open"]
    assert tab.errors == []


def test_overview_trend_is_drawn_from_the_recorded_checks(site: Site, open_tab: Callable[..., Tab]) -> None:
    # the server checks once at start (LIFELINE_HEALTH_INTERVAL is an hour): three more of the store
    for _ in range(3):
        r = site.api("POST", "/api/failure-recovery/health/store/check", site.admin_token)
        assert r.status_code == 200, r.text
    history = site.api(
        "GET", "/api/failure-recovery/health/store/history", site.admin_token, params={"limit": 30}
    ).json()["checks"]
    answered = [c for c in history if c["latency_ms"] is not None]
    assert len(answered) >= 4

    tab = open_tab(viewport={"width": 1280, "height": 900})
    page = tab.page
    tab.login(site, *USER)  # a normal user sees the services' health too
    spark = page.locator('#services .trend[data-service="store"] svg.spark')
    expect(spark).to_have_attribute("data-points", str(len(answered)))
    expect(spark).to_have_attribute(
        "aria-label", re.compile(f"^store: response times of the last {len(history)} checks")
    )
    # one path command per recorded answer, left to right in time order
    d = spark.locator("path.line").get_attribute("d")
    assert d is not None
    xs = [float(x) for x in re.findall(r"[ML]([\d.]+),", d)]
    assert len(xs) == len(answered)
    assert xs == sorted(xs)
    assert xs[0] < xs[-1]
    tab.screenshot("dashboard-overview-trends.png")
    assert tab.errors == []


async def asyncio_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
