"""Rests per (key or account, model): how long each kind lasts, the per-model views that keep picks
cheap and exact, the concurrency cap, rests across a restart, and the admin's view and clearing."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import aiohttp
import pytest

from silicon_pool import pool as pool_module
from silicon_pool.keys import INVALID, Key
from silicon_pool.limits import KINDS, MIN_REST, clock_time, limit_kind, rest_until, retry_after
from silicon_pool.pool import ACCOUNT, FREE, KEY, PAID, KeyPool
from silicon_pool.selection import STRATEGIES
from tests.conftest import Running, StartProxy, login, paid_keys
from tests.fake_upstream import FakeUpstream, make_key

SHANGHAI = timezone(timedelta(hours=8))
NOW = datetime(2026, 12, 1, 13, 47, 25, tzinfo=SHANGHAI).timestamp()  # 05:47:25 UTC
BOTH = (PAID, FREE)


# -- how long a rest lasts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "ends"),
    [
        ("RPM", datetime(2026, 12, 1, 13, 48, tzinfo=SHANGHAI)),
        ("TPM", datetime(2026, 12, 1, 13, 48, tzinfo=SHANGHAI)),
        ("IPM", datetime(2026, 12, 1, 13, 48, tzinfo=SHANGHAI)),
        ("RPH", datetime(2026, 12, 1, 14, 0, tzinfo=SHANGHAI)),
        ("RPD", datetime(2026, 12, 2, 0, 0, tzinfo=SHANGHAI)),
        ("TPD", datetime(2026, 12, 2, 0, 0, tzinfo=SHANGHAI)),
        ("IPD", datetime(2026, 12, 2, 0, 0, tzinfo=SHANGHAI)),
        ("429", datetime(2026, 12, 1, 13, 47, 55, tzinfo=SHANGHAI)),  # kind unknown: cooldown
        ("503", datetime(2026, 12, 1, 13, 47, 55, tzinfo=SHANGHAI)),
    ],
)
def test_each_kind_rests_until_its_budget_returns(kind: str, ends: datetime) -> None:
    assert rest_until(kind, NOW, day_zone=SHANGHAI, cooldown=30) == ends.timestamp()


def test_minute_rests_last_a_moment_at_least_and_take_their_jitter() -> None:
    late = datetime(2026, 12, 1, 13, 47, 59, 500_000, tzinfo=SHANGHAI).timestamp()
    assert rest_until("RPM", late, day_zone=SHANGHAI, cooldown=30) == late + MIN_REST
    assert rest_until("RPM", NOW, day_zone=SHANGHAI, cooldown=30, jitter=1.5) == NOW + 35 + 1.5
    assert rest_until("RPD", NOW, day_zone=SHANGHAI, cooldown=30, jitter=1.5) % 86400 == 16 * 3600  # no jitter


def test_a_day_ends_at_midnight_of_the_zone_chosen() -> None:
    utc_midnight = datetime(2026, 12, 2, tzinfo=UTC).timestamp()
    assert rest_until("RPD", NOW, day_zone=UTC, cooldown=30) == utc_midnight
    just_after = datetime(2026, 12, 2, 0, 0, 1, tzinfo=SHANGHAI).timestamp()
    assert rest_until("RPD", just_after, day_zone=SHANGHAI, cooldown=30) == just_after + 86399


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b'{"message":"Request was rejected due to rate limiting. Details: TPM limit reached.","data":null}', "TPM"),
        (
            b'{"message":"Request was rejected due to rate limiting. Details: RPD limit reached. Could only send'
            b' 100 requests per day without real name verification.","data":null}',
            "RPD",
        ),
        *((f"Details: {k} limit reached.".encode(), k) for k in KINDS),
        (b"details:  ipm LIMIT reached", "IPM"),
        (b"Request was rejected due to rate limiting. If you want more, please contact", None),
        (b"Details: XPM limit reached.", None),
        (b"Details: TPMX limit reached.", None),
        (b"\xff\xfe" + b"x" * 10_000 + b"Details: TPM limit", None),  # beyond what is searched
        (b"", None),
    ],
)
def test_the_kind_is_read_from_the_refusal(body: bytes, kind: str | None) -> None:
    assert limit_kind(body) == kind


def test_retry_after_as_seconds_or_a_date_within_bounds() -> None:
    assert retry_after(None, NOW) is None
    assert retry_after("120", NOW) == 120
    assert retry_after(" 7 ", NOW) == 7
    assert retry_after("99999999999", NOW) == 2 * 86400
    assert retry_after("Tue, 01 Dec 2026 05:48:25 GMT", NOW) == 60
    assert retry_after("Tue, 01 Dec 2020 05:48:25 GMT", NOW) == 0
    for junk in ("soon", "-5", "1.5", "٣", "\x00", "x" * 10_000):
        assert retry_after(junk, NOW) is None, junk


def test_the_client_is_told_the_end_in_the_upstreams_zone() -> None:
    midnight = datetime(2026, 12, 2, tzinfo=SHANGHAI).timestamp()
    assert clock_time(midnight, SHANGHAI) == "00:00 (UTC+8)"
    assert clock_time(midnight + 7, SHANGHAI) == "00:00:07 (UTC+8)"
    assert clock_time(midnight, timezone(timedelta(hours=-3, minutes=-30))) == "12:30 (UTC-3:30)"


# -- the pool's views ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def make_pool(strategy: str, count: int, accounts: int = 0) -> tuple[KeyPool, Clock]:
    clock = Clock()
    pool = KeyPool(strategy, clock=clock)
    for i in range(count):
        account = f"acc-{i % accounts}" if accounts and i < count - 2 else None  # the last two: accounts unknown
        pool.add(Key(i + 1, make_key(f"rest-{i}"), 1000.0 + i, balance=5.0 if i % 4 else 0.0, account_id=account))
    return pool, clock


def check_views(pool: KeyPool) -> None:
    """Each model's view holds exactly the tier's keys that do not rest for it, nothing stale."""
    for model, view in pool._views.items():
        for tier in (PAID, FREE):
            expected = {k for k in pool._indexes[tier] if not pool.rests_for(k, model)}
            assert set(view[tier]) == expected, (model, tier)
            assert len(view[tier]) == len(expected)
    assert set(pool._views) <= set(pool._rests)


@pytest.mark.parametrize("view_at", [4, 10_000], ids=["with views", "setting aside"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_views_stay_exact_through_any_sequence_of_changes(
    strategy: str, view_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Picks for a model never return a key resting for it, with the model's view (kept exact at
    every step) or, while few rest for it, by setting the resting keys aside."""
    monkeypatch.setattr(pool_module, "VIEW_AT", view_at)
    rng = random.Random(f"views-{strategy}")
    pool, clock = make_pool(strategy, 60, accounts=6)
    models = ["m1", "m2", "m3", ""]
    held: list[Key] = []
    busiest = resting = 0
    for step in range(3000):
        keys = list(pool.keys.values())
        op = rng.randrange(12)
        key = rng.choice(keys) if keys else None
        if op <= 2 and key is not None:
            pool.rest(key, rng.choice(models), "RPM", clock.now + rng.uniform(1, 120), whole_account=rng.random() < 0.7)
        elif op == 3:
            clock.now += rng.uniform(0, 40)
            pool.revive()
        elif op == 4 and key is not None:
            pool.set_enabled(key, not key.enabled)
        elif op == 5 and key is not None:
            pool.set_balance(key, rng.choice([0.0, 3.0, None]), key.state)
        elif op == 6 and key is not None:
            pool.set_account(key, rng.choice([None, "acc-1", "acc-2", "acc-new"]))
        elif op == 7:
            model = rng.choice(models)
            got = pool.acquire(BOTH, model)
            if got is not None:
                assert not pool.rests_for(got, model) and got.enabled and got.state != INVALID
                held.append(got)
        elif op == 8 and held:
            pool.release(held.pop(rng.randrange(len(held))))
        elif op == 9 and key is not None and rng.random() < 0.2:
            pool.remove(key.id)
            held = [k for k in held if k is not key]
            pool.add(Key(10_000 + step, make_key(f"new-{step}"), 2000.0, balance=1.0, account_id="acc-1"))
        elif op == 10:
            pool.clear_rests(key.id if key is not None and rng.random() < 0.5 else None, rng.choice([*models, None]))
        elif op == 11 and rng.random() < 0.05:
            pool.set_strategy(rng.choice(list(STRATEGIES)))
        check_views(pool)
        busiest = max(busiest, len(pool._views))
        resting = max(resting, sum(len(pool._owned_ids(o)) for r in pool._rests.values() for o in r.by_owner))
    assert resting >= 20  # the run had many keys resting at once
    assert busiest == (len(models) if view_at < 60 else 0)  # every model got a view, or none did


