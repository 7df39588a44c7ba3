"""The pool as the proxy and the admin use it: what a pick returns, what a refusal says, what
`/healthz` counts and what reaches the store, each through the pool's public methods."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from silicon_pool.keys import ACTIVE, INVALID, Key
from silicon_pool.pool import ACCOUNT, FREE, KEY, PAID, UNKNOWN, KeyPool, Rest, Unavailable, owner_of
from tests.fake_upstream import make_key

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def pool_of(*balances: float | None, strategy: str = "round_robin", accounts: list[str | None] | None = None):
    clock = Clock()
    changed: list[int] = []
    rested: list[Rest] = []
    pool = KeyPool(strategy, on_change=lambda k: changed.append(k.id), on_rest=rested.append, clock=clock)
    for i, balance in enumerate(balances):
        account = accounts[i] if accounts else None
        pool.add(Key(i + 1, make_key(f"pin-{i}"), 1000.0 + i, balance=balance, account_id=account))
    return pool, clock, changed, rested


def take(pool: KeyPool, tiers: tuple[int, ...] = (PAID,), model: str = "", n: int = 1) -> list[int | None]:
    got = []
    for _ in range(n):
        key = pool.acquire(tiers, model)
        got.append(None if key is None else key.id)
        if key is not None:
            pool.release(key)
    return got


# -- membership -------------------------------------------------------------------------------


def test_a_removed_key_is_forgotten_everywhere() -> None:
    pool, _, _, _ = pool_of(1.0, 1.0, accounts=["acc", "acc"])
    key = pool.keys[1]
    assert pool.remove(1) is key
    assert pool.remove(1) is None
    assert key.secret not in pool.by_secret and 1 not in pool.keys
    assert pool.by_account["acc"] == {pool.keys[2]}
    assert pool.tier_size(PAID) == 1 and len(pool) == 1
    assert set(take(pool, n=6)) == {2}
    pool.remove(2)
    assert "acc" not in pool.by_account and pool.tier_size(PAID) == 0


def test_a_removed_key_no_longer_shows_as_resting() -> None:
    pool, clock, _, _ = pool_of(1.0, 1.0)
    pool.rest(pool.keys[1], "m", "RPM", clock.now + 60)
    pool.remove(1)
    assert pool.rested_models() == {} and pool.clear_rests() == []


def test_a_removed_key_takes_its_own_rests_but_not_its_accounts() -> None:
    pool, clock, _, _ = pool_of(1.0, 1.0, 1.0, accounts=[None, "acc", "acc"])
    pool.rest(pool.keys[1], "m", "RPM", clock.now + 60)
    pool.rest(pool.keys[2], "m", "RPM", clock.now + 60)
    pool.remove(1)
    pool.remove(2)
    assert [r.owner for r in pool.rests_of(pool.keys[3])] == [(ACCOUNT, "acc")]
    assert take(pool, model="m") == [None]


def test_keys_of_one_account_share_it_and_leave_it() -> None:
    pool, _, changed, _ = pool_of(1.0, 1.0)
    first, second = pool.keys[1], pool.keys[2]
    pool.set_account(first, "acc")
    pool.set_account(second, "acc")
    assert pool.by_account == {"acc": {first, second}}
    assert owner_of(first) == (ACCOUNT, "acc")
    changed.clear()
    pool.set_account(first, "acc")  # no change, nothing to store
    assert changed == []
    pool.set_account(first, "other")
    assert pool.by_account == {"acc": {second}, "other": {first}} and changed == [1]
    pool.set_account(second, None)
    assert pool.by_account == {"other": {first}} and owner_of(second) == (KEY, 2)


def test_the_tiers_split_at_a_zero_balance() -> None:
    pool, _, _, _ = pool_of(0.01, 0.0, -1.0, None)
    assert (pool.tier_size(PAID), pool.tier_size(FREE)) == (2, 2)
    assert set(take(pool, (FREE,), n=8)) == {2, 3}
    assert set(take(pool, (PAID,), n=8)) == {1, 4}


# -- what a pick does to a key ----------------------------------------------------------------


def test_a_pick_counts_the_use_and_the_request_in_flight() -> None:
    pool, _, changed, _ = pool_of(1.0)
    before = time.time()
    key = pool.acquire((PAID,))
    assert key is not None
    assert (key.inflight, key.usage_count) == (1, 1) and key.last_used_at >= before
    assert changed == [1]
    pool.release(key)
    assert key.inflight == 0


def test_the_concurrency_cap_holds_a_key_back_until_one_request_ends() -> None:
    pool, _, _, _ = pool_of(1.0, strategy="least_used")
    pool.set_max_inflight(2)
    first, second = pool.acquire((PAID,)), pool.acquire((PAID,))
    assert first is second is pool.keys[1]
    assert pool.acquire((PAID,)) is None
    why = pool.unavailable((PAID,))
    assert why.retry_after == 1 and "max_inflight_per_key=2" in why.message and why.status == 503
    assert pool.next_chance((PAID,), "") == 1.0
    pool.release(first)
    assert pool.acquire((PAID,)) is pool.keys[1]
    pool.set_max_inflight(0)  # no cap: every request goes
    assert pool.acquire((PAID,)) is pool.keys[1] and pool.keys[1].inflight == 3


def test_a_key_at_its_cap_still_counts_as_usable_after_its_request_ends() -> None:
    pool, _, _, _ = pool_of(1.0, 1.0, strategy="least_inflight")
    pool.set_max_inflight(1)
    a, b = pool.acquire((PAID,)), pool.acquire((PAID,))
    assert a is not None and b is not None and a is not b
    assert pool.usable() == 0
    pool.release(b)
    assert pool.usable() == 1 and pool.acquire((PAID,)) is b


# -- cooling down -----------------------------------------------------------------------------


def test_usable_counts_a_key_whose_cooldown_just_ended() -> None:
    pool, _, _, _ = pool_of(1.0, 0.0)
    pool.cool(pool.keys[1], 0.02, "HTTP 503")
    pool.cool(pool.keys[2], 0.02, "HTTP 503")
    assert pool.usable() == 0
    time.sleep(0.03)
    assert pool.usable() == 2  # /healthz, with no pick in between to bring them back


def test_cooling_keeps_the_error_and_stores_it() -> None:
    pool, _, changed, _ = pool_of(1.0)
    key = pool.keys[1]
    pool.cool(key, 0, "upstream timed out")  # no rest, but the error is kept
    assert key.last_error == "upstream timed out" and pool.acquire((PAID,)) is key
    pool.release(key)
    changed.clear()
    pool.note_error(key, "HTTP 500: x" * 100)
    assert changed == [1] and key.last_error.startswith("HTTP 500: x") and len(key.last_error) <= 500


def test_the_wait_told_is_the_earliest_cooldown_that_brings_a_key_back() -> None:
    pool, _, _, _ = pool_of(1.0, 1.0, 1.0)
    pool.cool(pool.keys[1], 50, "a")
    pool.cool(pool.keys[2], 20, "b")
    pool.cool(pool.keys[3], 90, "c")
    why = pool.unavailable((PAID,))
    assert why.retry_after == 20 and "retry in 20s" in why.message and why.status == 503
    chance = pool.next_chance((PAID,), "")
    assert chance is not None and 19 < chance <= 20


def test_a_cooldown_that_no_longer_holds_is_not_waited_for() -> None:
    """Disabled, made invalid, moved to the other tier or cooled again: the old end is stale."""
    pool, _, _, _ = pool_of(1.0, 1.0, 1.0, 1.0)
    k1, k2, k3, k4 = (pool.keys[i] for i in (1, 2, 3, 4))
    for key, seconds in ((k1, 5), (k2, 6), (k3, 7), (k4, 8)):
        pool.cool(key, seconds, "x")
    pool.set_enabled(k1, False)
    pool.mark_invalid(k2, "HTTP 401")
    pool.set_balance(k3, 0.0)  # now a free key
    pool.cool(k4, 40, "again")
    assert pool.unavailable((PAID,)).retry_after == 40
    assert pool.unavailable((FREE,)).retry_after == 7
    pool.set_enabled(k4, False)
    why = pool.unavailable((PAID,))
    assert why.retry_after is None and why.status == 503 and "disabled, invalid" in why.message


def test_a_pool_without_keys_says_so() -> None:
    pool, _, _, _ = pool_of()
    why = pool.unavailable((PAID,))
    assert why == Unavailable("No API keys in the pool: import some in the admin (池中没有 Key，请先导入)", None)
    assert pool.next_chance((PAID,), "m") is None


def test_a_free_request_without_a_free_key_says_so() -> None:
    pool, _, _, _ = pool_of(1.0)
    assert "free token" in pool.unavailable((FREE,)).message and "零余额" in pool.unavailable((FREE,)).message
    assert pool.unavailable((FREE,)).retry_after is None


# -- invalid keys and balances ----------------------------------------------------------------


def test_an_invalid_key_keeps_why_and_comes_back_with_a_good_check() -> None:
    pool, _, changed, _ = pool_of(1.0)
    key = pool.keys[1]
    pool.mark_invalid(key, "HTTP 401: bad key")
    assert (key.state, key.last_error, changed) == (INVALID, "HTTP 401: bad key", [1])
    assert pool.usable() == 0
    pool.set_balance(key, 0.0)
    assert key.state == ACTIVE and pool.tier_size(FREE) == 1 and changed == [1, 1]


def test_out_of_balance_moves_every_paid_key_of_the_account_to_free() -> None:
    pool, _, _, _ = pool_of(0.5, None, 0.0, 5.0, accounts=["acc", "acc", "acc", "other"])
    moved = pool.account_out_of_balance(pool.keys[1], "HTTP 403: no balance")
    assert {k.id for k in moved} == {1, 2, 3}
    assert [pool.keys[i].balance for i in (1, 2, 3, 4)] == [0.0, 0.0, 0.0, 5.0]
    assert [pool.keys[i].last_error for i in (1, 2, 3)] == ["HTTP 403: no balance"] * 2 + [None]
    assert (pool.tier_size(PAID), pool.tier_size(FREE)) == (1, 3)


def test_a_key_without_account_out_of_balance_moves_alone() -> None:
    pool, _, _, _ = pool_of(3.0, 3.0)
    assert [k.id for k in pool.account_out_of_balance(pool.keys[1], "x")] == [1]
    assert pool.keys[2].balance == 3.0


# -- rests for one model ------------------------------------------------------------------------


def test_a_rest_is_reported_once_and_a_shorter_one_leaves_it() -> None:
    pool, clock, _, rested = pool_of(1.0, 1.0)
    first = pool.rest(pool.keys[1], "m", "RPM", clock.now + 60)
    assert rested == [first]
    assert pool.rest(pool.keys[1], "m", "TPM", clock.now + 60) is first
    assert pool.rest(pool.keys[1], "m", "TPM", clock.now + 30) is first and rested == [first]
    longer = pool.rest(pool.keys[1], "m", "RPD", clock.now + 61)
    assert rested == [first, longer] and pool.rests_of(pool.keys[1]) == [longer]


def test_retry_after_is_the_earliest_rest_of_a_key_that_could_serve() -> None:
    pool, clock, _, _ = pool_of(1.0, 1.0, 0.0)
    pool.rest(pool.keys[1], "m", "RPM", clock.now + 300)
    pool.rest(pool.keys[2], "m", "RPM", clock.now + 120)
    pool.rest(pool.keys[3], "m", "RPM", clock.now + 10)  # a free key: no help to a paid request
    assert take(pool, model="m") == [None]
    why = pool.unavailable((PAID,), "m")
    assert why.status == 429 and why.retry_after == 120 and why.rest is not None and why.rest.owner == (KEY, 2)
    chance = pool.next_chance((PAID,), "m")
    assert chance == 120
    assert pool.unavailable((FREE,), "m").retry_after == 10
    clock.now += 119.5
    assert pool.unavailable((PAID,), "m").retry_after == 1  # never 0: a client must wait a little
    clock.now += 0.5
    assert take(pool, model="m") == [2]


def test_a_rest_held_by_a_disabled_key_does_not_tell_when_to_come_back() -> None:
    pool, clock, _, _ = pool_of(1.0, 1.0)
    pool.rest(pool.keys[1], "m", "RPM", clock.now + 30)
    pool.rest(pool.keys[2], "m", "RPM", clock.now + 200)
    pool.set_enabled(pool.keys[1], False)
    assert pool.unavailable((PAID,), "m").retry_after == 200


def test_a_rest_ended_early_or_renewed_is_not_the_earliest() -> None:
    pool, clock, _, _ = pool_of(1.0, 1.0)
    pool.rest(pool.keys[1], "m", "RPM", clock.now + 30)
    pool.rest(pool.keys[2], "m", "RPM", clock.now + 200)
    pool.rest(pool.keys[1], "m", "RPD", clock.now + 500)
    assert pool.unavailable((PAID,), "m").retry_after == 200
    assert [r.owner for r in pool.clear_rests(2, "m")] == [(KEY, 2)]
    assert take(pool, model="m") == [2]


def test_rests_end_on_their_own_when_their_time_comes() -> None:
    pool, clock, _, _ = pool_of(1.0, 1.0)
    pool.rest(pool.keys[1], "m", "RPM", clock.now + 60)
    pool.rest(pool.keys[2], "m", "RPM", clock.now + 90)
    assert take(pool, model="m") == [None] and take(pool, model="other") == [1]
    clock.now += 60
    assert set(take(pool, model="m", n=4)) == {1}
    assert pool.rested_models()["m"][0] == 1
    clock.now += 30
    assert set(take(pool, model="m", n=4)) == {1, 2}
    assert pool.rested_models() == {}


def test_the_admin_sees_how_many_keys_rest_per_model_and_until_when() -> None:
    pool, clock, _, _ = pool_of(1.0, 1.0, 1.0, accounts=["acc", "acc", None])
    pool.rest(pool.keys[1], "m", "RPM", clock.now + 60)  # the account: keys 1 and 2
    last = pool.rest(pool.keys[3], "m", "RPD", clock.now + 600)
    pool.rest(pool.keys[3], "n", "RPM", clock.now + 5)
    summary = pool.rested_models()
    assert summary["m"] == (3, last) and summary["n"][0] == 1


def test_clearing_rests_by_key_by_model_or_all() -> None:
    pool, clock, _, _ = pool_of(1.0, 1.0, 1.0, accounts=["acc", "acc", None])
    for model in ("m", "n"):
        pool.rest(pool.keys[1], model, "RPM", clock.now + 60)
        pool.rest(pool.keys[3], model, "RPM", clock.now + 60)
    assert pool.clear_rests(99) == []
    ended = pool.clear_rests(2, "m")  # key 2 rests through its account
    assert [(r.model, r.owner) for r in ended] == [("m", (ACCOUNT, "acc"))]
    assert {r.model for r in pool.rests_of(pool.keys[3])} == {"m", "n"}
    assert len(pool.clear_rests(model="n")) == 2
    assert len(pool.clear_rests()) == 1 and pool.rested_models() == {}


def test_rests_stored_before_a_restart_come_back_unless_over() -> None:
    pool, clock, _, rested = pool_of(1.0, 1.0)
    pool.restore(
        [
            Rest("m", (KEY, 1), "RPD", clock.now + 3600),
            Rest("m", (KEY, 2), "RPM", clock.now - 1),
            Rest("m", (KEY, 2), "RPM", clock.now),
        ]
    )
    assert [r.owner for r in pool.rests_of(pool.keys[1])] == [(KEY, 1)]
    assert pool.rests_of(pool.keys[2]) == [] and rested == []
    assert set(take(pool, model="m", n=4)) == {2}


# -- waiting ----------------------------------------------------------------------------------


async def test_a_waiter_wakes_when_a_key_comes_back() -> None:
    pool, clock, _, _ = pool_of(1.0)
    pool.rest(pool.keys[1], "m", "RPM", clock.now + 60)

    started = time.monotonic()
    task = asyncio.get_running_loop().call_later(0.05, pool.clear_rests)
    await pool.wait_for_change(5)
    task.cancel()
    assert time.monotonic() - started < 4  # woken by the rest's end, not by the time-out
    assert take(pool, model="m") == [1]


async def test_a_wait_with_nothing_happening_lasts_its_time() -> None:
    pool, _, _, _ = pool_of(1.0)
    started = time.monotonic()
    await pool.wait_for_change(0.05)
    assert time.monotonic() - started >= 0.04


@pytest.mark.parametrize(("free_rests", "retry_after"), [(40, 500), (70, 12)])
def test_past_many_rests_that_cannot_help_the_wait_told_is_the_models_earliest(
    free_rests: int, retry_after: int
) -> None:
    """A paid request looks at 64 rests at most for one that brings back a paid key; past that it
    tells the model's earliest end (a renewed rest's old end skipped) rather than walk them all."""
    pool, clock, _, _ = pool_of(1.0, *([0.0] * free_rests))
    pool.rest(pool.keys[1], "m", "RPD", clock.now + 500)
    for i in range(free_rests):
        pool.rest(pool.keys[i + 2], "m", "RPM", clock.now + 10 + i)
    pool.rest(pool.keys[2], "m", "RPD", clock.now + 5000)  # renewed: its end at +10 is stale
    pool.clear_rests(3, "m")  # ended early: its end at +11 is stale too
    why = pool.unavailable((PAID,), "m")
    assert why.status == 429 and why.retry_after == retry_after


def test_an_unknown_strategy_is_refused_by_name() -> None:
    pool, _, _, _ = pool_of(1.0)
    with pytest.raises(ValueError, match=r"^unknown strategy 'fastest'$"):
        pool.set_strategy("fastest")


def test_a_key_back_from_its_cap_is_no_longer_counted_as_capped() -> None:
    pool, _, _, _ = pool_of(1.0)
    pool.set_max_inflight(1)
    key = pool.acquire((PAID,))
    assert key is not None and pool.next_chance((PAID,), "") == 1.0
    pool.release(key)
    pool.set_enabled(key, False)
    why = pool.unavailable((PAID,))
    assert "disabled, invalid" in why.message and why.retry_after is None
    assert pool.next_chance((PAID,), "") is None


def rest_most(pool: KeyPool, clock: Clock, model: str, resting: int) -> None:
    """Rest the first `resting` keys for `model`: past VIEW_AT, the model gets a view of its own."""
    for key_id in range(1, resting + 1):
        pool.rest(pool.keys[key_id], model, "RPM", clock.now + 60, whole_account=False)


@pytest.mark.parametrize("strategy", ["round_robin", "oldest"])
def test_picks_for_a_model_with_most_keys_resting_find_the_others(strategy: str) -> None:
    """However many rest (here the 80 oldest), a key free for the model is found: the model has a view."""
    pool, clock, _, _ = pool_of(*([1.0] * 100), strategy=strategy)
    rest_most(pool, clock, "m", 80)
    picked = take(pool, model="m", n=60)
    assert set(picked) == (set(range(81, 101)) if strategy == "round_robin" else {81})
    assert len(set(take(pool, model="other", n=200))) == (100 if strategy == "round_robin" else 1)


def test_a_balance_check_reorders_the_picks_of_a_rested_model_too() -> None:
    pool, clock, _, _ = pool_of(*([1.0] * 40), strategy="balance_high")
    rest_most(pool, clock, "m", 35)
    pool.set_balance(pool.keys[38], 99.0)
    assert take(pool, model="m", n=3) == [38, 38, 38]
    pool.set_balance(pool.keys[38], 0.5)
    assert 38 not in take(pool, model="m", n=3)


@pytest.mark.parametrize("strategy", ["least_used", "least_inflight"])
def test_the_picks_of_a_rested_model_even_out_as_keys_are_used(strategy: str) -> None:
    pool, clock, _, _ = pool_of(*([1.0] * 40), strategy=strategy)
    rest_most(pool, clock, "m", 38)
    if strategy == "least_used":
        pool.keys[39].usage_count, pool.keys[40].usage_count = 0, 5
        pool.set_balance(pool.keys[40], 1.0)  # re-filed at its count
        take(pool, model="m", n=15)
        assert (pool.keys[39].usage_count, pool.keys[40].usage_count) == (10, 10)
    else:
        held = [pool.acquire((PAID,), "m") for _ in range(4)]
        assert sorted(k.id for k in held if k) == [39, 39, 40, 40]
        pool.release(pool.keys[40])
        assert pool.acquire((PAID,), "m") is pool.keys[40]


def test_a_key_deleted_while_cooling_down_is_simply_gone() -> None:
    pool, _, _, _ = pool_of(1.0, 1.0)
    pool.cool(pool.keys[1], 0.02, "HTTP 503")
    pool.remove(1)
    time.sleep(0.03)
    assert take(pool, n=3) == [2, 2, 2] and pool.usable() == 1


def test_an_accounts_rest_holds_only_that_account() -> None:
    pool, clock, _, _ = pool_of(1.0, 1.0, 1.0, accounts=["acc-a", "acc-b", None])
    pool.rest(pool.keys[1], "m", "RPM", clock.now + 60)
    assert set(take(pool, model="m", n=6)) == {2, 3}
    assert not pool.rests_for(pool.keys[2], "m") and pool.rests_for(pool.keys[1], "m")


def test_restored_rests_end_when_their_time_comes() -> None:
    pool, clock, _, _ = pool_of(1.0)
    pool.restore([Rest("m", (KEY, 1), "RPH", clock.now + 600)])
    assert take(pool, model="m") == [None]
    clock.now += 600
    assert take(pool, model="m") == [1] and pool.rests_of(pool.keys[1]) == []


async def test_a_waiter_wakes_when_another_request_finds_a_rest_over() -> None:
    pool, clock, _, _ = pool_of(1.0)
    pool.rest(pool.keys[1], "m", "RPM", clock.now + 60)

    def time_passes() -> None:
        clock.now += 60
        pool.usable()  # /healthz, or another request's pick, notices the rest is over

    started = time.monotonic()
    asyncio.get_running_loop().call_later(0.05, time_passes)
    await pool.wait_for_change(5)
    assert time.monotonic() - started < 4


def test_the_wait_ignores_a_key_deleted_while_cooling() -> None:
    pool, _, _, _ = pool_of(1.0, 1.0)
    pool.cool(pool.keys[1], 5, "HTTP 503")
    pool.cool(pool.keys[2], 30, "HTTP 503")
    pool.remove(1)
    assert pool.unavailable((PAID,)).retry_after == 30


@pytest.mark.parametrize("seed", range(12))
def test_retry_after_is_the_first_paid_rest_however_the_rests_were_made(seed: int) -> None:
    """Rests made in any order (free keys' among them): the wait told is the earliest that brings back a paid key."""
    rng = random.Random(seed)
    balances = [rng.choice([0.0, 0.0, 1.0]) for _ in range(rng.randint(8, 40))]
    pool, clock, _, _ = pool_of(1.0, *balances)
    ends = {key_id: rng.randint(10, 5000) for key_id in pool.keys}
    for key_id in rng.sample(list(ends), len(ends)):
        pool.rest(pool.keys[key_id], "m", "RPH", clock.now + ends[key_id])
    paid = min(end for key_id, end in ends.items() if pool.keys[key_id].balance)
    assert pool.unavailable((PAID,), "m").retry_after == paid
    assert pool.next_chance((PAID,), "m") == paid


def test_a_key_busy_at_its_cap_makes_the_wait_short_not_the_rest() -> None:
    pool, clock, _, _ = pool_of(1.0, 1.0, strategy="least_used")
    pool.set_max_inflight(1)
    pool.rest(pool.keys[1], "m", "RPH", clock.now + 3600)
    busy = pool.acquire((PAID,), "m")
    assert busy is pool.keys[2] and pool.acquire((PAID,), "m") is None
    why = pool.unavailable((PAID,), "m")
    assert why.status == 503 and why.retry_after == 1


def test_a_key_cooling_down_makes_the_wait_its_cooldown_not_the_rest() -> None:
    pool, clock, _, _ = pool_of(1.0, 1.0)
    pool.rest(pool.keys[1], "m", "RPH", clock.now + 3600)
    pool.cool(pool.keys[2], 5, "HTTP 503")
    assert take(pool, model="m") == [None]
    why = pool.unavailable((PAID,), "m")
    assert why.status == 503 and why.retry_after == 5
    pool.rest(pool.keys[2], "m", "RPH", clock.now + 1800)  # now it rests too: the rest is the wait
    why = pool.unavailable((PAID,), "m")
    assert why.status == 429 and why.retry_after == 1800


@pytest.mark.parametrize(("keys", "resting"), [(10, 2), (100, 80)], ids=["setting aside", "with a view"])
def test_when_every_key_not_resting_was_tried_the_answer_is_no_rate_limit(keys: int, resting: int) -> None:
    """Failover tried every key free for the model: it is out of keys, not rate limited."""
    pool, clock, _, _ = pool_of(*([1.0] * keys))
    rest_most(pool, clock, "m", resting)
    tried = tuple(range(resting + 1, keys + 1))
    assert pool.acquire((PAID,), "m", tried) is None
    why = pool.unavailable((PAID,), "m")
    assert why.status == 503 and why.rest is None


@pytest.mark.parametrize(("before", "after", "first"), [("oldest", "newest", 40), ("newest", "oldest", 35)])
def test_a_new_strategy_applies_to_the_picks_of_rested_models_too(before: str, after: str, first: int) -> None:
    pool, clock, _, _ = pool_of(*([1.0] * 40), strategy=before)
    rest_most(pool, clock, "m", 34)  # the model has a view
    pool.set_strategy(after)
    assert pool.strategy == after
    assert take(pool, model="m") == [first]
    pool.clear_rests(model="m")
    rest_most(pool, clock, "n", 34)  # a view opened after the change
    assert take(pool, model="n") == [first]


def test_a_strategy_change_keeps_a_view_for_a_model_with_few_keys_left_resting() -> None:
    """The view opened at 34 resting keys; 30 of them came back; then the strategy changes."""
    pool, clock, _, _ = pool_of(*([1.0] * 40), strategy="oldest")
    rest_most(pool, clock, "m", 34)
    for key_id in range(1, 31):
        pool.clear_rests(key_id, "m")
    pool.set_strategy("newest")
    assert take(pool, model="m") == [40]


def test_after_a_strategy_change_most_keys_resting_still_leave_the_others() -> None:
    pool, clock, _, _ = pool_of(*([1.0] * 100), strategy="newest")
    rest_most(pool, clock, "m", 80)
    pool.set_strategy("oldest")
    assert take(pool, model="m") == [81]


async def test_a_waiter_wakes_when_a_key_is_enabled() -> None:
    pool, _, _, _ = pool_of(1.0)
    pool.set_enabled(pool.keys[1], False)
    started = time.monotonic()
    asyncio.get_running_loop().call_later(0.05, pool.set_enabled, pool.keys[1], True)
    await pool.wait_for_change(5)
    assert time.monotonic() - started < 4


def test_a_free_key_whose_cooldown_ended_serves_the_next_free_request() -> None:
    pool, _, _, _ = pool_of(0.0)
    pool.cool(pool.keys[1], 0.02, "HTTP 503")
    assert take(pool, (FREE,)) == [None]
    time.sleep(0.03)
    assert take(pool, (FREE,)) == [1]


def test_rests_restored_after_a_restart_tell_the_wait_and_keep_a_view() -> None:
    pool, clock, _, _ = pool_of(*([1.0] * 100), strategy="oldest")
    pool.restore([Rest("m", (KEY, i), "RPD", clock.now + 7200 + i) for i in range(1, 81)])
    assert take(pool, model="m") == [81]  # the 80 oldest rest: the model has its view again
    for key_id in range(81, 101):
        pool.set_enabled(pool.keys[key_id], False)
    assert pool.unavailable((PAID,), "m").retry_after == 7201


def test_a_renewed_rest_is_not_ended_by_its_old_end() -> None:
    pool, clock, _, _ = pool_of(1.0, 1.0)
    pool.rest(pool.keys[1], "m", "RPM", clock.now + 60)
    pool.rest(pool.keys[1], "m", "RPD", clock.now + 600)
    clock.now += 61
    assert set(take(pool, model="m", n=4)) == {2}
    clock.now += 540
    assert set(take(pool, model="m", n=4)) == {1, 2}


def test_a_short_cooldown_ends_while_a_longer_one_goes_on() -> None:
    pool, _, _, _ = pool_of(1.0, 1.0)
    pool.cool(pool.keys[1], 0.02, "HTTP 503")
    pool.cool(pool.keys[2], 30, "HTTP 503")
    time.sleep(0.03)
    assert take(pool, n=3) == [1, 1, 1]


async def test_after_a_wake_the_next_wait_lasts_its_time_again() -> None:
    pool, clock, _, _ = pool_of(1.0)
    pool.rest(pool.keys[1], "m", "RPM", clock.now + 60)
    asyncio.get_running_loop().call_later(0.01, pool.clear_rests)
    await pool.wait_for_change(5)
    started = time.monotonic()
    await pool.wait_for_change(0.05)
    assert time.monotonic() - started >= 0.04


def test_a_rest_is_the_wait_when_the_only_other_key_is_deleted_or_disabled_while_cooling() -> None:
    for gone in ("removed", "disabled"):
        pool, clock, _, _ = pool_of(1.0, 1.0)
        pool.cool(pool.keys[1], 30, "HTTP 503")
        pool.remove(1) if gone == "removed" else pool.set_enabled(pool.keys[1], False)
        pool.rest(pool.keys[2], "m", "RPH", clock.now + 900)
        why = pool.unavailable((PAID,), "m")
        assert (why.status, why.retry_after) == (429, 900), gone


def test_a_refusal_says_why_in_both_languages() -> None:
    pool, _, _, _ = pool_of(1.0)
    pool.set_max_inflight(3)
    for _ in range(3):
        pool.acquire((PAID,))
    assert pool.unavailable((PAID,)).message == (
        "Every key is serving max_inflight_per_key=3 requests; retry shortly (所有 Key 都已达到并发上限)"
    )
    free = pool.unavailable((FREE,))  # a paid key at its cap brings no zero-balance key back
    assert free.message == "No zero-balance key is available for the free token (没有可用的零余额 Key)"
    assert free.retry_after is None and pool.next_chance((FREE,), "") is None
    assert pool.next_chance((PAID,), "") == 1.0
    pool.set_max_inflight(0)
    pool.set_enabled(pool.keys[1], False)
    assert pool.unavailable((PAID,)).message == (
        "No usable key: every key is disabled, invalid or out of balance (没有可用的 Key)"
    )


def test_no_wait_is_told_when_only_keys_of_the_other_tier_rest() -> None:
    pool, clock, _, _ = pool_of(1.0, 0.0)
    pool.rest(pool.keys[2], "m", "RPM", clock.now + 60)
    assert pool.next_chance((PAID,), "m") is None
    assert pool.next_chance((FREE,), "m") == 60


def test_a_free_token_request_waits_for_unknown_balance_keys_cooling_down_not_for_known_ones() -> None:
    pool, _, _, _ = pool_of(None, 5.0)
    pool.cool(pool.keys[1], 30, "upstream connection failed")
    pool.cool(pool.keys[2], 10, "upstream connection failed")  # back sooner, but never the free token's
    why = pool.unavailable((FREE, UNKNOWN))
    assert why.status == 503 and why.retry_after == 30 and "cooling" in why.message
    chance = pool.next_chance((FREE, UNKNOWN), "m")
    assert chance is not None and 29 < chance <= 30
    assert pool.unavailable((PAID,)).retry_after == 10
