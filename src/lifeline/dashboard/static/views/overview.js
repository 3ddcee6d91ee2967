// Overview: each stage's jobs by state and throughput, the services and breakers, recent failures.

import { api, STAGES } from "../api.js";
import { lineChart, sparkline } from "../chart.js";
import { badge, fmtClock, fmtMs, fmtTime, h, label, patch, table } from "../dom.js";

const STATES = ["pending", "processing", "retry", "failed", "completed", "dead_letter", "cancelled"];
const TREND_CHECKS = 30; // how many of each service's latest checks its trend shows
const THROUGHPUT_MINUTES = 60; // the chart's span, in 1-minute buckets

/** Each stage's completed jobs per bucket as [bucket start, count] points (every bucket, empty ones 0). */
function throughputSeries(answer, queues) {
  return STAGES.map((q) => {
    const counts = answer.queues[q] || new Array(answer.buckets).fill(0);
    // the legend's figure: the last 60 seconds, not the minute still filling at the chart's end
    const current = queues && queues[q] ? queues[q].completed_last_minute : undefined;
    return {
      key: q,
      name: label(q),
      current,
      points: counts.map((n, i) => [answer.start + i * answer.bucket_seconds, n]),
    };
  });
}

/** What a screen reader hears instead of the chart: each stage's total and busiest minute. */
function throughputDescription(series) {
  const parts = series.map((one) => {
    const values = one.points.map((p) => p[1]);
    const total = values.reduce((sum, n) => sum + n, 0);
    return `${one.name} ${total} in total, at most ${Math.max(0, ...values)} in a minute`;
  });
  return `Jobs completed per minute, by stage, over the last ${THROUGHPUT_MINUTES} minutes: ${parts.join("; ")}.`;
}

/** A service's response-time trend from its recorded checks (oldest first). */
function trend(name, checks) {
  const points = checks.filter((c) => c.latency_ms !== null).map((c) => [c.checked_at, c.latency_ms]);
  const failed = checks.filter((c) => c.latency_ms === null).map((c) => c.checked_at);
  const values = points.map((p) => p[1]);
  let description = `${name}: response times of the last ${checks.length} checks`;
  if (values.length) {
    description += `, from ${fmtMs(Math.min(...values))} to ${fmtMs(Math.max(...values))}, latest ${fmtMs(values[values.length - 1])}`;
  }
  if (failed.length) description += `; ${failed.length} without an answer`;
  return sparkline(points, description, failed);
}

function stageCards(queues) {
  return h(
    "div",
    { class: "grid stages" },
    STAGES.map((stage) => {
      const q = queues[stage];
      if (!q) return null;
      return h(
        "article",
        { class: "card stage", "data-stage": stage },
        h(
          "h3",
          null,
          label(stage),
          q.paused ? badge("paused", "warn") : null,
          q.blocked_by ? h("span", { class: "badge state-failed" }, `blocked: ${q.blocked_by}`) : null,
        ),
        h(
          "dl",
          { class: "counts" },
          STATES.map((state) =>
            h("div", { "data-state": state }, h("dt", null, label(state)), h("dd", null, String(q.counts[state] || 0))),
          ),
        ),
        h("p", { class: "muted small" }, `${q.completed_last_minute} done in the last minute, ${q.completed_last_5_minutes} in 5 min`),
      );
    }),
  );
}

function servicesTable(health, breakers, histories) {
  const services = health.services || {};
  const names = Object.keys(services);
  const rows = names.map((name) => {
    const svc = services[name];
    return [
      h("strong", null, name),
      badge(svc.status),
      svc.last_error ? h("span", { class: "error-text" }, svc.last_error) : svc.detail || "",
      `${fmtMs(svc.last_response_ms)} (p50 ${fmtMs(svc.p50_ms)}, p95 ${fmtMs(svc.p95_ms)})`,
      h("span", { class: "trend", "data-service": name }, trend(name, histories[name] ? histories[name].checks : [])),
      svc.breaker ? badge(svc.breaker) : "—",
      fmtClock(svc.last_checked_at),
    ];
  });
  const services_ = table(
    "Services",
    ["Service", "Health", "Detail", "Response time", "Trend", "Breaker", "Checked"],
    rows,
    { empty: "No services are monitored (LIFELINE_HEALTH_INTERVAL is 0)." },
  );
  const breakerRows = breakers.map((b) => [
    h("strong", null, b.name),
    badge(b.state),
    `${Math.round(b.failure_rate * 100)} % of ${b.calls} calls`,
    b.open_until && b.state !== "closed" ? fmtClock(b.open_until) : "—",
    b.last_error ? h("span", { class: "error-text" }, b.last_error) : "—",
  ]);
  return h(
    "div",
    null,
    h("p", null, "Overall: ", badge(health.status)),
    services_,
    h("h3", null, "Circuit breakers"),
    table("Circuit breakers", ["Breaker", "State", "Failures", "Open until", "Last error"], breakerRows, {
      empty: "No circuit breakers.",
    }),
  );
}

