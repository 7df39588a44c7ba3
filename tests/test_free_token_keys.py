"""Issue 16: the free token without `/user/info` — which keys it may use, balances learned from
traffic, the admin's "topped up", and checks that do not hammer a retired endpoint."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import openai
import pytest

from silicon_pool.balance import RETIRED_SECONDS, BalanceChecker, Verdict
from silicon_pool.keys import Key
from silicon_pool.pool import FREE, PAID, UNKNOWN, KeyPool
from silicon_pool.settings import Settings
from tests.conftest import Running, paid_keys, wait_job
from tests.fake_upstream import FakeUpstream

FREE_CHAT = "Qwen/Qwen2.5-7B-Instruct"
CHAT = "deepseek-ai/DeepSeek-V3"
MESSAGES = [{"role": "user", "content": "hi"}]


async def _three_keys(proxy: Running, fake: FakeUpstream) -> tuple[list[str], list[Key]]:
    """A zero-balance key, one of unknown balance (a China key) and one known to carry balance."""
    [zero] = paid_keys(fake, 1, balance="0", seed="zero")
    [unknown] = paid_keys(fake, 1, seed="unknown")
    [funded] = paid_keys(fake, 1, seed="funded")
    keys = await proxy.add_keys((zero, 0.0), (unknown, None), (funded, 8.0))
    await proxy.set(api_token="main-token", free_token="free-token")
    return [zero, unknown, funded], keys


async def _served_by(proxy: Running, fake: FakeUpstream, times: int = 3) -> set[str | None]:
    client = proxy.openai("free-token")
    fake.requests.clear()
    for _ in range(times):
        await client.chat.completions.create(model=FREE_CHAT, messages=MESSAGES)
    return {r.key for r in fake.requests}


@pytest.mark.parametrize(
    ("mode", "after_zero", "after_unknown"),
    [
        ("zero_only", set(), set()),
        ("zero_then_unknown", {"unknown"}, set()),
        ("any", {"unknown", "funded"}, {"funded"}),
    ],
)
async def test_the_free_token_takes_zero_balance_keys_first_then_what_free_token_keys_allows(
    proxy: Running, fake: FakeUpstream, mode: str, after_zero: set[str], after_unknown: set[str]
) -> None:
    secrets, (zero, unknown, _funded) = await _three_keys(proxy, fake)
    by_name = dict(zip(["zero", "unknown", "funded"], secrets, strict=True))
    await proxy.set(free_token_keys=mode)
    assert await _served_by(proxy, fake) == {by_name["zero"]}
    for gone, allowed in ((zero, after_zero), (unknown, after_unknown)):
        proxy.pool.set_enabled(gone, False)
        if not allowed:
            with pytest.raises(openai.APIStatusError) as caught:
                await proxy.openai("free-token").chat.completions.create(model=FREE_CHAT, messages=MESSAGES)
            assert caught.value.status_code == 503
            return
        served = await _served_by(proxy, fake, times=4)
        assert served and served <= {by_name[name] for name in allowed}


async def test_with_only_unknown_balances_the_free_token_serves_free_models_and_still_spends_nothing(
    proxy: Running, fake: FakeUpstream
) -> None:
    secrets = paid_keys(fake, 3)
    await proxy.add_keys(*((s, None) for s in secrets))  # a China pool: no balance known at all
    await proxy.set(free_token="free-token")
    assert await _served_by(proxy, fake) <= set(secrets)
    fake.requests.clear()
    with pytest.raises(openai.PermissionDeniedError):
        await proxy.openai("free-token").chat.completions.create(model=CHAT, messages=MESSAGES)
    assert fake.requests == []  # refused by rule, no upstream call


async def test_insufficient_balance_marks_the_key_and_its_account_zero(proxy: Running, fake: FakeUpstream) -> None:
    [first, second] = paid_keys(fake, 2, balance="0", seed="spent")
    fake.add_key(second, "0", account_id=fake.account_of(first))
    [other] = paid_keys(fake, 1, seed="other")
    keys = await proxy.add_keys((first, None), (second, None), (other, None))
    for key in keys[:2]:
        proxy.pool.set_account(key, fake.account_of(first))
    proxy.pool.set_enabled(keys[1], False)  # the account's other key is not even tried
    fake.requests.clear()
    await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES)  # 30001, then `other` serves
    assert [r.key for r in fake.requests][-1] == other
    assert [k.balance for k in keys] == [0.0, 0.0, None]
    assert keys[0].tier == FREE and keys[2].tier == PAID


async def test_topped_up_moves_zero_balance_keys_back_with_balance_unknown(
    proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession
) -> None:
    _, (zero, unknown, funded) = await _three_keys(proxy, fake)
    async with admin.post("/api/keys/bulk", json={"ids": [zero.id, unknown.id, funded.id], "action": "funded"}) as resp:
        assert resp.status == 200 and (await resp.json()) == {"changed": 1}
    assert (zero.balance, zero.tier, unknown.balance, funded.balance) == (None, PAID, None, 8.0)
    await proxy.flush()
    async with admin.get(f"/api/keys?q={zero.id}") as resp:
        [item] = [i for i in (await resp.json())["items"] if i["id"] == zero.id]
        assert item["balance"] is None and item["state"] == "active"
    async with admin.get("/api/summary") as resp:
        summary = await resp.json()
    assert summary["total_balance"] == 8.0 and summary["balance_unknown"] == 2
    async with admin.post("/api/keys/bulk", json={"ids": [zero.id], "action": "refund"}) as resp:
        assert resp.status == 400 and "funded" in (await resp.json())["error"]


async def test_import_and_refresh_ask_a_retired_user_info_once(
    proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession
) -> None:
    fake.user_info_status = 410
    secrets = paid_keys(fake, 20)
    async with admin.post("/api/keys/import", json={"keys": "\n".join([*secrets, secrets[0], "sk-short"])}) as resp:
        job = await wait_job(admin, (await resp.json())["job_id"])
    assert job["result"] == {
        "imported": 20,
        "zero_balance": 0,
        "duplicates": 1,
        "invalid_format": 1,
        "rejected": 0,
        "unchecked": 0,
    }
    assert len(fake.seen("/v1/user/info")) == 1 and len(fake.seen("/v1/models")) == 20
    assert all(k.balance is None and k.state == "active" for k in proxy.pool.keys.values())
    fake.requests.clear()
    async with admin.post("/api/keys/refresh") as resp:
        job = await wait_job(admin, (await resp.json())["job_id"])
    assert job["result"]["balance_unavailable"] == 20 and job["result"]["unreachable"] == 0
    assert fake.seen("/v1/user/info") == [] and len(fake.seen("/v1/models")) == 20


async def test_a_retired_user_info_is_asked_again_a_day_later(fake: FakeUpstream, upstream_url: str) -> None:
    fake.user_info_status = 410
    [secret] = paid_keys(fake, 1)
    now = [1000.0]
    settings = Settings({"upstream": upstream_url})
    async with aiohttp.ClientSession() as session:
        checker = BalanceChecker(session, settings, clock=lambda: now[0])
        for _ in range(3):
            assert (await checker.check(secret)).verdict is Verdict.VALID
        assert len(fake.seen("/v1/user/info")) == 1 and checker.user_info_retired()
        now[0] += RETIRED_SECONDS + 1
        fake.user_info_status = 200  # say the endpoint came back
        check = await checker.check(secret)
        assert check.balance == 10.0 and len(fake.seen("/v1/user/info")) == 2
        assert not checker.user_info_retired()


def test_unknown_balances_form_their_own_index_that_follows_the_balance() -> None:
    pool = KeyPool("least_used")
    keys = [Key(i, f"sk-{i:048d}", time.time(), balance) for i, balance in enumerate([None, 5.0, 0.0, None], 1)]
    pool.add_many(keys)
    assert [pool.tier_size(t) for t in (PAID, FREE, UNKNOWN)] == [3, 1, 2]
    pool.set_balance(keys[0], 0.0)  # a 30001: zero now
    pool.set_balance(keys[1], None)  # topped up: unknown
    assert [pool.tier_size(t) for t in (PAID, FREE, UNKNOWN)] == [2, 2, 2]
    pool.set_enabled(keys[3], False)
    picked = {pool.acquire((UNKNOWN,)).id for _ in range(4)}  # type: ignore[union-attr]
    assert picked == {keys[1].id}
    for key in keys:
        while key.inflight:
            pool.release(key)
    pool.set_enabled(keys[3], True)
    for i in range(40):  # enough to open a view for the model: the subset is viewed too
        pool.add(Key(100 + i, f"sk-{100 + i:048d}", time.time(), None))
    for key in list(pool.keys.values()):
        if key.id != keys[3].id:
            pool.rest(key, FREE_CHAT, "RPM", time.time() + 60, whole_account=False)
    assert pool.acquire((UNKNOWN,), FREE_CHAT).id == keys[3].id  # type: ignore[union-attr]
    assert pool.acquire((UNKNOWN,), CHAT) is not None


def test_a_key_the_free_token_holds_counts_as_busy_for_paid_picks() -> None:
    pool = KeyPool("least_inflight")
    pool.add_many(Key(i, f"sk-{i:048d}", time.time(), None) for i in (1, 2))
    held = pool.acquire((FREE, UNKNOWN), FREE_CHAT)  # the free token's fallback takes one of them
    assert held is not None
    paid = pool.acquire((PAID,), CHAT)
    assert paid is not None and paid is not held  # the least busy key serves paid traffic


async def test_a_key_found_empty_during_its_request_still_fails_over(proxy: Running, fake: FakeUpstream) -> None:
    """The key's 30001 arrives after another request on its account already emptied it: a paid
    request still moves on to a key with balance, not back to the client."""
    [dry] = paid_keys(fake, 1, balance="0", seed="dry")
    [funded] = paid_keys(fake, 1, seed="funded")
    keys = await proxy.add_keys((dry, None), (funded, None))
    check = fake._check_balance

    def emptied_meanwhile(state: object, model: str | None) -> None:
        if fake.requests[-1].key == dry:  # as a sibling's 30001 would, while this request is upstream
            proxy.pool.account_out_of_balance(keys[0], "HTTP 403 30001")
        check(state, model)  # type: ignore[arg-type]

    fake._check_balance = emptied_meanwhile  # type: ignore[method-assign]
    answer = await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES)
    assert answer.choices[0].message.content
    assert [r.key for r in fake.seen("/v1/chat/completions")] == [dry, funded]


async def test_a_zero_balance_key_at_its_cap_that_refuses_a_free_model_rests(
    proxy: Running, fake: FakeUpstream
) -> None:
    fake.zero_balance_free_ok = False  # the late-2026 behaviour
    [zero] = paid_keys(fake, 1, balance="0", seed="zero")
    [funded] = paid_keys(fake, 1, seed="funded")
    zero_key, _ = await proxy.add_keys((zero, 0.0), (funded, 8.0))
    await proxy.set(max_inflight_per_key=1)  # in flight, every key is out of its tier's index
    client = proxy.openai()
    for _ in range(2):
        await client.chat.completions.create(model=FREE_CHAT, messages=MESSAGES)
    assert [r.key for r in fake.seen("/v1/chat/completions")] == [zero, funded, funded]
    assert zero_key.status() == "cooling"


async def test_zero_only_does_not_wait_when_zero_balance_keys_refuse_free_models(
    proxy: Running, fake: FakeUpstream
) -> None:
    fake.zero_balance_free_ok = False
    [zero] = paid_keys(fake, 1, balance="0", seed="zero")
    [funded] = paid_keys(fake, 1, seed="funded")
    _, funded_key = await proxy.add_keys((zero, 0.0), (funded, 8.0))
    await proxy.set(free_token="free-token", free_token_keys="zero_only", max_inflight_per_key=1)
    await proxy.set(wait_for_key_seconds=60)  # longer than the client's timeout
    assert proxy.pool.acquire((PAID,)) is funded_key  # busy at its cap: something may come back
    with pytest.raises(openai.APIStatusError) as caught:  # no key the free token may take is left to wait for
        await proxy.openai("free-token").chat.completions.create(model=FREE_CHAT, messages=MESSAGES)
    assert caught.value.status_code == 503
    assert [r.key for r in fake.seen("/v1/chat/completions")] == [zero]


async def test_the_free_token_names_a_free_model_only_where_the_model_decides_the_cost(
    proxy: Running, fake: FakeUpstream
) -> None:
    """A batch runs the models of its input file (or `replace.model`), whatever `model` says; the
    files of the account behind a key are not the free token's to list either."""
    [zero] = paid_keys(fake, 1, balance="0", seed="zero")
    await proxy.add_keys((zero, 0.0))
    await proxy.set(free_token="free-token")
    headers = {"Authorization": "Bearer free-token", "Content-Type": "application/json"}
    batch = {"model": FREE_CHAT, "input_file_id": "file-1", "endpoint": "/v1/chat/completions"}
    async with aiohttp.ClientSession() as http:
        for method, path, body in (
            ("POST", "/v1/batches", {**batch, "completion_window": "24h", "replace": {"model": CHAT}}),
            ("GET", "/v1/files", {"model": FREE_CHAT}),
            ("POST", "/v1/chat/completions/", {"model": FREE_CHAT, "messages": MESSAGES}),
        ):
            async with http.request(method, proxy.base + path, json=body, headers=headers) as resp:
                assert resp.status == 403, path
                assert (await resp.json())["error"]["code"] == "free_models_only"
    assert fake.requests == []


