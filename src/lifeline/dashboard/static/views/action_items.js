// Action items from every recording, open ones and done ones; tick one off when it is done, or
// untick it to open it again.

import { api } from "../api.js";
import { fmtDuration, fmtTime, h, patch } from "../dom.js";
import { Pager } from "./paging.js";

const PAGE = 50;
const LISTS = [
  { status: "open", title: "Open", empty: "Nothing open. Well done." },
  { status: "done", title: "Done", empty: "Nothing done yet." },
];

function itemList(items, empty, onToggle) {
  if (!items.length) return h("p", { class: "muted" }, empty);
  return h(
    "ul",
    { class: "plain" },
    items.map((item) => {
      const id = `ai-${item.id}`;
      const box = h("input", { type: "checkbox", id, "data-key": id, checked: item.status === "done" });
      box.addEventListener("change", () => onToggle(item, box));
      const details = [
        item.assignee ? `for ${item.assignee}` : null,
        item.due ? `due ${item.due}` : null,
      ].filter(Boolean);
      const at = item.at_seconds !== null && item.at_seconds !== undefined ? ` at ${fmtDuration(item.at_seconds)}` : "";
      return h(
        "li",
        { class: "action", "data-item": item.id },
        box,
        h("label", { for: id }, item.text),
        details.length ? h("span", { class: "muted small" }, `(${details.join(", ")})`) : null,
        h(
          "span",
          { class: "muted small from" },
          "from ",
          h("a", { href: `#/recordings/${encodeURIComponent(item.audio_uuid)}`, class: "rec-link", "data-uuid": item.audio_uuid }, item.filename || item.audio_uuid),
          `${at}, updated ${fmtTime(item.updated_at)}`,
        ),
      );
    }),
  );
}

export function actionItemsView({ user, frame, live, toast, errorText }) {
  const { main, banner } = frame(
    "Action items",
    h(
      "p",
      { class: "muted" },
      user.is_superuser ? "Everybody's action items, newest recording first." : "Your action items, newest recording first.",
      " Tick one off when it is done.",
    ),
  );
  let poll = null;
  const boxes = {};
  const pagers = {};
  const headings = {};
  const sections = LISTS.map(({ status, title }) => {
    boxes[status] = h("div", { id: `items-${status}` });
    pagers[status] = new Pager(`${status} action items`, PAGE, () => poll.now(), { cursor: true });
    headings[status] = h("h2", { id: `h-items-${status}`, tabindex: "-1" }, title);
    return h("section", { "aria-labelledby": `h-items-${status}` }, headings[status], boxes[status], pagers[status].element);
  });
  main.append(h("div", { class: "grid two" }, sections));

  const toggle = async (item, box) => {
    const status = box.checked ? "done" : "open";
    const from = item.status === "done" ? "done" : "open";
    const index = [...boxes[from].querySelectorAll("input[type=checkbox]")].indexOf(box);
    box.disabled = true;
    try {
      await api(`/api/action-items/${encodeURIComponent(item.id)}`, { method: "PATCH", json: { status } });
      toast(status === "done" ? `Marked done: ${item.text}` : `Opened again: ${item.text}`);
      await refresh();
      // the item moved to the other list: keep the keyboard in this one
      const left = [...boxes[from].querySelectorAll("input[type=checkbox]")];
      (left[Math.min(index, left.length - 1)] || headings[from]).focus();
    } catch (error) {
      box.checked = !box.checked;
      box.disabled = false;
      toast(`Could not update: ${errorText(error)}`, "error");
    }
  };

  const refresh = async () => {
    const answers = await Promise.all(
      LISTS.map(({ status }) => api("/api/action-items", { query: { status, ...pagers[status].query } })),
    );
    let stepped = false;
    LISTS.forEach(({ status, empty }, i) => {
      const pager = pagers[status];
      if (pager.stepBackIfEmpty(answers[i])) {
        stepped = true;
        return;
      }
      const items = pager.show(answers[i]);
      patch(boxes[status], items, (list) => itemList(list, empty, toggle));
    });
    if (stepped) poll.now();
  };
  poll = live(refresh, banner);
  return () => poll.stop();
}
