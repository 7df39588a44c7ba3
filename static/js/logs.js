// Logs: the call log, newest first, with filters and paging.
"use strict";

const form = document.getElementById("log-filters");
const body = document.querySelector("#logs-table tbody");
let page = 1;
const PAGE_SIZE = 50;

function fillChoices(select, values) {
  const current = select.value;
  const first = select.options[0];
  select.replaceChildren(first, ...values.map((v) => el("option", v)));
  select.value = values.includes(current) ? current : "";
}

function dayAfter(isoDate) {
  const next = new Date(`${isoDate}T00:00:00`);
  next.setDate(next.getDate() + 1);
  return `${next.getFullYear()}-${String(next.getMonth() + 1).padStart(2, "0")}-${String(next.getDate()).padStart(2, "0")}`;
}

async function load() {
  const query = new URLSearchParams({ page, page_size: PAGE_SIZE });
  for (const name of ["model", "endpoint", "status", "since"]) if (form[name].value) query.set(name, form[name].value);
  if (form.until.value) query.set("until", dayAfter(form.until.value)); // the whole "until" day counts
  const data = await attempt(() => api("GET", `/api/logs?${query}`));
  if (!data) return;
  fillChoices(form.model, data.models);
  fillChoices(form.endpoint, data.endpoints);
  body.replaceChildren(...(data.items.length ? data.items.map(row) : [emptyRow()]));
  renderPager(document.getElementById("pager"), page, PAGE_SIZE, data.total, (p) => {
    page = p;
    load();
  });
}

function emptyRow() {
  const cell = el("td", t("logs.empty"), "empty");
  cell.colSpan = 8;
  return el("tr", null, null, cell);
}

function row(call) {
  const ok = call.status < 400 && !call.error;
  const tokens = call.images ? `${call.images} img` : `${fmt.number(call.prompt_tokens)} / ${fmt.number(call.completion_tokens)}`;
  const endpoint = el("td", call.endpoint);
  if (call.stream) endpoint.append(" ", el("span", t("logs.stream"), "badge"));
  return el(
    "tr", null, null,
    el("td", fmt.time(call.time)),
    endpoint,
    el("td", call.model || "—", "mono small"),
    el("td", call.key_masked || "—", "mono small"),
    el("td", null, null, el("span", String(call.status), `badge ${ok ? "ok" : "error"}`),
      ...(call.limits ? [" ", el("span", `${t("logs.limited")} ${call.limits}`, "badge cooling")] : [])),
    el("td", tokens, "num"),
    el("td", `${fmt.number(call.latency_ms)} ms`, "num"),
    el("td", call.error || "", "wrap small muted"),
  );
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  page = 1;
  load();
});
form.addEventListener("reset", () => setTimeout(() => {
  page = 1;
  load();
}));
document.getElementById("clear-logs").addEventListener("click", async () => {
  if (!confirm(t("logs.confirm_clear"))) return;
  const result = await attempt(() => api("DELETE", "/api/logs"), (r) => t("keys.deleted", { n: r.deleted }));
  if (result) {
    page = 1;
    load();
  }
});
load();
