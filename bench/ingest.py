"""Peak memory while ingesting a long upload (default one hour): the file is decoded and stored in
10 s pieces, so the peak RSS grows by far less than the file's size.

    .venv/bin/python bench/ingest.py [--minutes 60] [--rate 16000]

Writes a WAV of a tone with noise to a temp dir, measures the process's peak RSS before and after
:func:`lifeline.ingest.ingest_upload` into a fresh SQLite store, and prints both with the file size.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

import lifeline
from lifeline.audio import AudioLimits
from lifeline.ingest import Accepted, ingest_upload


def write_wav(path: Path, minutes: float, rate: int) -> int:
    total = int(minutes * 60 * rate)
    with path.open("wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 36 + total * 2) + b"WAVE")
        f.write(b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16))
        f.write(b"data" + struct.pack("<I", total * 2))
        rng = np.random.default_rng(1)
        step = rate * 10
        for start in range(0, total, step):
            n = min(step, total - start)
            t = (np.arange(n) + start) / rate
            x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(n)
            f.write(np.clip(x * 32767, -32768, 32767).astype("<i2").tobytes())
    return path.stat().st_size


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(minutes: float, rate: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "long.wav"
        size = write_wav(wav, minutes, rate)
        async with lifeline.connect(f"sqlite:///{tmp}/bench.db") as store:
            await store.list_jobs()  # the store's own memory counts as baseline
            before = peak_mb()
            started = time.perf_counter()
            with wav.open("rb") as f:
                outcome = await ingest_upload(
                    store,
                    f,
                    user_id="bench-user",
                    device_name="bench",
                    filename=wav.name,
                    limits=AudioLimits(max_bytes=1 << 34, max_seconds=24 * 3600),
                )
            elapsed = time.perf_counter() - started
            assert isinstance(outcome, Accepted), outcome
            after = peak_mb()
        print(f"file: {size / 1e6:.1f} MB ({minutes:g} min at {rate} Hz), ingested in {elapsed:.1f} s")
        print(f"peak RSS: {before:.1f} MB before, {after:.1f} MB after (+{after - before:.1f} MB)")
        print(f"stored: {outcome.duration_seconds:.0f} s of audio as {outcome.audio_uuid}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=16_000)
    args = parser.parse_args()
    asyncio.run(main(args.minutes, args.rate))
