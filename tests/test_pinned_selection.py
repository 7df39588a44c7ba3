"""Every strategy index as the pool uses it: what it holds, the order it picks in, and picks that
stay right however keys come and go."""

from __future__ import annotations

import random

import pytest

from silicon_pool.keys import Key
from silicon_pool.pool import FREE, PAID, KeyPool
from silicon_pool.selection import STRATEGIES, make_index
from silicon_pool.settings import Settings
from tests.fake_upstream import make_key


def keys(n: int, **fields: object) -> list[Key]:
    made = [Key(i + 1, make_key(f"sel-{i}"), 1000.0 + i, balance=1.0) for i in range(n)]
    for key in made:
        for name, value in fields.items():
            setattr(key, name, value)
    return made


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_an_index_knows_which_keys_it_holds(strategy: str) -> None:
    index = make_index(strategy)
    a, b, c = keys(3)
    for key in (a, b, c):
        index.add(key)
    index.discard(b)
    assert a in index and c in index and b not in index
    assert sorted(k.id for k in index) == [1, 3] and len(index) == 2
    index.discard(a)
    index.discard(c)
    assert list(index) == [] and index.pick() is None


def test_round_robin_starts_with_the_first_key_and_goes_in_order() -> None:
    index = make_index("round_robin")
    for key in keys(3):
        index.add(key)
    assert [k.id for k in (index.pick() for _ in range(7)) if k] == [1, 2, 3, 1, 2, 3, 1]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_key_rechecked_at_zero_balance_or_unused_stays_pickable(strategy: str) -> None:
    """Rescoring a key whose balance or use count is 0 (a fresh free key) must not fail."""
    pool = KeyPool(strategy)
    key = Key(1, make_key("zero"), 1000.0, balance=0.0)
    pool.add(key)
    pool.set_balance(key, 0.0)
    pool.set_enabled(key, True)
    assert pool.acquire((FREE,)) is key


@pytest.mark.parametrize(("strategy", "best"), [("most_used", max), ("least_used", min)])
def test_the_busiest_or_idlest_key_is_picked_whenever_it_arrived(strategy: str, best: object) -> None:
    """Keys imported later with any use count (as a restart loads them) rank where their count says,
    through the index's own housekeeping."""
    pool = KeyPool(strategy)
    for key in keys(2):
        pool.add(key)
    rng = random.Random(strategy)
    for i in range(400):
        newcomer = Key(100 + i, make_key(f"late-{i}"), 2000.0, balance=1.0, usage_count=rng.randrange(0, 5000))
        pool.add(newcomer)
        for _ in range(rng.randrange(1, 4)):
            counts = [k.usage_count for k in pool.keys.values()]
            got = pool.acquire((PAID,))
            assert got is not None and got.usage_count - 1 == best(counts)  # type: ignore[operator]
            pool.release(got)
        if len(pool) > 6:
            pool.remove(rng.choice([k for k in pool.keys if k > 2]))


@pytest.mark.parametrize(("strategy", "best"), [("balance_high", max), ("balance_low", min)])
def test_balances_rank_through_any_sequence_of_checks(strategy: str, best: object) -> None:
    pool = KeyPool(strategy)
    for key in keys(8):
        pool.add(key)
    rng = random.Random(strategy)
    for _ in range(600):
        pool.set_balance(pool.keys[rng.randint(1, 8)], round(rng.uniform(0.01, 50), 2))
        got = pool.acquire((PAID,))
        assert got is not None and got.balance == best(k.balance for k in pool.keys.values())  # type: ignore[operator]
        pool.release(got)


def test_least_inflight_finds_a_key_freed_below_the_busiest() -> None:
    """All keys busy, one request ends on a key: that key is the next pick."""
    pool = KeyPool("least_inflight")
    for key in keys(3):
        pool.add(key)
    held = [pool.acquire((PAID,)) for _ in range(9)]  # three each
    assert all(held)
    pool.release(pool.keys[2])
    assert pool.acquire((PAID,)) is pool.keys[2]
    for _ in range(3):
        pool.release(pool.keys[3])
    assert pool.acquire((PAID,)) is pool.keys[3]


def test_the_admin_offers_each_strategy_with_its_help() -> None:
    assert {name: tuple(words) for name, words in Settings.strategy.options.items()} == {
        "least_inflight": (
            "当前并发请求最少的 Key 优先（高并发推荐）",
            "Fewest requests in flight right now (best under concurrency)",
        ),
        "random": ("随机选择", "Random key"),
        "round_robin": ("轮询，依次使用每个 Key", "Each key in turn"),
        "balance_high": ("余额最多优先", "Highest balance first"),
        "balance_low": ("余额最少优先", "Lowest balance first"),
        "oldest": ("添加时间最早优先", "Oldest key first"),
        "newest": ("添加时间最新优先", "Newest key first"),
        "least_used": ("使用次数最少优先", "Least used first"),
        "most_used": ("使用次数最多优先", "Most used first"),
    }
