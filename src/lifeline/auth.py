"""Passwords, tokens and the signing secret.

Passwords are hashed with argon2id. Tokens are HS256 JWTs compatible with clients of the
Friend-Lite backend (``sub`` is the user id, ``aud`` is ``fastapi-users:auth``); each carries a
``jti`` so that logout can revoke it before it expires.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from lifeline.domain import LifelineError

AUDIENCE = "fastapi-users:auth"
ALGORITHM = "HS256"


class AuthError(LifelineError):
    """Credentials or a token were not accepted. The message is safe to show to the client."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: str
    token_id: str
    expires_at: float


class PasswordHashing:
    """argon2id with the library's defaults; verification takes constant time for unknown users."""

    def __init__(self, *, time_cost: int | None = None, memory_cost: int | None = None) -> None:
        """Library defaults (RFC 9106 low-memory profile) unless told otherwise (tests go cheaper)."""
        defaults = PasswordHasher()
        self._hasher = PasswordHasher(
            time_cost=defaults.time_cost if time_cost is None else time_cost,
            memory_cost=defaults.memory_cost if memory_cost is None else memory_cost,
        )
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; with no stored hash, burn the same time and say no."""
        try:
            if stored_hash is None:
                self._hasher.verify(self._dummy, password + "x")
                return False
            return self._hasher.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


class TokenIssuer:
    def __init__(self, secret: str, lifetime: float) -> None:
        if len(secret) < 32:
            raise ValueError("the signing secret must be at least 32 characters")
        self._secret = secret
        self.lifetime = lifetime

    def issue(self, user_id: str, *, now: float | None = None) -> tuple[str, TokenClaims]:
        issued = time.time() if now is None else now
        claims = TokenClaims(user_id=user_id, token_id=uuid.uuid4().hex, expires_at=issued + self.lifetime)
        token = jwt.encode(
            {
                "sub": user_id,
                "aud": AUDIENCE,
                "iat": int(issued),
                "exp": int(claims.expires_at),
                "jti": claims.token_id,
            },
            self._secret,
            algorithm=ALGORITHM,
        )
        return token, claims

    def decode(self, token: str) -> TokenClaims:
        try:
            data = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                options={"require": ["sub", "exp", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.PyJWTError:
            raise AuthError("invalid token") from None
        return TokenClaims(user_id=str(data["sub"]), token_id=str(data["jti"]), expires_at=float(data["exp"]))


def load_or_create_secret(path: Path) -> str:
    """The signing secret kept in the data dir (mode 0600), created once."""
    if path.exists():
        secret = path.read_text(encoding="utf-8").strip()
        if len(secret) >= 32:
            return secret
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    _write_private(path, secret + "\n")
    return secret


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (generated passwords, secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, text)
