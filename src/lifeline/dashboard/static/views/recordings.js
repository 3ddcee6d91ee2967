// Recordings: upload audio, and the list (own recordings; a superuser's are everyone's) with each
// recording's progress through the stages.

import { api } from "../api.js";
import { badge, fmtDuration, fmtTime, h, patch, table } from "../dom.js";
import { progress } from "./progress.js";

const PAGE = 25;

function uploadForm(onDone, { toast, errorText }) {
  const files = h("input", {
    id: "upload-files",
    name: "files",
    type: "file",
    multiple: true,
    required: true,
    accept: "audio/*,.wav,.mp3,.m4a,.aac,.ogg,.opus,.flac,.webm",
  });
  const device = h("input", { id: "upload-device", name: "device_name", type: "text", maxlength: "100", autocomplete: "off" });
  const submit = h("button", { type: "submit" }, "Upload");
  const results = h("ul", { class: "results", id: "upload-results", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "card upload", "aria-labelledby": "h-upload" },
    h("h2", { id: "h-upload" }, "Upload audio"),
    h("div", { class: "row" },
      h("div", { class: "field" }, h("label", { for: "upload-files" }, "Audio files"), files),
      h("div", { class: "field" }, h("label", { for: "upload-device" }, "Device name (optional)"), device),
      h("div", { class: "field end" }, submit),
    ),
    results,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!files.files.length) return;
    const body = new FormData();
    for (const file of files.files) body.append("files", file, file.name);
    if (device.value.trim()) body.append("device_name", device.value.trim());
    submit.disabled = true;
    submit.textContent = "Uploading…";
    results.replaceChildren();
    try {
      const answer = await api("/api/audio/upload", { method: "POST", form: body });
      for (const item of answer.files) {
        if (item.audio_uuid) {
          results.append(
            h("li", { class: "ok" }, `${item.filename}: queued as `,
              h("a", { href: `#/recordings/${encodeURIComponent(item.audio_uuid)}` }, item.audio_uuid),
              ` (${fmtDuration(item.duration_seconds)})`),
          );
        } else {
          results.append(h("li", { class: "error-text" }, `${item.filename}: ${item.error} (HTTP ${item.status_code})`));
        }
      }
      const queued = answer.files.filter((f) => f.audio_uuid).length;
      toast(`${queued} of ${answer.files.length} files queued.`, queued ? "info" : "error");
      form.reset();
      onDone();
    } catch (error) {
      results.append(h("li", { class: "error-text" }, `Upload failed: ${errorText(error)}`));
    } finally {
      submit.disabled = false;
      submit.textContent = "Upload";
    }
  });
  return form;
}

function recordingsTable(page) {
  const rows = page.items.map((r) => [
    h("a", { href: `#/recordings/${encodeURIComponent(r.audio_uuid)}`, class: "rec-link", "data-uuid": r.audio_uuid }, r.filename || r.audio_uuid),
    fmtTime(r.created_at),
    fmtDuration(r.duration_seconds),
    r.device_name || r.client_id || "—",
    progress(r.stages),
    badge(r.status),
    r.transcript_preview ? h("span", { class: "preview" }, r.transcript_preview) : h("span", { class: "muted" }, "—"),
  ]);
  return table("Recordings", ["Recording", "Created", "Length", "Device", "Progress", "Status", "Transcript"], rows, {
    empty: "No recordings yet. Upload one above.",
  });
}

export function recordingsView({ frame, live, toast, errorText }) {
  let offset = 0;
  const list = h("div", { id: "recordings" });
  const counter = h("span", { class: "muted" });
  const prev = h("button", { type: "button", class: "secondary" }, "Previous");
  const next = h("button", { type: "button", class: "secondary" }, "Next");
  const { main, banner } = frame("Recordings");
  let poll = null;
  main.append(
    uploadForm(() => poll && poll.now(), { toast, errorText }),
    h("section", { "aria-labelledby": "h-list" },
      h("h2", { id: "h-list" }, "Your recordings"),
      list,
      h("div", { class: "pager" }, prev, counter, next)),
  );
  prev.addEventListener("click", () => {
    offset = Math.max(0, offset - PAGE);
    poll.now();
  });
  next.addEventListener("click", () => {
    offset += PAGE;
    poll.now();
  });
  poll = live(async () => {
    const page = await api("/api/conversations", { query: { limit: PAGE, offset } });
    if (page.items.length === 0 && offset > 0 && page.total > 0) {
      offset = Math.max(0, Math.floor((page.total - 1) / PAGE) * PAGE);
      return;
    }
    patch(list, page.items, () => recordingsTable(page));
    counter.textContent = page.total ? `${offset + 1}–${offset + page.items.length} of ${page.total}` : "";
    prev.disabled = offset === 0;
    next.disabled = offset + page.items.length >= page.total;
  }, banner);
  return () => poll.stop();
}
