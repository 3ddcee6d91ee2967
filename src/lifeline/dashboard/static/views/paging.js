// Paging through a list the API answers without a total: ask for one more than a page, and "Next"
// is there only when that one came back.

import { h } from "../dom.js";

export class Pager {
  /** `what` names the list for screen readers ("open action items"); `onMove` shows the new page. */
  constructor(what, size, onMove) {
    this.size = size;
    this.offset = 0;
    this.prev = h("button", { type: "button", class: "secondary", "aria-label": `Previous page of ${what}` }, "Previous");
    this.next = h("button", { type: "button", class: "secondary", "aria-label": `Next page of ${what}` }, "Next");
    this.where = h("span", { class: "muted" });
    this.element = h("div", { class: "pager" }, this.prev, this.where, this.next);
    this.prev.addEventListener("click", () => {
      this.offset = Math.max(0, this.offset - this.size);
      onMove();
    });
    this.next.addEventListener("click", () => {
      this.offset += this.size;
      onMove();
    });
    this.show([]);
  }

  /** The query for the current page. */
  get query() {
    return { limit: this.size + 1, offset: this.offset };
  }

  /** The items of this page out of what the API answered for `query`; updates the buttons. */
  show(answered) {
    const items = answered.slice(0, this.size);
    this.prev.disabled = this.offset === 0;
    this.next.disabled = answered.length <= this.size;
    this.element.hidden = this.offset === 0 && this.next.disabled;
    this.where.textContent = items.length ? `${this.offset + 1}–${this.offset + items.length}` : "";
    return items;
  }

  /** Whether the page came back empty past the start (its items went away): step back one page. */
  stepBackIfEmpty(answered) {
    if (answered.length > 0 || this.offset === 0) return false;
    this.offset = Math.max(0, this.offset - this.size);
    return true;
  }

  reset() {
    this.offset = 0;
  }
}
