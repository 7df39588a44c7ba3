// Home: the pool at a glance, import with progress, refresh all, export.
"use strict";

const STATES = ["active", "zero", "unchecked", "cooling", "disabled", "invalid"];

async function loadSummary() {
  const summary = await attempt(() => api("GET", "/api/summary"));
  if (!summary) return;
  for (const node of document.querySelectorAll("#summary [data-field]")) {
    const value = node.dataset.field.split(".").reduce((obj, part) => obj?.[part], summary);
    node.textContent = node.dataset.field === "total_balance" ? fmt.balance(value) : fmt.number(value);
  }
  const note = document.getElementById("balance-note");
  note.hidden = !summary.balance_unknown;
  note.textContent = t("home.balance_note", { n: fmt.number(summary.balance_unknown) });
  const chips = STATES.map((state) => {
    const link = el("a", `${t(`state.${state}`)} ${fmt.number(summary.keys[state])}`, "chip");
    link.href = `/keys?state=${state}`;
    return link;
  });
  document.getElementById("state-chips").replaceChildren(...chips);
  showRests(summary.rests);
}

/** Per model, how many keys rest and until when; each row can be cleared. */
function showRests(rests) {
  document.getElementById("rests").hidden = rests.length === 0;
  document.querySelector("#rests-table tbody").replaceChildren(...rests.map((rest) => {
    const clear = el("button", t("home.rests_clear"), "small");
    clear.type = "button";
    clear.addEventListener("click", () => clearRests(`?model=${encodeURIComponent(rest.model)}`));
    return el(
      "tr", null, null,
      el("td", rest.model || "—", "mono small"),
      el("td", fmt.number(rest.keys), "num"),
      el("td", rest.kind),
      el("td", fmt.time(rest.until)),
      el("td", null, null, clear),
    );
  }));
}

async function clearRests(query) {
  const result = await attempt(() => api("DELETE", `/api/rests${query}`));
  if (result) {
    toast(t("home.rests_cleared", result), "good");
    loadSummary();
  }
}
document.getElementById("clear-all-rests").addEventListener("click", () => clearRests(""));

function runJob(button, start, progress, result, describe) {
  button.addEventListener("click", async () => {
    button.disabled = true;
    result.textContent = "";
    try {
      const job = await attempt(start);
      if (!job) return;
      const finished = await attempt(() => followJob(job.job_id, progress));
      if (!finished) return;
      if (finished.state === "done") {
        result.textContent = describe(finished.result);
        toast(t("common.done"), "good");
      } else {
        result.textContent = `${t("common.failed")}: ${finished.error || ""}`;
        toast(result.textContent, "bad");
      }
      loadSummary();
    } finally {
      button.disabled = false;
    }
  });
}

const importText = document.getElementById("import-text");
runJob(
  document.getElementById("import-submit"),
  () => {
    if (!importText.value.trim()) throw new Error(t("home.import_hint"));
    return api("POST", "/api/keys/import", { keys: importText.value });
  },
  document.getElementById("import-progress"),
  document.getElementById("import-result"),
  (result) => {
    importText.value = "";
    return t("home.import_result", result);
  },
);
runJob(
  document.getElementById("refresh-submit"),
  () => api("POST", "/api/keys/refresh", {}),
  document.getElementById("refresh-progress"),
  document.getElementById("refresh-result"),
  (result) => t("home.refresh_result", result),
);

const baseUrl = `${location.origin}/v1`;
document.getElementById("base-url").textContent = baseUrl;
document.getElementById("copy-base").addEventListener("click", () => copyText(baseUrl));
loadSummary();
