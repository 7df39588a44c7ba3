"""Any sequence of pool operations leaves every key in exactly the indexes its state calls for:
PAID, FREE, UNKNOWN (the paid keys of unknown balance) and each model's view, ranked by its
current counters, checked after every step against a brute-force model kept by the test."""

from __future__ import annotations

import math
import types

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from silicon_pool import pool as pool_module
from silicon_pool.keys import ACTIVE, INVALID, Key
from silicon_pool.pool import ACCOUNT, FREE, KEY, PAID, UNKNOWN, KeyPool, Owner
from silicon_pool.selection import STRATEGIES, BucketIndex, InflightIndex
from tests.fake_upstream import make_key

MODELS = ("m1", "m2", "")
ACCOUNTS = (None, "acc-1", "acc-2")
BALANCES = (None, 0.0, -1.0, 3.0, 7.5)
TIER_SETS = ((PAID,), (FREE,), (UNKNOWN,), (FREE, PAID), (FREE, UNKNOWN))
picks = st.integers(min_value=0, max_value=1_000)


class PoolMachine(RuleBasedStateMachine):
    """The pool under test beside a plain record of the rests; time is the test's own."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 10_000.0
        clock = types.SimpleNamespace(monotonic=lambda: self.now, time=lambda: self.now)
        self._patch = [(pool_module, "time", pool_module.time), (pool_module, "VIEW_AT", pool_module.VIEW_AT)]
        self._patch.append((pool_module, "MAX_VIEWS", pool_module.MAX_VIEWS))
        pool_module.time = clock  # type: ignore[assignment]
        pool_module.VIEW_AT, pool_module.MAX_VIEWS = 2, 2  # views open early, and some models go without
        self.pool = KeyPool("least_inflight", clock=lambda: self.now)
        self.rests: dict[str, dict[Owner, float]] = {}
        self.held: list[Key] = []
        self.next_id = 1
        for balance in BALANCES:
            self.add_key(balance, None)

    def teardown(self) -> None:
        for module, name, value in self._patch:
            setattr(module, name, value)

    def _key(self, n: int) -> Key | None:
        keys = list(self.pool.keys.values())
        return keys[n % len(keys)] if keys else None

    # -- operations ------------------------------------------------------------------------------

    @rule(balance=st.sampled_from(BALANCES), account=st.sampled_from(ACCOUNTS))
    def add_key(self, balance: float | None, account: str | None) -> None:
        key_id, self.next_id = self.next_id, self.next_id + 1
        self.pool.add(Key(key_id, make_key(f"inv-{key_id}"), 1000.0 + key_id, balance, account_id=account))

    @rule(n=picks)
    def remove(self, n: int) -> None:
        key = self._key(n)
        if key is not None:
            self.pool.remove(key.id)
            for owners in self.rests.values():
                owners.pop((KEY, key.id), None)

    @rule(n=picks, balance=st.sampled_from(BALANCES), state=st.sampled_from([ACTIVE, ACTIVE, INVALID]))
    def set_balance(self, n: int, balance: float | None, state: str) -> None:
        if (key := self._key(n)) is not None:
            self.pool.set_balance(key, balance, state)

    @rule(n=picks)
    def out_of_balance(self, n: int) -> None:
        if (key := self._key(n)) is not None:
            self.pool.account_out_of_balance(key, "HTTP 403 30001")

    @rule(n=picks)
    def mark_invalid(self, n: int) -> None:
        if (key := self._key(n)) is not None:
            self.pool.mark_invalid(key, "HTTP 401")

    @rule(n=picks, enabled=st.booleans())
    def set_enabled(self, n: int, enabled: bool) -> None:
        if (key := self._key(n)) is not None:
            self.pool.set_enabled(key, enabled)

    @rule(n=picks, account=st.sampled_from(ACCOUNTS))
    def set_account(self, n: int, account: str | None) -> None:
        if (key := self._key(n)) is not None:
            self.pool.set_account(key, account)

    @rule(n=picks, seconds=st.sampled_from([0.0, 5.0, 30.0]))
    def cool(self, n: int, seconds: float) -> None:
        if (key := self._key(n)) is not None:
            self.pool.cool(key, seconds, "network")

    @rule(n=picks, model=st.sampled_from(MODELS), seconds=st.sampled_from([1.0, 10.0, 60.0]), whole=st.booleans())
    def rest(self, n: int, model: str, seconds: float, whole: bool) -> None:
        if (key := self._key(n)) is None:
            return
        owner: Owner = (ACCOUNT, key.account_id) if whole and key.account_id else (KEY, key.id)
        self.pool.rest(key, model, "RPM", self.now + seconds, whole_account=whole)
        owners = self.rests.setdefault(model, {})
        owners[owner] = max(owners.get(owner, 0.0), self.now + seconds)

    @rule(n=st.none() | picks, model=st.none() | st.sampled_from(MODELS))
    def clear_rests(self, n: int | None, model: str | None) -> None:
        key = self._key(n) if n is not None else None
        if n is not None and key is None:
            return
        self.pool.clear_rests(key.id if key is not None else None, model)
        for name, owners in self.rests.items():
            if model is None or name == model:
                for owner in list(owners):
                    if key is None or owner in ((KEY, key.id), pool_module.owner_of(key)):
                        del owners[owner]

    @rule(strategy=st.sampled_from(sorted(STRATEGIES)))
    def set_strategy(self, strategy: str) -> None:
        self.pool.set_strategy(strategy)

    @rule(cap=st.integers(min_value=0, max_value=2))
    def set_max_inflight(self, cap: int) -> None:
        self.pool.set_max_inflight(cap)

    @rule(seconds=st.sampled_from([0.5, 6.0, 31.0, 61.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule(tiers=st.sampled_from(TIER_SETS), model=st.sampled_from(MODELS), exclude=st.lists(picks, max_size=2))
    def acquire(self, tiers: tuple[int, ...], model: str, exclude: list[int]) -> None:
        self.pool.revive()
        excluded = tuple(k.id for n in exclude if (k := self._key(n)) is not None)
        eligible = [
            {k for k in self.pool.keys.values() if t in self._homes(k) and not self._rests_for(k, model)}
            - {k for k in self.pool.keys.values() if k.id in excluded}
            for t in tiers
        ]
        key = self.pool.acquire(tiers, model, excluded)
        first = next((keys for keys in eligible if keys), set())
        if key is None:
            assert not first, (tiers, model)
            why = self.pool.unavailable(tiers, model)
            self.pool.next_chance(tiers, model)
            if why.rest is not None:  # a 429 "wait for the rest": every key that could serve rests for the model
                serving = [k for k in self.pool.keys.values() if set(tiers) & self._homes(k)]
                assert all(self._rests_for(k, model) for k in serving), (tiers, model)
        else:
            assert key in first, (tiers, model, key)
            self.held.append(key)

    @rule(n=picks)
    def release(self, n: int) -> None:
        if self.held:
            self.pool.release(self.held.pop(n % len(self.held)))

    # -- the brute-force model -------------------------------------------------------------------

    def _rests_for(self, key: Key, model: str) -> bool:
        owners = self.rests.get(model, {})
        live = {owner for owner, until in owners.items() if until > self.now}
        return (KEY, key.id) in live or (key.account_id is not None and (ACCOUNT, key.account_id) in live)

    def _capped(self, key: Key) -> bool:
        cap = self.pool.max_inflight
        return (
            self.pool.keys.get(key.id) is key
            and key.cool_until <= self.now
            and self._servable(key)
            and (0 < cap <= key.inflight)
        )

    @staticmethod
    def _servable(key: Key) -> bool:
        return key.enabled and key.state != INVALID

    def _homes(self, key: Key) -> set[int]:
        """The indexes `key` belongs in, from its fields alone."""
        if self.pool.keys.get(key.id) is not key or key.cool_until > self.now or not self._servable(key):
            return set()
        if self._capped(key):
            return set()
        if key.balance is not None and key.balance <= 0:
            return {FREE}
        return {PAID, UNKNOWN} if key.balance is None else {PAID}

    @invariant()
    def every_key_is_where_its_state_says(self) -> None:
        pool = self.pool
        pool.revive()  # what every pick does first: keys whose cooldown or rest ended come back
        for owners in self.rests.values():
            for owner in [o for o, until in owners.items() if until <= self.now]:
                del owners[owner]
        everyone = set(pool.keys.values()) | set(self.held)
        for tier, index in enumerate(pool._indexes):
            assert set(index) == {k for k in everyone if tier in self._homes(k)}, tier
            _assert_ranked(index)
        assert pool._capped == {k for k in everyone if self._capped(k)}
        for model, view in pool._views.items():
            assert model in pool._rests
            for tier, index in enumerate(view):
                expected = {k for k in everyone if tier in self._homes(k) and not self._rests_for(k, model)}
                assert set(index) == expected, (model, tier)
                _assert_ranked(index)
        for key in pool.keys.values():
            for model in MODELS:
                assert pool.rests_for(key, model) == self._rests_for(key, model), (key.id, model)
            assert key.tier == (min(self._homes(key)) if self._homes(key) else None)


def _assert_ranked(index: object) -> None:
    """An index that ranks keys by a counter files each key under the counter's current value."""
    if isinstance(index, InflightIndex):
        assert all(level == key.inflight for key, level in index._level.items())
    elif isinstance(index, BucketIndex):
        for key, score in index._score.items():
            current = index._sign * index._score_of(key)
            assert score == current or (math.isnan(score) and math.isnan(current))


PoolMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
test_pool_indexes_follow_every_change = PoolMachine.TestCase
