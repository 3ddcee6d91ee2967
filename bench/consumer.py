"""One consumer process: open the queue, say ``ready``, wait for ``go`` on stdin, drain, report.

Started twice by ``workload.py`` for the two-process runs. It records every payload id it
processed, so the parent can count duplicates and missing jobs across both processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from common import Deadline, Sync, peak_rss_mb


def _wait_for_go() -> float:
    print("ready", flush=True)
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"expected 'go', got {line!r}")
    return time.monotonic()


async def _lifeline(root: Path, sync: Sync, mode: str, worker: str, cap: float | None) -> dict[str, Any]:
    import lifeline
    import lifeline_driver as driver

    async with lifeline.connect(driver.url(root / "lifeline.db", sync)) as store:
        start = await asyncio.to_thread(_wait_for_go)
        deadline = Deadline(cap, start)
        if mode == "batch":
            ids = await driver.consume_batched(store, worker, deadline)
        else:
            ids = await driver.consume_sequential(store, worker, deadline)
        end = time.monotonic()
    return {"ids": ids, "start": start, "end": end, "capped": deadline.hit}


def _threaded(lib: str, root: Path, sync: Sync, cap: float | None) -> dict[str, Any]:
    import adapters

    adapter = adapters.load(lib)(root, sync, consumer=True)
    try:
        start = _wait_for_go()
        deadline = Deadline(cap, start)
        ids = adapters.consume(adapter, deadline)
        end = time.monotonic()
    finally:
        adapter.close()
    return {"ids": ids, "start": start, "end": end, "capped": deadline.hit}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", required=True)
    parser.add_argument("--sync", choices=["normal", "full"], required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--mode", choices=["seq", "batch"], default="seq")
    parser.add_argument("--worker", default="consumer")
    parser.add_argument("--cap", type=float, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sync: Sync = "full" if args.sync == "full" else "normal"
    if args.lib == "lifeline":
        result = asyncio.run(_lifeline(args.root, sync, args.mode, args.worker, args.cap))
    else:
        result = _threaded(args.lib, args.root, sync, args.cap)
    result["rss_peak_mb"] = peak_rss_mb()
    args.out.write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
