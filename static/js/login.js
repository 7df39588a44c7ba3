// Login: post the form, then go back to the page that was asked for (same site only).
"use strict";

const form = document.getElementById("login-form");
const error = document.getElementById("login-error");

/** Where to go after login: the page asked for, if (once the browser has parsed it) it is on this site. */
function nextPage() {
  const next = new URL(new URLSearchParams(location.search).get("next") || "/", location.origin);
  return next.origin === location.origin ? next.pathname + next.search + next.hash : "/";
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