async def test_the_free_token_forwards_the_model_it_checked_and_no_other(proxy: Running, fake: FakeUpstream) -> None:
    """Parsers differ: some take the first of two `model` keys, Go's matches `MODEL` to `model`."""
    [zero] = paid_keys(fake, 1, balance="0", seed="zero")
    await proxy.add_keys((zero, 0.0))
    await proxy.set(free_token="free-token")
    headers = {"Authorization": "Bearer free-token", "Content-Type": "application/json"}
    url = f"{proxy.base}/v1/chat/completions"
    twice = b'{"model": "%s", "model": "%s", "messages": [{"role": "user", "content": "hi"}]}'
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=twice % (CHAT.encode(), FREE_CHAT.encode()), headers=headers) as resp:
            assert resp.status == 200
        [seen] = fake.seen("/v1/chat/completions")
        assert seen.json == {"model": FREE_CHAT, "messages": MESSAGES} and seen.body.count(b"model") == 1
        for other in ("MODEL", "Model", "mod\u0435l"):
            body = {"model": FREE_CHAT, other: CHAT, "messages": MESSAGES}
            async with http.post(url, json=body, headers=headers) as resp:
                assert resp.status == (400 if other.isascii() else 200), other
    assert len(fake.seen("/v1/chat/completions")) == 2  # the look-alike of another script is just another field


