// Overview: each stage's jobs by state and throughput, the services and breakers, recent failures.

import { api, STAGES } from "../api.js";
import { lineChart, recall, remember, Samples, sparkline } from "../chart.js";
import { badge, fmtClock, fmtMs, fmtTime, h, label, patch, table } from "../dom.js";

const STATES = ["pending", "processing", "retry", "failed", "completed", "dead_letter", "cancelled"];

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

function servicesTable(health, breakers, trends) {
  const services = health.services || {};
  const names = Object.keys(services);
  const rows = names.map((name) => {
    const svc = services[name];
    const points = (trends[name] || []).map((p) => [p.t, p.ms]);
    return [
      h("strong", null, name),
      badge(svc.status),
      svc.last_error ? h("span", { class: "error-text" }, svc.last_error) : svc.detail || "",
      `${fmtMs(svc.last_response_ms)} (p50 ${fmtMs(svc.p50_ms)}, p95 ${fmtMs(svc.p95_ms)})`,
      sparkline(points, `${name} response times, last ${points.length} checks`),
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
  const throughput = new Samples("throughput");
  const trends = recall("response-times", {});

  const poll = live(async () => {
    const [overview, ...perQueue] = await Promise.all([
      api("/api/failure-recovery/system-overview"),
      ...STAGES.map((q) => api(`/api/failure-recovery/persistent-queues/${q}`)),
    ]);
    const now = Date.now() / 1000;
    const values = {};
    for (const q of STAGES) values[q] = overview.queues[q] ? overview.queues[q].completed_last_minute : 0;
    throughput.add({ t: now, values });
    for (const [name, svc] of Object.entries(overview.health.services || {})) {
      if (svc.last_checked_at === null || svc.last_response_ms === null) continue;
      const list = (trends[name] = trends[name] || []);
      if (!list.length || list[list.length - 1].t !== svc.last_checked_at) list.push({ t: svc.last_checked_at, ms: svc.last_response_ms });
      if (list.length > 60) list.splice(0, list.length - 60);
    }
    remember("response-times", trends);

    patch(stages, overview.queues, stageCards);
    const r = overview.recovery;
    recovery.textContent = `Recovery: ${r.runs} runs, ${r.requeued} jobs requeued, ${r.escalated} escalated; last run ${fmtTime(r.last_run_at)}.`;
    const since = now - 600;
    const series = STAGES.map((q) => ({
      name: label(q),
      points: throughput.items.filter((p) => p.t >= since).map((p) => [p.t, p.values[q] || 0]),
    }));
    patch(chart, series, (data) =>
      lineChart(data, { description: "Jobs completed per minute, by stage, over the last minutes", unit: "/min" }),
    );
    patch(services, { health: overview.health, breakers: overview.circuit_breakers, trends }, (d) =>
      servicesTable(d.health, d.breakers, d.trends),
    );
    const recent = perQueue
      .flatMap((q) => q.recent_failures)
      .sort((a, b) => b.updated_at - a.updated_at)
      .slice(0, 15);
    patch(failures, recent, failuresTable);
  }, banner);
  return () => poll.stop();
}
