"""Circuit breakers and health history for the PostgreSQL store.

A mixin of :class:`lifeline.store.postgres.PostgresStore`. A breaker change is a pure function
(:mod:`lifeline.breakers`) run inside one write transaction that first takes a transaction-scoped
advisory lock on the breaker's name: every process on every host that changes the same breaker
waits its turn, so exactly one of them can take the half-open probe. The lock is taken in a
statement of its own, so that the row is read afterwards, in a fresh snapshot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from lifeline.breakers import BreakerChange, BreakerRecord, BreakerState, Transition
from lifeline.health import HealthCheck, HealthEvent, HealthStatus, ServiceHealth, apply_check, percentile
from lifeline.store.postgres_engine import Connection, Tx

T = TypeVar("T")

_BREAKER_COLUMNS = (
    "name, state, outcomes, opened_at, open_until, consecutive_opens, probe_owner, probe_expires_at,"
    " last_error, updated_at"
)
_HEALTH_COLUMNS = (
    "service, status, consecutive_failures, last_error, last_checked_at, last_latency, changed_at, detail"
)
_CHECK_COLUMNS = "service, status, latency, error, detail, checked_at"

_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"

_UPSERT_BREAKER = f"""
INSERT INTO breakers ({_BREAKER_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE SET
    state = excluded.state, outcomes = excluded.outcomes, opened_at = excluded.opened_at,
    open_until = excluded.open_until, consecutive_opens = excluded.consecutive_opens,
    probe_owner = excluded.probe_owner, probe_expires_at = excluded.probe_expires_at,
    last_error = excluded.last_error, updated_at = excluded.updated_at
"""

_UPSERT_HEALTH = f"""
INSERT INTO health_state ({_HEALTH_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (service) DO UPDATE SET
    status = excluded.status, consecutive_failures = excluded.consecutive_failures,
    last_error = excluded.last_error, last_checked_at = excluded.last_checked_at,
    last_latency = excluded.last_latency, changed_at = excluded.changed_at, detail = excluded.detail
"""


def _breaker(row: Sequence[Any]) -> BreakerRecord:
    return BreakerRecord(
        name=row[0],
        state=BreakerState(row[1]),
        window=row[2],
        opened_at=row[3],
        open_until=row[4],
        consecutive_opens=row[5],
        probe_owner=row[6],
        probe_expires_at=row[7],
        last_error=row[8],
        updated_at=row[9],
    )


def _service(row: Sequence[Any]) -> ServiceHealth:
    return ServiceHealth(
        service=row[0],
        status=HealthStatus(row[1]),
        consecutive_failures=row[2],
        last_error=row[3],
        last_checked_at=row[4],
        last_latency=row[5],
        changed_at=row[6],
        detail=row[7],
    )


def _check(row: Sequence[Any]) -> HealthCheck:
    return HealthCheck(row[0], HealthStatus(row[1]), row[2], row[3], row[4], row[5])


async def _trim(tx: Tx, table: str, column: str, key: str, keep: int) -> None:
    """Keep the newest ``keep`` rows of ``table`` whose ``column`` is ``key``."""
    await tx.execute(
        f"DELETE FROM {table} WHERE {column} = %s AND id <= (SELECT id FROM {table} WHERE {column} = %s"
        " ORDER BY id DESC LIMIT 1 OFFSET %s)",
        (key, key, max(0, keep)),
    )


class PostgresHealthMixin:
    if TYPE_CHECKING:  # provided by PostgresStore
        _clock: Callable[[], float]

        def _write(self, fn: Callable[[Tx], Awaitable[Any]]) -> Awaitable[Any]: ...

        def _read(self, fn: Callable[[Connection], Awaitable[Any]]) -> Awaitable[Any]: ...

    # -- breakers -------------------------------------------------------------------------------
    async def breaker_apply(
        self, name: str, fn: Callable[[BreakerRecord | None], BreakerChange[T]], *, keep_events: int = 200
    ) -> T:
        async def op(tx: Tx) -> T:
            await tx.execute(_LOCK, (f"lifeline.breaker:{name}",))
            cur = await tx.execute(f"SELECT {_BREAKER_COLUMNS} FROM breakers WHERE name = %s", (name,))
            row = await cur.fetchone()
            current = None if row is None else _breaker(row)
            new, transition, result = fn(current)  # pure: it raises, if at all, before we write
            if new.name != name:
                raise ValueError(f"a change of breaker {name} returned breaker {new.name}")
            if new != current:
                await tx.execute(
                    _UPSERT_BREAKER,
                    (
                        new.name,
                        new.state.value,
                        new.window,
                        new.opened_at,
                        new.open_until,
                        new.consecutive_opens,
                        new.probe_owner,
                        new.probe_expires_at,
                        new.last_error,
                        new.updated_at,
                    ),
                )
            if transition is not None:
                await tx.execute(
                    "INSERT INTO breaker_events (name, from_state, to_state, reason, at)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (
                        name,
                        transition.from_state.value,
                        transition.to_state.value,
                        transition.reason,
                        transition.at,
                    ),
                )
                await _trim(tx, "breaker_events", "name", name, keep_events)
            return result

        result: T = await self._write(op)
        return result

    async def list_breakers(self) -> list[BreakerRecord]:
        async def fn(conn: Connection) -> list[BreakerRecord]:
            cur = await conn.execute(f"SELECT {_BREAKER_COLUMNS} FROM breakers ORDER BY name")
            return [_breaker(r) for r in await cur.fetchall()]

        found: list[BreakerRecord] = await self._read(fn)
        return found

    async def breaker_events(self, name: str | None = None, *, limit: int = 50) -> list[Transition]:
        where, params = ("WHERE name = %s", [name]) if name is not None else ("", [])

        async def fn(conn: Connection) -> list[Transition]:
            cur = await conn.execute(
                f"SELECT name, from_state, to_state, reason, at FROM breaker_events {where}"
                " ORDER BY id DESC LIMIT %s",
                [*params, max(0, limit)],
            )
            return [
                Transition(r[0], BreakerState(r[1]), BreakerState(r[2]), r[3], r[4])
                for r in await cur.fetchall()
            ]

        found: list[Transition] = await self._read(fn)
        return found

    # -- health ---------------------------------------------------------------------------------
    async def record_health(self, check: HealthCheck, *, keep: int = 200) -> HealthEvent | None:
        async def op(tx: Tx) -> HealthEvent | None:
            await tx.execute(_LOCK, (f"lifeline.health:{check.service}",))
            cur = await tx.execute(
                f"SELECT {_HEALTH_COLUMNS} FROM health_state WHERE service = %s", (check.service,)
            )
            row = await cur.fetchone()
            state, event = apply_check(None if row is None else _service(row), check)
            await tx.execute(
                _UPSERT_HEALTH,
                (
                    state.service,
                    state.status.value,
                    state.consecutive_failures,
                    state.last_error,
                    state.last_checked_at,
                    state.last_latency,
                    state.changed_at,
                    state.detail,
                ),
            )
            await tx.execute(
                f"INSERT INTO health_checks ({_CHECK_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    check.service,
                    check.status.value,
                    check.latency,
                    check.error,
                    check.detail,
                    check.checked_at,
                ),
            )
            await _trim(tx, "health_checks", "service", check.service, keep)
            if event is not None:
                await tx.execute(
                    "INSERT INTO health_events (service, from_status, to_status, reason, at)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (event.service, event.from_status.value, event.to_status.value, event.reason, event.at),
                )
                await _trim(tx, "health_events", "service", check.service, keep)
            return event

        event: HealthEvent | None = await self._write(op)
        return event

    async def health_states(self) -> list[ServiceHealth]:
        async def fn(conn: Connection) -> list[ServiceHealth]:
            latencies: dict[str, list[float]] = {}
            cur = await conn.execute("SELECT service, latency FROM health_checks WHERE latency IS NOT NULL")
            for service, latency in await cur.fetchall():
                latencies.setdefault(service, []).append(latency)
            cur = await conn.execute(f"SELECT {_HEALTH_COLUMNS} FROM health_state ORDER BY service")
            states: list[ServiceHealth] = []
            for row in await cur.fetchall():
                state = _service(row)
                values = latencies.get(state.service, [])
                states.append(
                    replace(
                        state, samples=len(values), p50=percentile(values, 0.5), p95=percentile(values, 0.95)
                    )
                )
            return states

        found: list[ServiceHealth] = await self._read(fn)
        return found

    async def health_history(self, service: str, *, limit: int = 50) -> list[HealthCheck]:
        async def fn(conn: Connection) -> list[HealthCheck]:
            cur = await conn.execute(
                f"SELECT {_CHECK_COLUMNS} FROM health_checks WHERE service = %s ORDER BY id DESC LIMIT %s",
                (service, max(0, limit)),
            )
            return [_check(r) for r in await cur.fetchall()]

        found: list[HealthCheck] = await self._read(fn)
        return found

    async def health_events(self, service: str | None = None, *, limit: int = 50) -> list[HealthEvent]:
        where, params = ("WHERE service = %s", [service]) if service is not None else ("", [])

        async def fn(conn: Connection) -> list[HealthEvent]:
            cur = await conn.execute(
                f"SELECT service, from_status, to_status, reason, at FROM health_events {where}"
                " ORDER BY id DESC LIMIT %s",
                [*params, max(0, limit)],
            )
            return [
                HealthEvent(r[0], HealthStatus(r[1]), HealthStatus(r[2]), r[3], r[4])
                for r in await cur.fetchall()
            ]

        found: list[HealthEvent] = await self._read(fn)
        return found

    async def ping(self) -> None:
        now = self._clock()

        async def read(conn: Connection) -> int:
            cur = await conn.execute("SELECT COUNT(*) FROM schema_migrations")
            row = await cur.fetchone()
            return 0 if row is None else int(row[0])

        async def write(tx: Tx) -> None:
            await tx.execute(
                "INSERT INTO store_ping (id, at) VALUES (1, %s)"
                " ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                (now,),
            )

        await self._read(read)
        await self._write(write)
