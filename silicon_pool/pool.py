"""The key pool: every key in memory, and the strategy index that picks the next one.

Keys fall in two tiers: PAID (balance > 0 or unknown) serves normal requests, FREE (balance
<= 0) serves free models. A key that is disabled, invalid or cooling down sits in no index,
so a pick never has to skip it. Every change to a stored field is reported through
`on_change`, which hands the key to the background writer: the pool itself never does I/O.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .keys import ACTIVE, INVALID, Key
from .selection import STRATEGIES, Index, make_index

PAID, FREE = 0, 1


def _tier_of(key: Key) -> int:
    return FREE if key.balance is not None and key.balance <= 0 else PAID


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Why no key could be picked, for the 503 the client gets."""

    message: str
    retry_after: int | None


class KeyPool:
    """Keys by id plus one index per tier for the active strategy."""

    def __init__(self, strategy: str, on_change: Callable[[Key], None] = lambda _key: None) -> None:
        self.keys: dict[int, Key] = {}
        self.by_secret: dict[str, Key] = {}
        self.strategy = strategy
        self._indexes: tuple[Index, Index] = (make_index(strategy), make_index(strategy))
        # Per tier, (cool_until, id) of keys resting; entries of keys since changed are skipped lazily.
        self._cooling: tuple[list[tuple[float, int]], list[tuple[float, int]]] = ([], [])
        self._on_change = on_change

    def __len__(self) -> int:
        return len(self.keys)

    def tier_size(self, tier: int) -> int:
        return len(self._indexes[tier])

    # -- membership ---------------------------------------------------------------------------

    def add(self, key: Key) -> None:
        self.keys[key.id] = key
        self.by_secret[key.secret] = key
        self._place(key)

    def add_many(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self.add(key)

    def remove(self, key_id: int) -> Key | None:
        key = self.keys.pop(key_id, None)
        if key is None:
            return None
        del self.by_secret[key.secret]
        if key.tier is not None:
            self._indexes[key.tier].discard(key)
            key.tier = None
        return key

    def set_strategy(self, strategy: str) -> None:
        """Rebuild the indexes for `strategy`; the next pick uses it."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}")
        self.strategy = strategy
        self._indexes = (make_index(strategy), make_index(strategy))
        for key in self.keys.values():
            key.tier = None
            self._place(key)

    def _place(self, key: Key) -> None:
        """Put `key` in the index its state calls for (or in none, once it was removed from the pool).

        A resting key is (re)entered in its tier's cooling heap, so `revive` finds it whatever
        changed meanwhile; duplicate entries are harmless."""
        tier: int | None = None
        if self.keys.get(key.id) is key:
            if key.cool_until > time.monotonic():
                heapq.heappush(self._cooling[_tier_of(key)], (key.cool_until, key.id))
            elif key.enabled and key.state != INVALID:
                tier = _tier_of(key)
        if tier == key.tier:
            if tier is not None:  # same tier, but the balance (say) may have moved it within the index
                self._indexes[tier].rescore(key)
            return
        if key.tier is not None:
            self._indexes[key.tier].discard(key)
        key.tier = tier
        if tier is not None:
            self._indexes[tier].add(key)

    # -- the request path ---------------------------------------------------------------------

    def acquire(self, tiers: tuple[int, ...], exclude: tuple[int, ...] = ()) -> Key | None:
        """Pick a key from the first tier that has one, skipping ids in `exclude`, and count its use."""
        if self._cooling[PAID] or self._cooling[FREE]:
            self.revive()
        for tier in tiers:
            index = self._indexes[tier]
            key = index.pick()
            if key is not None and key.id in exclude:
                key = self._pick_excluding(index, exclude)
            if key is not None:
                key.inflight += 1
                key.usage_count += 1
                key.last_used_at = time.time()
                if index.tracks is not None:
                    index.rescore(key)
                self._on_change(key)
                return key
        return None

    def release(self, key: Key) -> None:
        """The request on `key` is over."""
        key.inflight -= 1
        if key.tier is not None and self._indexes[key.tier].tracks == "inflight":
            self._indexes[key.tier].rescore(key)

    @staticmethod
    def _pick_excluding(index: Index, exclude: tuple[int, ...]) -> Key | None:
        """Set the excluded keys aside while picking; only failover within one request gets here."""
        held: list[Key] = []
        try:
            while (key := index.pick()) is not None and key.id in exclude:
                index.discard(key)
                held.append(key)
            return key
        finally:
            for key in held:
                index.add(key)

    def revive(self) -> None:
        """Put keys whose cooldown is over back in their index."""
        now = time.monotonic()
        for heap in self._cooling:
            while heap and heap[0][0] <= now:
                _, key_id = heapq.heappop(heap)
                key = self.keys.get(key_id)
                if key is not None and key.cool_until <= now:
                    self._place(key)

    def usable(self) -> int:
        """Keys that can be picked right now, in either tier."""
        self.revive()
        return len(self._indexes[PAID]) + len(self._indexes[FREE])

    # -- what upstream answers do to a key -----------------------------------------------------

    def _next_cool_end(self, tier: int) -> float | None:
        """When the first key of `tier` that is only resting comes back (stale entries dropped)."""
        heap = self._cooling[tier]
        while heap:
            until, key_id = heap[0]
            key = self.keys.get(key_id)
            if (
                key is not None
                and key.cool_until == until
                and key.enabled
                and key.state != INVALID
                and _tier_of(key) == tier
            ):
                return until
            heapq.heappop(heap)  # stale: `_place` enters the key again if it still rests
        return None

    def mark_invalid(self, key: Key, error: str) -> None:
        """The upstream said 401: keep the key, never pick it again until a refresh revives it."""
        key.state = INVALID
        key.last_error = error
        self._place(key)
        self._on_change(key)

    def set_balance(self, key: Key, balance: float | None, state: str = ACTIVE) -> None:
        """A checked balance; may move the key between tiers or bring an invalid key back."""
        key.balance = balance
        key.state = state
        self._place(key)
        self._on_change(key)

    def cool(self, key: Key, seconds: float, error: str) -> None:
        """Rest `key` for `seconds`: rate limited, overloaded or unreachable."""
        key.last_error = error
        if seconds > 0:
            key.cool_until = time.monotonic() + seconds
            self._place(key)
        self._on_change(key)

    def note_error(self, key: Key, error: str) -> None:
        key.last_error = error
        self._on_change(key)

    def set_enabled(self, key: Key, enabled: bool) -> None:
        key.enabled = enabled
        self._place(key)
        self._on_change(key)

    # -- explaining an empty pick ---------------------------------------------------------------

    def unavailable(self, tiers: tuple[int, ...]) -> Unavailable:
        """Why `acquire(tiers)` found nothing (the earliest cooldown gives Retry-After)."""
        if not self.keys:
            return Unavailable("No API keys in the pool: import some in the admin (池中没有 Key，请先导入)", None)
        self.revive()
        waits = [until for tier in tiers if (until := self._next_cool_end(tier)) is not None]
        if waits:
            wait = max(1, math.ceil(min(waits) - time.monotonic()))
            return Unavailable(
                f"All usable keys are cooling down after upstream errors; retry in {wait}s (所有可用 Key 正在冷却)",
                wait,
            )
        if tiers == (FREE,):
            return Unavailable("No zero-balance key is available for the free token (没有可用的免费 Key)", None)
        return Unavailable(
            "No usable key: every key is disabled, invalid or out of balance (没有可用的 Key)",
            None,
        )
