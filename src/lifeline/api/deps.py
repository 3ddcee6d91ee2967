"""Request dependencies: the context, the current user, the superuser check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer

from lifeline.api.context import AppContext
from lifeline.auth import AuthError, TokenClaims
from lifeline.domain import User

oauth2 = OAuth2PasswordBearer(tokenUrl="/auth/jwt/login", auto_error=False)


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]


def _unauthorized(detail: str = "Unauthorized") -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


async def current_session(
    request: Request, ctx: Ctx, token: Annotated[str | None, Depends(oauth2)]
) -> tuple[User, TokenClaims]:
    if not token:
        token = request.cookies.get("lifeline_session")
    if not token:
        raise _unauthorized()
    try:
        return await ctx.accounts.authenticate(token)
    except AuthError:
        raise _unauthorized() from None


Session = Annotated[tuple[User, TokenClaims], Depends(current_session)]


async def current_user(session: Session) -> User:
    return session[0]


CurrentUser = Annotated[User, Depends(current_user)]


async def superuser(user: CurrentUser) -> User:
    if not user.is_superuser:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "superuser only")
    return user


Superuser = Annotated[User, Depends(superuser)]
