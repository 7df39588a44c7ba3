// Keys: a paged table with sorting, filters, search, copy, toggles and bulk actions.
"use strict";

const params = new URLSearchParams(location.search);
const view = {
  page: 1,
  pageSize: 50,
  sort: "added_at",
  order: "desc",
  state: params.get("state") || "all",
  q: params.get("q") || "",
};
const selected = new Set();
const body = document.querySelector("#keys-table tbody");
const stateFilter = document.getElementById("state-filter");
const search = document.getElementById("search");
stateFilter.value = view.state;
search.value = view.q;

async function load() {
  const query = new URLSearchParams({
    page: view.page, page_size: view.pageSize, sort: view.sort, order: view.order, state: view.state, q: view.q,
  });
  const data = await attempt(() => api("GET", `/api/keys?${query}`));
  if (!data) return;
  if (!data.items.length && view.page > 1) {
    view.page -= 1;
    return load();
  }
  body.replaceChildren(...(data.items.length ? data.items.map(row) : [emptyRow()]));
  // The reason for "unknown" is a tooltip too, but a phone has no hover: say it under the table.
  document.getElementById("balance-footnote").hidden = !data.items.some(
    (key) => key.balance === null && key.state !== "invalid",
  );
  renderPager(document.getElementById("pager"), view.page, view.pageSize, data.total, (page) => {
    view.page = page;
    load();
  });
  for (const th of document.querySelectorAll("th.sortable")) {
    th.setAttribute("aria-sort", th.dataset.sort === view.sort ? (view.order === "asc" ? "ascending" : "descending") : "none");
  }
  updateBulkBar();
}

function emptyRow() {
  const cell = el("td", t("keys.empty"), "empty");
  cell.colSpan = 9;
  return el("tr", null, null, cell);
}

function actionButton(label, handler, className = "small") {
  const button = el("button", label, className);
  button.type = "button";
  button.addEventListener("click", handler);
  return button;
}

function row(key) {
  const check = el("input");
  check.type = "checkbox";
  check.checked = selected.has(key.id);
  check.setAttribute("aria-label", key.key_masked);
  check.addEventListener("change", () => {
    if (check.checked) selected.add(key.id);
    else selected.delete(key.id);
    updateBulkBar();
  });
  const copy = actionButton(t("common.copy"), async () => {
    const secret = await attempt(() => api("GET", `/api/keys/${key.id}/secret`));
    if (secret) copyText(secret.key);
  });
  const toggle = actionButton(key.enabled ? t("keys.disable") : t("keys.enable"), () =>
    act(() => api("PATCH", `/api/keys/${key.id}`, { enabled: !key.enabled }), t("common.saved")),
  );
  toggle.dataset.action = "toggle";
  const refresh = actionButton(t("keys.refresh"), () => bulk("refresh", [key.id]));
  const remove = actionButton(t("keys.delete"), () => bulk("delete", [key.id]), "small danger");
  const actions = el("td", null, "small", toggle, " ", refresh, " ", remove);
  if (key.balance !== null && key.balance <= 0) {
    const funded = actionButton(t("keys.funded"), () => bulk("funded", [key.id]));
    funded.title = t("keys.funded_hint");
    funded.dataset.action = "funded";
    actions.append(" ", funded);
  }
  const balance = el("td", fmt.balance(key.balance), "num");
  if (key.balance === null && key.state !== "invalid") {
    balance.textContent = t("keys.balance_unknown");
    balance.title = t("keys.balance_unknown_why");
    balance.classList.add("muted", "hint");
  }
  const state = el("td", null, null, badge(key.state));
  if (key.rests.length) {
    const clear = actionButton(t("keys.clear_rests"), () =>
      act(() => api("DELETE", `/api/rests?key_id=${key.id}`), t("common.saved")),
    );
    clear.dataset.action = "clear-rests";
    state.append(el("ul", null, "rests", ...key.rests.map(restItem)), clear);
  }
  const tr = el(
    "tr", null, null,
    el("td", null, null, check),
    el("td", null, null, el("span", key.key_masked, "mono"), " ", copy),
    balance,
    el("td", fmt.number(key.usage_count), "num"),
    state,
    el("td", fmt.time(key.added_at)),
    el("td", fmt.time(key.last_used_at)),
    el("td", key.last_error || "", "wrap small muted"),
    actions,
  );
  tr.dataset.id = key.id;
  return tr;
}

/** One rest under a key's state: the model, the limit met and until when (local time). */
function restItem(rest) {
  const until = new Date(rest.until * 1000);
  const today = until.toDateString() === new Date().toDateString();
  const shown = today ? until.toLocaleTimeString(document.documentElement.lang, { hour12: false }) : fmt.time(rest.until);
  const scope = rest.scope === "account" ? ` · ${t("keys.rest_account")}` : "";
  return el("li", `${rest.model || "—"} · ${rest.kind} · ${t("keys.rest_until")} ${shown}${scope}`);
}

async function act(action, success) {
  const result = await attempt(action, success);
  if (result !== undefined) await load();
  return result;
}

async function bulk(action, ids) {
  if (action === "delete" && !confirm(t("keys.confirm_delete", { n: ids.length }))) return;
  const result = await attempt(() => api("POST", "/api/keys/bulk", { ids, action }));
  if (!result) return;
  if (result.job_id) {
    const bar = document.getElementById("bulk-progress");
    const job = await attempt(() => followJob(result.job_id, bar));
    bar.hidden = true;
    if (job?.state === "done") toast(t("home.refresh_result", job.result), "good");
  } else if ("deleted" in result) {
    for (const id of ids) selected.delete(id);
    toast(t("keys.deleted", { n: result.deleted }), "good");
  } else {
    toast(t("keys.changed", { n: result.changed }), "good");
  }
  await load();
}

function updateBulkBar() {
  document.getElementById("bulk-bar").hidden = selected.size === 0;
  document.getElementById("selected-count").textContent = t("keys.selected", { n: selected.size });
  const boxes = [...body.querySelectorAll("input[type=checkbox]")];
  document.getElementById("select-all").checked = boxes.length > 0 && boxes.every((box) => box.checked);
}

document.getElementById("select-all").addEventListener("change", (event) => {
  for (const tr of body.querySelectorAll("tr[data-id]")) {
    const id = Number(tr.dataset.id);
    if (event.target.checked) selected.add(id);
    else selected.delete(id);
    tr.querySelector("input[type=checkbox]").checked = event.target.checked;
  }
  updateBulkBar();
});
for (const button of document.querySelectorAll("[data-bulk]")) {
  button.addEventListener("click", () => bulk(button.dataset.bulk, [...selected]));
}
for (const th of document.querySelectorAll("th.sortable")) {
  th.addEventListener("click", () => {
    view.order = view.sort === th.dataset.sort && view.order === "desc" ? "asc" : "desc";
    view.sort = th.dataset.sort;
    view.page = 1;
    load();
  });
}
stateFilter.addEventListener("change", () => {
  view.state = stateFilter.value;
  view.page = 1;
  load();
});
let searchTimer;
search.addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    view.q = search.value.trim();
    view.page = 1;
    load();
  }, 250);
});
load();
