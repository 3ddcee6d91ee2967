"""The health monitor's pure parts: percentiles, state folding, the overall summary, and the
wire formats the probes speak (Wyoming events, MongoDB OP_MSG and BSON)."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path

import pytest

from lifeline.breakers import BreakerRecord, BreakerState
from lifeline.health import HealthCheck, HealthStatus, ServiceHealth, apply_check, percentile, summarize
from lifeline.probes import DiskProbe, bson_encode, bson_top_level, op_msg, read_wyoming_event
from peers.mongo import Timestamp, bson


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([], 0.5, None),
        ([3.0], 0.5, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 0.95, 4.0),
        ([float(i) for i in range(1, 101)], 0.95, 95.0),
        ([float(i) for i in range(100, 0, -1)], 0.5, 50.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], fraction: float, expected: float | None) -> None:
    assert percentile(values, fraction) == expected


def check(status: HealthStatus, at: float, error: str | None = None) -> HealthCheck:
    return HealthCheck("llm", status, 0.01 if status is not HealthStatus.UNHEALTHY else None, error, None, at)


def test_apply_check_counts_failures_and_reports_changes() -> None:
    state, event = apply_check(None, check(HealthStatus.HEALTHY, 1))
    assert event is not None
    assert (event.from_status, event.to_status) == (HealthStatus.UNKNOWN, HealthStatus.HEALTHY)
    state, event = apply_check(state, check(HealthStatus.UNHEALTHY, 2, "refused"))
    assert event is not None
    assert event.reason == "refused"
    state, event = apply_check(state, check(HealthStatus.UNHEALTHY, 3, "refused"))
    assert event is None
    assert (state.consecutive_failures, state.changed_at, state.last_checked_at) == (2, 2, 3)
    state, _ = apply_check(state, check(HealthStatus.DEGRADED, 4))
    assert state.consecutive_failures == 0
    assert state.last_error == "refused"


def svc(name: str, status: HealthStatus, error: str | None = None) -> ServiceHealth:
    return ServiceHealth(name, status, last_error=error)


def test_summary_rules() -> None:
    healthy = [svc("store", HealthStatus.HEALTHY), svc("llm", HealthStatus.HEALTHY)]
    assert summarize(healthy, []).status is HealthStatus.HEALTHY
    down = [svc("store", HealthStatus.HEALTHY), svc("llm", HealthStatus.UNHEALTHY, "refused")]
    report = summarize(down, [])
    assert report.status is HealthStatus.DEGRADED  # a dependency down is a warning ...
    assert report.warnings == ["llm unhealthy: refused"]
    broken = [svc("store", HealthStatus.UNHEALTHY, "disk I/O error"), svc("llm", HealthStatus.HEALTHY)]
    assert summarize(broken, []).status is HealthStatus.UNHEALTHY  # ... our own store is not
    open_breaker = BreakerRecord("asr", BreakerState.OPEN, last_error="HTTP 503")
    report = summarize(healthy, [open_breaker, BreakerRecord("llm")])
    assert report.status is HealthStatus.DEGRADED
    assert report.warnings == ["breaker asr open: HTTP 503"]
    assert summarize([svc("store", HealthStatus.UNKNOWN)], []).status is HealthStatus.UNKNOWN


async def test_wyoming_events_with_inline_data_data_length_and_payload() -> None:
    reader = asyncio.StreamReader()
    data = json.dumps({"asr": [{"name": "whisper"}]}).encode()
    reader.feed_data(json.dumps({"type": "audio-chunk", "payload_length": 4}).encode() + b"\n" + b"\x00" * 4)
    reader.feed_data(
        json.dumps({"type": "info", "data": {"a": 1}, "data_length": len(data)}).encode() + b"\n"
    )
    reader.feed_data(data)
    reader.feed_eof()
    assert await read_wyoming_event(reader) == ("audio-chunk", {})
    assert await read_wyoming_event(reader) == ("info", {"a": 1, "asr": [{"name": "whisper"}]})
    with pytest.raises(ConnectionError):
        await read_wyoming_event(reader)


def test_bson_of_a_ping_and_of_a_replica_set_reply() -> None:
    ping = bson_encode({"ping": 1, "$db": "admin"})
    assert ping == bson({"ping": 1, "$db": "admin"})  # the same bytes as an independent encoder
    reply = bson(
        {
            "$clusterTime": {
                "clusterTime": Timestamp((1, 2)),
                "signature": {"hash": b"\x01" * 20, "keyId": 0},
            },
            "ok": 1.0,
            "operationTime": Timestamp((1, 2)),
            "flag": True,
            "n": 3,
        }
    )
    assert bson_top_level(reply) == {"ok": 1.0, "flag": True, "n": 3}


def test_op_msg_framing() -> None:
    message = op_msg(42, {"ping": 1, "$db": "admin"})
    length, request_id, response_to, opcode = struct.unpack_from("<iiii", message)
    assert (length, request_id, response_to, opcode) == (len(message), 42, 0, 2013)
    assert message[16:20] == b"\x00\x00\x00\x00"  # flags
    assert message[20] == 0  # a body section
    assert bson_top_level(message[21:]) == {"ping": 1, "$db": "admin"}


async def test_disk_thresholds(tmp_path: Path) -> None:
    assert (await DiskProbe(tmp_path, min_free=1, warn_free=2).check()).status is HealthStatus.HEALTHY
    low = await DiskProbe(tmp_path, min_free=1, warn_free=2**62).check()
    assert low.status is HealthStatus.DEGRADED
    full = await DiskProbe(tmp_path / "not" / "yet", min_free=2**62, warn_free=2**62).check()
    assert full.status is HealthStatus.UNHEALTHY
    assert (full.error or "").startswith("only ")