@pytest.mark.parametrize("first", ["ok", "reset"], ids=["answered", "network failure"])
async def test_once_the_first_user_info_check_is_over_the_others_run_side_by_side(
    fake: FakeUpstream, upstream_url: str, first: str
) -> None:
    """Checks queued behind the first ask (nobody knew yet whether the endpoint is retired) go on
    together once it is over, not one at a time behind the lock: a dead upstream costs one wait."""
    fake.user_info_delay = 0.02
    secrets = paid_keys(fake, 20)
    fake.set_behavior(secrets[0], first)
    async with aiohttp.ClientSession() as session:
        checker = BalanceChecker(session, Settings({"upstream": upstream_url}))
        get, busy, busiest = checker._get, [0], [0]

        async def counted(path: str, secret: str) -> tuple[int, bytes]:
            busy[0] += 1
            busiest[0] = max(busiest[0], busy[0])
            try:
                return await get(path, secret)
            finally:
                busy[0] -= 1

        checker._get = counted  # type: ignore[method-assign]
        checks = await asyncio.gather(*(checker.check(s) for s in secrets))
    assert all(c.verdict is Verdict.VALID and c.balance == 10.0 for c in checks[1:])
    assert busiest[0] > 2  # one at a time behind the lock, at most the first's retry beside one other


