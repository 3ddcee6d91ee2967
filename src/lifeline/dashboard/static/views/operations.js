// Operations (superusers): dead letters, queues, breakers, health checks, recovery and cleanup.
// The server refuses every one of these calls to a normal user; the page does not offer them.

import { api, STAGES } from "../api.js";
import { badge, fmtAge, fmtClock, fmtMs, fmtTime, h, label, patch, table } from "../dom.js";

const FR = "/api/failure-recovery";

export function operationsView({ user, frame, live, toast, errorText }) {
  if (!user.is_superuser) {
    frame("Operations", h("p", { class: "banner error", role: "alert" }, "Operations are for superusers only."));
    return () => {};
  }
  const { main, banner } = frame("Operations");
  const queuesBox = h("div", { id: "ops-queues" });
  const deadBox = h("div", { id: "dead-letters" });
  const breakersBox = h("div", { id: "ops-breakers" });
  const healthBox = h("div", { id: "ops-health" });
  const reason = h("input", { id: "pause-reason", type: "text", maxlength: "200", autocomplete: "off" });
  let poll = null;

  /** Run an action from a button: disabled while it runs, its answer in the live region. */
  const act = async (button, what, call) => {
    button.disabled = true;
    try {
      const answer = await call();
      toast(answer && answer.message ? answer.message : `${what}: done.`);
    } catch (error) {
      toast(`${what} failed: ${errorText(error)}`, "error");
    } finally {
      button.disabled = false;
      poll.now();
    }
  };
  const button = (text, key, what, call, cls = "secondary") => {
    const b = h("button", { type: "button", class: cls, "data-key": key }, text);
    b.addEventListener("click", () => act(b, what, call));
    return b;
  };

  const queuesTable = (stats) =>
    table(
      "Queues",
      ["Queue", "Pending", "Processing", "Retrying", "Dead letters", "Oldest waiting", "State", "Actions"],
      STAGES.filter((q) => stats[q]).map((q) => {
        const s = stats[q];
        const c = s.counts;
        return [
          h("strong", null, label(q)),
          String(c.pending || 0),
          String(c.processing || 0),
          String((c.retry || 0) + (c.failed || 0)),
          String(c.dead_letter || 0),
          fmtAge(s.oldest_pending_age),
          s.paused ? h("span", null, badge("paused", "warn"), s.pause_reason ? ` ${s.pause_reason}` : "") : s.blocked_by ? `blocked by ${s.blocked_by}` : "running",
          h(
            "div",
            { class: "actions" },
            s.paused
              ? button(`Resume ${label(q)}`, `resume-${q}`, `Resume ${q}`, () => api(`${FR}/persistent-queues/${q}/resume`, { method: "POST" }))
              : button(`Pause ${label(q)}`, `pause-${q}`, `Pause ${q}`, () =>
                  api(`${FR}/persistent-queues/${q}/pause`, { method: "POST", query: { reason: reason.value.trim() } })),
            button(`Recover ${label(q)}`, `recover-${q}`, `Recovery of ${q}`, async () => {
              const r = await api(`${FR}/recovery/${q}/trigger`, { method: "POST" });
              return { message: `Recovery of ${q}: ${r.found} stalled, ${r.requeued.length} requeued, ${r.escalated.length} dead-lettered.` };
            }),
          ),
        ];
      }),
    );

  const deadTable = (pages) =>
    h(
      "div",
      null,
      STAGES.map((q) => {
        const items = pages[q];
        return h(
          "div",
          { class: "dead-queue", "data-queue": q },
          h("h3", null, `${label(q)} (${items.length}${items.length >= 100 ? "+" : ""})`),
          items.length
            ? button(`Requeue all ${label(q)}`, `requeue-all-${q}`, `Requeue all of ${q}`, () =>
                api(`${FR}/persistent-queues/${q}/dead-letter/requeue-all`, { method: "POST" }))
            : null,
          table(
            `Dead letters of ${q}`,
            ["Job", "Recording", "Attempts", "Dead since", "Reason", ""],
            items.map((job) => [
              `#${job.id}`,
              job.recording_id ? h("a", { href: `#/recordings/${encodeURIComponent(job.recording_id)}` }, job.recording_id) : "—",
              `${job.attempts}/${job.max_attempts}`,
              fmtTime(job.updated_at),
              h("span", { class: "error-text" }, job.last_error || "—"),
              h("div", { class: "dead-letter", "data-job": String(job.id) },
                button(`Requeue #${job.id}`, `requeue-${job.id}`, `Requeue job ${job.id}`, () =>
                  api(`${FR}/persistent-queues/${q}/dead-letter/${job.id}/requeue`, { method: "POST" }))),
            ]),
            { empty: "No dead letters." },
          ),
        );
      }),
    );

  const breakersTable = (breakers) =>
    h(
      "div",
      null,
      button("Reset all breakers", "reset-all", "Reset all breakers", () => api(`${FR}/circuit-breakers/reset-all`, { method: "POST" })),
      table(
        "Circuit breakers",
        ["Breaker", "State", "Failures", "Opened", "Open until", "Last error", ""],
        breakers.map((b) => [
          h("strong", null, b.name),
          badge(b.state),
          `${Math.round(b.failure_rate * 100)} % of ${b.calls}`,
          fmtClock(b.opened_at),
          b.state === "closed" ? "—" : fmtClock(b.open_until),
          b.last_error ? h("span", { class: "error-text" }, b.last_error) : "—",
          h("div", { class: "breaker", "data-breaker": b.name },
            button(`Reset ${b.name}`, `reset-${b.name}`, `Reset breaker ${b.name}`, () =>
              api(`${FR}/circuit-breakers/${encodeURIComponent(b.name)}/reset`, { method: "POST" }))),
        ]),
        { empty: "No circuit breakers." },
      ),
    );

  const healthTable = (health) =>
    table(
      "Health",
      ["Service", "Health", "Response", "Checked", "Error", ""],
      Object.entries(health.services || {}).map(([name, svc]) => [
        h("strong", null, name),
        badge(svc.status),
        fmtMs(svc.last_response_ms),
        fmtClock(svc.last_checked_at),
        svc.last_error ? h("span", { class: "error-text" }, svc.last_error) : "—",
        button(`Check ${name} now`, `check-${name}`, `Health check of ${name}`, async () => {
          const r = await api(`${FR}/health/${encodeURIComponent(name)}/check`, { method: "POST" });
          return { message: `${name}: ${r.status}${r.last_response_ms !== null ? ` in ${fmtMs(r.last_response_ms)}` : ""}` };
        }),
      ]),
      { empty: "No services are monitored (LIFELINE_HEALTH_INTERVAL is 0)." },
    );

  const days = h("input", { id: "cleanup-days", type: "number", min: "0", step: "any", inputmode: "decimal" });
  const hours = h("input", { id: "cleanup-hours", type: "number", min: "0", step: "any", inputmode: "decimal" });
  const cleanupResult = h("p", { class: "small", "aria-live": "polite", id: "cleanup-result" });
  const cleanupButton = h("button", { type: "submit" }, "Run cleanup");
  const cleanup = h(
    "form",
    { class: "row", "aria-labelledby": "h-cleanup" },
    h("div", { class: "field" }, h("label", { for: "cleanup-days" }, "Delete finished jobs older than (days; empty: the retention setting)"), days),
    h("div", { class: "field" }, h("label", { for: "cleanup-hours" }, "Also purge dead letters older than (hours; empty: keep them)"), hours),
    h("div", { class: "field end" }, cleanupButton),
  );
  cleanup.addEventListener("submit", (event) => {
    event.preventDefault();
    act(cleanupButton, "Cleanup", async () => {
      const r = await api(`${FR}/maintenance/cleanup`, {
        method: "POST",
        query: { queue_days: days.value, persistent_hours: hours.value },
      });
      const message = `Cleanup: ${r.jobs_deleted} jobs and ${r.attempts_deleted} attempts deleted, ${r.dead_letters_purged} dead letters purged.`;
      cleanupResult.textContent = message;
      return { message };
    });
  });

  const section = (id, title, ...body) => h("section", { "aria-labelledby": id }, h("h2", { id }, title), ...body);
  main.append(
    section("h-dead", "Dead letters", deadBox),
    section("h-queues", "Queues",
      h("div", { class: "field narrow" }, h("label", { for: "pause-reason" }, "Reason for pausing (optional)"), reason),
      queuesBox),
    section("h-breakers", "Circuit breakers", breakersBox),
    section("h-health", "Health", healthBox),
    section("h-cleanup", "Retention cleanup", cleanup, cleanupResult),
  );

  poll = live(async () => {
    const [stats, breakers, health, ...dead] = await Promise.all([
      api(`${FR}/queue-stats`),
      api(`${FR}/circuit-breakers`),
      api(`${FR}/health`),
      ...STAGES.map((q) => api(`${FR}/persistent-queues/${q}/dead-letter`, { query: { limit: 100 } })),
    ]);
    patch(queuesBox, stats, queuesTable);
    patch(deadBox, Object.fromEntries(STAGES.map((q, i) => [q, dead[i].items])), deadTable);
    patch(breakersBox, breakers, breakersTable);
    patch(healthBox, health, healthTable);
  }, banner);
  return () => poll.stop();
}
