// Building the page from data without ever parsing data as HTML: every text goes through
// textContent (or a text node), every attribute through setAttribute.

const SVG_NS = "http://www.w3.org/2000/svg";

function appendAll(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function setProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "value") el.value = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
}

/** An HTML element: h("a", {href: "#/x", class: "y"}, "text", child, ...). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  appendAll(el, children);
  return el;
}

/** An SVG element. */
export function s(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setProps(el, props);
  appendAll(el, children);
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/**
 * Re-render `container` with `render(data)` only when `data` changed since the last time, and keep
 * the keyboard focus on the element with the same data-key (polling must not steal focus).
 */
export function patch(container, data, render) {
  const serialized = JSON.stringify(data);
  if (container.dataset.rendered === serialized) return;
  const active = document.activeElement;
  const focusKey = active && container.contains(active) ? active.getAttribute("data-key") : null;
  clear(container);
  appendAll(container, [render(data)]);
  container.dataset.rendered = serialized;
  if (focusKey) {
    const again = [...container.querySelectorAll("[data-key]")].find((el) => el.getAttribute("data-key") === focusKey);
    if (again) again.focus();
  }
}

export function fmtTime(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  return new Date(seconds * 1000).toLocaleString();
}

export function fmtClock(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  return new Date(seconds * 1000).toLocaleTimeString();
}

export function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const total = Math.round(seconds);
  const m = Math.floor(total / 60);
  const rest = String(total % 60).padStart(2, "0");
  return `${m}:${rest}`;
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "—";
  return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
}

export function label(name) {
  return String(name).replaceAll("_", " ");
}

/** A state shown as a badge whose colour says how it is going. */
export function badge(state, extra) {
  const text = state === null || state === undefined ? "—" : label(state);
  const kind = state === null || state === undefined ? "none" : String(state).replace(/[^a-z_]/g, "");
  return h("span", { class: `badge state-${kind}${extra ? ` ${extra}` : ""}` }, text);
}

/** A table with a caption and `data-label`s so that narrow screens can show rows as cards. */
export function table(caption, headers, rows, { empty = "Nothing to show." } = {}) {
  if (rows.length === 0) return h("p", { class: "muted" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "cards" },
      h("caption", { class: caption.visible ? "" : "visually-hidden" }, caption.text || caption),
      h("thead", null, h("tr", null, headers.map((name) => h("th", { scope: "col" }, name)))),
      h(
        "tbody",
        null,
        rows.map((cells) =>
          h(
            "tr",
            null,
            cells.map((cell, i) => h("td", { "data-label": headers[i] }, cell)),
          ),
        ),
      ),
    ),
  );
}
