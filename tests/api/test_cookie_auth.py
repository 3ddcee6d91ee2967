"""The dashboard's cookie session: its cookies and their flags, CSRF on every change, logout."""

from __future__ import annotations

from http.cookies import SimpleCookie

import httpx
import pytest

from api.conftest import ADMIN, Api

LOGIN = "/auth/cookie/login"
LOGOUT = "/auth/cookie/logout"
CHANGE = "/api/failure-recovery/circuit-breakers/reset-all"  # a superuser's POST with no body
READ = "/users/me"


def _set_cookies(response: httpx.Response) -> dict[str, SimpleCookie]:
    found: dict[str, SimpleCookie] = {}
    for header in response.headers.get_list("set-cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        for name in cookie:
            found[name] = cookie
    return found


async def _cookie_login(api: Api, email: str = ADMIN[0], password: str = ADMIN[1]) -> httpx.Response:
    r = await api.client.post(LOGIN, data={"username": email, "password": password})
    assert r.status_code == 200, r.text
    return r


async def test_login_sets_an_httponly_strict_session_and_a_readable_csrf_cookie(api: Api) -> None:
    r = await _cookie_login(api)
    assert r.json()["email"] == ADMIN[0]
    assert r.json()["is_superuser"] is True
    assert "access_token" not in r.text  # the token lives only in the HttpOnly cookie
    cookies = _set_cookies(r)
    session = cookies["lifeline_session"]["lifeline_session"]
    csrf = cookies["lifeline_csrf"]["lifeline_csrf"]
    assert session["httponly"] is True
    assert session["samesite"].lower() == "strict"
    assert session["path"] == "/"
    assert not session["secure"]  # plain http here; see the https test below
    assert int(session["max-age"]) > 0
    assert not csrf["httponly"]
    assert csrf["samesite"].lower() == "strict"
    assert csrf["path"] == "/"
    assert len(csrf.value) >= 32
    assert csrf.value != session.value
    # the session cookie is a working session
    assert (await api.client.get(READ)).json()["email"] == ADMIN[0]


async def test_cookies_are_secure_over_https(api: Api) -> None:
    transport = api.client._transport  # the same app, addressed as https
    async with httpx.AsyncClient(transport=transport, base_url="https://lifeline.test") as client:
        r = await client.post(LOGIN, data={"username": ADMIN[0], "password": ADMIN[1]})
    assert r.status_code == 200, r.text
    cookies = _set_cookies(r)
    assert cookies["lifeline_session"]["lifeline_session"]["secure"] is True
    assert cookies["lifeline_csrf"]["lifeline_csrf"]["secure"] is True


async def test_wrong_credentials_and_throttling_are_the_accounts_rules(api: Api) -> None:
    for _ in range(5):
        r = await api.client.post(LOGIN, data={"username": ADMIN[0], "password": "wrong-password"})
        assert r.status_code == 400
        assert r.json()["detail"] == "LOGIN_BAD_CREDENTIALS"
        assert "set-cookie" not in r.headers
    r = await api.client.post(LOGIN, data={"username": ADMIN[0], "password": ADMIN[1]})
    assert r.status_code == 429  # throttled like /auth/jwt/login, even with the right password
    assert int(r.headers["retry-after"]) >= 1
    # and the two share the count: the JWT login is throttled too
    assert (
        await api.client.post("/auth/jwt/login", data={"username": ADMIN[0], "password": ADMIN[1]})
    ).status_code == 429


async def test_a_cookie_post_needs_the_csrf_header(api: Api) -> None:
    await _cookie_login(api)
    csrf = api.client.cookies["lifeline_csrf"]
    assert (await api.client.get(READ)).status_code == 200  # GET needs no header

    missing = await api.client.post(CHANGE)
    assert missing.status_code == 403
    assert "CSRF" in missing.json()["detail"]
    wrong = await api.client.post(CHANGE, headers={"X-CSRF-Token": csrf[:-2] + "xx"})
    assert wrong.status_code == 403
    empty = await api.client.post(CHANGE, headers={"X-CSRF-Token": ""})
    assert empty.status_code == 403

    ok = await api.client.post(CHANGE, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200, ok.text
    assert ok.json()["ok"] is True

    # a header that matches a cookie the attacker cannot read is the point: without the CSRF
    # cookie (a cross-site request would carry it, but its page could not read it) nothing matches
    api.client.cookies.delete("lifeline_csrf")
    assert (await api.client.post(CHANGE, headers={"X-CSRF-Token": csrf})).status_code == 403


async def test_other_unsafe_methods_need_it_too(api: Api) -> None:
    await _cookie_login(api)
    csrf = api.client.cookies["lifeline_csrf"]
    r = await api.client.delete("/api/failure-recovery/jobs/999999")
    assert r.status_code == 403
    r = await api.client.delete("/api/failure-recovery/jobs/999999", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 404  # past the CSRF check: there is no such job


async def test_a_bad_session_cookie_is_401_before_any_csrf_check(api: Api) -> None:
    api.client.cookies.set("lifeline_session", "not-a-token")
    assert (await api.client.get(READ)).status_code == 401
    assert (await api.client.post(CHANGE, headers={"X-CSRF-Token": "x"})).status_code == 401


async def test_bearer_requests_need_no_csrf_header(api: Api) -> None:
    admin = await api.admin()
    assert (await api.client.post(CHANGE, headers=admin)).status_code == 200
    # even when the browser also holds a session cookie: the Bearer token decides
    await _cookie_login(api)
    assert (await api.client.post(CHANGE, headers=admin)).status_code == 200


async def test_the_cookie_session_has_the_users_rights(api: Api) -> None:
    await api.new_user("cookie@example.com")
    await _cookie_login(api, "cookie@example.com", "user-password-1")
    csrf = api.client.cookies["lifeline_csrf"]
    me = (await api.client.get(READ)).json()
    assert me["email"] == "cookie@example.com"
    assert me["is_superuser"] is False
    r = await api.client.post(CHANGE, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 403
    assert r.json()["detail"] == "superuser only"
    assert (
        await api.client.get("/api/failure-recovery/persistent-queues/memory/dead-letter")
    ).status_code == 403


async def test_logout_revokes_the_session_and_clears_the_cookies(api: Api) -> None:
    await _cookie_login(api)
    session = api.client.cookies["lifeline_session"]
    csrf = api.client.cookies["lifeline_csrf"]
    assert (await api.client.post(LOGOUT)).status_code == 403  # logging out is a change too
    r = await api.client.post(LOGOUT, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 204
    cleared = _set_cookies(r)
    for name in ("lifeline_session", "lifeline_csrf"):
        assert cleared[name][name].value == ""
        assert int(cleared[name][name]["max-age"]) == 0
    assert "lifeline_session" not in api.client.cookies
    assert (await api.client.get(READ)).status_code == 401
    # the old cookie is revoked on the server, not just forgotten by the browser
    api.client.cookies.set("lifeline_session", session)
    assert (await api.client.get(READ)).status_code == 401
    # and so is the same token used as a Bearer token
    assert (await api.client.get(READ, headers={"Authorization": f"Bearer {session}"})).status_code == 401


async def test_the_cookie_routes_are_not_in_the_schema(api: Api) -> None:
    paths = (await api.client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith(("/auth/cookie", "/dashboard"))]


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
    ],
)
async def test_a_login_posted_from_another_site_is_refused(api: Api, headers: dict[str, str]) -> None:
    r = await api.client.post(
        "/auth/cookie/login", data={"username": ADMIN[0], "password": ADMIN[1]}, headers=headers
    )
    assert r.status_code == 403, r.text
    assert "cross-site" in r.json()["detail"]
    assert "set-cookie" not in r.headers


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "same-origin"},
        {"Origin": "http://lifeline.test"},
        {"Origin": "http://memory.home.lan", "X-Forwarded-Host": "memory.home.lan"},
        {},
    ],
)
async def test_a_login_from_the_dashboard_itself_is_accepted(api: Api, headers: dict[str, str]) -> None:
    r = await api.client.post(
        "/auth/cookie/login", data={"username": ADMIN[0], "password": ADMIN[1]}, headers=headers
    )
    assert r.status_code == 200, r.text
    assert "lifeline_session" in r.cookies
