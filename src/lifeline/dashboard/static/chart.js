// Small SVG charts drawn from numbers the API keeps: no library, no canvas, readable by CSS.

import { h, s } from "./dom.js";

function scale(points, width, height, pad) {
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs);
  const x1 = Math.max(...xs);
  const y1 = Math.max(1, ...ys);
  return {
    x: (x) => pad + (x1 === x0 ? width - 2 * pad : ((x - x0) / (x1 - x0)) * (width - 2 * pad)),
    y: (y) => height - pad - (y / y1) * (height - 2 * pad),
    yMax: y1,
    span: x1 - x0,
  };
}

function path(points, sc) {
  return points.map((p, i) => `${i === 0 ? "M" : "L"}${sc.x(p[0]).toFixed(1)},${sc.y(p[1]).toFixed(1)}`).join(" ");
}

/**
 * A line chart of several series ({name, key, points: [[t, value]...]}) over the same time axis,
 * with a legend. `description` is what a screen reader hears instead of the picture. Each line
 * says which series it draws (data-series, the key) and its largest and total value (data-max,
 * data-total).
 */
export function lineChart(series, { description, unit = "", width = 640, height = 180 } = {}) {
  const all = series.flatMap((one) => one.points);
  if (all.length < 2) {
    return h("p", { class: "muted" }, "No data to draw yet.");
  }
  const pad = 8;
  const sc = scale(all, width, height, pad);
  const svg = s(
    "svg",
    { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": description, preserveAspectRatio: "none" },
    s("title", null, description),
    s("line", { x1: pad, y1: height - pad, x2: width - pad, y2: height - pad, class: "axis" }),
    s("line", { x1: pad, y1: pad, x2: width - pad, y2: pad, class: "grid" }),
    series.map((one, i) =>
      one.points.length > 0
        ? s("path", {
            d: path(one.points, sc),
            class: `line series-${i}`,
            "data-series": one.key || one.name,
            "data-max": String(Math.max(...one.points.map((p) => p[1]))),
            "data-total": String(one.points.reduce((sum, p) => sum + p[1], 0)),
          })
        : null,
    ),
  );
  const legend = h(
    "ul",
    { class: "legend" },
    series.map((one, i) => {
      const last = one.current ?? (one.points.length ? one.points[one.points.length - 1][1] : null);
      return h("li", null, h("span", { class: `swatch series-${i}`, "aria-hidden": "true" }), `${one.name}: ${last === null ? "—" : last}${unit}`);
    }),
  );
  const minutes = Math.max(1, Math.round(sc.span / 60));
  return h(
    "figure",
    { class: "chart-box" },
    h("div", { class: "chart-scale" }, h("span", null, `max ${sc.yMax}${unit}`), h("span", null, `last ${minutes} min`)),
    svg,
    h("figcaption", null, legend),
  );
}

/**
 * A tiny trend line of [t, value] points (response times), with `marks` (times of checks that had
 * no value: failures) as dots on the baseline; a dash when there is too little to draw. The SVG
 * says how many points its line has in data-points.
 */
export function sparkline(points, description, marks = []) {
  if (points.length + marks.length < 2) return h("span", { class: "muted" }, "—");
  const width = 120;
  const height = 28;
  const pad = 3;
  const sc = scale([...points, ...marks.map((t) => [t, 0])], width, height, pad);
  const last = points[points.length - 1];
  return s(
    "svg",
    {
      viewBox: `0 0 ${width} ${height}`,
      class: "spark",
      role: "img",
      "aria-label": description,
      "data-points": String(points.length),
      "data-marks": String(marks.length),
    },
    s("title", null, description),
    points.length >= 2 ? s("path", { d: path(points, sc), class: "line series-0" }) : null,
    last ? s("circle", { cx: sc.x(last[0]).toFixed(1), cy: sc.y(last[1]).toFixed(1), r: 2, class: "dot series-0" }) : null,
    marks.map((t) => s("circle", { cx: sc.x(t).toFixed(1), cy: height - pad, r: 2, class: "mark" })),
  );
}
