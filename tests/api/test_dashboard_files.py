"""The dashboard's page and files: served from the package, nothing else, with a strict CSP."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import lifeline.dashboard
from api.conftest import Api


async def test_the_page_and_every_file_it_loads_are_served(api: Api) -> None:
    page = await api.client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assets = re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', page.text)
    assert {"/dashboard/static/app.js", "/dashboard/static/style.css"} <= set(assets)
    # every module the app imports, followed from app.js
    seen: set[str] = set()
    todo = ["/dashboard/static/app.js"]
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        r = await api.client.get(url)
        assert r.status_code == 200, url
        assert r.headers["content-type"].startswith("text/javascript")
        base = url.rsplit("/", 1)[0]
        for spec in re.findall(r'from "(\.{1,2}/[^"]+)"', r.text):
            parts = (base + "/" + spec).split("/")
            resolved: list[str] = []
            for part in parts:
                if part == "..":
                    resolved.pop()
                elif part != ".":
                    resolved.append(part)
            todo.append("/".join(resolved))
    assert len(seen) >= 8  # app, api, dom, chart and the views
    css = await api.client.get("/dashboard/static/style.css")
    assert css.headers["content-type"].startswith("text/css")


async def test_no_data_is_put_into_the_page_as_html(api: Api) -> None:
    static = Path(lifeline.dashboard.__file__).parent / "static"
    scripts = sorted(p.relative_to(static).as_posix() for p in static.rglob("*.js"))
    assert len(scripts) >= 8
    for name in scripts:
        text = (await api.client.get(f"/dashboard/static/{name}")).text
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", text), name


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/static/nope.js",
        "/dashboard/static/../__init__.py",
        "/dashboard/static/%2e%2e/__init__.py",
        "/dashboard/static/..%2f..%2fapi%2fdeps.py",
        "/dashboard/static/",
        "/dashboard/static/views",
    ],
)
async def test_only_the_shipped_files_are_served(api: Api, path: str) -> None:
    r = await api.client.get(path)
    assert r.status_code == 404, (path, r.status_code)


async def test_the_page_needs_no_login_but_the_data_does(api: Api) -> None:
    assert (await api.client.get("/dashboard")).status_code == 200
    assert (await api.client.get("/api/failure-recovery/system-overview")).status_code == 401
    r = await api.client.get("/dashboard/", follow_redirects=False)
    assert r.status_code == 308
    assert r.headers["location"] == "/dashboard"


def _api_paths_in_scripts() -> set[str]:
    """Every API path the dashboard's scripts call, with each ``${…}`` as one path segment."""
    static = Path(lifeline.dashboard.__file__).parent / "static"
    consts = {"FR": "/api/failure-recovery", "base": "/api/conversations/{}"}
    found: set[str] = set()
    for script in static.rglob("*.js"):
        text = script.read_text(encoding="utf-8")
        for literal in re.findall(
            r'`(\$\{(?:FR|base)\}[^`]*|/(?:api|auth|users)/[^`]*)`|"(/(?:api|auth|users)/[^"]*)"', text
        ):
            path = literal[0] or literal[1]
            for name, value in consts.items():
                path = path.replace(f"${{{name}}}", value)
            found.add(re.sub(r"\$\{[^}]*\}", "{}", path))
    return found


async def test_every_api_path_the_dashboard_calls_exists(api: Api) -> None:
    paths = _api_paths_in_scripts()
    # the pages added later are among them (a renamed route would break them without this test)
    assert {
        "/api/memories",
        "/api/memories/{}",
        "/api/action-items",
        "/api/action-items/{}",
        "/api/failure-recovery/health/{}/history",
        "/api/failure-recovery/throughput",
    } <= paths
    schema = (await api.client.get("/openapi.json")).json()
    templates = [re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$") for p in schema["paths"]]
    templates += [re.compile(r"^/auth/cookie/(login|logout)$")]  # cookie routes are not in the schema
    missing = sorted(
        p
        for p in paths
        if p != "/api/failure-recovery" and not any(t.match(p.replace("{}", "x")) for t in templates)
    )
    assert missing == []


async def test_every_nav_link_has_a_route(api: Api) -> None:
    page = (await api.client.get("/dashboard")).text
    links = re.findall(r'href="#/([a-z_-]+)" data-nav="([a-z_-]+)"', page)
    assert {name for name, _ in links} == {"overview", "recordings", "memories", "action-items", "operations"}
    app = (await api.client.get("/dashboard/static/app.js")).text
    for name, nav in links:
        assert name == nav
        assert re.search(rf"\[/\^#\\/{re.escape(name)}[($]", app), name
