// The API as the dashboard calls it: same-origin fetch with the session cookie; every request that
// changes something echoes the CSRF cookie in X-CSRF-Token (the server refuses it otherwise).

const SAFE = new Set(["GET", "HEAD", "OPTIONS"]);
const CSRF_COOKIE = "lifeline_csrf";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
  }
}

export function readCookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return null;
}

/** Whether the browser holds a session (the CSRF cookie lives exactly as long as it). */
export function hasSession() {
  return readCookie(CSRF_COOKIE) !== null;
}

let unauthorized = () => {};

/** What to do when the session turns out to be gone (a 401). */
export function onUnauthorized(fn) {
  unauthorized = fn;
}

function describe(body, status) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((e) => (e && e.msg ? String(e.msg) : JSON.stringify(e))).join("; ");
  }
  return `HTTP ${status}`;
}

/**
 * Call the API. `form` is a FormData (multipart) or a plain object (url-encoded); `json` a body.
 * Answers the parsed JSON (null for 204); throws ApiError for any status outside 2xx.
 */
export async function api(path, { method = "GET", query, form, json } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, String(value));
  }
  const headers = { Accept: "application/json" };
  if (!SAFE.has(method)) {
    const token = readCookie(CSRF_COOKIE);
    if (token) headers["X-CSRF-Token"] = token;
  }
  let body;
  if (form instanceof FormData) {
    body = form;
  } else if (form) {
    body = new URLSearchParams(form);
  } else if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(url, { method, headers, body, credentials: "same-origin", cache: "no-store" });
  const type = response.headers.get("content-type") || "";
  const parsed = response.status === 204 ? null : type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    if (response.status === 401) unauthorized();
    throw new ApiError(response.status, describe(parsed, response.status));
  }
  return parsed;
}

export const STAGES = ["chunk", "transcription", "memory", "action_item"];
