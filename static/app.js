// silicon-pool admin: what every page shares — the API helper, words, toasts, paging, jobs.
"use strict";

const I18N = JSON.parse(document.getElementById("i18n")?.textContent || "{}");

/** The word for `key`, with {name} placeholders filled from `values`. */
function t(key, values = {}) {
  const text = I18N[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in values ? values[name] : `{${name}}`));
}

function toast(message, kind = "") {
  const box = document.getElementById("toasts");
  if (!box) return;
  const item = document.createElement("div");
  item.className = `toast ${kind}`;
  item.setAttribute("role", kind === "bad" ? "alert" : "status");
  item.textContent = message;
  box.append(item);
  setTimeout(() => item.remove(), kind === "bad" ? 6000 : 3000);
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Call the admin API; a 401 goes back to the login page, other errors throw ApiError. */
async function api(method, path, body) {
  const options = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ApiError(0, String(error));
  }
  const data = response.headers.get("Content-Type")?.includes("json") ? await response.json() : null;
  if (response.status === 401 && !path.startsWith("/api/login")) {
    location.href = `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
    throw new ApiError(401, data?.error || "login required");
  }
  if (!response.ok) throw new ApiError(response.status, data?.error || `HTTP ${response.status}`);
  return data;
}

/** Run an action, show success or the error; returns the action's result (or undefined). */
async function attempt(action, success) {
  try {
    const result = await action();
    if (success) toast(typeof success === "function" ? success(result) : success, "good");
    return result;
  } catch (error) {
    toast(t("common.error") + error.message, "bad");
    return undefined;
  }
}

/** Poll a background job, moving `bar` (a .progress element) until it finishes. */
async function followJob(jobId, bar) {
  const fill = bar.firstElementChild;
  bar.hidden = false;
  for (;;) {
    const job = await api("GET", `/api/jobs/${jobId}`);
    const share = job.total ? job.done / job.total : job.state === "running" ? 0 : 1;
    fill.style.width = `${Math.round(share * 100)}%`;
    bar.setAttribute("aria-valuenow", String(Math.round(share * 100)));
    bar.dataset.state = job.state;
    if (job.state !== "running") return job;
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
}

const dateTime = new Intl.DateTimeFormat(document.documentElement.lang || undefined, {
  year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});
const fmt = {
  time: (seconds) => (seconds ? dateTime.format(new Date(seconds * 1000)) : "—"),
  balance: (value) => (value === null || value === undefined ? "—" : Number(value).toFixed(4).replace(/\.?0+$/, "")),
  number: (value) => Number(value || 0).toLocaleString(),
};

/** A <td>/<th> (or any element) with text, class and optional children. */
function el(tag, text, className, ...children) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  node.append(...children);
  return node;
}

function badge(state, label) {
  return el("span", label ?? t(`state.${state}`), `badge ${state}`);
}

/** Previous / next buttons and "page x of y" under a table. */
function renderPager(container, page, pageSize, total, go) {
  const pages = Math.max(1, Math.ceil(total / pageSize));
  const prev = el("button", t("common.prev"));
  const next = el("button", t("common.next"));
  prev.type = next.type = "button";
  prev.disabled = page <= 1;
  next.disabled = page >= pages;
  prev.onclick = () => go(page - 1);
  next.onclick = () => go(page + 1);
  container.replaceChildren(el("span", t("common.page", { page, pages, total: fmt.number(total) }), "muted"), prev, next);
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = el("textarea", text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  toast(t("common.copied"), "good");
}

function setupFrame() {
  const langSwitch = document.getElementById("lang-switch");
  if (langSwitch) {
    langSwitch.addEventListener("click", () => {
      document.cookie = `lang=${langSwitch.dataset.lang}; path=/; max-age=31536000; samesite=strict`;
      location.reload();
    });
  }
  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      await attempt(() => api("POST", "/api/logout"));
      location.href = "/login";
    });
  }
}

document.addEventListener("DOMContentLoaded", setupFrame);
