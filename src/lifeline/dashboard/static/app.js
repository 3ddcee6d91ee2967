// The dashboard's shell: who is logged in, hash routing between the views, polling, messages.

import { api, ApiError, hasSession, onUnauthorized } from "./api.js";
import { clear, h } from "./dom.js";
import { actionItemsView } from "./views/action_items.js";
import { loginView } from "./views/login.js";
import { memoriesView } from "./views/memories.js";
import { operationsView } from "./views/operations.js";
import { overviewView } from "./views/overview.js";
import { recordingView } from "./views/recording.js";
import { recordingsView } from "./views/recordings.js";

export const POLL_MS = 2500;

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const statusBox = document.getElementById("status");

const app = {
  user: null,
  stop: () => {},
};

let toastTimer = null;

/** A short message in the polite live region (screen readers read it, it fades after a while). */
export function toast(message, kind = "info") {
  statusBox.textContent = message;
  statusBox.className = `toast show ${kind}`;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    statusBox.className = "toast";
    statusBox.textContent = "";
  }, 6000);
}

export function errorText(error) {
  if (error instanceof ApiError) return `${error.message} (HTTP ${error.status})`;
  return error && error.message ? error.message : String(error);
}

/**
 * Run `refresh` now and every POLL_MS while the view is shown (not while the tab is hidden).
 * A failed refresh shows in `banner` and is tried again at the next tick.
 */
export function live(refresh, banner) {
  let stopped = false;
  let timer = null;
  let inflight = Promise.resolve();
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        const run = refresh();
        inflight = run.catch(() => {});
        await run;
        if (banner && !stopped) banner.hidden = true;
      } catch (error) {
        if (stopped || (error instanceof ApiError && error.status === 401)) return;
        if (banner) {
          banner.textContent = `Could not refresh: ${errorText(error)}. Trying again…`;
          banner.hidden = false;
        }
      }
    }
    if (!stopped) timer = setTimeout(tick, POLL_MS);
  };
  const wake = () => {
    if (!document.hidden && !stopped) {
      clearTimeout(timer);
      tick();
    }
  };
  document.addEventListener("visibilitychange", wake);
  tick();
  return {
    /** Stop polling; answers a promise that settles once the refresh in flight (if any) is done. */
    stop() {
      stopped = true;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", wake);
      return inflight;
    },
    now: wake,
  };
}

/** A view's frame: its heading (focused on arrival, for keyboard and screen reader users) and a banner. */
export function frame(title, ...intro) {
  document.title = `${title} · Lifeline`;
  const heading = h("h1", { tabindex: "-1" }, title);
  const banner = h("p", { class: "banner error", role: "alert", hidden: true });
  clear(main).append(heading, ...intro, banner);
  heading.focus({ preventScroll: true });
  return { main, banner };
}

function showShell() {
  const logged = app.user !== null;
  nav.hidden = !logged;
  who.hidden = !logged;
  document.getElementById("nav-operations").hidden = !(logged && app.user.is_superuser);
  document.getElementById("who-email").textContent = logged ? app.user.email : "";
  const current = (location.hash.match(/^#\/([a-z_-]+)/) || [])[1] || "";
  for (const link of nav.querySelectorAll("a[data-nav]")) {
    const here = current === link.dataset.nav;
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

const ROUTES = [
  [/^#\/overview$/, overviewView],
  [/^#\/recordings$/, recordingsView],
  [/^#\/recordings\/([^/]+)$/, recordingView],
  [/^#\/memories(?:\?q=([^&]*))?$/, memoriesView],
  [/^#\/action-items$/, actionItemsView],
  [/^#\/operations$/, operationsView],
];

/** A part of the address as text: "" when absent, as written when it is not valid %-encoding. */
function decodeParam(part) {
  if (part === undefined) return "";
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

function route() {
  app.stop();
  app.stop = () => {};
  if (app.user === null) {
    showShell();
    app.stop = loginView(main, { onLogin: loggedIn, frame }) || (() => {});
    return;
  }
  const hash = location.hash || "#/overview";
  for (const [pattern, view] of ROUTES) {
    const match = hash.match(pattern);
    if (match) {
      showShell();
      const params = match.slice(1).map(decodeParam);
      app.stop = view({ user: app.user, params, frame, live, toast, errorText }) || (() => {});
      return;
    }
  }
  location.replace("#/overview");
}

function loggedIn(user) {
  app.user = user;
  if (!location.hash || location.hash === "#/login") location.replace("#/overview");
  route();
}

async function logout() {
  // no refresh may start, or still be on its way, once the session is revoked (it would get a 401)
  const stopping = app.stop();
  app.stop = () => {};
  await Promise.resolve(stopping);
  try {
    await api("/auth/cookie/logout", { method: "POST" });
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) {
      toast(`Could not log out: ${errorText(error)}`, "error");
      route(); // still logged in: show the page again
      return;
    }
  }
  app.user = null;
  sessionStorage.clear();
  route();
}

async function start() {
  onUnauthorized(() => {
    if (app.user !== null) {
      app.user = null;
      toast("Your session ended; please log in again.", "error");
      route();
    }
  });
  document.getElementById("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  if (hasSession()) {
    try {
      app.user = await api("/users/me");
    } catch {
      app.user = null;
    }
  }
  route();
}

start();
