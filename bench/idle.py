"""Idle cost of ``lifeline serve``: with nothing to do it should use under 1 % of one core, and
its RSS should stay flat.

Starts ``lifeline serve`` on a temp dir with the default settings (a fresh store, no handlers, no
requests), waits until /readiness answers, lets it settle, then samples the process's CPU time and
RSS with psutil for ``--seconds`` (default 120) and prints CPU % of one core and RSS start, end and
max. ``--fail-above PCT`` exits 1 when the CPU share is at least PCT.

    .venv/bin/python bench/idle.py --seconds 120
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(root: Path, port: int, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update(
        LIFELINE_DATABASE_URL=f"sqlite:///{root / 'lifeline.db'}",
        LIFELINE_DATA_DIR=str(root / "data"),
        LIFELINE_ADMIN_PASSWORD="idle-bench-password",
        **extra_env,
    )
    log = (root / "server.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "lifeline", "serve", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_ready(process: subprocess.Popen[bytes], port: int, timeout: float = 90.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(f"lifeline serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readiness", timeout=5) as r:
                if r.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"lifeline serve not ready after {timeout:.0f} s")


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


def measure(proc: psutil.Process, seconds: float, interval: float) -> dict[str, float]:
    wall0, cpu0 = time.monotonic(), cpu_seconds(proc)
    rss0 = rss_max = proc.memory_info().rss
    rss = rss0
    busiest = 0.0  # the highest CPU share over one sampling interval
    last_wall, last_cpu = wall0, cpu0
    while (now := time.monotonic()) - wall0 < seconds:
        time.sleep(min(interval, seconds - (now - wall0)))
        wall, cpu = time.monotonic(), cpu_seconds(proc)
        rss = proc.memory_info().rss
        rss_max = max(rss_max, rss)
        busiest = max(busiest, (cpu - last_cpu) / (wall - last_wall))
        last_wall, last_cpu = wall, cpu
    wall = time.monotonic() - wall0
    cpu = cpu_seconds(proc) - cpu0
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "cpu_percent": 100 * cpu / wall,
        "busiest_interval_percent": 100 * busiest,
        "rss_start_mib": rss0 / MIB,
        "rss_end_mib": rss / MIB,
        "rss_max_mib": rss_max / MIB,
        "threads": float(proc.num_threads()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=120.0, help="how long to sample (default 120)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait after readiness")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--fail-above", type=float, default=None, help="exit 1 if CPU %% >= this")
    parser.add_argument(
        "--env", action="append", default=[], metavar="LIFELINE_X=V", help="extra settings (repeatable)"
    )
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)

    with tempfile.TemporaryDirectory(prefix="lifeline-idle-") as tmp:
        port = free_port()
        process = start(Path(tmp), port, extra)
        try:
            ready_after = wait_ready(process, port)
            time.sleep(args.settle)
            result = measure(psutil.Process(process.pid), args.seconds, args.interval)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    print(f"lifeline serve idle for {result['seconds']:.0f} s (ready after {ready_after:.1f} s)")
    print(
        f"  CPU: {result['cpu_seconds']:.3f} s = {result['cpu_percent']:.2f} % of one core"
        f" (busiest {args.interval:g} s interval: {result['busiest_interval_percent']:.1f} %)"
    )
    print(
        f"  RSS: start {result['rss_start_mib']:.1f} MiB, end {result['rss_end_mib']:.1f} MiB,"
        f" max {result['rss_max_mib']:.1f} MiB ({result['rss_end_mib'] - result['rss_start_mib']:+.1f} MiB)"
    )
    print(f"  threads: {result['threads']:.0f}")
    if args.fail_above is not None and result["cpu_percent"] >= args.fail_above:
        print(f"FAIL: idle CPU {result['cpu_percent']:.2f} % >= {args.fail_above} %")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
