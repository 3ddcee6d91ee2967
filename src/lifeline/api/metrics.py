"""Prometheus metrics, read from the store at scrape time.

Every number comes from the store (queue depths, attempt counters written in the transactions
that end attempts, recovery counters, breaker and health rows, one aggregate over the
recordings), so one scrape of any API process
shows the work of every worker process on every host, and nothing is lost when a process restarts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from lifeline.api.context import AppContext
from lifeline.api.services import breaker_list, health_summary
from lifeline.domain import JobState
from lifeline.queue.durations import DURATION_BOUNDS
from lifeline.store.base import AttemptMetric, QueueStats, RecordingTotals, RecoveryStats

_BREAKER_STATES = ("closed", "open", "half_open")
_HEALTH_STATES = ("healthy", "degraded", "unhealthy", "unknown")
# always shown (0 when there are none), so that a dashboard's series exist from the start
_SOURCES = ("upload", "stream", "api")


@dataclass(frozen=True, slots=True)
class Snapshot:
    queues: dict[str, QueueStats]
    attempts: list[AttemptMetric]
    recovery: RecoveryStats
    breakers: list[dict[str, Any]]
    health: dict[str, Any]
    recordings: RecordingTotals


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics())

    def _metrics(self) -> Iterator[Metric]:
        s = self.snapshot
        depth = GaugeMetricFamily(
            "lifeline_queue_jobs", "Jobs per queue and state", labels=["queue", "state"]
        )
        oldest = GaugeMetricFamily(
            "lifeline_queue_oldest_waiting_seconds", "Age of the oldest claimable job", labels=["queue"]
        )
        paused = GaugeMetricFamily("lifeline_queue_paused", "1 when the queue is paused", labels=["queue"])
        for name, q in sorted(s.queues.items()):
            for state in JobState:
                depth.add_metric([name, state.value], q.counts.get(state, 0))
            oldest.add_metric([name], q.oldest_pending_age or 0.0)
            paused.add_metric([name], 1.0 if q.paused else 0.0)
        yield from (depth, oldest, paused)

        attempts = CounterMetricFamily(
            "lifeline_job_attempts", "Attempts that ended, by queue and outcome", labels=["queue", "outcome"]
        )
        durations = HistogramMetricFamily(
            "lifeline_job_duration_seconds",
            "Duration of attempts by queue and outcome",
            labels=["queue", "outcome"],
        )
        grouped: dict[tuple[str, str], list[AttemptMetric]] = {}
        for metric in s.attempts:
            grouped.setdefault((metric.queue, metric.outcome), []).append(metric)
        for (queue, outcome), rows in sorted(grouped.items()):
            per_bucket = [0] * (len(DURATION_BOUNDS) + 1)
            for row in rows:
                per_bucket[min(row.bucket, len(DURATION_BOUNDS))] += row.count
            cumulative, running = [], 0
            for bound, count in zip([*map(str, DURATION_BOUNDS), "+Inf"], per_bucket, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            attempts.add_metric([queue, outcome], running)
            durations.add_metric([queue, outcome], cumulative, sum(r.duration_sum for r in rows))
        yield from (attempts, durations)

        recoveries = CounterMetricFamily(
            "lifeline_recoveries", "Jobs taken back from lost workers", labels=["result"]
        )
        recoveries.add_metric(["requeued"], s.recovery.requeued)
        recoveries.add_metric(["escalated"], s.recovery.escalated)
        yield recoveries
        runs = CounterMetricFamily("lifeline_recovery_runs", "Recovery passes run")
        runs.add_metric([], s.recovery.runs)
        yield runs

        breaker = GaugeMetricFamily(
            "lifeline_breaker_state", "1 for the breaker's current state", labels=["breaker", "state"]
        )
        for record in s.breakers:
            for breaker_state in _BREAKER_STATES:
                breaker.add_metric(
                    [record["name"], breaker_state], 1.0 if record["state"] == breaker_state else 0.0
                )
        yield breaker

        health = GaugeMetricFamily(
            "lifeline_health_status",
            "1 for the service's current health status",
            labels=["service", "status"],
        )
        latency = GaugeMetricFamily(
            "lifeline_health_probe_latency_seconds", "Latency of the last probe", labels=["service"]
        )
        for name, service in sorted(s.health.get("services", {}).items()):
            current = service.get("status", "unknown")
            for health_state in _HEALTH_STATES:
                health.add_metric([name, health_state], 1.0 if current == health_state else 0.0)
            last_ms = service.get("last_response_ms")
            if isinstance(last_ms, int | float):
                latency.add_metric([name], float(last_ms) / 1000)
        yield from (health, latency)

        recordings = GaugeMetricFamily(
            "lifeline_recordings", "Recordings in the store, by source", labels=["source"]
        )
        by_source = {source: 0 for source in _SOURCES} | s.recordings.by_source
        for source, count in sorted(by_source.items()):
            recordings.add_metric([source], count)
        still_open = GaugeMetricFamily(
            "lifeline_recordings_open",
            "Recordings not handed to the pipeline yet: live streams, uploads being stored, or ones"
            " cut off by a crash",
        )
        still_open.add_metric([], s.recordings.open)
        stored = GaugeMetricFamily(
            "lifeline_audio_stored_seconds", "Seconds of audio the recordings in the store hold"
        )
        stored.add_metric([], s.recordings.audio_seconds)
        yield from (recordings, still_open, stored)


async def render_metrics(ctx: AppContext) -> bytes:
    snapshot = Snapshot(
        queues=await ctx.store.queue_stats(),
        attempts=await ctx.store.attempt_metrics(),
        recovery=await ctx.store.recovery_stats(),
        breakers=await breaker_list(ctx),
        health=await health_summary(ctx),
        recordings=await ctx.store.recording_totals(),
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)
