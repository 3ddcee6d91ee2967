// Memories: what the pipeline remembered from every recording, searched by words (full text), each
// with a link to its recording; the owner (or a superuser) may delete one.

import { api } from "../api.js";
import { fmtTime, h, patch } from "../dom.js";
import { Pager } from "./paging.js";

const PAGE = 50;

function memoryList(items, query, onDelete) {
  if (!items.length) {
    return h(
      "p",
      { class: "muted" },
      query ? `No memories match “${query}”.` : "No memories yet: they come from transcribed recordings.",
    );
  }
  return h(
    "ul",
    { class: "plain memories" },
    items.map((m) => {
      const remove = h(
        "button",
        { type: "button", class: "danger small-button", "data-key": `delete-${m.id}`, "aria-label": `Delete memory: ${m.text}` },
        "Delete",
      );
      remove.addEventListener("click", () => onDelete(m, remove));
      return h(
        "li",
        { class: "memory", "data-memory": m.id },
        h("p", { class: "memory-text" }, m.text),
        h(
          "p",
          { class: "muted small memory-meta" },
          m.category ? h("span", { class: "tag first" }, m.category) : null,
          "from recording ",
          h("a", { href: `#/recordings/${encodeURIComponent(m.audio_uuid)}`, class: "rec-link", "data-uuid": m.audio_uuid }, m.filename || m.audio_uuid),
          `, updated ${fmtTime(m.updated_at)}`,
        ),
        remove,
      );
    }),
  );
}

export function memoriesView({ user, params, frame, live, toast, errorText }) {
  let query = (params[0] || "").trim();
  const input = h("input", {
    id: "memory-q",
    name: "q",
    type: "search",
    maxlength: "500",
    autocomplete: "off",
    value: query,
    "aria-describedby": "memory-q-help",
  });
  const clearButton = h("button", { type: "button", class: "secondary", hidden: !query }, "Show all");
  const form = h(
    "form",
    { class: "card search", role: "search", "aria-label": "Memories" },
    h(
      "div",
      { class: "row" },
      h(
        "div",
        { class: "field grow" },
        h("label", { for: "memory-q" }, "Search memories"),
        input,
      ),
      h("div", { class: "field end" }, h("button", { type: "submit" }, "Search")),
      h("div", { class: "field end" }, clearButton),
    ),
    h("p", { class: "muted small help", id: "memory-q-help" }, "Memories that contain every word, best matches first."),
  );
  const summary = h("p", { id: "memory-summary", class: "muted", "aria-live": "polite" });
  const list = h("div", { id: "memory-list" });
  const { main, banner } = frame(
    "Memories",
    h("p", { class: "muted" }, user.is_superuser ? "Everybody's memories, newest recording first." : "Your memories, newest recording first."),
  );
  let poll = null;
  const pager = new Pager("memories", PAGE, () => poll.now());
  main.append(form, summary, list, pager.element);

  const search = (text) => {
    query = text.trim();
    input.value = query;
    clearButton.hidden = !query;
    pager.reset();
    // the address says what is shown (a link to it shows the same), without a new history entry
    history.replaceState(null, "", query ? `#/memories?q=${encodeURIComponent(query)}` : "#/memories");
    poll.now();
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    search(input.value);
  });
  clearButton.addEventListener("click", () => {
    search("");
    input.focus();
  });

  const remove = async (memory, button) => {
    if (!window.confirm(`Delete this memory?\n\n${memory.text}`)) return;
    const buttons = [...list.querySelectorAll("button")];
    const index = buttons.indexOf(button);
    button.disabled = true;
    try {
      await api(`/api/memories/${encodeURIComponent(memory.id)}`, { method: "DELETE" });
      toast("Memory deleted.");
      await refresh();
      // keep the keyboard where it was: the next memory's button, else the search box
      const left = [...list.querySelectorAll("button")];
      (left[Math.min(index, left.length - 1)] || input).focus();
    } catch (error) {
      button.disabled = false;
      toast(`Could not delete the memory: ${errorText(error)}`, "error");
    }
  };

  const refresh = async () => {
    const asked = query;
    const answer = await api("/api/memories", { query: { q: asked, ...pager.query } });
    if (asked !== query) return; // a newer search is on its way
    if (pager.stepBackIfEmpty(answer)) {
      poll.now();
      return;
    }
    const items = pager.show(answer);
    summary.textContent = asked && items.length ? `Memories that contain “${asked}”, best matches first:` : "";
    patch(list, { asked, items }, (d) => memoryList(d.items, d.asked, remove));
  };
  poll = live(refresh, banner);
  return () => poll.stop();
}
