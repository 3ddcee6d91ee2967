// Paging through a list the API answers without a total: each page says whether another follows
// (`has_more`). A list paged by cursor (action items) says where the next page starts
// (`next_cursor`); the pager keeps the cursors of the pages before, for "Previous".

import { h } from "../dom.js";

export class Pager {
  /** `what` names the list for screen readers ("open action items"); `onMove` shows the new page;
   * with `cursor`, pages are asked for by the cursor the page before answered, else by offset. */
  constructor(what, size, onMove, { cursor = false } = {}) {
    this.size = size;
    this.byCursor = cursor;
    this.page = 0;
    this.cursors = [null]; // where each page up to this one starts (null: the first page)
    this.hasMore = false;
    this.nextCursor = null;
    this.prev = h("button", { type: "button", class: "secondary", "aria-label": `Previous page of ${what}` }, "Previous");
    this.next = h("button", { type: "button", class: "secondary", "aria-label": `Next page of ${what}` }, "Next");
    this.where = h("span", { class: "muted" });
    this.element = h("div", { class: "pager" }, this.prev, this.where, this.next);
    this.prev.addEventListener("click", () => {
      if (this.page === 0) return;
      this.back();
      onMove();
    });
    this.next.addEventListener("click", () => {
      if (!this.hasMore) return;
      this.cursors[this.page + 1] = this.nextCursor;
      this.page += 1;
      onMove();
    });
    this.show({ items: [], has_more: false });
  }

  /** The query for the current page. */
  get query() {
    return this.byCursor
      ? { limit: this.size, cursor: this.cursors[this.page] }
      : { limit: this.size, offset: this.page * this.size };
  }

  /** The items of the page the API answered for `query`; updates the buttons. */
  show(answer) {
    const items = answer.items;
    this.hasMore = Boolean(answer.has_more);
    this.nextCursor = answer.next_cursor ?? null;
    this.prev.disabled = this.page === 0;
    this.next.disabled = !this.hasMore;
    this.element.hidden = this.page === 0 && !this.hasMore;
    const first = this.page * this.size;
    this.where.textContent = items.length ? `${first + 1}–${first + items.length}` : "";
    return items;
  }

  /** Whether the page came back empty past the start (its items went away): step back one page. */
  stepBackIfEmpty(answer) {
    if (answer.items.length > 0 || this.page === 0) return false;
    this.back();
    return true;
  }

  back() {
    this.page = Math.max(0, this.page - 1);
    this.cursors.length = this.page + 1;
  }

  reset() {
    this.page = 0;
    this.cursors = [null];
  }
}
