// Login: post the form, then go back to the page that was asked for (same site only).
"use strict";

const form = document.getElementById("login-form");
const error = document.getElementById("login-error");

/**
 * Where to go after login: the page asked for, if the browser resolves it to this site; else home.
 * The answer is the resolved absolute URL, never the path alone: a path such as "//evil.example"
 * (from "/..//evil.example") would be read again as another host.
 */
function nextPage() {
  const home = new URL("/", location.origin).href;
  let next;
  try {
    next = new URL(new URLSearchParams(location.search).get("next") || "/", location.origin);
  } catch {
    return home;
  }
  const onSite = next.origin === location.origin && !next.pathname.startsWith("//");
  return onSite && next.pathname !== "/login" ? next.href : home;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await api("POST", "/api/login", { username: form.username.value, password: form.password.value });
    location.href = nextPage();
  } catch (failure) {
    error.textContent = failure.message;
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
});
