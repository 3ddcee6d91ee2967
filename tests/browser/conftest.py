"""The dashboard in a real browser: Playwright for Python driving Debian's chromium against a real
``lifeline serve`` (the embedded pipeline: real Whisper on espeak-ng speech).

No browser is downloaded (never ``playwright install``): the tests use ``/usr/bin/chromium``. When
it or the playwright package is missing they skip locally and fail when ``CI`` is set, like
tests/speech.py's ``require()``. Every page records its console errors and uncaught exceptions;
each test asserts there were none.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest

from e2e.conftest import ADMIN, USER, Server, lifeline_serve
from speech import ARTIFACTS, MODEL_CACHE, whisper_model_dir

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright

CHROMIUM = Path(os.environ.get("LIFELINE_CHROMIUM", "/usr/bin/chromium"))
OTHER = ("other@example.com", "other-password-1")
T = TypeVar("T")


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# Module scope, not session: Playwright's sync API keeps its event loop marked running in this
# thread while it is started, and the async tests of the modules collected after this one need
# the thread free of a running loop.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is missing (Debian package: chromium)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
    yield browser
    browser.close()


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to the end in its own thread (Playwright's sync API owns this one's loop)."""

    async def main() -> T:
        return await fn()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result(timeout=120)


@dataclass
class Site:
    server: Server
    admin_token: str
    user_id: str
    other_id: str

    @property
    def dashboard(self) -> str:
        return f"{self.server.url}/dashboard"

    def api(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.request(method, f"{self.server.url}{path}", headers=headers, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, playwright: Playwright) -> Iterator[Site]:
    whisper_model_dir()  # assembled once into tests/artifacts/models, shared with the server
    root = tmp_path_factory.mktemp("dashboard")
    env = {
        "LIFELINE_MODEL_CACHE_DIR": str(MODEL_CACHE),
        "LIFELINE_POLL_INTERVAL": "0.2",
        # one round of checks at start, then none: a check that finds the ASR healthy would move
        # the breaker the test opened to half-open behind its back
        "LIFELINE_HEALTH_INTERVAL": "3600",
    }
    with lifeline_serve(root, **env) as server:
        admin_token = server.login(*ADMIN)
        user_id = server.create_user(admin_token, *USER)
        other_id = server.create_user(admin_token, *OTHER)
        yield Site(server, admin_token, user_id, other_id)


@dataclass
class Tab:
    """A page in its own browser context, with the console errors it logged."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def login(self, site: Site, email: str, password: str) -> None:
        from playwright.sync_api import expect

        self.page.goto(site.dashboard)
        self.page.get_by_label("E-mail").fill(email)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Log in").click()
        expect(self.page.locator("#who-email")).to_have_text(email)

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000
        return path


@pytest.fixture
def open_tab(browser: Browser) -> Iterator[Callable[..., Tab]]:
    contexts = []

    def make(**context_options: Any) -> Tab:
        context = browser.new_context(**context_options)
        context.set_default_timeout(20_000)
        contexts.append(context)
        tab = Tab(context.new_page())

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                tab.errors.append(f"console: {message.text} at {message.location}")

        tab.page.on("console", console)
        tab.page.on("pageerror", lambda exc: tab.errors.append(f"uncaught: {exc}"))
        return tab

    yield make
    for context in contexts:
        context.close()
