"""Settings, logs, stats, summary and the model catalog through the admin API."""

from __future__ import annotations

import time
from datetime import datetime

import aiohttp
import openai
import pytest

from silicon_pool.settings import SETTINGS
from tests.conftest import Running, paid_keys
from tests.fake_upstream import FakeUpstream

CHAT = "deepseek-ai/DeepSeek-V3"
MESSAGES = [{"role": "user", "content": "hello"}]


async def _get(admin: aiohttp.ClientSession, path: str, **params: str) -> dict:
    async with admin.get(path, params=params) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_settings_read_patch_and_refuse(proxy: Running, admin: aiohttp.ClientSession) -> None:
    settings = await _get(admin, "/api/settings")
    assert set(settings) == {s.name for s in SETTINGS}
    assert settings["strategy"] == "least_inflight" and isinstance(settings["free_models"], list)
    async with admin.patch("/api/settings", json={"strategy": "round_robin", "max_attempts": 4}) as resp:
        assert resp.status == 200
        assert (await resp.json())["strategy"] == "round_robin"
    assert proxy.pool.strategy == "round_robin"
    for body, name in [
        ({"nope": 1}, "nope"),
        ({"max_attempts": "x"}, "max_attempts"),
        ({"strategy": "round_robin", "cooldown_seconds": -1}, "cooldown_seconds"),
        ({"upstream": "ftp://x"}, "upstream"),
    ]:
        async with admin.patch("/api/settings", json=body) as resp:
            assert resp.status == 400
            assert name in (await resp.json())["error"]
    assert (await _get(admin, "/api/settings"))["max_attempts"] == 4  # nothing half-applied
    schema = await _get(admin, "/api/settings/schema")
    assert {s["name"] for s in schema["settings"]} == set(settings)
    assert all(s["help"] and s["help_i18n"]["zh"] and s["help_i18n"]["en"] for s in schema["settings"])
    [strategy] = [s for s in schema["settings"] if s["name"] == "strategy"]
    assert strategy["kind"] == "choice" and len(strategy["options"]) == 9
    assert [s["name"] for s in schema["strategies"]] == [o["value"] for o in strategy["options"]]


async def test_logs_filter_page_and_clear(proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession) -> None:
    [secret] = paid_keys(fake, 1)
    [key] = await proxy.add_keys((secret, 5.0))
    client = proxy.openai()
    for _ in range(3):
        await client.chat.completions.create(model=CHAT, messages=MESSAGES)
    await client.embeddings.create(model="BAAI/bge-m3", input="x")
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="no/such", messages=MESSAGES)
    await proxy.flush()
    logs = await _get(admin, "/api/logs")
    assert logs["total"] == 5 and len(logs["items"]) == 5
    newest = logs["items"][0]
    assert newest["model"] == "no/such" and newest["status"] == 400 and newest["error"]
    assert newest["key_masked"] == key.masked and secret not in str(logs)
    assert set(newest) >= {
        "time",
        "endpoint",
        "model",
        "key_masked",
        "status",
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "stream",
        "error",
    }
    assert set(logs["models"]) == {CHAT, "BAAI/bge-m3", "no/such"}
    assert set(logs["endpoints"]) == {"chat/completions", "embeddings"}
    assert (await _get(admin, "/api/logs", model=CHAT))["total"] == 3
    assert (await _get(admin, "/api/logs", endpoint="embeddings"))["total"] == 1
    assert (await _get(admin, "/api/logs", status="error"))["total"] == 1
    assert (await _get(admin, "/api/logs", status="ok"))["total"] == 4
    page = await _get(admin, "/api/logs", page="2", page_size="2")
    assert [i["id"] for i in page["items"]] == [logs["items"][2]["id"], logs["items"][3]["id"]]
    assert (await _get(admin, "/api/logs", since=str(time.time() + 60)))["total"] == 0
    today = datetime.now().date().isoformat()
    assert (await _get(admin, "/api/logs", since=today))["total"] == 5
    for bad in ({"since": "yesterday"}, {"status": "meh"}, {"page_size": "0"}, {"page": "-1"}):
        async with admin.get("/api/logs", params=bad) as resp:
            assert resp.status == 400, bad
    async with admin.delete("/api/logs") as resp:
        assert (await resp.json())["deleted"] == 5
    assert (await _get(admin, "/api/logs"))["total"] == 0


async def test_stats_by_hour_and_by_day(proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession) -> None:
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 5.0))
    client = proxy.openai()
    answers = [await client.chat.completions.create(model=CHAT, messages=MESSAGES) for _ in range(2)]
    await client.embeddings.create(model="BAAI/bge-m3", input="x")
    await proxy.flush()
    now = datetime.now()
    day = await _get(admin, "/api/stats", range="day")
    assert len(day["buckets"]) == 24
    hour = day["buckets"][now.hour]
    assert hour["label"] == f"{now.hour:02d}:00" and hour["calls"] == 3 and hour["errors"] == 0
    assert hour["completion_tokens"] == sum(a.usage.completion_tokens for a in answers)
    assert day["models"][0]["model"] == CHAT and day["models"][0]["calls"] == 2
    month = await _get(admin, "/api/stats", range="month", date=now.date().isoformat())
    assert month["buckets"][now.day - 1]["calls"] == 3 and month["buckets"][0]["label"].endswith("-01")
    empty = await _get(admin, "/api/stats", range="day", date="2001-01-01")
    assert sum(b["calls"] for b in empty["buckets"]) == 0
    async with admin.get("/api/stats", params={"date": "2001-13-01"}) as resp:
        assert resp.status == 400


async def test_summary_counts_states_and_shared_accounts_once(
    proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession
) -> None:
    secrets = paid_keys(fake, 5)
    keys = await proxy.add_keys(*zip(secrets, [10.0, 10.0, 4.0, 0.0, 2.0], strict=True))
    keys[0].account_id = keys[1].account_id = "shared"
    proxy.pool.set_enabled(keys[4], False)
    await proxy.openai().models.list()
    await proxy.flush()  # today's figures come from what the writer stored
    summary = await _get(admin, "/api/summary")
    assert summary["keys"] == {
        "total": 5,
        "active": 3,
        "zero": 1,
        "disabled": 1,
        "invalid": 0,
        "cooling": 0,
        "unchecked": 0,
    }
    assert summary["total_balance"] == 16.0  # 10 (one account, two keys) + 4 + 2
    assert summary["today"]["calls"] == 1 and summary["strategy"] == "least_inflight"


async def test_models_grouped_by_type_and_cached(
    proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession
) -> None:
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 5.0))
    listing = await _get(admin, "/api/models")
    models = {m["id"]: m for m in listing["models"]}
    assert models[CHAT]["type"] == "text" and models[CHAT]["sub_type"] == "chat" and not models[CHAT]["free"]
    assert models["BAAI/bge-m3"]["sub_type"] == "embedding" and models["BAAI/bge-m3"]["free"]
    assert models["Kwai-Kolors/Kolors"]["type"] == "image"
    asked = len(fake.requests)
    await _get(admin, "/api/models")
    assert len(fake.requests) == asked  # from the cache
    await _get(admin, "/api/models", refresh="1")
    assert len(fake.requests) > asked


@pytest.mark.parametrize(
    "params", [{"date": "9999-12-31"}, {"range": "month", "date": "9999-12-15"}, {"date": "0001-01-01"}]
)
async def test_stats_edge_dates_are_400(admin: aiohttp.ClientSession, params: dict) -> None:
    async with admin.get("/api/stats", params=params) as resp:
        assert resp.status == 400
