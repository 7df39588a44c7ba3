"""Each strategy picks what it should, spreads equal keys, and skips what must not be picked."""

from __future__ import annotations

import collections
import random
import time

import pytest

from silicon_pool.keys import INVALID, Key
from silicon_pool.pool import FREE, PAID, KeyPool
from silicon_pool.selection import STRATEGIES, BucketIndex
from tests.fake_upstream import make_key

BOTH = (PAID,)


def make_pool(strategy: str, balances: list[float | None], **fields: list) -> KeyPool:
    pool = KeyPool(strategy)
    for i, balance in enumerate(balances):
        key = Key(i + 1, make_key(i), added_at=1000.0 + i, balance=balance)
        for name, values in fields.items():
            setattr(key, name, values[i])
        pool.add(key)
    return pool


def picks(pool: KeyPool, n: int, tiers: tuple[int, ...] = BOTH, release: bool = True) -> list[int]:
    chosen = []
    for _ in range(n):
        key = pool.acquire(tiers)
        assert key is not None
        chosen.append(key.id)
        if release:
            pool.release(key)
    return chosen


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("balance_high", 3),  # balances 5, 1, 9, 9 -> ids 3 and 4 tie at the top
        ("balance_low", 2),
        ("oldest", 1),
        ("newest", 4),
    ],
)
def test_ordered_strategies_pick_the_extreme(strategy: str, expected: int) -> None:
    pool = make_pool(strategy, [5.0, 1.0, 9.0, 9.0])
    first = pool.acquire(BOTH)
    assert first is not None
    if strategy == "balance_high":
        assert first.id in (3, 4)
        assert set(picks(pool, 10)) == {3, 4}  # the tie is spread, not hammered
    else:
        assert first.id == expected


def test_unknown_balance_ranks_last_both_ways() -> None:
    assert picks(make_pool("balance_high", [None, 2.0]), 1) == [2]
    assert picks(make_pool("balance_low", [None, 2.0]), 1) == [2]


def test_least_used_evens_out_usage() -> None:
    pool = make_pool("least_used", [1.0] * 4, usage_count=[5, 0, 3, 0])
    assert sorted(picks(pool, 2)) == [2, 4]
    picks(pool, 10)
    assert sorted(k.usage_count for k in pool.keys.values()) == [5, 5, 5, 5]


def test_most_used_sticks_to_the_busiest() -> None:
    pool = make_pool("most_used", [1.0] * 3, usage_count=[1, 7, 3])
    assert picks(pool, 5) == [2] * 5


def test_least_inflight_spreads_concurrent_requests() -> None:
    pool = make_pool("least_inflight", [1.0] * 4)
    held = picks(pool, 8, release=False)  # eight requests in flight at once
    assert collections.Counter(held) == {1: 2, 2: 2, 3: 2, 4: 2}
    key = pool.keys[3]
    pool.release(key)
    pool.release(key)
    assert picks(pool, 1, release=False) == [3]  # now the least busy


def test_least_inflight_always_picks_a_least_busy_key() -> None:
    """Requests start and end in random order, keys rest and come back: every pick is a minimum."""
    rng = random.Random(7)
    pool = make_pool("least_inflight", [1.0] * 6)
    held: list[Key] = []
    for _ in range(3000):
        roll = rng.random()
        if roll < 0.5 or not held:
            key = pool.acquire(BOTH)
            assert key is not None
            others = [k.inflight for k in pool.keys.values() if k is not key and k.tier is not None]
            assert key.inflight - 1 <= min(others, default=key.inflight)
            held.append(key)
        elif roll < 0.95:
            pool.release(held.pop(rng.randrange(len(held))))
        else:  # a key set aside and put back, as failover and a disable do
            key = pool.keys[rng.randint(1, 6)]
            pool.set_enabled(key, False)
            pool.set_enabled(key, True)
    for key in held:
        pool.release(key)
    assert {k.inflight for k in pool.keys.values()} == {0}
    assert sorted(picks(pool, 6, release=False)) == [1, 2, 3, 4, 5, 6]


def test_round_robin_takes_turns() -> None:
    pool = make_pool("round_robin", [1.0] * 3)
    assert collections.Counter(picks(pool, 9)) == {1: 3, 2: 3, 3: 3}


def test_random_reaches_every_key() -> None:
    pool = make_pool("random", [1.0] * 5)
    assert set(picks(pool, 400)) == {1, 2, 3, 4, 5}


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "most_used"])  # most_used hammers by design
def test_every_strategy_spreads_equal_keys(strategy: str) -> None:
    pool = KeyPool(strategy)
    for i in range(4):
        pool.add(Key(i + 1, make_key(i), added_at=1000.0, balance=3.0))
    assert set(picks(pool, 40)) == {1, 2, 3, 4}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_disabled_invalid_and_cooling_keys_are_never_picked(strategy: str) -> None:
    pool = make_pool(strategy, [1.0] * 4)
    pool.set_enabled(pool.keys[1], False)
    pool.mark_invalid(pool.keys[2], "HTTP 401")
    pool.cool(pool.keys[3], 60, "HTTP 429")
    assert set(picks(pool, 30)) == {4}
    assert [k.status() for k in pool.keys.values()] == ["disabled", "invalid", "cooling", "active"]