async def test_what_a_check_learns_is_kept_for_the_upstream_it_asked(
    fake: FakeUpstream, upstream_url: str, aiohttp_server: Any
) -> None:
    """The upstream setting changes while checks queue behind the first ask (a China upstream
    swapped for an international one): each answer counts for the upstream that gave it."""
    fake.user_info_status, fake.user_info_delay = 410, 0.05
    other = FakeUpstream()
    other_url = str((await aiohttp_server(other.app)).make_url("/v1"))
    secrets = paid_keys(fake, 3)
    for secret in secrets:
        other.add_key(secret)
    settings = Settings({"upstream": upstream_url})
    async with aiohttp.ClientSession() as session:
        checker = BalanceChecker(session, settings)
        first = asyncio.ensure_future(checker.check(secrets[0]))
        queued = asyncio.ensure_future(checker.check(secrets[1]))
        await asyncio.sleep(0.01)  # the first asks the China upstream, the second waits its turn
        settings.apply({"upstream": other_url})
        assert [(await first).balance, (await queued).balance] == [None, 10.0]
        settings.apply({"upstream": upstream_url})
        assert checker.user_info_retired()
        assert (await checker.check(secrets[2])).verdict is Verdict.VALID
    assert len(fake.seen("/v1/user/info")) == 1  # still known to be retired: not asked again


async def test_fifty_checks_at_once_ask_a_retired_user_info_once_even_if_the_first_is_cancelled(
    fake: FakeUpstream, upstream_url: str
) -> None:
    fake.user_info_status, fake.user_info_delay = 410, 0.05
    secrets = paid_keys(fake, 50)
    async with aiohttp.ClientSession() as session:
        checker = BalanceChecker(session, Settings({"upstream": upstream_url}))
        tasks = [asyncio.ensure_future(checker.check(s)) for s in secrets]
        await asyncio.sleep(0.01)
        tasks[0].cancel()  # the one asking goes away: the next in line asks instead
        checks = await asyncio.gather(*tasks[1:])
    assert all(c.verdict is Verdict.VALID and c.balance is None for c in checks)
    assert len(fake.seen("/v1/user/info")) == 2 and len(fake.seen("/v1/models")) == 49


async def test_topped_up_funds_the_account_not_only_the_key_clicked(
    proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession
) -> None:
    """A 30001 empties every key of the account the pool knows; topping it up refills them alike."""
    first, second, alone = await proxy.add_keys(*((s, 0.0) for s in paid_keys(fake, 3, balance="0")))
    for key in (first, second):
        proxy.pool.set_account(key, "account-1")
    async with admin.post("/api/keys/bulk", json={"ids": [first.id, 10**12], "action": "funded"}) as resp:
        assert (await resp.json()) == {"changed": 2}
    assert (first.balance, second.balance, alone.balance) == (None, None, 0.0)
    assert second.tier == PAID
