"""Lifeline's queue benchmark: ``make bench`` (or ``.venv/bin/python bench/run.py``) writes RESULTS.md.

Lifeline against persist-queue (SQLiteAckQueue), huey (SqliteStorage used directly), litequeue and
plain sqlite3 (one transaction per operation, and 100 operations per transaction), each at
``synchronous=NORMAL`` and ``synchronous=FULL`` in WAL mode, each run in a fresh process
(``workload.py``), repeated and reported as medians. Then lifeline alone: RSS against queue depth
(``depth.py``) and where its time goes (``breakdown.py``).

    .venv/bin/python bench/run.py                    # the full run, about 13 minutes on 2 cores
    .venv/bin/python bench/run.py --quick            # a smoke run, about a minute
    .venv/bin/python bench/run.py --jobs 5000 --repeats 1 --libs lifeline,huey
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import json
import os
import platform
import resource
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from common import BENCH_DIR, SYNCS, count, median
from report import LIBS, Results, render

WORK = BENCH_DIR / ".work"


def machine(work: Path) -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    disk = "unknown"
    best = ""
    resolved = str(work.resolve())
    with open("/proc/mounts", encoding="utf-8") as f:
        for line in f:
            device, mount, fstype = line.split()[:3]
            if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best, disk = mount, f"{device} ({fstype}, mounted on {mount})"
    versions = {}
    for package in ("lifeline", "persist-queue", "huey", "litequeue"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "disk": disk,
        "versions": versions,
    }


def cpu_seconds() -> tuple[float, float]:
    """(busy, stolen): CPU time of every process and the kernel since boot, and time the hypervisor took."""
    with open("/proc/stat", encoding="ascii") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def own_cpu_seconds() -> float:
    """CPU time of this process and every benchmark process it waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def command() -> str:
    python = Path(sys.executable)
    try:
        shown = str(python.relative_to(Path.cwd()))
    except ValueError:
        shown = str(python)
    return shlex.join([shown, *sys.argv])


def snapshot_lifeline(work: Path) -> dict[str, Any]:
    """Copy the lifeline package once, so that every run measures the same code.

    The subprocesses import the copy (``PYTHONPATH`` comes before the editable install), so edits
    made to ``src/`` while the benchmark runs do not mix two versions into one report.
    """
    spec = importlib.util.find_spec("lifeline")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("lifeline is not installed: run `make install` first")
    source = Path(next(iter(spec.submodule_search_locations)))
    dest = work / "snapshot"
    shutil.copytree(source, dest / "lifeline", ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    for path in sorted((dest / "lifeline").rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(dest)).encode())
            digest.update(path.read_bytes())
    repo = BENCH_DIR.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(dest), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "source": str(source),
        "sha256": digest.hexdigest()[:16],
        "commit": git("rev-parse", "--short", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--", str(source))),
    }


def python_script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(BENCH_DIR / name), *args]


def run_workload(lib: str, sync: str, jobs: int, cap: float, work: Path) -> dict[str, Any]:
    out = work / f"{lib}-{sync}.json"
    out.unlink(missing_ok=True)
    cmd = python_script(
        "workload.py",
        f"--lib={lib}",
        f"--sync={sync}",
        f"--jobs={jobs}",
        f"--cap={cap}",
        f"--work={work}",
        f"--out={out}",
    )
    subprocess.run(cmd, check=True)
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


def depth_test(work: Path, total: int, ops: int, probes: int) -> dict[str, Any]:
    """Peak RSS of a small workload on an empty queue and on one with ``total`` pending jobs."""
    deep = work / "deep.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{deep}{suffix}").unlink(missing_ok=True)
    out = work / "depth.json"
    subprocess.run(
        python_script("depth.py", "prefill", f"--db={deep}", f"--count={total}", f"--out={out}"), check=True
    )
    prefill: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    empty: list[dict[str, Any]] = []
    deeps: list[dict[str, Any]] = []
    for i in range(probes):
        fresh = work / f"empty{i}.db"
        for target, into in ((fresh, empty), (deep, deeps)):
            subprocess.run(
                python_script("depth.py", "probe", f"--db={target}", f"--ops={ops}", f"--out={out}"),
                check=True,
            )
            probe = json.loads(out.read_text(encoding="utf-8"))
            probe["rss_peak_mb"] = max(probe["rss_peak_mb"], probe["rss_end_mb"])
            into.append(probe)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{fresh}{suffix}").unlink(missing_ok=True)
    pending = count(deep, "SELECT COUNT(*) FROM jobs WHERE state = 'pending'")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{deep}{suffix}").unlink(missing_ok=True)
    empty_mb = median([p["rss_peak_mb"] for p in empty])
    deep_mb = median([p["rss_peak_mb"] for p in deeps])
    return {
        "count": total,
        "pending_after": pending,
        "ops": ops,
        "prefill_seconds": prefill["seconds"],
        "prefill_rate": prefill["rate"],
        "bytes": prefill["bytes"],
        "bytes_per_job": prefill["bytes_per_job"],
        "empty": empty,
        "deep": deeps,
        "empty_mb": empty_mb,
        "deep_mb": deep_mb,
        "delta_mb": deep_mb - empty_mb,
    }


