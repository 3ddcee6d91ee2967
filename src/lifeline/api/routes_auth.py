"""Log in and out, who am I, and user management (superusers).

Two ways to log in with the same accounts and the same throttling: ``/auth/jwt/login`` answers a
Bearer token (API clients), ``/auth/cookie/login`` sets the dashboard's session cookie and its CSRF
cookie (see :mod:`lifeline.api.deps`). The cookie routes stay out of the OpenAPI schema: they are
the dashboard's, and a schema-driven client would only log itself out with them.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordRequestForm

from lifeline.accounts import TooManyAttempts
from lifeline.api.context import AppContext
from lifeline.api.deps import CSRF_COOKIE, SESSION_COOKIE, Ctx, CurrentUser, Session, Superuser
from lifeline.api.responses import AUTHENTICATED, SUPERUSER, errors
from lifeline.api.schemas import TokenOut, UserCreate, UserOut
from lifeline.auth import AuthError, TokenClaims

router = APIRouter()

_LOGIN_RESPONSES = errors(400, 429, described={400: "wrong credentials (one generic message)"})


async def _login(
    request: Request, ctx: AppContext, form: OAuth2PasswordRequestForm
) -> tuple[str, TokenClaims] | JSONResponse:
    """The accounts' login (its throttling included); a 429 response, or 400 raised."""
    address = request.client.host if request.client else None
    try:
        return await ctx.accounts.login(form.username, form.password, address)
    except TooManyAttempts as exc:
        return JSONResponse(
            {"detail": str(exc)},
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(max(1, round(exc.retry_after)))},
        )
    except AuthError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None


@router.post("/auth/jwt/login", response_model=TokenOut, tags=["auth"], responses=_LOGIN_RESPONSES)
async def login(
    request: Request, ctx: Ctx, form: Annotated[OAuth2PasswordRequestForm, Depends()]
) -> TokenOut | JSONResponse:
    found = await _login(request, ctx, form)
    if isinstance(found, JSONResponse):
        return found
    return TokenOut(access_token=found[0])


@router.post(
    "/auth/jwt/logout", status_code=status.HTTP_204_NO_CONTENT, tags=["auth"], responses=AUTHENTICATED
)
async def logout(ctx: Ctx, session: Session) -> Response:
    await ctx.accounts.logout(session[1])
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _same_origin(request: Request) -> bool:
    """Whether a browser says the request comes from this site (non-browser clients say nothing)."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    # behind a proxy that rewrites Host (nginx's default), the browser's host is the forwarded one;
    # a cross-site form cannot set either header, so both may be trusted for this comparison
    hosts = {request.headers.get("host", request.url.netloc)}
    forwarded = request.headers.get("x-forwarded-host")
    if forwarded:
        hosts.add(forwarded.split(",")[0].strip())
    return urlsplit(origin).netloc in hosts


@router.post("/auth/cookie/login", include_in_schema=False)
async def cookie_login(
    request: Request, ctx: Ctx, form: Annotated[OAuth2PasswordRequestForm, Depends()]
) -> JSONResponse:
    """Log in for the dashboard: the session in an HttpOnly cookie, plus a CSRF cookie the page
    reads and echoes in ``X-CSRF-Token`` on every request that changes something.

    A login form posted from another site would log the victim into the attacker's account (whose
    uploads they would then fill): cross-site requests are refused by the browser's own
    ``Sec-Fetch-Site`` header, or, from browsers without it, by ``Origin``."""
    if not _same_origin(request):
        return JSONResponse({"detail": "cross-site login refused"}, status_code=status.HTTP_403_FORBIDDEN)
    found = await _login(request, ctx, form)
    if isinstance(found, JSONResponse):
        return found
    token, claims = found
    user = await ctx.store.get_user(claims.user_id)
    response = JSONResponse(UserOut.of(user).model_dump())
    secure = request.url.scheme == "https"
    max_age = max(1, int(claims.expires_at - time.time()))
    response.set_cookie(
        SESSION_COOKIE, token, max_age=max_age, path="/", secure=secure, httponly=True, samesite="strict"
    )
    response.set_cookie(
        CSRF_COOKIE,
        secrets.token_urlsafe(32),
        max_age=max_age,
        path="/",
        secure=secure,
        httponly=False,  # the page must read it to send it back in the header
        samesite="strict",
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/auth/cookie/logout", status_code=status.HTTP_204_NO_CONTENT, include_in_schema=False)
async def cookie_logout(request: Request, ctx: Ctx, session: Session) -> Response:
    """Revoke the session (a CSRF-checked request when made with the cookie) and clear both cookies."""
    await ctx.accounts.logout(session[1])
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    secure = request.url.scheme == "https"
    for name, httponly in ((SESSION_COOKIE, True), (CSRF_COOKIE, False)):
        response.delete_cookie(name, path="/", secure=secure, httponly=httponly, samesite="strict")
    return response


@router.get("/users/me", response_model=UserOut, tags=["users"], responses=AUTHENTICATED)
async def me(user: CurrentUser) -> UserOut:
    return UserOut.of(user)


@router.post(
    "/api/users",
    response_model=UserOut,
    status_code=status.HTTP_201_CREATED,
    tags=["users"],
    responses=errors(
        400, 401, 403, 409, described={400: "the body is not JSON", 409: "a user with this e-mail exists"}
    ),
)
async def create_user(body: UserCreate, ctx: Ctx, _: Superuser) -> UserOut:
    user = await ctx.accounts.create_user(
        body.email, body.password, superuser=body.is_superuser, display_name=body.display_name
    )
    return UserOut.of(user)


@router.get("/api/users", response_model=list[UserOut], tags=["users"], responses=SUPERUSER)
async def list_users(
    ctx: Ctx,
    _: Superuser,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> list[UserOut]:
    return [UserOut.of(u) for u in await ctx.store.list_users(limit=limit, offset=offset)]


@router.delete(
    "/api/users/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["users"],
    responses=errors(401, 403, 404, 409, described={409: "you cannot delete yourself"}),
)
async def delete_user(user_id: str, ctx: Ctx, admin: Superuser) -> Response:
    if user_id == admin.id:
        raise HTTPException(status.HTTP_409_CONFLICT, "you cannot delete yourself")
    await ctx.store.delete_user(user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
