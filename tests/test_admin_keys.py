"""Key lifecycle through the admin API: import, list, export, refresh, bulk actions — nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import random

import aiohttp
import openai
import pytest

from silicon_pool import balance, lifecycle
from tests.conftest import Running, paid_keys, wait_job
from tests.fake_upstream import FakeUpstream, make_key

MESSAGES = [{"role": "user", "content": "x"}]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the checker's retry pauses short in tests."""
    monkeypatch.setattr(balance, "BACKOFF_SECONDS", 0.01)


async def _import(admin: aiohttp.ClientSession, text: str) -> dict:
    async with admin.post("/api/keys/import", json={"keys": text}) as resp:
        assert resp.status == 202, await resp.text()
        job_id = (await resp.json())["job_id"]
    job = await wait_job(admin, job_id)
    assert job["state"] == "done" and job["kind"] == "import", job
    return job


async def _keys(admin: aiohttp.ClientSession, **params: str | int) -> dict:
    async with admin.get("/api/keys", params={k: str(v) for k, v in params.items()}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_import_checks_each_key_and_counts_every_outcome(
    proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession
) -> None:
    rich, zero, dead, busy = (make_key(n) for n in ("rich", "zero", "dead", "busy"))
    fake.add_key(rich, "14.00", account_id="acct-1")
    fake.add_key(zero, "0")
    fake.set_behavior(busy, "overloaded")  # 503 every time: retried, then kept as unchecked
    [existing] = paid_keys(fake, 1, seed="existing")
    await proxy.add_keys((existing, 3.0))
    paste = f"{rich} (余额: ¥14.00)\n{zero}----0\n{dead}\n{busy}\n{rich}\n{existing}\nsk-bad\n"
    job = await _import(admin, paste)
    assert job["result"] == {
        "imported": 3,
        "zero_balance": 1,
        "duplicates": 2,
        "invalid_format": 1,
        "rejected": 1,
        "unchecked": 1,
    }
    assert job["done"] == job["total"] == 4
    by_key = {k.secret: k for k in proxy.pool.keys.values()}
    assert dead not in by_key
    assert by_key[rich].balance == 14.0 and by_key[rich].account_id == "acct-1" and by_key[rich].status() == "active"
    assert by_key[zero].balance == 0 and by_key[zero].status() == "zero"
    assert by_key[busy].balance is None and by_key[busy].status() == "unchecked"
    assert len([r for r in fake.requests if r.key == busy]) == balance.RETRIES
    # Committed before "done": a fresh reader sees them.
    count = await proxy.store.read(lambda c: c.execute("SELECT COUNT(*) FROM keys").fetchone()[0])
    assert count == 4


async def test_unchecked_key_serves_and_becomes_active(
    proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession
) -> None:
    [secret] = paid_keys(fake, 1)
    fake.user_info_status = 503
    await _import(admin, secret)
    [key] = proxy.pool.keys.values()
    assert key.status() == "unchecked"
    await proxy.openai().models.list()
    assert key.status() == "active" and key.balance is None


async def test_retired_user_info_falls_back_to_models(
    proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession
) -> None:
    good = paid_keys(fake, 1)[0]
    dead = make_key("dead")
    fake.user_info_status = 410
    job = await _import(admin, f"{good}\n{dead}")
    assert job["result"]["imported"] == 1 and job["result"]["rejected"] == 1
    [key] = proxy.pool.keys.values()
    assert key.secret == good and key.balance is None and key.status() == "active"
    assert [r.path for r in fake.requests if r.key == good] == ["/v1/user/info", "/v1/models"]


async def test_import_progress_moves_from_zero_to_total(
    proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession
) -> None:
    secrets = paid_keys(fake, 40)
    fake.user_info_delay = 0.05
    await proxy.set(check_concurrency=4)
    async with admin.post("/api/keys/import", json={"keys": "\n".join(secrets)}) as resp:
        job_id = (await resp.json())["job_id"]
    seen = []
    while True:
        async with admin.get(f"/api/jobs/{job_id}") as resp:
            job = await resp.json()
        seen.append(job["done"])
        if job["state"] != "running":
            break
        await asyncio.sleep(0.03)
    assert job["total"] == 40 and seen[-1] == 40
    assert len(set(seen)) > 3 and seen == sorted(seen)
    assert job["result"]["imported"] == 40 and len(proxy.pool) == 40


async def test_bad_import_bodies(admin: aiohttp.ClientSession) -> None:
    for body in ({}, {"keys": ""}, {"keys": 12}, {"keys": ["sk-x"]}):
        async with admin.post("/api/keys/import", json=body) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]
    async with admin.get("/api/jobs/nope") as resp:
        assert resp.status == 404


