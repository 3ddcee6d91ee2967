"""Accounts: log in, authenticate a token, log out, create users, bootstrap the first superuser.

Shared by the HTTP API and the CLI, so both apply the same rules (one generic message for wrong
credentials, brute force slowed down per account and per address).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lifeline.auth import AuthError, PasswordHashing, TokenClaims, TokenIssuer, write_private
from lifeline.domain import LifelineError, NotFound, User
from lifeline.store.base import Store

BAD_CREDENTIALS = "LOGIN_BAD_CREDENTIALS"  # the message Friend-Lite clients expect


class TooManyAttempts(LifelineError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """``free`` failures per key, then each further attempt waits ``base·2^(n-free)`` s, capped."""

    free: int = 5
    base: float = 1.0
    cap: float = 300.0
    window: float = 900.0  # a key quiet this long starts again

    def wait(self, failures: int) -> float:
        if failures < self.free:
            return 0.0
        return float(min(self.cap, self.base * 2.0 ** (failures - self.free)))


class Accounts:
    def __init__(
        self,
        store: Store,
        issuer: TokenIssuer,
        *,
        hashing: PasswordHashing | None = None,
        throttle: ThrottlePolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.issuer = issuer
        self.hashing = hashing or PasswordHashing()
        self.throttle = throttle or ThrottlePolicy()
        self._clock = clock

    async def login(self, email: str, password: str, address: str | None) -> tuple[str, TokenClaims]:
        keys = [f"account:{email.strip().lower()}"]
        if address:
            keys.append(f"address:{address}")
        now = self._clock()
        for entry in await self.store.login_failures(keys):
            if entry.last_at < now - self.throttle.window:
                continue
            wait = self.throttle.wait(entry.failures) - (now - entry.last_at)
            if wait > 0:
                raise TooManyAttempts(wait)
        found = await self.store.get_user_credentials(email.strip())
        user, stored_hash = found if found is not None else (None, None)
        ok = self.hashing.verify(stored_hash, password)
        if not ok or user is None or not user.is_active:
            await self.store.record_login_failure(keys, window=self.throttle.window)
            raise AuthError(BAD_CREDENTIALS)
        await self.store.clear_login_failures(keys)
        return self.issuer.issue(user.id, now=now)

    async def authenticate(self, token: str) -> tuple[User, TokenClaims]:
        claims = self.issuer.decode(token)
        if await self.store.is_token_revoked(claims.token_id):
            raise AuthError("token revoked")
        try:
            user = await self.store.get_user(claims.user_id)
        except NotFound:
            raise AuthError("invalid token") from None
        if not user.is_active:
            raise AuthError("inactive user")
        return user, claims

    async def still_allowed(self, claims: TokenClaims) -> User:
        """Whether a connection authenticated earlier with ``claims`` may go on: its token was not
        revoked and its user still exists and is active. The expiry is not checked again: a
        device's stream that was let in stays in until logout or deactivation, not a clock."""
        if await self.store.is_token_revoked(claims.token_id):
            raise AuthError("token revoked")
        try:
            user = await self.store.get_user(claims.user_id)
        except NotFound:
            raise AuthError("the user no longer exists") from None
        if not user.is_active:
            raise AuthError("inactive user")
        return user

    async def logout(self, claims: TokenClaims) -> None:
        await self.store.revoke_token(claims.token_id, claims.expires_at)

    async def create_user(
        self, email: str, password: str, *, superuser: bool = False, display_name: str | None = None
    ) -> User:
        if len(password) < 8:
            raise ValueError("a password needs at least 8 characters")
        return await self.store.create_user(
            email.strip(), self.hashing.hash(password), display_name=display_name, is_superuser=superuser
        )

    async def ensure_admin(self, email: str, password: str | None, data_dir: Path) -> str | None:
        """Create the first superuser if there is none. Returns a generated password (to print
        once; it is also kept in ``data_dir/admin-password`` with mode 0600) or ``None``."""
        if await self.store.count_superusers() > 0:
            return None
        generated = None
        if password is None:
            generated = password = secrets.token_urlsafe(18)
            write_private(data_dir / "admin-password", f"{email}\n{password}\n")
        await self.create_user(email, password, superuser=True, display_name="Administrator")
        return generated
