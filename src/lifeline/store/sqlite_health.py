"""Circuit breakers and health history for the SQLite store.

A mixin of :class:`lifeline.store.sqlite.SQLiteStore`: it uses the store's writer and readers, so
these writes share the group commit with everything else. A breaker change is a pure function run
inside the writer's ``BEGIN IMMEDIATE`` transaction, which serialises it against every other
process on the same file: two workers can never both take the half-open probe.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from lifeline.breakers import BreakerChange, BreakerRecord, BreakerState, Transition
from lifeline.health import HealthCheck, HealthEvent, HealthStatus, ServiceHealth, apply_check, percentile

T = TypeVar("T")

_BREAKER_COLUMNS = (
    "name, state, outcomes, opened_at, open_until, consecutive_opens, probe_owner, probe_expires_at,"
    " last_error, updated_at"
)
_HEALTH_COLUMNS = (
    "service, status, consecutive_failures, last_error, last_checked_at, last_latency, changed_at, detail"
)
_CHECK_COLUMNS = "service, status, latency, error, detail, checked_at"


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


def _transition(row: Sequence[Any]) -> Transition:
    return Transition(row[0], BreakerState(row[1]), BreakerState(row[2]), row[3], row[4])


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


def _trim(conn: sqlite3.Connection, table: str, column: str, key: str, keep: int) -> None:
    """Keep the newest ``keep`` rows of ``table`` whose ``column`` is ``key``."""
    conn.execute(
        f"DELETE FROM {table} WHERE {column} = ? AND id <= (SELECT id FROM {table} WHERE {column} = ?"
        " ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (key, key, max(0, keep)),
    )


class SQLiteHealthMixin:
    if TYPE_CHECKING:  # provided by SQLiteStore
        _clock: Callable[[], float]

        def _write(self, fn: Callable[[sqlite3.Connection], Any], notify: tuple[str, ...] = ()) -> Any: ...

        def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Awaitable[Any]: ...

    # -- breakers -------------------------------------------------------------------------------
    async def breaker_apply(
        self, name: str, fn: Callable[[BreakerRecord | None], BreakerChange[T]], *, keep_events: int = 200
    ) -> T:
        def op(conn: sqlite3.Connection) -> T:
            row = conn.execute(f"SELECT {_BREAKER_COLUMNS} FROM breakers WHERE name = ?", (name,)).fetchone()
            current = None if row is None else _breaker(row)
            new, transition, result = fn(current)
            if new.name != name:
                raise ValueError(f"a change of breaker {name} returned breaker {new.name}")
            if new != current:
                conn.execute(
                    f"INSERT INTO breakers ({_BREAKER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET state = excluded.state, outcomes = excluded.outcomes,"
                    " opened_at = excluded.opened_at, open_until = excluded.open_until,"
                    " consecutive_opens = excluded.consecutive_opens, probe_owner = excluded.probe_owner,"
                    " probe_expires_at = excluded.probe_expires_at, last_error = excluded.last_error,"
                    " updated_at = excluded.updated_at",
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
                conn.execute(
                    "INSERT INTO breaker_events (name, from_state, to_state, reason, at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        name,
                        transition.from_state.value,
                        transition.to_state.value,
                        transition.reason,
                        transition.at,
                    ),
                )
                _trim(conn, "breaker_events", "name", name, keep_events)
            return result

        result: T = await self._write(op)
        return result

    async def list_breakers(self) -> list[BreakerRecord]:
        def fn(conn: sqlite3.Connection) -> list[BreakerRecord]:
            return [
                _breaker(r) for r in conn.execute(f"SELECT {_BREAKER_COLUMNS} FROM breakers ORDER BY name")
            ]

        found: list[BreakerRecord] = await self._read(fn)
        return found

    async def breaker_events(self, name: str | None = None, *, limit: int = 50) -> list[Transition]:
        where, params = ("WHERE name = ?", [name]) if name is not None else ("", [])

        def fn(conn: sqlite3.Connection) -> list[Transition]:
            return [
                _transition(r)
                for r in conn.execute(
                    f"SELECT name, from_state, to_state, reason, at FROM breaker_events {where}"
                    " ORDER BY id DESC LIMIT ?",
                    [*params, max(0, limit)],
                )
            ]

        found: list[Transition] = await self._read(fn)
        return found

    # -- health ---------------------------------------------------------------------------------
    async def record_health(self, check: HealthCheck, *, keep: int = 200) -> HealthEvent | None:
        def op(conn: sqlite3.Connection) -> HealthEvent | None:
            row = conn.execute(
                f"SELECT {_HEALTH_COLUMNS} FROM health_state WHERE service = ?", (check.service,)
            ).fetchone()
            state, event = apply_check(None if row is None else _service(row), check)
            conn.execute(
                f"INSERT OR REPLACE INTO health_state ({_HEALTH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
            conn.execute(
                f"INSERT INTO health_checks ({_CHECK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    check.service,
                    check.status.value,
                    check.latency,
                    check.error,
                    check.detail,
                    check.checked_at,
                ),
            )
            _trim(conn, "health_checks", "service", check.service, keep)
            if event is not None:
                conn.execute(
                    "INSERT INTO health_events (service, from_status, to_status, reason, at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (event.service, event.from_status.value, event.to_status.value, event.reason, event.at),
                )
                _trim(conn, "health_events", "service", check.service, keep)
            return event

        event: HealthEvent | None = await self._write(op)
        return event

    async def health_states(self) -> list[ServiceHealth]:
        def fn(conn: sqlite3.Connection) -> list[ServiceHealth]:
            latencies: dict[str, list[float]] = {}
            for service, latency in conn.execute(
                "SELECT service, latency FROM health_checks WHERE latency IS NOT NULL"
            ):
                latencies.setdefault(service, []).append(latency)
            states: list[ServiceHealth] = []
            for row in conn.execute(f"SELECT {_HEALTH_COLUMNS} FROM health_state ORDER BY service"):
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
        def fn(conn: sqlite3.Connection) -> list[HealthCheck]:
            return [
                _check(r)
                for r in conn.execute(
                    f"SELECT {_CHECK_COLUMNS} FROM health_checks WHERE service = ? ORDER BY id DESC LIMIT ?",
                    (service, max(0, limit)),
                )
            ]

        found: list[HealthCheck] = await self._read(fn)
        return found

    async def health_events(self, service: str | None = None, *, limit: int = 50) -> list[HealthEvent]:
        where, params = ("WHERE service = ?", [service]) if service is not None else ("", [])

        def fn(conn: sqlite3.Connection) -> list[HealthEvent]:
            return [
                HealthEvent(r[0], HealthStatus(r[1]), HealthStatus(r[2]), r[3], r[4])
                for r in conn.execute(
                    f"SELECT service, from_status, to_status, reason, at FROM health_events {where}"
                    " ORDER BY id DESC LIMIT ?",
                    [*params, max(0, limit)],
                )
            ]

        found: list[HealthEvent] = await self._read(fn)
        return found

    async def ping(self) -> None:
        now = self._clock()

        def read(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0])

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO store_ping (id, at) VALUES (1, ?)", (now,))

        await self._read(read)
        await self._write(write)