def test_a_rest_holds_back_the_account_and_only_for_its_model() -> None:
    pool, clock = make_pool("round_robin", 12, accounts=2)
    siblings = [k for k in pool.keys.values() if k.account_id == "acc-0" and k.tier == PAID]
    lone = next(k for k in pool.keys.values() if k.account_id is None and k.tier == PAID)
    pool.rest(siblings[0], "m", "RPD", clock.now + 3600)
    pool.rest(lone, "m", "RPD", clock.now + 3600)
    for _ in range(50):
        got = pool.acquire((PAID,), "m")
        assert got is not None and got.account_id != "acc-0" and got is not lone
        pool.release(got)
    seen = set()
    for _ in range(50):
        got = pool.acquire((PAID,), "other")
        assert got is not None
        seen.add(got.id)
        pool.release(got)
    assert {k.id for k in siblings} | {lone.id} <= seen  # every model but "m" still uses them
    assert [r.scope for r in pool.rests_of(siblings[1])] == [ACCOUNT]
    assert [r.owner for r in pool.rests_of(lone)] == [(KEY, lone.id)]


def test_every_key_resting_is_explained_with_the_earliest_end() -> None:
    pool, clock = make_pool("random", 4)
    for key, hours in zip(pool.keys.values(), (3, 1, 2, 5), strict=True):
        pool.rest(key, "m", "RPH", clock.now + hours * 3600)
    assert pool.acquire(BOTH, "m") is None
    why = pool.unavailable(BOTH, "m")
    assert why.status == 429 and why.rest is not None and why.rest.until == clock.now + 3600
    assert why.retry_after == 3600
    clock.now += 3600
    assert pool.acquire(BOTH, "m") is not None  # the first one is back
    assert pool.unavailable(BOTH, "other").status == 503 or pool.acquire(BOTH, "other") is not None


