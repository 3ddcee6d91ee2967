"""A MongoDB server as far as ``ping`` goes: OP_MSG requests answered with ``{ok: 1.0}`` and the
``$clusterTime`` / ``operationTime`` fields a replica set adds (so that a client must skip nested
documents and timestamps), or, with the ``500`` fault, ``{ok: 0.0, errmsg, code}``."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from peers.server import Fault, LoopbackServer

OP_MSG = 2013


class Timestamp(tuple[int, int]):
    """A BSON timestamp (increment, seconds)."""


def bson(document: dict[str, Any]) -> bytes:
    body = b""
    for key, value in document.items():
        name = key.encode() + b"\x00"
        if isinstance(value, bool):
            body += b"\x08" + name + (b"\x01" if value else b"\x00")
        elif isinstance(value, Timestamp):
            body += b"\x11" + name + struct.pack("<II", value[0], value[1])
        elif isinstance(value, int):
            body += b"\x10" + name + struct.pack("<i", value)
        elif isinstance(value, float):
            body += b"\x01" + name + struct.pack("<d", value)
        elif isinstance(value, str):
            raw = value.encode()
            body += b"\x02" + name + struct.pack("<i", len(raw) + 1) + raw + b"\x00"
        elif isinstance(value, bytes):
            body += b"\x05" + name + struct.pack("<i", len(value)) + b"\x00" + value
        elif isinstance(value, dict):
            body += b"\x03" + name + bson(value)
        else:
            raise TypeError(f"cannot encode {type(value).__name__}")
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def first_key(doc: bytes) -> str:
    end = doc.index(b"\x00", 5)
    return doc[5:end].decode()


class MongoPeer(LoopbackServer):
    def __init__(self) -> None:
        super().__init__()
        self.commands: list[str] = []

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            header = await reader.read(16)
            if len(header) < 16:
                return
            length, request_id, _, opcode = struct.unpack("<iiii", header)
            rest = await reader.readexactly(length - 16)
            if opcode != OP_MSG or rest[4] != 0:
                return
            command = first_key(rest[5:])
            self.commands.append(command)
            fault = self._take_fault(command)
            if fault is Fault.HANG:
                await self._hang()
                return
            if fault is Fault.RESET:
                return
            if fault is Fault.SLOW:
                await asyncio.sleep(self.delay)
            now = Timestamp((1, 1_764_000_000))
            if fault in (Fault.ERROR_500, Fault.RATE_LIMIT, Fault.BAD_REQUEST):
                reply = {"ok": 0.0, "errmsg": "node is not in primary or recovering state", "code": 13436}
            else:
                reply = {
                    "ok": 1.0,
                    "$clusterTime": {"clusterTime": now, "signature": {"hash": b"\x00" * 20, "keyId": 0}},
                    "operationTime": now,
                }
            body = struct.pack("<I", 0) + b"\x00" + bson(reply)
            writer.write(struct.pack("<iiii", 16 + len(body), request_id + 1000, request_id, OP_MSG) + body)
            await writer.drain()
