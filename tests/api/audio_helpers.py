"""Audio for ingest tests (synthetic, deterministic) and a real uvicorn server on loopback for the
WebSocket tests (httpx's ASGITransport speaks HTTP only)."""

from __future__ import annotations

import asyncio
import io
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
import uvicorn
from fastapi import FastAPI

from lifeline import audio

RATE = 16_000


def tone(seconds: float, rate: int = RATE, freq: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    """A tone with a little noise (float in [-1, 1]): loud enough not to count as silence."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(7)
    return (amplitude * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def pcm16(samples: np.ndarray) -> bytes:
    out: bytes = np.clip(np.rint(samples * 32767), -32768, 32767).astype("<i2").tobytes()
    return out


def wav_bytes(samples: np.ndarray, rate: int = RATE, channels: int = 1, width: int = 2) -> bytes:
    """A PCM WAV file of ``samples`` (mono float) copied to ``channels``, at ``width`` bytes."""
    frames = np.repeat(samples.reshape(-1, 1), channels, axis=1)
    if width == 1:
        data = (np.clip(frames * 127 + 128, 0, 255)).astype(np.uint8).tobytes()
    elif width == 2:
        data = np.clip(np.rint(frames * 32767), -32768, 32767).astype("<i2").tobytes()
    elif width == 3:
        ints = np.clip(np.rint(frames * 8388607), -8388608, 8388607).astype("<i4").reshape(-1)
        raw = ints.view(np.uint8).reshape(-1, 4)[:, :3]
        data = raw.tobytes()
    else:
        data = np.clip(np.rint(frames * 2147483647.0), -2147483648, 2147483647).astype("<i4").tobytes()
    block = channels * width
    header = b"".join(
        (
            b"RIFF",
            struct.pack("<I", 36 + len(data)),
            b"WAVE",
            b"fmt ",
            struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, width * 8),
            b"data",
            struct.pack("<I", len(data)),
        )
    )
    return header + data


def encode(samples: np.ndarray, container: str, codec: str, rate: int = RATE) -> bytes:
    """``samples`` encoded with PyAV (mp3, aac in mp4, opus in ogg/webm, flac)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"  # type: ignore[union-attr]
        frame_size = 960 if codec == "libopus" else 1152
        s16 = np.clip(np.rint(samples * 32767), -32768, 32767).astype(np.int16)
        for start in range(0, s16.size, frame_size):
            chunk = s16[start : start + frame_size]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):  # type: ignore[union-attr]
                out.mux(packet)
        for packet in stream.encode(None):  # type: ignore[union-attr]
            out.mux(packet)
    return buffer.getvalue()


def opus_packets(pcm: bytes, rate: int = RATE) -> list[bytes]:
    """Raw Opus packets (20 ms, mono), as an Omi device sends them, encoded with libopus."""
    import av

    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = rate  # type: ignore[attr-defined]
    codec.layout = "mono"  # type: ignore[attr-defined]
    codec.format = "s16"  # type: ignore[attr-defined]
    codec.bit_rate = 32000
    codec.open()
    samples = np.frombuffer(pcm, dtype="<i2")
    step = rate // 50
    packets: list[bytes] = []
    for start in range(0, samples.size - step + 1, step):
        frame = av.AudioFrame.from_ndarray(
            samples[start : start + step].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = rate
        frame.pts = start
        packets.extend(bytes(p) for p in codec.encode(frame))  # type: ignore[attr-defined]
    packets.extend(bytes(p) for p in codec.encode(None))  # type: ignore[attr-defined]
    return [p for p in packets if p]


def decoded_seconds(data: bytes) -> float:
    return audio.decode(data, audio.AudioLimits(silence_dbfs=None, min_seconds=0)).duration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Live:
    http: str
    ws: str


@asynccontextmanager
async def live_server(app: FastAPI) -> AsyncIterator[Live]:
    """``app`` (its lifespan included) served by uvicorn on a free loopback port in this loop."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        if task.done():
            await task
        await asyncio.sleep(0.02)
    try:
        yield Live(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)
