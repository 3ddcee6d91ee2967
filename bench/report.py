"""Turn the collected measurements into ``RESULTS.md``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from common import BATCH, PAYLOAD_BYTES, PRODUCERS, SQLITE_BATCH, SYNCS, median

LIBS = ["lifeline", "persist-queue", "huey", "litequeue", "sqlite-op", "sqlite-batch"]
NAMES = {
    "lifeline": "lifeline",
    "persist-queue": "persist-queue 1.1.0 (SQLiteAckQueue)",
    "huey": "huey 3.5.4 (SqliteStorage)",
    "litequeue": "litequeue",
    "sqlite-op": "sqlite3, 1 txn per operation",
    "sqlite-batch": f"sqlite3, {SQLITE_BATCH} operations per txn",
}
PHASES = [
    ("enqueue_1", "enqueue, 1 producer"),
    ("enqueue_32", f"enqueue, {PRODUCERS} producers"),
    ("consume_1", "claim+complete, 1 consumer"),
    ("consume_2", "claim+complete, 2 processes"),
]
LIFELINE_WORKER = "lifeline, worker way"
CAP_MARK = "†"


def fmt_rate(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:.2f}x"


def fmt_mb(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:.1f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    marks = [":---" if a == "l" else "---:" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return [*out, ""]


class Results:
    """Every workload run (one per library, durability level and repeat), queried by medians."""

    def __init__(self, runs: list[dict[str, Any]], failures: list[str]) -> None:
        self.runs = runs
        self.failures = failures

    def of(self, lib: str, sync: str) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["lib"] == lib and r["sync"] == sync]

    def values(self, lib: str, sync: str, get: Callable[[dict[str, Any]], float | None]) -> list[float]:
        found = [get(r) for r in self.of(lib, sync)]
        return [float(v) for v in found if v is not None]

    def med(self, lib: str, sync: str, get: Callable[[dict[str, Any]], float | None]) -> float | None:
        values = self.values(lib, sync, get)
        return median(values) if values else None

    def rate(self, lib: str, sync: str, phase: str) -> float | None:
        return self.med(lib, sync, lambda r: r["phases"][phase]["rate"] if phase in r["phases"] else None)

    def capped(self, lib: str, sync: str, phase: str) -> bool:
        return any(r["phases"].get(phase, {}).get("capped", False) for r in self.of(lib, sync))

    def jobs(self, lib: str, sync: str, phase: str) -> float | None:
        return self.med(lib, sync, lambda r: r["phases"][phase]["jobs"] if phase in r["phases"] else None)

    def cell(self, lib: str, sync: str, phase: str) -> str:
        text = fmt_rate(self.rate(lib, sync, phase))
        return text + (f" {CAP_MARK}" if self.capped(lib, sync, phase) else "")

    def libs(self) -> list[str]:
        present = {r["lib"] for r in self.runs}
        return [lib for lib in LIBS if lib in present]

    def first(self, lib: str, sync: str, key: str) -> Any:
        for r in self.of(lib, sync):
            if key in r:
                return r[key]
        return None


def _machine(meta: dict[str, Any]) -> list[str]:
    m = meta["machine"]
    code = meta["code"]
    lines = [
        f"- Date: {meta['date']} (run took {meta['elapsed_min']:.1f} min)",
        f"- Command: `{meta['command']}`",
        f"- CPU: {m['cpu']}, {m['cores']} cores; memory {m['memory']}",
        f"- Python {m['python']}; SQLite {m['sqlite']} (the `sqlite3` module's, used by every library)",
        f"- Disk: the database files live on {m['disk']}",
        f"- Other load: load average {meta['load']['before']} before the run, {meta['load']['after']} after; "
        f"during the run, everything but the benchmark's processes (other processes, kernel I/O threads) "
        f"used {meta['load']['foreign_cpu_pct']:.1f} % of the CPU and the hypervisor took "
        f"{meta['load']['steal_pct']:.1f} % (steal)",
        "- Library versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- Lifeline code measured: commit {code['commit']}"
        + (" plus uncommitted changes" if code["dirty"] else "")
        + f" (a copy of `{code['source']}` taken at the start, sources sha256 `{code['sha256']}`)",
        *(
            [
                f"- Rendered again on {meta['rerendered']} from the run's saved measurements "
                f"(`{meta['source']}`)"
            ]
            if meta.get("rerendered")
            else []
        ),
        f"- Settings: {meta['jobs']:,} jobs of {PAYLOAD_BYTES} bytes per phase; "
        f"medians of {meta['repeats']} runs; each phase stops after {meta['cap']} s "
        f"(cells marked {CAP_MARK}: at least one run stopped there, see the appendix for the job counts)",
    ]
    if meta["load"]["foreign_cpu_pct"] > 10.0:
        lines += [
            "",
            f"**Warning: this machine was shared during the run** (other processes used "
            f"{meta['load']['foreign_cpu_pct']:.0f} % of its CPU, and their disk writes and fsyncs competed "
            "with the benchmark's): the numbers are lower and noisier than on an idle machine, FULL more "
            "than NORMAL. The appendix shows the spread between runs.",
        ]
    return [*lines, ""]


def _targets(res: Results, meta: dict[str, Any]) -> list[str]:
    rows: list[list[str]] = []

    def add(target: str, reached: float | None, ok: bool | None, unit: str, note: str = "") -> None:
        value = "—" if reached is None else f"{reached:,.{0 if abs(reached) >= 100 else 2}f} {unit}".strip()
        verdict = "—" if ok is None else ("met" if ok else "**not met**")
        rows.append([target, value + (f" ({note})" if note else ""), verdict])

    def at_least(value: float | None, bound: float) -> bool | None:
        return None if value is None else value >= bound

    e32n = res.rate("lifeline", "normal", "enqueue_32")
    add("NORMAL: enqueue, 32 concurrent producers ≥ 20,000/s", e32n, at_least(e32n, 20_000), "jobs/s")
    e1n = res.rate("lifeline", "normal", "enqueue_1")
    add("NORMAL: enqueue, 1 producer ≥ 8,000/s", e1n, at_least(e1n, 8_000), "jobs/s")
    cw = res.rate("lifeline", "normal", "consume_1_batch")
    add("NORMAL: claim+complete ≥ 8,000/s (worker way, 1 consumer)", cw, at_least(cw, 8_000), "jobs/s")
    cs = res.rate("lifeline", "normal", "consume_1")
    add("NORMAL: claim+complete ≥ 8,000/s (sequential loop, 1 consumer)", cs, at_least(cs, 8_000), "jobs/s")
    e32f = res.rate("lifeline", "full", "enqueue_32")
    add("FULL: enqueue, 32 concurrent producers ≥ 5,000/s", e32f, at_least(e32f, 5_000), "jobs/s")
    for sync in SYNCS:
        lat = res.med("lifeline", sync, lambda r: r.get("latency_ms", {}).get("median"))
        add(
            f"{sync.upper()}: median claim-to-complete overhead < 0.2 ms",
            lat,
            None if lat is None else lat < 0.2,
            "ms",
        )
    dups = missing = checked = 0
    for r in res.of("lifeline", "normal") + res.of("lifeline", "full"):
        for name in ("consume_2", "consume_2_batch"):
            once = r["once"].get(name)
            if once:
                dups += once["duplicates"]
                missing += once["missing"]
                checked += once["enqueued"]
    ok = None if checked == 0 else dups == 0 and missing == 0
    rows.append(
        [
            "exactly-once with 2 consumer processes",
            f"{dups} duplicates, {missing} missing in {checked:,} jobs (all 2-process runs, both levels)",
            "—" if ok is None else ("met" if ok else "**not met**"),
        ]
    )
    depth = meta.get("depth")
    if depth:
        delta = depth["delta_mb"]
        add(
            f"RSS with {depth['count']:,} pending within 10 MB of an empty queue",
            delta,
            delta <= 10.0,
            "MB",
            "difference of median peak RSS",
        )
        add(
            "≤ 400 bytes on disk per pending job",
            depth["bytes_per_job"],
            depth["bytes_per_job"] <= 400,
            "bytes",
            f"at {depth['count']:,} pending",
        )
    bpj = res.med("lifeline", "normal", lambda r: r.get("bytes_per_job"))
    if bpj is not None:
        jobs = res.med("lifeline", "normal", lambda r: r.get("bytes_jobs")) or 0
        add("≤ 400 bytes on disk per pending job", bpj, bpj <= 400, "bytes", f"at {jobs:,.0f} pending")
    return table(["target (lifeline)", "reached", "verdict"], rows, "lrl")


def _throughput(res: Results, sync: str) -> list[str]:
    header = ["library"] + [label for _, label in PHASES]
    rows = []
    for lib in res.libs():
        rows.append([NAMES[lib]] + [res.cell(lib, sync, phase) for phase, _ in PHASES])
        if lib == "lifeline":
            rows.append(
                [
                    f"{LIFELINE_WORKER}: claim_many({BATCH}) + gather(complete)",
                    "",
                    "",
                    res.cell(lib, sync, "consume_1_batch"),
                    res.cell(lib, sync, "consume_2_batch"),
                ]
            )
    return table(header, rows)


def _ratios(res: Results, sync: str) -> list[str]:
    header = [
        "library",
        "enqueue, 1 producer",
        f"enqueue, {PRODUCERS} producers",
        "claim+complete, 1 consumer: vs sequential / vs worker way",
        "claim+complete, 2 processes: vs sequential / vs worker way",
    ]

    def ratio(lib: str, phase: str, ref_phase: str) -> float | None:
        mine, ref = res.rate(lib, sync, phase), res.rate("lifeline", sync, ref_phase)
        return None if mine is None or not ref else mine / ref

    rows = []
    for lib in res.libs():
        if lib == "lifeline":
            continue
        rows.append(
            [
                NAMES[lib],
                fmt_ratio(ratio(lib, "enqueue_1", "enqueue_1")),
                fmt_ratio(ratio(lib, "enqueue_32", "enqueue_32")),
                f"{fmt_ratio(ratio(lib, 'consume_1', 'consume_1'))} / "
                f"{fmt_ratio(ratio(lib, 'consume_1', 'consume_1_batch'))}",
                f"{fmt_ratio(ratio(lib, 'consume_2', 'consume_2'))} / "
                f"{fmt_ratio(ratio(lib, 'consume_2', 'consume_2_batch'))}",
            ]
        )
    return table(header, rows)


def _once(res: Results) -> list[str]:
    rows = []
    for lib in res.libs():
        for sync in SYNCS:
            names = ["consume_2", "consume_2_batch"] if lib == "lifeline" else ["consume_2"]
            for name in names:
                onces = [r["once"][name] for r in res.of(lib, sync) if name in r["once"]]
                if not onces:
                    continue
                label = NAMES[lib] + (" (worker way)" if name.endswith("batch") else "")
                rows.append(
                    [
                        label,
                        sync.upper(),
                        ", ".join(f"{o['enqueued']:,}" for o in onces),
                        ", ".join(str(o["duplicates"]) for o in onces),
                        ", ".join(str(o["missing"]) for o in onces),
                        ", ".join(f"{o['remaining']:,}" for o in onces),
                    ]
                )
    return table(
        ["library", "level", "jobs enqueued", "duplicates", "missing", "left in queue (cap)"], rows, "llrrrr"
    )


def _memory_disk(res: Results) -> list[str]:
    rows = []
    for lib in res.libs():
        cells = [NAMES[lib]]
        for sync in SYNCS:
            cells.append(fmt_mb(res.med(lib, sync, lambda r: r.get("rss_peak_mb"))))
            cells.append(fmt_mb(res.med(lib, sync, lambda r: r.get("consumer_rss_peak_mb"))))
        bpj = res.med(lib, "normal", lambda r: r.get("bytes_per_job"))
        jobs = res.med(lib, "normal", lambda r: r.get("bytes_jobs"))
        cells.append("—" if bpj is None else f"{bpj:,.0f}")
        cells.append("—" if jobs is None else f"{jobs:,.0f}")
        rows.append(cells)
    header = [
        "library",
        "peak RSS MB, NORMAL: main",
        "NORMAL: consumer",
        "FULL: main",
        "FULL: consumer",
        "bytes on disk per pending job",
        "(pending jobs)",
    ]
    return table(header, rows)


def _config(res: Results) -> list[str]:
    rows = []
    for lib in res.libs():
        for sync in SYNCS:
            describe = res.first(lib, sync, "describe")
            effective = res.first(lib, sync, "effective") or {}
            if describe is None:
                continue
            rows.append(
                [
                    NAMES[lib],
                    sync.upper(),
                    describe,
                    f"{effective.get('journal_mode', '?')} / {effective.get('synchronous', '?')}",
                ]
            )
    return table(
        ["library", "level", "how it was configured", "read back: journal / synchronous"], rows, "llll"
    )


def _lifeline_extra(res: Results) -> list[str]:
    rows = []
    for sync in SYNCS:
        lat = [
            res.med("lifeline", sync, lambda r, k=k: r.get("latency_ms", {}).get(k))  # type: ignore[misc]
            for k in ("median", "p90", "p99")
        ]
        gc32 = res.med("lifeline", sync, lambda r: r.get("group_commit", {}).get("enqueue_32"))
        gcb = res.med("lifeline", sync, lambda r: r.get("group_commit", {}).get("consume_1_batch"))
        rows.append(
            [sync.upper()]
            + ["—" if v is None else f"{v:.3f}" for v in lat]
            + ["—" if gc32 is None else f"{gc32:.1f}", "—" if gcb is None else f"{gcb:.1f}"]
        )
    header = [
        "level",
        "claim→complete median ms",
        "p90 ms",
        "p99 ms",
        f"operations per commit, {PRODUCERS} producers",
        "operations per commit, worker way",
    ]
    return table(header, rows)


def _depth(meta: dict[str, Any]) -> list[str]:
    depth = meta.get("depth")
    if not depth:
        return ["(not run)", ""]
    rows = [
        [
            "empty queue",
            ", ".join(f"{p['rss_peak_mb']:.1f}" for p in depth["empty"]),
            f"{depth['empty_mb']:.1f}",
        ],
        [
            f"{depth['count']:,} pending jobs",
            ", ".join(f"{p['rss_peak_mb']:.1f}" for p in depth["deep"]),
            f"{depth['deep_mb']:.1f}",
        ],
    ]
    lines = [
        f"A fresh process opens the store, enqueues {depth['ops']} jobs and claims and completes "
        f"{depth['ops']} jobs one by one (synchronous=NORMAL). The {depth['count']:,} jobs were "
        f"enqueued beforehand by another process with `enqueue_many` in chunks of 10,000: "
        f"{depth['prefill_seconds']:.0f} s, {depth['prefill_rate']:,.0f} jobs/s; the file is "
        f"{depth['bytes'] / 1e6:,.0f} MB after a checkpoint, "
        f"{depth['bytes_per_job']:.0f} bytes per pending job.",
        "",
    ]
    lines += table(["queue", "peak RSS of each probe, MB", "median MB"], rows)
    lines.append(f"Difference: **{depth['delta_mb']:+.1f} MB**.")
    return [*lines, ""]


def _breakdown(meta: dict[str, Any]) -> list[str]:
    data = meta.get("breakdown")
    if not data:
        return ["(not run)", ""]
    lines = [
        f"`bench/breakdown.py --ops {data['ops']} --repeats {data['repeats']}`: microseconds per operation, "
        "medians. The statements are lifeline's own SQL (imported from `lifeline.store.sqlite`) run in "
        "the calling thread on lifeline's schema and pragmas; the writer-thread time is measured by wrapping "
        "`WriterThread._execute` from the benchmark.",
        "",
    ]
    rows = []
    for section in ("paths", "statements"):
        for key in data[section]["normal"]:
            rows.append([key, f"{data[section]['normal'][key]:.1f}", f"{data[section]['full'][key]:.1f}"])
    lines += table(["µs per operation", "NORMAL", "FULL"], rows)
    rows = [
        [name, f"{v['enqueue']:.1f}", f"{v['claim+complete']:.1f}"] for name, v in data["variants"].items()
    ]
    lines += table(["raw SQL at NORMAL, one thing changed (µs per job)", "enqueue", "claim+complete"], rows)
    rows = [[key, f"{value:.2f}"] for key, value in data["frames"].items()]
    lines += table(["WAL pages (4 KiB) written per commit", "pages"], rows)
    return lines


def _appendix(res: Results) -> list[str]:
    rows = []
    for r in sorted(res.runs, key=lambda r: (LIBS.index(r["lib"]), r["sync"], r["repeat"])):
        for phase, result in r["phases"].items():
            rows.append(
                [
                    NAMES[r["lib"]],
                    r["sync"].upper(),
                    str(r["repeat"] + 1),
                    phase,
                    f"{result['jobs']:,}",
                    f"{result['seconds']:.2f}",
                    fmt_rate(result["rate"]),
                    CAP_MARK if result["capped"] else "",
                ]
            )
    return table(["library", "level", "run", "phase", "jobs", "seconds", "jobs/s", "cap"], rows, "lllrrrrl")


def render(res: Results, meta: dict[str, Any]) -> str:
    out = [
        "# Lifeline queue benchmark",
        "",
        "Written by `bench/run.py` (`make bench`); do not edit by hand. Lifeline against the libraries a",
        "user would pick instead, at equal durability: every library runs in WAL mode at",
        "`synchronous=NORMAL` and again at `synchronous=FULL`; each library's runs happen in fresh",
        "processes (so the RSS is that library's), on fresh database files.",
        "",
        "## Machine and run",
        "",
        *_machine(meta),
        "## Lifeline's targets",
        "",
        *_targets(res, meta),
    ]
    for sync in SYNCS:
        out += [f"## Throughput at synchronous={sync.upper()} (jobs/s, median)", "", *_throughput(res, sync)]
        out += [
            f"Ratios at {sync.upper()}: the library's jobs/s divided by lifeline's "
            "(above 1: faster than lifeline).",
            "",
            *_ratios(res, sync),
        ]
    out += [
        "What the columns measure:",
        "",
        "- *enqueue, 1 producer*: one caller awaiting each `enqueue` before the next (plain sqlite3 "
        f"batched: one caller committing {SQLITE_BATCH} inserts at a time).",
        f"- *enqueue, {PRODUCERS} producers*: lifeline: {PRODUCERS} asyncio tasks on one store; the others: "
        f"{PRODUCERS} threads sharing one queue object (the way each library supports threads).",
        "- *claim+complete*: claim a job, run an empty handler (read the payload id), complete it; until the "
        "queue is empty. huey's `dequeue` deletes the task as it reads it (no acknowledgement), so its "
        "'complete' costs nothing. *2 processes*: two consumer processes started together on the same file, "
        "timed from the start signal until both are done.",
        f"- *worker way* (lifeline): `claim_many(limit={BATCH})`, then the {BATCH} `complete` calls together "
        "with `asyncio.gather`, which group commit turns into a few transactions.",
        "",
        "## Exactly-once with 2 consumer processes",
        "",
        "Each consumer records the payload id of every job it processed; duplicates are ids processed more "
        "than once, missing are ids neither processed nor still in the queue. One value per run.",
        "",
        *_once(res),
        "## Memory and disk",
        "",
        "Peak RSS (`ru_maxrss`) of the process that ran the library's producer and single-consumer phases "
        "(main) and the largest of its consumer processes. Bytes on disk: database file plus WAL after a "
        "`wal_checkpoint(TRUNCATE)`, divided by the jobs pending after the single-producer phase "
        f"({PAYLOAD_BYTES}-byte payloads), at NORMAL.",
        "",
        *_memory_disk(res),
        "## Lifeline: claim-to-complete overhead and group commit",
        "",
        "Time from `claim` returning to `complete` returning with an empty handler, sequential loop "
        "(median of the per-run medians).",
        "",
        *_lifeline_extra(res),
        "## Lifeline: RSS against queue depth",
        "",
        *_depth(meta),
        "## Lifeline: where the time goes (single producer, sequential claim + complete)",
        "",
        *_breakdown(meta),
        "## How each library was configured",
        "",
        *_config(res),
        "Notes on the other libraries' semantics (from their code, version above):",
        "",
        "- persist-queue's `get` selects the next row and marks it unacked in two statements on two "
        "connections with only a thread lock between them, so two processes can take the same job "
        "(the duplicates above). Its next-row query (`WHERE _id > 0 AND status < 2 ORDER BY _id`) has no "
        "index on `status`, so every claim walks past all acknowledged rows still in the table.",
        "- litequeue's `pop` is one `UPDATE ... RETURNING` under `BEGIN IMMEDIATE` (safe across processes), "
        "but to pick the oldest it reads every `status = 0` row through its status index and sorts them "
        "by `message_id` (SQLite's plan: `USE TEMP B-TREE FOR ORDER BY`), so each pop costs in proportion "
        "to the jobs pending (there is no index on `(status, message_id)`).",
        "- huey's SqliteStorage deletes a task in the transaction that dequeues it: at-most-once, no lease, "
        "no acknowledgement; huey's consumer adds its own result handling on top.",
        "",
    ]
    if res.failures:
        out += ["## Failures", "", *[f"- {f}" for f in res.failures], ""]
    out += ["## Appendix: every run", "", *_appendix(res)]
    return "\n".join(out).rstrip() + "\n"
