"""`GET /metrics`: Prometheus's text format, read back with prometheus-client's own parser."""

from __future__ import annotations

import sqlite3
import time
from types import SimpleNamespace

import aiohttp
import openai
import pytest
from aiohttp.test_utils import make_mocked_request
from prometheus_client.parser import text_string_to_metric_families

from silicon_pool.metrics import MAX_MODELS, Metrics, _may_scrape
from silicon_pool.store import CallRecord
from tests.conftest import Running, db_path, paid_keys
from tests.fake_upstream import FakeUpstream

CHAT = "deepseek-ai/DeepSeek-V3"
MESSAGES = [{"role": "user", "content": "hello there"}]
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """Family types by name, and every sample's value by name and labels."""
    types, samples = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return types, samples


async def scrape(proxy: Running, http: aiohttp.ClientSession, **headers: str) -> tuple[dict[str, str], Samples]:
    async with http.get(f"{proxy.base}/metrics", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return parse(await resp.text())


async def test_requests_attempts_failovers_and_latency_are_counted(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    dead, good = paid_keys(fake, 2)
    fake.set_behavior(dead, "invalid")
    await proxy.add_keys((dead, 10.0))
    await proxy.add_keys((good, 10.0))
    client = proxy.openai()
    for _ in range(2):
        await client.chat.completions.create(model=CHAT, messages=MESSAGES)
    chunks = [c async for c in await client.chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)]
    assert chunks
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="made/up", messages=MESSAGES)
    types, samples = await scrape(proxy, http)
    requests = samples["silicon_pool_requests_total"]
    assert requests[(("endpoint", "chat/completions"), ("model", CHAT), ("status", "200"))] == 3
    assert requests[(("endpoint", "chat/completions"), ("model", "other"), ("status", "400"))] == 1  # not served
    attempts = samples["silicon_pool_upstream_attempts_total"]
    assert attempts == {(("outcome", "ok"),): 3, (("outcome", "invalid"),): 1, (("outcome", "client"),): 1}
    assert samples["silicon_pool_failovers_total"] == {(("outcome", "invalid"),): 1}
    assert types["silicon_pool_request_duration_seconds"] == "histogram"
    chat = (("endpoint", "chat/completions"),)
    assert samples["silicon_pool_request_duration_seconds_count"][chat] == 4
    assert samples["silicon_pool_request_duration_seconds_bucket"][(*chat, ("le", "+Inf"))] == 4
    assert 0 < samples["silicon_pool_request_duration_seconds_sum"][chat] < 40
    assert samples["silicon_pool_time_to_first_byte_seconds_count"][chat] == 3  # the answers that came
    keys = samples["silicon_pool_keys"]
    assert keys[(("state", "active"),)] == 1 and keys[(("state", "invalid"),)] == 1 and len(keys) == 6
    assert samples["silicon_pool_writer_queue_depth"][()] >= 0
    assert samples["silicon_pool_log_rows_dropped_total"][()] == 0
    assert types["silicon_pool_requests"] == "counter"  # the parser's name for the family of requests_total


async def test_rests_are_counted_by_model_and_kind(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    client = proxy.openai()
    await client.chat.completions.create(model=CHAT, messages=MESSAGES)
    fake.limit(CHAT, rpm=1)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=CHAT, messages=MESSAGES)
    _, samples = await scrape(proxy, http)
    assert samples["silicon_pool_rests"] == {(("kind", "RPM"), ("model", CHAT)): 1}
    assert samples["silicon_pool_keys"][(("state", "active"),)] == 1  # a rest is for one model: the key stays


async def test_a_pool_of_many_keys_makes_no_series_per_key(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 300)))
    for _ in range(5):
        await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES)
    async with http.get(f"{proxy.base}/metrics") as resp:
        text = await resp.text()
    assert len([line for line in text.splitlines() if not line.startswith("#")]) < 60
    assert parse(text)[1]["silicon_pool_keys"][(("state", "active"),)] == 300


def _record(model: str | None, status: int = 200, endpoint: str = "chat/completions") -> CallRecord:
    return CallRecord(time.time(), endpoint, model, 1, status, 1, 120, 30, 1, 1, 2, 0, False, "none", None)


def test_models_and_endpoints_a_client_makes_up_never_become_series() -> None:
    metrics = Metrics(("chat/completions",))
    for n in range(MAX_MODELS + 50):
        metrics.observe(_record(f"served/{n}"))
        metrics.observe(_record(f"made-up/{n}", status=400, endpoint=f"x/{n}"))
    models = {model for _, model, _ in metrics.requests}
    assert len(models) == MAX_MODELS + 1 and "other" in models and not any(m.startswith("made-up") for m in models)
    assert {endpoint for endpoint, _, _ in metrics.requests} == {"chat/completions", "other"}
    assert metrics.requests[("other", "other", 400)] == MAX_MODELS + 50


def test_label_values_are_escaped_as_the_format_says() -> None:
    metrics = Metrics(("chat/completions",))
    odd = 'a"b\\c\nd{e}=,'
    metrics.observe(_record(odd))

    pool = SimpleNamespace(keys={}, live_rests=list)
    store = SimpleNamespace(dropped_rows=0, queue_depth=lambda: 0)
    client = SimpleNamespace(open_connections=0, waiting=0, waited=0, pool_timeouts=0)
    _, samples = parse(metrics.render(pool, store, client))  # type: ignore[arg-type]
    [labels] = samples["silicon_pool_requests_total"]
    assert dict(labels)["model"] == odd


async def test_without_a_token_only_this_machine_may_scrape(proxy: Running, http: aiohttp.ClientSession) -> None:
    await scrape(proxy, http)  # no admin login needed: the test client is 127.0.0.1
    for remote, allowed in [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("::ffff:127.0.0.1", True)]:
        assert _may_scrape(make_mocked_request("GET", "/metrics").clone(remote=remote), "") is allowed, remote
    for remote in ("10.0.0.2", "192.168.1.5", "::ffff:10.0.0.2", "2001:db8::1", "", "not-an-ip"):
        assert not _may_scrape(make_mocked_request("GET", "/metrics").clone(remote=remote), ""), remote
    async with http.get(f"{proxy.base}/metrics", headers={"Host": "evil.example"}) as resp:
        assert resp.status == 403  # the admin's Host check applies, as to every page
    for forwarded in ("X-Forwarded-For", "x-real-ip", "Forwarded"):  # a reverse proxy on this machine
        async with http.get(f"{proxy.base}/metrics", headers={forwarded: "203.0.113.7"}) as resp:
            assert resp.status == 403, forwarded


async def test_with_a_token_a_scrape_must_send_it(proxy: Running, http: aiohttp.ClientSession) -> None:
    await proxy.set(metrics_token="scrape-me", api_token="the-api-token")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer the-api-token"}):
        async with http.get(f"{proxy.base}/metrics", headers=headers) as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
            assert "scrape-me" not in await resp.text()
    await scrape(proxy, http, Authorization="Bearer scrape-me")
    remote = make_mocked_request("GET", "/metrics", headers={"Authorization": "bearer scrape-me"})
    assert _may_scrape(remote.clone(remote="10.0.0.2"), "scrape-me")  # from anywhere, with the token


async def test_the_metrics_token_is_stored_encrypted(proxy: Running) -> None:
    await proxy.set(metrics_token="scrape-me")
    await proxy.flush()
    conn = sqlite3.connect(db_path(proxy))
    try:
        [(stored,)] = conn.execute("SELECT value FROM settings WHERE name = 'metrics_token'").fetchall()
    finally:
        conn.close()
    assert stored.startswith('"enc:') and "scrape-me" not in stored
