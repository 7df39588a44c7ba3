// Models: the upstream's list grouped by type, free ones marked, filterable, ids copyable.
"use strict";

const TYPE_ORDER = ["text", "image", "audio", "video", "other"];
let models = [];

async function load(refresh = false) {
  const data = await attempt(() => api("GET", `/api/models?refresh=${refresh ? 1 : 0}`));
  if (!data) {
    document.getElementById("model-count").textContent = "";
    return;
  }
  models = data.models;
  render();
}

function render() {
  const needle = document.getElementById("model-filter").value.trim().toLowerCase();
  const freeOnly = document.getElementById("free-only").checked;
  const shown = models.filter((m) => (!needle || m.id.toLowerCase().includes(needle)) && (!freeOnly || m.free));
  document.getElementById("model-count").textContent = t("models.count", { n: shown.length });
  const groups = TYPE_ORDER.map((type) => {
    const items = shown.filter((m) => (TYPE_ORDER.includes(m.type) ? m.type : "other") === type);
    if (!items.length) return null;
    const list = el("ul", null, "model-list");
    for (const model of items) {
      const copy = el("button", t("common.copy"), "small");
      copy.type = "button";
      copy.addEventListener("click", () => copyText(model.id));
      const item = el("li", null, null, el("span", model.id, "id mono"));
      item.title = model.id;
      if (model.sub_type) item.append(el("span", model.sub_type, "badge"));
      if (model.free) item.append(el("span", t("models.free"), "badge free"));
      item.append(copy);
      list.append(item);
    }
    return el("section", null, "model-group", el("h2", `${t(`type.${type}`)} (${items.length})`), list);
  }).filter(Boolean);
  document.getElementById("model-groups").replaceChildren(...groups);
}

document.getElementById("model-filter").addEventListener("input", render);
document.getElementById("free-only").addEventListener("change", render);
document.getElementById("reload").addEventListener("click", () => load(true));
load();
