"""Users, revoked tokens, failed-login counters and attempt metrics for the PostgreSQL store.

A mixin of :class:`lifeline.store.postgres.PostgresStore`: its writes are operations of the
store's batching writer (group commit), its reads run on the read pool. Each operation raises, if
it must, before it writes (see :mod:`lifeline.store.postgres_engine`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from lifeline.domain import Conflict, NotFound, User
from lifeline.store.base import AttemptMetric, LoginFailures
from lifeline.store.postgres_engine import Connection, Tx

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


class PostgresUsersMixin:
    if TYPE_CHECKING:  # provided by PostgresStore
        _clock: Callable[[], float]

        def _write(self, fn: Callable[[Tx], Awaitable[Any]]) -> Awaitable[Any]: ...

        def _read(self, fn: Callable[[Connection], Awaitable[Any]]) -> Awaitable[Any]: ...

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

        async def op(tx: Tx) -> User:
            # the unique index on lower(email) makes the address case-insensitive, as in SQLite
            cur = await tx.execute(
                f"INSERT INTO users ({_USER_COLUMNS}, password_hash) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING id",
                (user_id, email, display_name, is_active, is_superuser, now, password_hash),
            )
            if await cur.fetchone() is None:
                raise Conflict(f"a user with e-mail {email} already exists")
            return User(user_id, email, display_name, is_active, is_superuser, now)

        user: User = await self._write(op)
        return user

    async def get_user(self, user_id: str) -> User:
        async def fn(conn: Connection) -> User:
            cur = await conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = %s", (user_id,))
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"no user {user_id}")
            return _user(row)

        user: User = await self._read(fn)
        return user

    async def get_user_credentials(self, email: str) -> tuple[User, str] | None:
        """The user with this e-mail and their password hash, or ``None`` (login needs both)."""

        async def fn(conn: Connection) -> tuple[User, str] | None:
            cur = await conn.execute(
                f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE lower(email) = lower(%s)", (email,)
            )
            row = await cur.fetchone()
            return None if row is None else (_user(row[:6]), str(row[6]))

        found: tuple[User, str] | None = await self._read(fn)
        return found

    async def list_users(self, *, limit: int = 100, offset: int = 0) -> list[User]:
        async def fn(conn: Connection) -> list[User]:
            cur = await conn.execute(
                f"SELECT {_USER_COLUMNS} FROM users ORDER BY created_at, id LIMIT %s OFFSET %s",
                (max(0, min(limit, 1000)), max(0, offset)),
            )
            return [_user(r) for r in await cur.fetchall()]

        users: list[User] = await self._read(fn)
        return users

    async def count_superusers(self) -> int:
        async def fn(conn: Connection) -> int:
            cur = await conn.execute("SELECT COUNT(*) FROM users WHERE is_superuser AND is_active")
            row = await cur.fetchone()
            return 0 if row is None else int(row[0])

        count: int = await self._read(fn)
        return count

    async def delete_user(self, user_id: str) -> None:
        async def op(tx: Tx) -> None:
            cur = await tx.execute("DELETE FROM users WHERE id = %s", (user_id,))
            if cur.rowcount != 1:
                raise NotFound(f"no user {user_id}")

        await self._write(op)

    async def set_password(self, user_id: str, password_hash: str) -> None:
        async def op(tx: Tx) -> None:
            cur = await tx.execute(
                "UPDATE users SET password_hash = %s WHERE id = %s", (password_hash, user_id)
            )
            if cur.rowcount != 1:
                raise NotFound(f"no user {user_id}")

        await self._write(op)

    # -- tokens and logins ----------------------------------------------------------------------
    async def revoke_token(self, token_id: str, expires_at: float) -> None:
        now = self._clock()

        async def op(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO revoked_tokens (token_id, expires_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (token_id, expires_at),
            )
            await tx.execute("DELETE FROM revoked_tokens WHERE expires_at < %s", (now,))

        await self._write(op)

    async def is_token_revoked(self, token_id: str) -> bool:
        async def fn(conn: Connection) -> bool:
            cur = await conn.execute("SELECT 1 FROM revoked_tokens WHERE token_id = %s", (token_id,))
            return await cur.fetchone() is not None

        revoked: bool = await self._read(fn)
        return revoked

    async def login_failures(self, keys: Sequence[str]) -> list[LoginFailures]:
        async def fn(conn: Connection) -> list[LoginFailures]:
            cur = await conn.execute(
                "SELECT key, failures, first_at, last_at FROM login_failures WHERE key = ANY(%s::text[])",
                (list(keys),),
            )
            rows = {r[0]: r for r in await cur.fetchall()}
            return [
                LoginFailures(key, int(rows[key][1]), float(rows[key][2]), float(rows[key][3]))
                for key in keys
                if key in rows
            ]

        failures: list[LoginFailures] = await self._read(fn)
        return failures

    async def record_login_failure(self, keys: Sequence[str], *, window: float) -> None:
        """Count a failure for each key; a key quiet for ``window`` seconds starts again at one."""
        now = self._clock()

        async def op(tx: Tx) -> None:
            for key in sorted(set(keys)):  # one lock order for every process
                await tx.execute(
                    "INSERT INTO login_failures AS f (key, failures, first_at, last_at)"
                    " VALUES (%s, 1, %s, %s)"
                    " ON CONFLICT (key) DO UPDATE SET"
                    " failures = CASE WHEN f.last_at < %s THEN 1 ELSE f.failures + 1 END,"
                    " first_at = CASE WHEN f.last_at < %s THEN excluded.first_at ELSE f.first_at END,"
                    " last_at = excluded.last_at",
                    (key, now, now, now - window, now - window),
                )

        await self._write(op)

    async def clear_login_failures(self, keys: Sequence[str]) -> None:
        async def op(tx: Tx) -> None:
            await tx.execute("DELETE FROM login_failures WHERE key = ANY(%s::text[])", (list(keys),))

        await self._write(op)

    # -- metrics --------------------------------------------------------------------------------
    async def attempt_metrics(self) -> list[AttemptMetric]:
        async def fn(conn: Connection) -> list[AttemptMetric]:
            cur = await conn.execute(
                "SELECT queue, outcome, bucket, count, duration_sum FROM attempt_metrics"
                " ORDER BY queue, outcome, bucket"
            )
            return [
                AttemptMetric(r[0], r[1], int(r[2]), int(r[3]), float(r[4])) for r in await cur.fetchall()
            ]

        metrics: list[AttemptMetric] = await self._read(fn)
        return metrics
