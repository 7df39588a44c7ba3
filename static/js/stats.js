// Stats: calls, errors and tokens per hour or per day, and tokens per model.
// Charts need Chart.js (loaded from the `chartjs_url` setting); without it the tables carry the figures.
"use strict";

const charts = {};
let hasCharts = false;
let last = null; // the figures shown, redrawn as charts once Chart.js arrives
const state = { range: "day", date: new Date() };
const dateInput = document.getElementById("stats-date");

function isoDate(date) {
  return `${date.getFullYear()}-${String(date.getMonth() + 1).padStart(2, "0")}-${String(date.getDate()).padStart(2, "0")}`;
}
dateInput.value = isoDate(state.date);

function draw(id, config) {
  if (!hasCharts) return;
  charts[id]?.destroy();
  charts[id] = new window.Chart(document.getElementById(id), {
    ...config,
    options: { responsive: true, maintainAspectRatio: false, animation: false, ...config.options },
  });
}

function fillTable(id, rows) {
  document.querySelector(`#${id} tbody`).replaceChildren(
    ...rows.map((cells) => el("tr", null, null, ...cells.map((c, i) => el("td", c, i ? "num" : "")))),
  );
}

async function load() {
  const data = await attempt(() => api("GET", `/api/stats?range=${state.range}&date=${dateInput.value}`));
  if (!data) return;
  last = data;
  render(data);
}

function render(data) {
  const labels = data.buckets.map((b) => (state.range === "month" ? b.label.slice(5) : b.label));
  draw("calls-chart", {
    type: "bar",
    data: {
      labels,
      datasets: [
        { label: t("stats.calls"), data: data.buckets.map((b) => b.calls), backgroundColor: "#2f6fed" },
        { label: t("stats.errors"), data: data.buckets.map((b) => b.errors), backgroundColor: "#d0342c" },
      ],
    },
  });
  draw("tokens-chart", {
    type: "bar",
    data: {
      labels,
      datasets: [
        { label: t("stats.prompt"), data: data.buckets.map((b) => b.prompt_tokens), backgroundColor: "#7aa5f8" },
        { label: t("stats.completion"), data: data.buckets.map((b) => b.completion_tokens), backgroundColor: "#17915a" },
      ],
    },
    options: { scales: { x: { stacked: true }, y: { stacked: true } } },
  });
  const top = data.models.slice(0, 12);
  draw("models-chart", {
    type: "bar",
    data: {
      labels: top.map((m) => m.model),
      datasets: [{ label: t("stats.tokens"), data: top.map((m) => m.total_tokens), backgroundColor: "#b76e00" }],
    },
    options: { indexAxis: "y" },
  });
  fillTable("buckets-table", data.buckets.map((b) => [b.label, fmt.number(b.calls), fmt.number(b.errors), fmt.number(b.prompt_tokens), fmt.number(b.completion_tokens)]));
  fillTable("models-table", data.models.map((m) => [m.model, fmt.number(m.calls), fmt.number(m.total_tokens)]));
}

function withoutCharts() {
  document.getElementById("no-chart").hidden = false;
  document.getElementById("charts").hidden = true;
  document.getElementById("tables").open = true;
}

// Chart.js is loaded from here, not from the page, so a slow or blocked CDN never holds up the
// page and its failure is always seen.
function loadChartJs() {
  const box = document.getElementById("charts");
  const script = document.createElement("script");
  script.src = box.dataset.chartjs;
  if (box.dataset.integrity) {
    script.integrity = box.dataset.integrity;
    script.crossOrigin = "anonymous";
  }
  const giveUp = setTimeout(withoutCharts, 8000);
  script.addEventListener("load", () => {
    clearTimeout(giveUp);
    hasCharts = typeof window.Chart === "function";
    if (!hasCharts) withoutCharts();
    else if (last) render(last);
  });
  script.addEventListener("error", () => {
    clearTimeout(giveUp);
    withoutCharts();
  });
  document.head.append(script);
}

for (const button of document.querySelectorAll("[data-range]")) {
  button.addEventListener("click", () => {
    state.range = button.dataset.range;
    for (const other of document.querySelectorAll("[data-range]")) other.setAttribute("aria-pressed", String(other === button));
    load();
  });
}
dateInput.addEventListener("change", load);
loadChartJs();
load();
