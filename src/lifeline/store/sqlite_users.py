"""Users, revoked tokens, failed-login counters and attempt metrics for the SQLite store.

A mixin of :class:`lifeline.store.sqlite.SQLiteStore`: it uses the store's writer and readers,
so these writes share the group commit with everything else.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from lifeline.domain import Conflict, NotFound, User
from lifeline.store.base import AttemptMetric, LoginFailures

_USER_COLUMNS = "id, email, display_name, is_active, is_superuser, created_at"


def _user(row: Sequence[Any]) -> User:
    return User(
        id=row[0],
        email=row[1],
        display_name=row[2],
        is_active=bool(row[3]),
        is_superuser=bool(row[4]),
        created_at=float(row[5]),
    )


class SQLiteUsersMixin:
    if TYPE_CHECKING:  # provided by SQLiteStore
        _clock: Callable[[], float]

        def _write(self, fn: Callable[[sqlite3.Connection], Any], notify: tuple[str, ...] = ()) -> Any: ...

        def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Awaitable[Any]: ...

    async def create_user(
        self,
        email: str,
        password_hash: str,
        *,
        display_name: str | None = None,
        is_superuser: bool = False,
        is_active: bool = True,
    ) -> User:
        user_id = uuid.uuid4().hex
        now = self._clock()

        def op(conn: sqlite3.Connection) -> User:
            try:
                conn.execute(
                    f"INSERT INTO users ({_USER_COLUMNS}, password_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (user_id, email, display_name, int(is_active), int(is_superuser), now, password_hash),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"a user with e-mail {email} already exists") from None
            return User(user_id, email, display_name, is_active, is_superuser, now)

        user: User = await self._write(op)
        return user

    async def get_user(self, user_id: str) -> User:
        def fn(conn: sqlite3.Connection) -> User:
            row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone()
            if row is None:
                raise NotFound(f"no user {user_id}")
            return _user(row)

        user: User = await self._read(fn)
        return user

    async def get_user_credentials(self, email: str) -> tuple[User, str] | None:
        """The user with this e-mail and their password hash, or ``None`` (login needs both)."""

        def fn(conn: sqlite3.Connection) -> tuple[User, str] | None:
            row = conn.execute(
                f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE email = ?", (email,)
            ).fetchone()
            return None if row is None else (_user(row[:6]), str(row[6]))

        found: tuple[User, str] | None = await self._read(fn)
        return found

    async def list_users(self, *, limit: int = 100, offset: int = 0) -> list[User]:
        def fn(conn: sqlite3.Connection) -> list[User]:
            return [
                _user(r)
                for r in conn.execute(
                    f"SELECT {_USER_COLUMNS} FROM users ORDER BY created_at, id LIMIT ? OFFSET ?",
                    (max(0, min(limit, 1000)), max(0, offset)),
                )
            ]

        users: list[User] = await self._read(fn)
        return users

    async def count_superusers(self) -> int:
        def fn(conn: sqlite3.Connection) -> int:
            return int(
                conn.execute(
                    "SELECT COUNT(*) FROM users WHERE is_superuser = 1 AND is_active = 1"
                ).fetchone()[0]
            )

        count: int = await self._read(fn)
        return count

    async def delete_user(self, user_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if conn.execute("DELETE FROM users WHERE id = ?", (user_id,)).rowcount != 1:
                raise NotFound(f"no user {user_id}")

        await self._write(op)

    async def set_password(self, user_id: str, password_hash: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            cur = conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))
            if cur.rowcount != 1:
                raise NotFound(f"no user {user_id}")

        await self._write(op)

    # -- tokens and logins ----------------------------------------------------------------------
    async def revoke_token(self, token_id: str, expires_at: float) -> None:
        now = self._clock()

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO revoked_tokens (token_id, expires_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (token_id, expires_at),
            )
            conn.execute("DELETE FROM revoked_tokens WHERE expires_at < ?", (now,))

        await self._write(op)

    async def is_token_revoked(self, token_id: str) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute("SELECT 1 FROM revoked_tokens WHERE token_id = ?", (token_id,)).fetchone()
                is not None
            )

        revoked: bool = await self._read(fn)
        return revoked

    async def login_failures(self, keys: Sequence[str]) -> list[LoginFailures]:
        def fn(conn: sqlite3.Connection) -> list[LoginFailures]:
            found: list[LoginFailures] = []
            for key in keys:
                row = conn.execute(
                    "SELECT failures, first_at, last_at FROM login_failures WHERE key = ?", (key,)
                ).fetchone()
                if row is not None:
                    found.append(LoginFailures(key, int(row[0]), float(row[1]), float(row[2])))
            return found

        failures: list[LoginFailures] = await self._read(fn)
        return failures

    async def record_login_failure(self, keys: Sequence[str], *, window: float) -> None:
        """Count a failure for each key; a key quiet for ``window`` seconds starts again at one."""
        now = self._clock()

        def op(conn: sqlite3.Connection) -> None:
            for key in keys:
                conn.execute(
                    "INSERT INTO login_failures (key, failures, first_at, last_at) VALUES (?, 1, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET"
                    " failures = CASE WHEN login_failures.last_at < ? THEN 1"
                    "                 ELSE login_failures.failures + 1 END,"
                    " first_at = CASE WHEN login_failures.last_at < ? THEN excluded.first_at"
                    "                 ELSE login_failures.first_at END,"
                    " last_at = excluded.last_at",
                    (key, now, now, now - window, now - window),
                )

        await self._write(op)

    async def clear_login_failures(self, keys: Sequence[str]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM login_failures WHERE key = ?", [(k,) for k in keys])

        await self._write(op)

    # -- metrics --------------------------------------------------------------------------------
    async def attempt_metrics(self) -> list[AttemptMetric]:
        def fn(conn: sqlite3.Connection) -> list[AttemptMetric]:
            return [
                AttemptMetric(r[0], r[1], int(r[2]), int(r[3]), float(r[4]))
                for r in conn.execute(
                    "SELECT queue, outcome, bucket, count, duration_sum FROM attempt_metrics"
                    " ORDER BY queue, outcome, bucket"
                )
            ]

        metrics: list[AttemptMetric] = await self._read(fn)
        return metrics
