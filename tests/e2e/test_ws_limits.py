"""A real ``lifeline serve`` refuses a WebSocket message over its limit (1 MiB): that connection
is closed with 1009 (message too big), and another client's conversation goes on undisturbed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from api.audio_helpers import pcm16, tone
from lifeline.cli import WS_MAX_MESSAGE_BYTES

from .conftest import ADMIN, USER, Server, lifeline_serve

MESSAGE_TOO_BIG = 1009


def ws_url(s: Server, token: str, device: str) -> str:
    return f"{s.url.replace('http://', 'ws://')}/ws_pcm?token={token}&device_name={device}"


async def next_event(ws: ClientConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
    return event


async def close_code(ws: ClientConnection) -> int | None:
    """The code the server closed ``ws`` with (after anything it sent before); None: no close
    frame came (the connection dropped)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout=30)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


async def scenario(s: Server, token: str) -> None:
    # max_size=None: the client would take anything; the limit under test is the server's
    async with (
        connect(ws_url(s, token, "steady"), max_size=None) as steady,
        connect(ws_url(s, token, "greedy"), max_size=None) as greedy,
    ):
        assert (await next_event(steady))["type"] == "ready"
        assert (await next_event(greedy))["type"] == "ready"
        second = pcm16(tone(1.0))  # 32 kB
        await steady.send(second)
        # 512 KiB in one message (16 s of PCM) is under the limit
        await steady.send(pcm16(tone(16.0)))

        await greedy.send(bytes(2 * 1024 * 1024))
        assert await close_code(greedy) == MESSAGE_TOO_BIG

        # the other connection never noticed: its conversation holds all it sent
        await steady.send(second)
        await steady.send(json.dumps({"type": "audio-stop"}))
        while (event := await next_event(steady))["type"] != "conversation-closed":
            pass
        assert event["data"]["audio_uuid"]
        assert event["data"]["duration_seconds"] == pytest.approx(18.0, abs=0.01)


def test_a_message_over_the_limit_closes_only_its_own_connection(tmp_path: Path) -> None:
    assert 16 * 1024 * 1024 > WS_MAX_MESSAGE_BYTES >= 64 * 1024  # far above any audio frame
    with lifeline_serve(tmp_path / "server", "--no-workers") as s:
        admin = s.login(*ADMIN)
        s.create_user(admin, *USER)
        asyncio.run(scenario(s, s.login(*USER)))
        assert "Traceback" not in s.log_tail(200)