def breakdown(work: Path, ops: int, repeats: int) -> dict[str, Any]:
    out = work / "breakdown.json"
    subprocess.run(
        python_script("breakdown.py", f"--ops={ops}", f"--repeats={repeats}", f"--json={out}"),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


def rerender(source: Path, target: Path) -> None:
    """Write the report again from a run's saved ``results.json`` (after a change to report.py)."""
    saved: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    meta: dict[str, Any] = saved["meta"]
    meta["rerendered"] = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    resolved = source.resolve()
    repo = BENCH_DIR.parent
    meta["source"] = str(resolved.relative_to(repo)) if resolved.is_relative_to(repo) else str(resolved)
    target.write_text(render(Results(saved["runs"], saved.get("failures", [])), meta), encoding="utf-8")
    print(f"wrote {target}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: small numbers, one repeat")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per phase (default 20000; quick: 2000)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per library and level (default 3)")
    parser.add_argument(
        "--cap", type=float, default=None, help="seconds after which a phase stops (default 5)"
    )
    parser.add_argument(
        "--depth", type=int, default=None, help="pending jobs for the RSS test (default 1000000)"
    )
    parser.add_argument("--libs", default=",".join(LIBS), help=f"comma-separated subset of {','.join(LIBS)}")
    parser.add_argument("--no-depth", action="store_true", help="skip the RSS-against-depth test")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the time breakdown")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default bench/RESULTS.md (quick: bench/.work/RESULTS-quick.md)",
    )
    parser.add_argument(
        "--render", type=Path, default=None, help="only write the report again from a saved results.json"
    )
    args = parser.parse_args()
    if args.render is not None:
        rerender(args.render, args.out or BENCH_DIR / "RESULTS.md")
        return
    quick = args.quick
    jobs = args.jobs or (2_000 if quick else 20_000)
    repeats = args.repeats or (1 if quick else 3)
    cap = args.cap or (3.0 if quick else 5.0)
    total = args.depth or (20_000 if quick else 1_000_000)
    out = args.out or (WORK / "RESULTS-quick.md" if quick else BENCH_DIR / "RESULTS.md")
    libs = [lib.strip() for lib in args.libs.split(",") if lib.strip()]
    unknown = set(libs) - set(LIBS)
    if unknown:
        parser.error(f"unknown libraries: {sorted(unknown)}")

    started = time.monotonic()
    load_before = loadavg()
    (busy_before, steal_before), own_before = cpu_seconds(), own_cpu_seconds()
    work = WORK / dt.datetime.now().strftime("run-%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    code = snapshot_lifeline(work)
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    steps = repeats * len(SYNCS) * len(libs)
    step = 0
    for repeat in range(repeats):
        for sync in SYNCS:
            for lib in libs:
                step += 1
                t0 = time.monotonic()
                try:
                    result = run_workload(lib, sync, jobs, cap, work)
                except (subprocess.CalledProcessError, OSError, ValueError) as exc:
                    failures.append(f"{lib} at {sync}, run {repeat + 1}: {exc}")
                    print(f"[{step}/{steps}] {lib} {sync} run {repeat + 1}: FAILED {exc}", flush=True)
                    continue
                result["repeat"] = repeat
                if lib == "lifeline" and not str(result.get("module", "")).startswith(str(work / "snapshot")):
                    failures.append(f"lifeline run {repeat + 1} at {sync} imported {result.get('module')}")
                runs.append(result)
                rates = ", ".join(f"{k} {v['rate']:,.0f}/s" for k, v in result["phases"].items())
                print(
                    f"[{step}/{steps}] {lib} {sync} run {repeat + 1} "
                    f"({time.monotonic() - t0:.0f} s): {rates}",
                    flush=True,
                )
    meta: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": command(),
        "machine": machine(work),
        "code": code,
        "jobs": jobs,
        "repeats": repeats,
        "cap": cap,
    }
    if not args.no_depth and "lifeline" in libs:
        t0 = time.monotonic()
        try:
            meta["depth"] = depth_test(work, total, ops=300, probes=3)
        except (subprocess.CalledProcessError, OSError, ValueError) as exc:
            failures.append(f"RSS against depth: {exc}")
        else:
            print(
                f"depth ({time.monotonic() - t0:.0f} s): empty {meta['depth']['empty_mb']:.1f} MB, "
                f"{total:,} pending {meta['depth']['deep_mb']:.1f} MB",
                flush=True,
            )
    if not args.no_breakdown and "lifeline" in libs:
        t0 = time.monotonic()
        try:
            meta["breakdown"] = breakdown(work, ops=300 if quick else 2000, repeats=1 if quick else 3)
        except (subprocess.CalledProcessError, OSError, ValueError) as exc:
            failures.append(f"time breakdown: {exc}")
        print(f"breakdown ({time.monotonic() - t0:.0f} s)", flush=True)
    elapsed = time.monotonic() - started
    meta["elapsed_min"] = elapsed / 60.0
    busy_after, steal_after = cpu_seconds()
    foreign = (busy_after - busy_before) - (own_cpu_seconds() - own_before)
    capacity = elapsed * (os.cpu_count() or 1)
    meta["load"] = {
        "before": load_before,
        "after": loadavg(),
        "foreign_cpu_pct": max(0.0, foreign) / capacity * 100.0,
        "steal_pct": (steal_after - steal_before) / capacity * 100.0,
    }
    saved = {"meta": meta, "runs": runs, "failures": failures}
    (work / "results.json").write_text(json.dumps(saved, indent=1), encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(Results(runs, failures), meta), encoding="utf-8")
    for leftover in work.iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    print(f"wrote {out} ({meta['elapsed_min']:.1f} min; raw numbers in {work / 'results.json'})", flush=True)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
