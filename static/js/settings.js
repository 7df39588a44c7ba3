// Settings: the form the server drew from the settings' declarations, saved as one PATCH;
// each field's data-kind says how its value reads. The admin account below.
"use strict";

const form = document.getElementById("settings-form");
const fields = [...form.querySelectorAll("[data-kind]")];

function showChoiceHelp(select) {
  document.getElementById(`${select.name}-help`).textContent = select.selectedOptions[0]?.dataset.help || "";
}

function fill(values) {
  for (const field of fields) {
    const value = values[field.name];
    field.value = field.dataset.kind === "models" ? value.join("\n") : value;
    if (field.dataset.kind === "choice") showChoiceHelp(field);
  }
}

function read(field) {
  const kind = field.dataset.kind;
  if (kind === "integer" || kind === "number") return field.value === "" ? null : Number(field.value);
  return kind === "models" ? field.value : field.value.trim();
}

for (const select of form.querySelectorAll("select[data-kind=choice]")) {
  select.addEventListener("change", () => showChoiceHelp(select));
}
for (const button of form.querySelectorAll("[data-generate]")) {
  button.addEventListener("click", () => {
    const bytes = crypto.getRandomValues(new Uint8Array(24));
    form[button.dataset.generate].value = `sp-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
  });
}
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const changes = Object.fromEntries(fields.map((field) => [field.name, read(field)]));
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

attempt(async () => fill(await api("GET", "/api/settings")));
