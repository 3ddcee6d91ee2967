// A recording's progress across the four stages, as a labelled list of badges.

import { STAGES } from "../api.js";
import { badge, h, label } from "../dom.js";

export function progress(stages) {
  return h(
    "ol",
    { class: "progress", "aria-label": "Stages" },
    STAGES.map((stage) => {
      const state = stages ? stages[stage] : null;
      return h(
        "li",
        { "data-stage": stage, "data-state": state || "none" },
        h("span", { class: "stage-name" }, label(stage)),
        badge(state),
      );
    }),
  );
}
