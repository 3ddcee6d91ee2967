"""A real ``lifeline serve``'s log never holds a token or a password, whichever way it was sent:
the login form, a Bearer header, or a WebSocket's query string (the only place Friend-Lite and Omi
clients can put it)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from .conftest import ADMIN, lifeline_serve


async def _stream(url: str) -> str:
    async with connect(url) as ws:
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready"
        await ws.send(b"\x00\x01" * 16000)  # one second of (almost) silence
        await ws.send(json.dumps({"type": "audio-stop"}))
        closed = json.loads(await ws.recv())
        assert closed["type"] == "conversation-closed", closed
        audio_uuid: str = closed["data"]["audio_uuid"]
        return audio_uuid


def test_no_secret_reaches_the_server_log(tmp_path: Path) -> None:
    with lifeline_serve(tmp_path, "--no-workers", LIFELINE_LOG_LEVEL="DEBUG") as server:
        token = server.login(*ADMIN)
        r = httpx.get(f"{server.url}/users/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200
        ws_url = server.url.replace("http://", "ws://") + f"/ws_pcm?token={token}&device_name=phone"
        audio_uuid = asyncio.run(_stream(ws_url))
        # a refused handshake is logged too
        bad = server.url.replace("http://", "ws://") + "/ws_pcm?token=forged-token-value"
        asyncio.run(_refused(bad))
        log = server.log_tail(10_000)
    assert "/ws_pcm" in log, "the handshake was not logged at all: the test would prove nothing"
    assert audio_uuid
    for secret in (token, ADMIN[1], "forged-token-value"):
        assert secret not in log
    assert "token=***" in log


async def _refused(url: str) -> None:
    async with connect(url) as ws:
        with pytest.raises(ConnectionClosedError) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