def test_a_longer_rest_stands_and_the_last_rest_closes_the_view() -> None:
    pool, clock = make_pool("least_used", 3)
    key = pool.keys[2]
    pool.rest(key, "m", "RPD", clock.now + 9000)
    assert pool.rest(key, "m", "RPM", clock.now + 30).kind == "RPD"
    clock.now += 9001
    pool.revive()
    assert pool._views == {} and pool._rests == {} and pool.rests_of(key) == []


def test_the_concurrency_cap_takes_a_busy_key_out_until_a_request_ends() -> None:
    pool, _ = make_pool("least_inflight", 2)
    pool.set_max_inflight(2)
    first = [pool.acquire((PAID,)) for _ in range(2)]
    assert {k.id for k in first if k} == {2}  # key 1 is zero-balance (FREE)
    assert pool.acquire((PAID,)) is None
    assert pool.unavailable((PAID,)).retry_after == 1
    assert first[0] is not None
    pool.release(first[0])
    assert pool.acquire((PAID,)) is first[0]
    pool.set_max_inflight(0)
    assert pool.acquire((PAID,)) is first[0]  # no cap: still picked


def test_out_of_balance_moves_the_whole_account_to_the_free_tier() -> None:
    pool, _ = make_pool("random", 12, accounts=3)
    key = next(k for k in pool.keys.values() if k.account_id == "acc-1" and k.tier == PAID)
    moved = pool.account_out_of_balance(key, "HTTP 403: balance insufficient")
    assert {k.account_id for k in moved} == {"acc-1"}
    assert all(k.tier == FREE and k.balance == 0 for k in moved)
    assert all(k.tier == PAID for k in pool.keys.values() if k.account_id != "acc-1" and k.balance)


