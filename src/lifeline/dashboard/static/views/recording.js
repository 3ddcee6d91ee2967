// One recording: its audio, transcript, memories, action items and every job with its attempts;
// the owner (or a superuser) may reprocess it from a stage or delete it.

import { api, ApiError } from "../api.js";
import { badge, fmtDuration, fmtTime, h, label, patch, table } from "../dom.js";
import { progress } from "./progress.js";

function meta(r) {
  const item = (term, value) => h("div", null, h("dt", null, term), h("dd", null, value));
  return h(
    "div",
    null,
    h(
      "dl",
      { class: "meta" },
      item("Status", badge(r.status)),
      item("Created", fmtTime(r.created_at)),
      item("Length", fmtDuration(r.duration_seconds)),
      item("Device", r.device_name || "—"),
      item("Client", r.client_id || "—"),
      item("Source", r.source || "—"),
      item("Recording id", h("code", null, r.audio_uuid)),
    ),
    progress(r.stages),
  );
}

function transcript(t) {
  if (!t) return h("p", { class: "muted" }, "No transcript yet.");
  return h(
    "div",
    null,
    h("p", { class: "transcript", id: "transcript-text" }, t.text || ""),
    t.segments && t.segments.length
      ? h(
          "details",
          null,
          h("summary", null, `${t.segments.length} ${t.segments.length === 1 ? "segment" : "segments"} with times`),
          h("ol", { class: "segments" },
            t.segments.map((seg) =>
              h("li", null, h("span", { class: "time" }, `${fmtDuration(seg.start)}–${fmtDuration(seg.end)}`), " ", seg.text),
            )),
        )
      : null,
  );
}

function memories(list) {
  if (!list.length) return h("p", { class: "muted" }, "No memories.");
  return h("ul", { class: "plain" }, list.map((m) => h("li", null, m.text, m.category ? h("span", { class: "tag" }, m.category) : null)));
}

function actionItems(list, onToggle) {
  if (!list.length) return h("p", { class: "muted" }, "No action items.");
  return h(
    "ul",
    { class: "plain" },
    list.map((item) => {
      const id = `action-${item.id}`;
      const box = h("input", { type: "checkbox", id, "data-key": id, checked: item.status === "done" });
      box.addEventListener("change", () => onToggle(item, box));
      const details = [
        item.assignee ? `for ${item.assignee}` : null,
        item.due ? `due ${item.due}` : null,
        item.at_seconds !== null && item.at_seconds !== undefined ? `at ${fmtDuration(item.at_seconds)}` : null,
      ].filter(Boolean);
      return h(
        "li",
        { class: "action" },
        box,
        h("label", { for: id }, item.text),
        details.length ? h("span", { class: "muted small" }, ` (${details.join(", ")})`) : null,
      );
    }),
  );
}

function jobs(list) {
  if (!list.length) return h("p", { class: "muted" }, "No jobs.");
  return h(
    "div",
    null,
    list.map((job) =>
      h(
        "article",
        { class: "card job", "data-job": String(job.id) },
        h("h3", null, `${label(job.queue)} · job #${job.id} `, badge(job.state)),
        h("p", { class: "small" }, `Attempts ${job.attempts} of ${job.max_attempts}; created ${fmtTime(job.created_at)}, updated ${fmtTime(job.updated_at)}`),
        job.last_error ? h("pre", { class: "error-text" }, job.last_error) : null,
        table(
          `Attempts of job ${job.id}`,
          ["Attempt", "Worker", "Started", "Finished", "Outcome", "Error"],
          (job.attempt_history || []).map((a) => [
            String(a.claim),
            h("code", null, a.worker_id),
            fmtTime(a.started_at),
            fmtTime(a.finished_at),
            badge(a.outcome),
            a.error ? h("span", { class: "error-text" }, a.error) : "—",
          ]),
          { empty: "Not attempted yet." },
        ),
      ),
    ),
  );
}

export function recordingView({ params, frame, live, toast, errorText }) {
  const uuid = params[0];
  const base = `/api/conversations/${encodeURIComponent(uuid)}`;
  const summary = h("div", { id: "summary" });
  const transcriptBox = h("div", { id: "transcript" });
  const memoriesBox = h("div", { id: "memories" });
  const actionsBox = h("div", { id: "action-items" });
  const jobsBox = h("div", { id: "jobs" });
  const player = h("audio", { controls: true, preload: "none", src: `${base}/audio`, id: "player" });
  const stage = h("select", { id: "reprocess-from" },
    ["transcription", "memory", "action_item"].map((s) => h("option", { value: s }, label(s))));
  const reprocess = h("button", { type: "submit" }, "Reprocess");
  const remove = h("button", { type: "button", class: "danger" }, "Delete recording");
  const { main, banner } = frame(
    "Recording",
    h("p", null, h("a", { href: "#/recordings" }, "← All recordings")),
  );
  const heading = main.querySelector("h1");
  let poll = null;
  const controls = h(
    "form",
    { class: "row", "aria-label": "Reprocess" },
    h("div", { class: "field" }, h("label", { for: "reprocess-from" }, "Run again from"), stage),
    h("div", { class: "field end" }, reprocess),
    h("div", { class: "field end" }, remove),
  );
  controls.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api(`${base}/reprocess`, { method: "POST", query: { from: stage.value } });
      toast(`Reprocessing from ${label(stage.value)}.`);
      poll.now();
    } catch (error) {
      toast(`Could not reprocess: ${errorText(error)}`, "error");
    }
  });
  remove.addEventListener("click", async () => {
    if (!window.confirm("Delete this recording and everything derived from it?")) return;
    try {
      await api(base, { method: "DELETE" });
      toast("Recording deleted.");
      location.hash = "#/recordings";
    } catch (error) {
      toast(`Could not delete: ${errorText(error)}`, "error");
    }
  });
  const toggle = async (item, box) => {
    const status = box.checked ? "done" : "open";
    try {
      await api(`/api/action-items/${encodeURIComponent(item.id)}`, { method: "PATCH", json: { status } });
      toast(`Marked ${status}.`);
      poll.now();
    } catch (error) {
      box.checked = !box.checked;
      toast(`Could not update: ${errorText(error)}`, "error");
    }
  };
  const section = (id, title, ...body) =>
    h("section", { "aria-labelledby": id }, h("h2", { id }, title), ...body);
  main.append(
    summary,
    section("h-audio", "Audio", player, controls),
    section("h-transcript", "Transcript", transcriptBox),
    h("div", { class: "grid two" },
      section("h-memories", "Memories", memoriesBox),
      section("h-actions", "Action items", actionsBox)),
    section("h-jobs", "Jobs", jobsBox),
  );
  poll = live(async () => {
    let r;
    try {
      r = await api(base);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        poll.stop();
        heading.textContent = "No such recording";
        banner.textContent = "This recording does not exist, or it is not yours.";
        banner.hidden = false;
        for (const el of main.querySelectorAll("section, #summary")) el.hidden = true;
        return;
      }
      throw error;
    }
    heading.textContent = r.filename || r.audio_uuid;
    document.title = `${heading.textContent} · Lifeline`;
    patch(summary, r, meta);
    patch(transcriptBox, r.transcript, transcript);
    patch(memoriesBox, r.memories, memories);
    patch(actionsBox, r.action_items, (list) => actionItems(list, toggle));
    patch(jobsBox, r.jobs, jobs);
  }, banner);
  return () => poll.stop();
}