async def test_list_sort_filter_search_and_page(
    proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession
) -> None:
    secrets = paid_keys(fake, 6)
    keys = await proxy.add_keys(*zip(secrets, [5.0, 1.0, 0.0, 9.0, None, 3.0], strict=True))
    proxy.pool.set_enabled(keys[0], False)
    proxy.pool.mark_invalid(keys[1], "HTTP 401")
    proxy.pool.cool(keys[5], 60, "HTTP 429")
    page = await _keys(admin, sort="balance", order="desc", page_size=2)
    assert page["total"] == 6 and [i["id"] for i in page["items"]] == [keys[3].id, keys[0].id]
    item = page["items"][0]
    assert item["key_masked"] == keys[3].masked and secrets[3] not in str(page)
    assert set(item) >= {
        "id",
        "key_masked",
        "balance",
        "usage_count",
        "enabled",
        "state",
        "added_at",
        "last_used_at",
        "last_error",
        "account_id",
    }
    page2 = await _keys(admin, sort="balance", order="desc", page_size=2, page=2)
    assert [i["id"] for i in page2["items"]] == [keys[5].id, keys[1].id]
    for state, indexes in [("disabled", [0]), ("invalid", [1]), ("zero", [2]), ("active", [4, 3]), ("cooling", [5])]:
        found = [i["id"] for i in (await _keys(admin, state=state))["items"]]
        assert found == [keys[i].id for i in indexes], state
    assert (await _keys(admin, q=secrets[4][-6:]))["items"][0]["id"] == keys[4].id
    for bad in ({"sort": "nope"}, {"page": 0}, {"page_size": 100000}, {"state": "x"}, {"page": "abc"}):
        async with admin.get("/api/keys", params=bad) as resp:
            assert resp.status == 400, bad


async def test_secret_toggle_and_delete(proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession) -> None:
    [secret] = paid_keys(fake, 1)
    [key] = await proxy.add_keys((secret, 1.0))
    async with admin.get(f"/api/keys/{key.id}/secret") as resp:
        assert await resp.json() == {"id": key.id, "key": secret}
    async with admin.patch(f"/api/keys/{key.id}", json={"enabled": False}) as resp:
        assert (await resp.json())["state"] == "disabled"
    assert not key.enabled and proxy.pool.tier_size(0) == 0
    async with admin.patch(f"/api/keys/{key.id}", json={"enabled": "no"}) as resp:
        assert resp.status == 400
    async with admin.delete(f"/api/keys/{key.id}") as resp:
        assert resp.status == 200
    async with admin.delete(f"/api/keys/{key.id}") as resp:
        assert resp.status == 404
    assert len(proxy.pool) == 0
    assert await proxy.store.read(lambda c: c.execute("SELECT COUNT(*) FROM keys").fetchone()[0]) == 0


async def test_bulk_actions(proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession) -> None:
    secrets = paid_keys(fake, 4)
    keys = await proxy.add_keys(*((s, 1.0) for s in secrets))
    ids = [k.id for k in keys]
    async with admin.post("/api/keys/bulk", json={"ids": ids[:3], "action": "disable"}) as resp:
        assert await resp.json() == {"changed": 3}
    async with admin.post("/api/keys/bulk", json={"ids": ids[:2], "action": "enable"}) as resp:
        assert await resp.json() == {"changed": 2}
    assert [k.enabled for k in keys] == [True, True, False, True]
    fake.set_balance(secrets[0], "42.5")
    async with admin.post("/api/keys/bulk", json={"ids": ids[:1], "action": "refresh"}) as resp:
        job = await wait_job(admin, (await resp.json())["job_id"])
    assert job["result"]["updated"] == 1 and keys[0].balance == 42.5
    async with admin.post("/api/keys/bulk", json={"ids": [*ids[2:], 999], "action": "delete"}) as resp:
        assert await resp.json() == {"deleted": 2}
    assert sorted(proxy.pool.keys) == ids[:2]
    for bad in ({"ids": "1", "action": "delete"}, {"ids": [1], "action": "explode"}, {"ids": [True]}):
        async with admin.post("/api/keys/bulk", json=bad) as resp:
            assert resp.status == 400


async def test_refresh_never_loses_a_key(proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession) -> None:
    ok, empty, dead, slow, flaky, revived = secrets = paid_keys(fake, 6)
    keys = await proxy.add_keys(*((s, 5.0) for s in secrets))
    proxy.pool.mark_invalid(keys[5], "HTTP 401")
    fake.set_balance(ok, "7.25")
    fake.set_balance(empty, "0")
    fake.set_behavior(dead, "invalid")
    fake.set_behavior(slow, "gateway_timeout")
    fake.set_behavior(flaky, "rate_limited")
    fake.set_balance(revived, "1.5")
    async with admin.post("/api/keys/refresh") as resp:
        assert resp.status == 202
        job = await wait_job(admin, (await resp.json())["job_id"])
    assert job["result"] == {
        "updated": 3,
        "zero_balance": 1,
        "balance_unavailable": 0,  # /user/info answers here (international keys)
        "invalid": 1,
        "unreachable": 2,
        "balance_before": 25.0,
        "balance_after": 18.75,  # 7.25 + 0 + 5 + 5 + 1.5: the dead key's balance is no longer spendable
    }
    assert len(proxy.pool) == 6  # nobody deleted
    assert [k.status() for k in keys] == ["active", "zero", "invalid", "active", "active", "active"]
    assert keys[3].balance == keys[4].balance == 5.0  # unreachable: left as they were
    assert keys[5].balance == 1.5  # an invalid key that answers 200 is usable again