def test_tiers_split_on_balance() -> None:
    pool = make_pool("random", [0.0, -1.0, 2.0, None])
    assert set(picks(pool, 50, (FREE,))) == {1, 2}
    assert set(picks(pool, 50, (PAID,))) == {3, 4}  # unknown balance counts as having balance
    assert pool.tier_size(FREE) == 2 and pool.tier_size(PAID) == 2
    pool.set_balance(pool.keys[3], 0.0)
    assert pool.tier_size(FREE) == 3


def test_free_first_falls_back_to_paid() -> None:
    pool = make_pool("random", [0.0, 5.0])
    assert picks(pool, 3, (FREE, PAID)) == [1, 1, 1]
    pool.set_enabled(pool.keys[1], False)
    assert picks(pool, 2, (FREE, PAID)) == [2, 2]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_exclusion_skips_tried_keys_and_leaves_the_index_whole(strategy: str) -> None:
    pool = make_pool(strategy, [1.0, 2.0, 3.0])
    for excluded in [(1,), (2,), (3,), (1, 2), (2, 3)]:
        key = pool.acquire(BOTH, exclude=excluded)
        assert key is not None and key.id not in excluded
        pool.release(key)
    assert pool.acquire(BOTH, exclude=(1, 2, 3)) is None
    assert pool.tier_size(PAID) == 3


def test_cooled_key_returns_after_its_cooldown() -> None:
    pool = make_pool("random", [1.0])
    key = pool.keys[1]
    pool.cool(key, 0.05, "HTTP 429")
    assert pool.acquire(BOTH) is None
    assert pool.unavailable(BOTH).retry_after == 1
    time.sleep(0.06)
    assert pool.acquire(BOTH) is key


def test_strategy_change_takes_effect_on_the_next_pick() -> None:
    pool = make_pool("oldest", [1.0, 2.0, 3.0])
    assert picks(pool, 3) == [1, 1, 1]
    pool.set_strategy("newest")
    assert picks(pool, 1) == [3]
    pool.set_strategy("balance_low")
    assert picks(pool, 1) == [1]
    with pytest.raises(ValueError, match="unknown strategy"):
        pool.set_strategy("fastest")


def test_invalid_key_comes_back_when_a_check_says_so() -> None:
    pool = make_pool("random", [1.0])
    key = pool.keys[1]
    pool.mark_invalid(key, "HTTP 401")
    assert key.state == INVALID and pool.acquire(BOTH) is None
    pool.set_balance(key, 4.0)
    assert pool.acquire(BOTH) is key


def test_removed_key_is_gone_from_every_index() -> None:
    pool = make_pool("least_used", [1.0, 1.0])
    pool.remove(1)
    assert set(picks(pool, 5)) == {2} and len(pool) == 1


def test_most_used_heap_stays_bounded() -> None:
    """The top score climbs on every pick; stale heap entries must not pile up."""
    pool = make_pool("most_used", [1.0] * 3)
    picks(pool, 20_000)
    index = pool._indexes[PAID]
    assert isinstance(index, BucketIndex)
    assert len(index._heap) <= 2 * len(index._buckets) + 65


def test_on_change_reports_every_stored_change() -> None:
    changed: list[int] = []
    pool = KeyPool("random", on_change=lambda key: changed.append(key.id))
    pool.add(Key(1, make_key(1), added_at=1.0, balance=1.0))
    key = pool.acquire(BOTH)
    assert key is not None
    pool.release(key)
    pool.cool(key, 1, "x")
    pool.mark_invalid(key, "y")
    pool.set_enabled(key, False)
    assert changed == [1, 1, 1, 1]


def test_repr_and_mask_never_show_the_whole_key() -> None:
    secret = make_key("secret")
    key = Key(1, secret, added_at=1.0)
    assert secret not in repr(key) and key.masked == f"{secret[:7]}…{secret[-4:]}"


def test_balance_change_reorders_within_the_tier() -> None:
    pool = make_pool("balance_high", [100.0, 50.0])
    assert picks(pool, 1) == [1]
    pool.set_balance(pool.keys[1], 1.0)
    assert picks(pool, 1) == [2]


def test_a_resting_key_disabled_and_enabled_again_still_comes_back() -> None:
    pool = make_pool("random", [1.0, 0.0])
    key = pool.keys[1]
    pool.cool(key, 0.05, "HTTP 429")
    pool.set_enabled(key, False)
    assert pool.unavailable(BOTH).retry_after is None  # a disabled key is not "cooling" for a 503
    pool.set_enabled(key, True)
    pool.set_balance(pool.keys[2], 3.0)
    time.sleep(0.06)
    assert set(picks(pool, 20)) == {1, 2}


def test_unavailable_speaks_of_the_tiers_asked_for() -> None:
    pool = make_pool("random", [5.0])
    pool.cool(pool.keys[1], 30, "HTTP 429")
    assert pool.unavailable((FREE,)).retry_after is None  # no zero-balance key at all
    assert "cooling" in pool.unavailable((PAID,)).message
    assert pool.usable() == 0


def test_usable_counts_keys_whose_rest_is_over() -> None:
    pool = make_pool("random", [5.0])
    pool.cool(pool.keys[1], 0.02, "HTTP 429")
    assert pool.usable() == 0
    time.sleep(0.03)
    assert pool.usable() == 1
