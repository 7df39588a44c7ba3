"""The admin pages in a real headless Chromium (Debian's package), driven by Playwright.

CI installs `chromium` and Chart.js from the npm registry (see .ci/run); a missing browser is
a failure here, not a skip. Screenshots of every page land in tests/screenshots/ (ignored).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Route, async_playwright, expect

from silicon_pool.settings import DEFAULT_CHARTJS
from tests.conftest import Running, paid_keys
from tests.fake_upstream import FakeUpstream, make_key

HERE = Path(__file__).resolve().parent
SHOTS = HERE / "screenshots"
CHARTJS = HERE / ".npm" / "node_modules" / "chart.js" / "dist" / "chart.umd.min.js"
MESSAGES = [{"role": "user", "content": "hi"}]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Debian's chromium is not installed: apt-get install chromium (see the README's test command)")
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


class Tab:
    """A browser page on the proxy, with console errors collected and Chart.js served locally."""

    def __init__(self, page: Page, base: str) -> None:
        self.page, self.base = page, base
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    async def goto(self, path: str) -> None:
        await self.page.goto(self.base + path)

    async def login(self) -> None:
        await self.goto("/")
        await expect(self.page).to_have_url(f"{self.base}/login?next=/")
        await self.page.fill("input[name=username]", "admin")
        await self.page.fill("input[name=password]", "admin")
        await self.page.click("button[type=submit]")
        await expect(self.page).to_have_url(f"{self.base}/")
        await self.page.wait_for_load_state()  # the page's scripts have run: its buttons answer clicks

    async def shot(self, name: str) -> None:
        SHOTS.mkdir(exist_ok=True)
        await self.page.screenshot(path=SHOTS / f"{name}.png", full_page=True)


async def _serve_chartjs(route: Route) -> None:
    if not CHARTJS.exists():
        pytest.fail(f"Chart.js is not installed at {CHARTJS}: npm install --prefix tests/.npm chart.js")
    # As the CDN does: CORS allowed, so the page's integrity check can read the file.
    await route.fulfill(
        path=CHARTJS, content_type="application/javascript", headers={"Access-Control-Allow-Origin": "*"}
    )


async def open_tab(browser: Browser, proxy: Running, width: int = 1280) -> Tab:
    context = await browser.new_context(viewport={"width": width, "height": 900}, accept_downloads=True)
    page = await context.new_page()
    await page.route(DEFAULT_CHARTJS, _serve_chartjs)
    return Tab(page, proxy.base)


@pytest.fixture
async def tab(browser: Browser, proxy: Running) -> Tab:
    return await open_tab(browser, proxy)


async def test_login_redirects_back_to_the_page_asked_for(tab: Tab) -> None:
    await tab.goto("/logs?page=2")
    await expect(tab.page).to_have_url(f"{tab.base}/login?next=/logs?page%3D2")
    await tab.page.fill("input[name=password]", "wrong")
    await tab.page.fill("input[name=username]", "admin")
    await tab.page.click("button[type=submit]")
    await expect(tab.page.locator("#login-error")).to_be_visible()
    await tab.shot("login")
    await tab.page.fill("input[name=password]", "admin")
    await tab.page.click("button[type=submit]")
    await expect(tab.page).to_have_url(f"{tab.base}/logs?page=2")
    await expect(tab.page.locator("#default-password-warning")).to_be_visible()
    assert tab.errors == [] or all("401" in e for e in tab.errors)


async def test_import_shows_progress_and_counts(tab: Tab, proxy: Running, fake: FakeUpstream) -> None:
    good = paid_keys(fake, 12)
    zero = make_key("zero")
    fake.add_key(zero, "0")
    dead = make_key("dead")
    fake.user_info_delay = 0.05
    await proxy.set(check_concurrency=2)
    await tab.login()
    paste = "\n".join(f"{k} (余额: ¥10.00)" for k in good) + f"\n{zero}----0\n{dead}\n{good[0]}\nsk-oops"
    await tab.page.fill("#import-text", paste)
    await tab.page.click("#import-submit")
    await expect(tab.page.locator("#import-progress")).to_be_visible()
    await expect(tab.page.locator("#import-progress")).to_have_attribute("data-state", "done", timeout=15000)
    assert await tab.page.get_attribute("#import-progress", "aria-valuenow") == "100"
    result = tab.page.locator("#import-result")
    await expect(result).to_contain_text("导入 13 个")
    await expect(result).to_contain_text("零余额 1 个")
    await expect(result).to_contain_text("重复 1")
    await expect(result).to_contain_text("格式错误 1")
    await expect(result).to_contain_text("无效 1")
    await expect(tab.page.locator('[data-field="keys.total"]')).to_have_text("13")
    assert len(proxy.pool) == 13
    await tab.shot("home")
    assert tab.errors == []


async def test_unknown_balances_are_explained_and_topped_up_keys_go_back(
    tab: Tab, proxy: Running, fake: FakeUpstream
) -> None:
    secrets = paid_keys(fake, 3)
    zero, unknown, funded = await proxy.add_keys(*zip(secrets, [0.0, None, 4.0], strict=True))
    await tab.login()
    note = tab.page.locator("#balance-note")
    await expect(note).to_contain_text("仅统计已知余额；1 个 Key 余额未知")
    await tab.shot("home-balance-note")
    await tab.goto("/keys")
    cell = tab.page.locator(f'tr[data-id="{unknown.id}"] td.num').first
    await expect(cell).to_have_text("未知")
    assert "410" in (await cell.get_attribute("title") or "")
    footnote = tab.page.locator("#balance-footnote")  # phones have no hover: the reason stands under the table too
    await expect(footnote).to_contain_text("不再提供国内 Key 的余额查询")
    await expect(tab.page.locator(f'tr[data-id="{funded.id}"] [data-action="funded"]')).to_have_count(0)
    await tab.page.locator(f'tr[data-id="{zero.id}"] [data-action="funded"]').click()
    await expect(tab.page.locator(f'tr[data-id="{zero.id}"] td.num').first).to_have_text("未知")
    assert zero.balance is None and zero.status() == "active"
    await tab.shot("keys-balance-unknown")
    assert tab.errors == []


async def test_keys_table_toggle_copy_and_delete(tab: Tab, proxy: Running, fake: FakeUpstream) -> None:
    secrets = paid_keys(fake, 3)
    keys = await proxy.add_keys(*zip(secrets, [1.0, 2.0, 3.0], strict=True))
    await tab.page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=tab.base)
    await tab.login()
    await tab.goto("/keys")
    rows = tab.page.locator("#keys-table tbody tr")
    await expect(rows).to_have_count(3)
    assert secrets[0] not in await tab.page.content()  # masked in the page
    row = tab.page.locator(f'tr[data-id="{keys[0].id}"]')
    await row.locator('[data-action="toggle"]').click()
    await expect(row.locator(".badge")).to_have_text("已禁用")
    assert keys[0].enabled is False
    await row.get_by_role("button", name="复制").click()
    await expect(tab.page.locator(".toast.good", has_text="已复制")).to_be_visible()
    assert await tab.page.evaluate("navigator.clipboard.readText()") == secrets[0]
    await tab.page.click('th[data-sort="balance"]')
    await expect(rows.first).to_have_attribute("data-id", str(keys[2].id))
    await tab.page.select_option("#state-filter", "disabled")
    await expect(rows).to_have_count(1)
    await tab.page.select_option("#state-filter", "all")
    await expect(rows).to_have_count(3)
    await tab.shot("keys")
    tab.page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await tab.page.locator(f'tr[data-id="{keys[1].id}"]').get_by_role("button", name="删除").click()
    await expect(rows).to_have_count(2)
    assert keys[1].id not in proxy.pool.keys
    assert tab.errors == []


async def test_bulk_selection(tab: Tab, proxy: Running, fake: FakeUpstream) -> None:
    keys = await proxy.add_keys(*((s, 1.0) for s in paid_keys(fake, 4)))
    await tab.login()
    await tab.goto("/keys")
    await expect(tab.page.locator("#keys-table tbody tr")).to_have_count(4)
    await tab.page.check("#select-all")
    await expect(tab.page.locator("#selected-count")).to_have_text("已选 4 个")
    await tab.page.click('[data-bulk="disable"]')
    await expect(tab.page.locator("#keys-table .badge.disabled")).to_have_count(4)
    assert not any(k.enabled for k in keys)


async def test_strategy_change_takes_effect_on_the_next_request(tab: Tab, proxy: Running, fake: FakeUpstream) -> None:
    secrets = paid_keys(fake, 3)
    keys = await proxy.add_keys(*((s, 5.0) for s in secrets))
    for i, key in enumerate(keys):
        key.added_at += i
    await tab.login()
    await tab.goto("/settings")
    await tab.page.select_option("#strategy", "newest")
    await expect(tab.page.locator("#strategy-help")).to_contain_text("添加时间最新优先")
    await tab.page.click("#settings-form button[type=submit]")
    await expect(tab.page.locator(".toast.good")).to_be_visible()
    await proxy.openai().models.list()
    assert fake.requests[-1].key == secrets[2]
    await tab.page.select_option("#strategy", "oldest")
    await tab.page.click("#settings-form button[type=submit]")
    await expect(tab.page.locator(".toast.good").last).to_be_visible()
    await proxy.openai().models.list()
    assert fake.requests[-1].key == secrets[0]
    await tab.page.fill("input[name=max_attempts]", "0")
    await tab.page.click("#settings-form button[type=submit]")
    await expect(tab.page.locator(".toast.bad")).to_contain_text("max_attempts")
    await tab.page.click('[data-generate="api_token"]')
    assert (await tab.page.input_value("input[name=api_token]")).startswith("sp-")
    await tab.shot("settings")
    assert all("400" in e for e in tab.errors)  # the refused save is the only error


async def test_stats_draws_charts(tab: Tab, proxy: Running, fake: FakeUpstream) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    client = proxy.openai()
    for _ in range(3):
        await client.chat.completions.create(model="deepseek-ai/DeepSeek-V3", messages=MESSAGES)
    await proxy.flush()
    await tab.login()
    await tab.goto("/stats")
    await expect(tab.page.locator("#buckets-table tbody tr")).to_have_count(24)
    drawn = await tab.page.evaluate(
        "() => { const c = Chart.getChart('calls-chart');"
        " return c ? c.data.datasets[0].data.reduce((a, b) => a + b, 0) : -1 }"
    )
    assert drawn == 3
    await tab.page.click('[data-range="month"]')
    await expect(tab.page.locator('[data-range="month"]')).to_have_attribute("aria-pressed", "true")
    await expect(tab.page.locator("#no-chart")).to_be_hidden()
    await tab.shot("stats")
    assert tab.errors == []


async def test_stats_falls_back_to_tables_without_chartjs(browser: Browser, proxy: Running) -> None:
    tab = await open_tab(browser, proxy)
    await tab.page.unroute(DEFAULT_CHARTJS)
    await tab.page.route(DEFAULT_CHARTJS, lambda route: route.abort())
    await tab.login()
    await tab.goto("/stats")
    await expect(tab.page.locator("#no-chart")).to_be_visible()
    await expect(tab.page.locator("#buckets-table tbody tr")).to_have_count(24)
    await expect(tab.page.locator("#buckets-table")).to_be_visible()


async def test_logs_filter_and_clear(tab: Tab, proxy: Running, fake: FakeUpstream) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    client = proxy.openai()
    await client.chat.completions.create(model="deepseek-ai/DeepSeek-V3", messages=MESSAGES)
    await client.embeddings.create(model="BAAI/bge-m3", input="x")
    await client.embeddings.create(model="BAAI/bge-m3", input="y")
    await proxy.flush()
    await tab.login()
    await tab.goto("/logs")
    rows = tab.page.locator("#logs-table tbody tr")
    await expect(rows).to_have_count(3)
    await tab.page.select_option("select[name=model]", "BAAI/bge-m3")
    await tab.page.click("#log-filters button[type=submit]")
    await expect(rows).to_have_count(2)
    await tab.page.select_option("select[name=status]", "error")
    await tab.page.click("#log-filters button[type=submit]")
    await expect(rows.first).to_contain_text("暂无日志")
    await tab.page.click("#log-filters button[type=reset]")
    await expect(rows).to_have_count(3)
    await tab.shot("logs")
    tab.page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await tab.page.click("#clear-logs")
    await expect(rows.first).to_contain_text("暂无日志")
    assert tab.errors == []


async def test_models_grouped_and_filtered(tab: Tab, proxy: Running, fake: FakeUpstream) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    await tab.login()
    await tab.goto("/models")
    await expect(tab.page.locator(".model-group h2").first).to_contain_text("文本")
    await tab.page.fill("#model-filter", "bge-m3")
    items = tab.page.locator(".model-list li")
    await expect(items).to_have_count(2)  # BAAI/bge-m3 and Pro/BAAI/bge-m3
    await expect(items.locator(".badge.free")).to_have_count(1)
    await tab.page.fill("#model-filter", "")
    await tab.shot("models")
    assert tab.errors == []


async def test_english_switch_is_remembered_and_logout(tab: Tab) -> None:
    await tab.login()
    await tab.page.click("#lang-switch")
    await expect(tab.page.locator("nav")).to_contain_text("Keys")
    await tab.goto("/settings")
    await expect(tab.page.locator("h1")).to_have_text("Settings")
    await tab.shot("settings-en")
    await tab.page.click("#logout")
    await expect(tab.page).to_have_url(f"{tab.base}/login")
    await expect(tab.page.locator("button[type=submit]")).to_have_text("Log in")
    await tab.goto("/keys")
    await expect(tab.page).to_have_url(f"{tab.base}/login?next=/keys")


@pytest.mark.parametrize("path", ["/", "/keys", "/models", "/logs", "/stats", "/settings"])
async def test_every_page_fits_a_phone(browser: Browser, proxy: Running, fake: FakeUpstream, path: str) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 2)))
    tab = await open_tab(browser, proxy, width=375)
    await tab.login()
    await tab.goto(path)
    await tab.page.wait_for_load_state("networkidle")
    width = await tab.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"{path} is {width}px wide at 375px"
    await tab.shot(f"mobile-{path.strip('/') or 'home'}")
    assert tab.errors == []


@pytest.mark.parametrize(
    ("next_param", "lands_on"),
    [
        ("/..//evil.example/phish", "/"),
        ("/.//evil.example", "/"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("/%2F%2Fevil.example", "/"),
        ("%2F%09%2Fevil.example", "/"),
        ("%2F%0A%2Fevil.example", "/"),
        ("http://%5B", "/"),  # no URL at all
        ("/login?next=/keys", "/"),  # no loop back to the login page
        ("/keys?x=1", "/keys?x=1"),
        ("/logs%3Fpage%3D2%23top", "/logs?page=2#top"),
    ],
)
async def test_login_never_sends_the_browser_off_site(tab: Tab, next_param: str, lands_on: str) -> None:
    """`next` as an attacker writes it into a link; whatever it says, the browser stays on this site."""
    strayed: list[str] = []

    async def elsewhere(route: Route) -> None:
        strayed.append(route.request.url)
        await route.fulfill(status=200, content_type="text/html", body="phished")

    await tab.page.context.route(lambda url: not url.startswith(tab.base), elsewhere)
    await tab.goto(f"/login?next={next_param}")
    await tab.page.fill("input[name=username]", "admin")
    await tab.page.fill("input[name=password]", "admin")
    await tab.page.click("button[type=submit]")
    await tab.page.wait_for_url(lambda url: "/login" not in url)
    assert (tab.page.url, strayed) == (tab.base + lands_on, [])


async def test_rests_are_shown_and_cleared_on_the_keys_and_home_pages(
    tab: Tab, proxy: Running, fake: FakeUpstream
) -> None:
    limited, spare = await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 2)))
    now = proxy.pool.clock()
    proxy.pool.rest(limited, "deepseek-ai/DeepSeek-V3", "RPD", now + 7200)
    proxy.pool.rest(limited, "Qwen/Qwen3-8B", "TPM", now + 40)
    proxy.pool.rest(spare, "deepseek-ai/DeepSeek-V3", "RPM", now + 30)
    await tab.login()
    rows = tab.page.locator("#rests-table tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("deepseek-ai/DeepSeek-V3")
    await expect(rows.first.locator("td.num")).to_have_text("2")
    await tab.shot("home-rests")
    await rows.nth(1).locator("button").click()  # clear Qwen/Qwen3-8B
    await expect(rows).to_have_count(1)
    assert [r.model for r in proxy.pool.rests_of(limited)] == ["deepseek-ai/DeepSeek-V3"]

    await tab.goto("/keys")
    limited_row = tab.page.locator(f'#keys-table tr[data-id="{limited.id}"]')
    await expect(limited_row.locator(".rests li")).to_have_count(1)
    await expect(limited_row.locator(".rests li")).to_contain_text("deepseek-ai/DeepSeek-V3 · RPD")
    await tab.shot("keys-rests")
    await limited_row.locator('[data-action="clear-rests"]').click()
    await expect(limited_row.locator(".rests li")).to_have_count(0)
    assert proxy.pool.rests_of(limited) == [] and proxy.pool.rests_of(spare) != []
    assert tab.errors == []