async def test_export_formats_and_sorts(proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession) -> None:
    secrets = paid_keys(fake, 3)
    await proxy.add_keys(*zip(secrets, [2.5, 0.0, 13.8925], strict=True))

    async def export(**params: str) -> str:
        async with admin.get("/api/keys/export", params=params) as resp:
            assert resp.status == 200 and resp.content_type == "text/plain"
            assert resp.headers["Content-Disposition"] == 'attachment; filename="keys.txt"'
            return await resp.text()

    assert await export() == "\n".join([secrets[2], secrets[0], secrets[1]]) + "\n"
    assert await export(sort="balance_asc", format="comma") == ",".join([secrets[1], secrets[0], secrets[2]])
    assert await export(sort="key_asc") == "\n".join(sorted(secrets)) + "\n"
    assert await export(sort="key_desc") == "\n".join(sorted(secrets, reverse=True)) + "\n"
    assert await export(format="lines_with_balance", state="active") == (
        f"{secrets[2]}----13.8925\n{secrets[0]}----2.5\n"
    )
    assert await export(state="zero") == secrets[1] + "\n"
    async with admin.get("/api/keys/export", params={"format": "xml"}) as resp:
        assert resp.status == 400


async def test_import_refresh_delete_and_traffic_at_once_account_for_every_key(
    proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession
) -> None:
    old = paid_keys(fake, 30, seed="old")
    new = paid_keys(fake, 60, seed="new")
    keys = await proxy.add_keys(*((s, 5.0) for s in old))
    for secret in random.Random(7).sample(old, 5):
        fake.set_behavior(secret, random.Random(secret).choice(["gateway_timeout", "rate_limited"]))
    fake.user_info_delay = 0.01
    doomed = [k.id for k in keys[:5]]
    client = proxy.openai()

    async def traffic() -> None:
        for _ in range(30):
            # Some keys misbehave on purpose: what is checked is the pool, not each answer.
            with contextlib.suppress(openai.APIStatusError):
                await client.chat.completions.create(model="deepseek-ai/DeepSeek-V3", messages=MESSAGES)

    async def start(path: str, body: dict) -> str:
        async with admin.post(path, json=body) as resp:
            return (await resp.json())["job_id"]

    import_job = await start("/api/keys/import", {"keys": "\n".join(new + old[:10])})
    refresh_job = await start("/api/keys/refresh", {})
    async with admin.post("/api/keys/bulk", json={"ids": doomed, "action": "delete"}) as resp:
        assert await resp.json() == {"deleted": 5}
    await asyncio.gather(traffic(), traffic())
    imported = await wait_job(admin, import_job)
    await wait_job(admin, refresh_job)
    assert imported["result"]["imported"] == 60 and imported["result"]["duplicates"] == 10
    expected = set(old[5:]) | set(new)
    assert {k.secret for k in proxy.pool.keys.values()} == expected
    await proxy.flush()
    stored = await proxy.store.read(
        lambda c: c.execute("SELECT COUNT(*), COUNT(DISTINCT key_hash) FROM keys").fetchone()
    )
    assert stored == (len(expected), len(expected))
    assert not [k for k in proxy.pool.keys.values() if k.status() == "invalid"]


async def test_background_refresh_follows_the_interval_setting(
    proxy: Running, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifecycle, "MINUTE", 0.05)
    [secret] = paid_keys(fake, 1)
    [key] = await proxy.add_keys((secret, 1.0))
    fake.set_balance(secret, "8.5")
    await asyncio.sleep(0.1)
    assert key.balance == 1.0  # 0 = off
    await proxy.set(refresh_interval_minutes=1)
    async with asyncio.timeout(5):
        while key.balance != 8.5:
            await asyncio.sleep(0.02)


async def test_a_late_refresh_of_a_deleted_key_touches_no_other_key(
    proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession
) -> None:
    a, b, c = paid_keys(fake, 3)
    _, key_b = await proxy.add_keys((a, 1.0), (b, 2.0))
    fake.set_balance(b, "77")
    fake.user_info_delay = 0.5
    async with admin.post("/api/keys/refresh", json={"ids": [key_b.id]}) as resp:
        job_id = (await resp.json())["job_id"]
    await asyncio.sleep(0.1)
    async with admin.delete(f"/api/keys/{key_b.id}") as resp:
        assert resp.status == 200
    [key_c] = await proxy.add_keys((c, 5.0))
    assert key_c.id != key_b.id  # ids are never reused
    await wait_job(admin, job_id)
    await proxy.flush()
    assert key_c.balance == 5.0
    stored = await proxy.store.read(lambda conn: conn.execute("SELECT id, balance FROM keys ORDER BY id").fetchall())
    assert [balance for _, balance in stored] == [1.0, 5.0]


async def test_export_active_counts_resting_keys(
    proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession
) -> None:
    a, b = paid_keys(fake, 2)
    key_a, _ = await proxy.add_keys((a, 1.0), (b, None))
    proxy.pool.cool(key_a, 60, "HTTP 429")
    async with admin.get("/api/keys/export", params={"state": "active"}) as resp:
        assert set((await resp.text()).split()) == {a, b}