function failuresTable(failures) {
  const rows = failures.map((job) => [
    fmtTime(job.updated_at),
    label(job.queue),
    `#${job.id}`,
    job.recording_id ? h("a", { href: `#/recordings/${encodeURIComponent(job.recording_id)}` }, job.recording_id) : "—",
    badge(job.state),
    `${job.attempts}/${job.max_attempts}`,
    h("span", { class: "error-text" }, job.last_error || "—"),
  ]);
  return table("Recent failures", ["When", "Stage", "Job", "Recording", "State", "Attempts", "Error"], rows, {
    empty: "No recent failures.",
  });
}

export function overviewView({ user, frame, live }) {
  const stages = h("div", { id: "stages" });
  const chart = h("div", { id: "throughput" });
  const services = h("div", { id: "services" });
  const failures = h("div", { id: "failures" });
  const recovery = h("p", { class: "muted small", id: "recovery" });
  const { main, banner } = frame(
    "Overview",
    h("p", { class: "muted" }, user.is_superuser ? "All users' jobs." : "Your jobs."),
  );
  main.append(
    h("section", { "aria-labelledby": "h-stages" }, h("h2", { id: "h-stages" }, "Stages"), stages, recovery),
    h("section", { "aria-labelledby": "h-throughput" }, h("h2", { id: "h-throughput" }, "Throughput (jobs done per minute)"), chart),
    h("section", { "aria-labelledby": "h-services" }, h("h2", { id: "h-services" }, "Services"), services),
    h("section", { "aria-labelledby": "h-failures" }, h("h2", { id: "h-failures" }, "Recent failures"), failures),
  );
  // each service's latest checks, fetched again only when the service was checked since
  const histories = {};
  const refreshHistories = async (services) => {
    for (const name of Object.keys(histories)) if (!(name in services)) delete histories[name];
    await Promise.all(
      Object.entries(services).map(async ([name, svc]) => {
        if (histories[name] && histories[name].at === svc.last_checked_at) return;
        const answer = await api(`/api/failure-recovery/health/${encodeURIComponent(name)}/history`, {
          query: { limit: TREND_CHECKS },
        });
        histories[name] = { at: svc.last_checked_at, checks: answer.checks };
      }),
    );
  };

  const poll = live(async () => {
    const [overview, throughput, ...perQueue] = await Promise.all([
      api("/api/failure-recovery/system-overview"),
      api("/api/failure-recovery/throughput", { query: { minutes: THROUGHPUT_MINUTES, bucket: 60 } }),
      ...STAGES.map((q) => api(`/api/failure-recovery/persistent-queues/${q}`)),
    ]);
    await refreshHistories(overview.health.services || {});

    patch(stages, overview.queues, stageCards);
    const r = overview.recovery;
    recovery.textContent = `Recovery: ${r.runs} runs, ${r.requeued} jobs requeued, ${r.escalated} escalated; last run ${fmtTime(r.last_run_at)}.`;
    patch(chart, throughputSeries(throughput, overview.queues), (data) =>
      lineChart(data, { description: throughputDescription(data), unit: "/min" }),
    );
    patch(services, { health: overview.health, breakers: overview.circuit_breakers, histories }, (d) =>
      servicesTable(d.health, d.breakers, d.histories),
    );
    const recent = perQueue
      .flatMap((q) => q.recent_failures)
      .sort((a, b) => b.updated_at - a.updated_at)
      .slice(0, 15);
    patch(failures, recent, failuresTable);
  }, banner);
  return () => poll.stop();
}