# -- through the running proxy ---------------------------------------------------------------------


async def _resting_keys(proxy: Running, fake: FakeUpstream, count: int) -> list[Key]:
    keys = await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, count)))
    return keys


async def test_long_rests_survive_a_restart_and_short_ones_do_not(
    start_proxy: StartProxy, fake: FakeUpstream, tmp_path: object
) -> None:
    first = await start_proxy()
    day, minute, other = await _resting_keys(first, fake, 3)
    now = first.pool.clock()
    first.pool.rest(day, "deepseek-ai/DeepSeek-V3", "RPD", now + 7200)
    first.pool.rest(minute, "deepseek-ai/DeepSeek-V3", "RPM", now + 30)
    first.pool.set_account(other, "acc-9")
    first.pool.rest(other, "Qwen/Qwen3-8B", "TPD", now + 5000)
    await first.stop()

    second = await start_proxy(data_dir=first.data_dir)
    rests = {
        (r.owner, r.model, r.kind, round(r.until)) for k in second.pool.keys.values() for r in second.pool.rests_of(k)
    }
    assert rests == {
        ((KEY, day.id), "deepseek-ai/DeepSeek-V3", "RPD", round(now + 7200)),
        ((ACCOUNT, "acc-9"), "Qwen/Qwen3-8B", "TPD", round(now + 5000)),
    }
    got = second.pool.acquire((PAID,), "deepseek-ai/DeepSeek-V3")
    assert got is not None and got.id != day.id


async def test_the_admin_sees_and_clears_rests(proxy: Running, fake: FakeUpstream) -> None:
    a, b, c = await _resting_keys(proxy, fake, 3)
    proxy.pool.set_account(b, "acc-1")
    proxy.pool.set_account(c, "acc-1")
    now = proxy.pool.clock()
    proxy.pool.rest(a, "deepseek-ai/DeepSeek-V3", "RPD", now + 7200)
    proxy.pool.rest(b, "deepseek-ai/DeepSeek-V3", "TPM", now + 50)
    proxy.pool.rest(c, "Qwen/Qwen3-8B", "RPH", now + 3000)
    admin = await login(proxy.base)
    try:
        async with admin.get("/api/keys", params={"sort": "added_at", "order": "asc"}) as resp:
            items = {item["id"]: item for item in (await resp.json())["items"]}
        assert items[a.id]["rests"] == [
            {"model": "deepseek-ai/DeepSeek-V3", "kind": "RPD", "until": now + 7200, "scope": "key"}
        ]
        assert {(r["model"], r["scope"]) for r in items[c.id]["rests"]} == {
            ("deepseek-ai/DeepSeek-V3", "account"),
            ("Qwen/Qwen3-8B", "account"),
        }
        async with admin.get("/api/summary") as resp:
            summary = (await resp.json())["rests"]
        assert [(r["model"], r["keys"]) for r in summary] == [("deepseek-ai/DeepSeek-V3", 3), ("Qwen/Qwen3-8B", 2)]
        async with admin.get("/healthz") as resp:
            assert (await resp.json())["usable"] == 3  # each still serves some model

        async def clear(**params: str) -> int:
            async with admin.delete("/api/rests", params=params) as resp:
                assert resp.status == 200, await resp.text()
                return int((await resp.json())["cleared"])

        assert await clear(key_id=str(a.id)) == 1
        assert await clear(model="Qwen/Qwen3-8B") == 1
        assert proxy.pool.rests_of(b)[0].kind == "TPM"
        assert await clear() == 1
        assert all(proxy.pool.rests_of(k) == [] for k in (a, b, c))
        for bad in ({"key_id": "x"}, {"key_id": "0"}, {"model": "m" * 300}):
            async with admin.delete("/api/rests", params=bad) as resp:
                assert resp.status == 400, bad
        async with admin.delete("/api/rests", params={"key_id": "999999"}) as resp:
            assert resp.status == 404
    finally:
        await admin.close()
    async with aiohttp.ClientSession() as anonymous, anonymous.delete(f"{proxy.base}/api/rests") as resp:
        assert resp.status == 401
