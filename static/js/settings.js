// Settings: every runtime setting, saved as one PATCH; the admin account below.
"use strict";

const form = document.getElementById("settings-form");
const NUMBERS = ["max_attempts", "cooldown_seconds", "connect_timeout", "read_timeout", "max_body_mb", "check_concurrency", "refresh_interval_minutes"];
const TEXTS = ["api_token", "free_token", "upstream", "chartjs_url"];
const english = document.documentElement.lang === "en";
let strategies = [];

function showStrategyHelp() {
  const chosen = strategies.find((s) => s.name === form.strategy.value);
  document.getElementById("strategy-help").textContent = chosen ? (english ? chosen.en : chosen.zh) : "";
}

function fill(values) {
  for (const name of [...NUMBERS, ...TEXTS, "strategy"]) form[name].value = values[name];
  form.free_models.value = values.free_models.join("\n");
  showStrategyHelp();
}

async function load() {
  const [schema, values] = await Promise.all([api("GET", "/api/settings/schema"), api("GET", "/api/settings")]);
  strategies = schema.strategies;
  form.strategy.replaceChildren(...strategies.map((s) => {
    const option = el("option", `${s.name} — ${english ? s.en : s.zh}`);
    option.value = s.name;
    return option;
  }));
  fill(values);
}

form.strategy.addEventListener("change", showStrategyHelp);
for (const button of document.querySelectorAll("[data-generate]")) {
  button.addEventListener("click", () => {
    const bytes = crypto.getRandomValues(new Uint8Array(24));
    form[button.dataset.generate].value = `sp-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
  });
}
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const changes = { strategy: form.strategy.value, free_models: form.free_models.value };
  for (const name of NUMBERS) changes[name] = form[name].value === "" ? null : Number(form[name].value);
  for (const name of TEXTS) changes[name] = form[name].value.trim();
  const saved = await attempt(() => api("PATCH", "/api/settings", changes), t("common.saved"));
  if (saved) fill(saved);
});

const account = document.getElementById("account-form");
account.addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { current_password: account.current_password.value, password: account.password.value };
  if (account.username.value.trim()) body.username = account.username.value.trim();
  const result = await attempt(() => api("POST", "/api/account", body), t("common.saved"));
  if (result) location.reload();
});

attempt(load);
