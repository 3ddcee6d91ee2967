// Log in with the same accounts as the API; the server sets the session and CSRF cookies.

import { api, ApiError } from "../api.js";
import { h } from "../dom.js";

export function loginView(_main, { onLogin, frame }) {
  const error = h("p", { class: "banner error", role: "alert", id: "login-error", hidden: true });
  const email = h("input", { id: "login-email", name: "username", type: "email", autocomplete: "username", required: true });
  const password = h("input", {
    id: "login-password",
    name: "password",
    type: "password",
    autocomplete: "current-password",
    required: true,
  });
  const submit = h("button", { type: "submit" }, "Log in");
  const form = h(
    "form",
    { class: "card login", "aria-describedby": "login-error" },
    h("div", { class: "field" }, h("label", { for: "login-email" }, "E-mail"), email),
    h("div", { class: "field" }, h("label", { for: "login-password" }, "Password"), password),
    submit,
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    error.hidden = true;
    try {
      const user = await api("/auth/cookie/login", {
        method: "POST",
        form: { username: email.value, password: password.value },
      });
      onLogin(user);
    } catch (err) {
      error.textContent =
        err instanceof ApiError && err.status === 400
          ? "Wrong e-mail or password."
          : `Could not log in: ${err.message}`;
      error.hidden = false;
      submit.disabled = false;
      password.select();
    }
  });
  frame("Log in", form);
  email.focus();
  return () => {};
}
