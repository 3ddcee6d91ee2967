"""Request dependencies: the context, the current user, the superuser check.

A request is authenticated by a Bearer token (the API's clients) or by the ``lifeline_session``
cookie (the dashboard). A cookie is sent by the browser on its own, so a cookie-authenticated
request that changes something must also prove it was made by our page: its ``X-CSRF-Token``
header must equal the ``lifeline_csrf`` cookie, which only a page of our origin can read (the
double-submit pattern; the session cookie is also ``SameSite=Strict``).
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer

from lifeline.api.context import AppContext
from lifeline.auth import AuthError, TokenClaims
from lifeline.domain import User

oauth2 = OAuth2PasswordBearer(tokenUrl="/auth/jwt/login", auto_error=False)

SESSION_COOKIE = "lifeline_session"
CSRF_COOKIE = "lifeline_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]


def _unauthorized(detail: str = "Unauthorized") -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def check_csrf(request: Request) -> None:
    """403 unless an unsafe request carries the CSRF cookie's value in the ``X-CSRF-Token`` header."""
    if request.method.upper() in SAFE_METHODS:
        return
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    if not cookie or not header or not secrets.compare_digest(cookie.encode(), header.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "CSRF token missing or wrong")


async def current_session(
    request: Request, ctx: Ctx, token: Annotated[str | None, Depends(oauth2)]
) -> tuple[User, TokenClaims]:
    from_cookie = False
    if not token:
        token = request.cookies.get(SESSION_COOKIE)
        from_cookie = True
    if not token:
        raise _unauthorized()
    try:
        session = await ctx.accounts.authenticate(token)
    except AuthError:
        raise _unauthorized() from None
    if from_cookie:
        check_csrf(request)
    return session


Session = Annotated[tuple[User, TokenClaims], Depends(current_session)]


async def current_user(session: Session) -> User:
    return session[0]


CurrentUser = Annotated[User, Depends(current_user)]


async def superuser(user: CurrentUser) -> User:
    if not user.is_superuser:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "superuser only")
    return user


Superuser = Annotated[User, Depends(superuser)]
