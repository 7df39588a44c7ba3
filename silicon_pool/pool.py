"""The key pool: every key in memory, the strategy index that picks the next one, and the
per-model views that leave out the keys resting for one model.

Keys fall in two tiers: PAID (balance > 0 or unknown) serves normal requests, FREE (balance
<= 0) serves free models. UNKNOWN is the part of PAID whose balance is unknown (SiliconFlow no
longer reports China keys' balances), indexed on its own so the free token can fall back on it
without ever taking a key known to carry balance; its keys take turns (UNKNOWN_ORDER), so the
paid traffic on them pays no second re-ranking per request. A key that is disabled, invalid, cooling down
(a network failure rests the whole key) or at its concurrency cap sits in no index, so a pick
never skips it.

Rate limits belong to an account and a model (limits.py). A rest keeps one (key, model) pair,
or every key of one account for one model, out of that model's picks only. While few keys rest
for a model (fewer than VIEW_AT), its picks set those few aside; once more do, the model gets a
view: per tier, an index of the same strategy holding the tier's keys minus those resting for
it. Picks for that model use the view, every other model the tier's own index, so no pick walks
past more than a few resting keys however many rest; a view closes when its model's last rest
ends. At most MAX_VIEWS views exist (each holds a copy of the tier's bookkeeping); past that, a
model's picks set aside at most SKIP_LIMIT resting keys before they give up. Every change to a
stored field is reported through `on_change`, and every new rest through `on_rest`, for the
background writer: the pool itself never does I/O.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .keys import ACTIVE, INVALID, MAX_ERROR, Key
from .selection import STRATEGIES, Index, make_index
from .text import clean

PAID, FREE, UNKNOWN = 0, 1, 2  # UNKNOWN: the PAID keys whose balance is unknown, a subset
ACCOUNT, KEY = "account", "key"

VIEW_AT = 32  # keys resting for one model before it gets a view of its own
MAX_VIEWS = 32
SKIP_LIMIT = 64  # resting keys a pick without a view sets aside at most
FIRST_SERVING_LOOKS = 64  # rests looked at for the first one that brings back a useful key

Owner = tuple[str, int | str]  # (ACCOUNT, account id) or (KEY, key id): who a rest holds back
Tiers = tuple[Index, Index, Index]  # by PAID, FREE, UNKNOWN


@dataclass(slots=True)
class Rest:
    """One owner resting for one model until a wall-clock time, and why (a limit kind, limits.py)."""

    model: str
    owner: Owner
    kind: str
    until: float

    @property
    def scope(self) -> str:
        return self.owner[0]


@dataclass(slots=True)
class _ModelRests:
    """The rests for one model: by owner, and a heap of their ends (stale entries skipped lazily)."""

    by_owner: dict[Owner, Rest]
    ends: list[tuple[float, Owner]]

    def earliest(self) -> Rest | None:
        while self.ends:
            until, owner = self.ends[0]
            rest = self.by_owner.get(owner)
            if rest is not None and rest.until == until:
                return rest
            heapq.heappop(self.ends)
        return None


def _servable(key: Key) -> bool:
    return key.enabled and key.state != INVALID


def _tier_of(key: Key) -> int:
    return FREE if key.balance is not None and key.balance <= 0 else PAID


def _homes(tier: int | None, key: Key) -> tuple[int, ...]:
    """The indexes a key of `tier` belongs in: its tier's, and UNKNOWN's too for a paid key of unknown balance."""
    if tier is None:
        return ()
    return (PAID, UNKNOWN) if tier == PAID and key.balance is None else (tier,)


def _in_tiers(key: Key, tiers: tuple[int, ...]) -> bool:
    return any(t in tiers for t in _homes(_tier_of(key), key))


UNKNOWN_ORDER = "round_robin"  # how the free token's fallback keys are picked: nothing to re-rank


def _new_tiers(strategy: str) -> Tiers:
    return make_index(strategy), make_index(strategy), make_index(UNKNOWN_ORDER)


def owner_of(key: Key) -> Owner:
    """Whose budget a key spends: its account's where known, else its own (every key its own account)."""
    return (ACCOUNT, key.account_id) if key.account_id else (KEY, key.id)


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Why no key could be picked, for the answer the client gets."""

    message: str
    retry_after: int | None
    rest: Rest | None = None  # set when every key that could serve rests for the model

    @property
    def status(self) -> int:
        """429 when every key that could serve rests for the model (the client should wait), else 503."""
        return 429 if self.rest is not None else 503


class KeyPool:
    """Keys by id plus one index per tier for the active strategy, and a view per rested model."""

    def __init__(
        self,
        strategy: str,
        on_change: Callable[[Key], None] = lambda _key: None,
        *,
        on_rest: Callable[[Rest], None] = lambda _rest: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys: dict[int, Key] = {}
        self.by_secret: dict[str, Key] = {}
        self.by_account: dict[str, set[Key]] = {}
        self.strategy = strategy
        self.max_inflight = 0  # per key; 0 = no cap
        self.clock = clock  # wall clock of rests (tests move it)
        self._indexes: Tiers = _new_tiers(strategy)
        self._views: dict[str, Tiers] = {}
        self._view_sizes: dict[str, int] = {}  # each view's size when (re)built, to know when to compact it
        self._rests: dict[str, _ModelRests] = {}
        self._rest_ends: list[tuple[float, str, Owner]] = []  # every rest's end, stale entries skipped
        # Per tier, (cool_until, id) of keys resting whole; entries of keys since changed are skipped lazily.
        self._cooling: tuple[list[tuple[float, int]], list[tuple[float, int]]] = ([], [])
        self._capped: set[Key] = set()  # keys out of every index only because they are at their cap
        self._back: asyncio.Event | None = None  # set when a key may have come back, while someone waits
        self._on_change, self._on_rest = on_change, on_rest

    def __len__(self) -> int:
        return len(self.keys)

    def tier_size(self, tier: int) -> int:
        return len(self._indexes[tier])

    # -- membership ---------------------------------------------------------------------------

    def add(self, key: Key) -> None:
        self.keys[key.id] = key
        self.by_secret[key.secret] = key
        if key.account_id:
            self.by_account.setdefault(key.account_id, set()).add(key)
        self._place(key)

    def add_many(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self.add(key)

    def remove(self, key_id: int) -> Key | None:
        key = self.keys.pop(key_id, None)
        if key is None:
            return None
        del self.by_secret[key.secret]
        self._leave_account(key)
        self._place(key)  # out of every index
        for model in list(self._rests):
            if (KEY, key.id) in self._rests[model].by_owner:
                self._end_rest(self._rests[model].by_owner[(KEY, key.id)])
        return key

    def set_account(self, key: Key, account_id: str | None) -> None:
        """The account a balance check found; the key now shares that account's rests."""
        if account_id == key.account_id:
            return
        self._leave_account(key)
        key.account_id = account_id
        if account_id:
            self.by_account.setdefault(account_id, set()).add(key)
        self._place(key)
        self._on_change(key)

    def _leave_account(self, key: Key) -> None:
        siblings = self.by_account.get(key.account_id or "")
        if siblings is not None:
            siblings.discard(key)
            if not siblings:
                del self.by_account[key.account_id or ""]

    def set_strategy(self, strategy: str) -> None:
        """Rebuild the indexes (and the views) for `strategy`; the next pick uses it."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}")
        self.strategy = strategy
        self._indexes = _new_tiers(strategy)
        self._views, self._view_sizes = {}, {}
        for key in self.keys.values():
            key.tier = None
            self._place(key)
        for model in self._rests:
            if len(self._views) < MAX_VIEWS and self._held_for(model) >= VIEW_AT:
                self._views[model] = self._open_view(model)

    def set_max_inflight(self, cap: int) -> None:
        self.max_inflight = cap
        for key in self.keys.values():
            self._place(key)

    def _place(self, key: Key) -> None:
        """Put `key` in the indexes its state calls for (in none once it left the pool), views included.

        A resting key is (re)entered in its tier's cooling heap, so `revive` finds it whatever
        changed meanwhile; duplicate entries are harmless."""
        tier: int | None = None
        capped = False
        if self.keys.get(key.id) is key:
            if key.cool_until > time.monotonic():
                heapq.heappush(self._cooling[_tier_of(key)], (key.cool_until, key.id))
            elif key.enabled and key.state != INVALID:
                capped = 0 < self.max_inflight <= key.inflight
                tier = None if capped else _tier_of(key)
        if capped:
            self._capped.add(key)
        elif self._capped:
            self._capped.discard(key)
        old, key.tier = key.tier, tier
        homes = _homes(tier, key)
        for code, index in enumerate(self._indexes):
            if code in homes:
                if key in index:
                    index.rescore(key)  # same place, but the balance (say) may have moved it within
                else:
                    index.add(key)
            elif key in index:
                index.discard(key)
        if tier is not None and tier != old:
            self._wake()  # enabled, imported, refunded or back from its cap: waiters look again
        for model, view in self._views.items():
            wanted = homes if homes and not self.rests_for(key, model) else ()
            for code, index in enumerate(view):
                if code in wanted:
                    if key in index:
                        index.rescore(key)
                    else:
                        index.add(key)
                elif key in index:
                    index.discard(key)

    # -- the request path ---------------------------------------------------------------------

    def acquire(self, tiers: tuple[int, ...], model: str = "", exclude: tuple[int, ...] = ()) -> Key | None:
        """Pick a key for `model` from the first tier that has one, skipping ids in `exclude`; count its use."""
        ends = self._rest_ends
        if self._cooling[PAID] or self._cooling[FREE] or (ends and ends[0][0] <= self.clock()):
            self.revive()
        indexes = self._views.get(model, self._indexes) if self._views else self._indexes
        sparse = indexes is self._indexes and model in self._rests  # few rest for it: set them aside
        for tier in tiers:
            index = indexes[tier]
            key = index.pick()
            if key is not None and (key.id in exclude or (sparse and self.rests_for(key, model))):
                key = self._pick_skipping(index, exclude, model if sparse else None)
            if key is not None:
                key.inflight += 1
                key.usage_count += 1
                key.last_used_at = time.time()
                if self.max_inflight and key.inflight >= self.max_inflight:
                    self._place(key)  # at its cap: out of every index until a request on it ends
                elif self._indexes[PAID].tracks is not None:  # not `index`'s: UNKNOWN's ranks nothing
                    self._rescore(key)
                self._on_change(key)
                return key
        return None

    def release(self, key: Key) -> None:
        """The request on `key` is over."""
        key.inflight -= 1
        if self.max_inflight and key.inflight == self.max_inflight - 1:
            self._place(key)
            self._wake()
        elif key.tier is not None and self._indexes[key.tier].tracks == "inflight":
            self._rescore(key)

    def _rescore(self, key: Key) -> None:
        """A tracked counter moved: re-rank `key` in its tier's index and in every view holding it."""
        tier = key.tier
        if tier is None:
            return
        self._indexes[tier].rescore(key)
        for view in self._views.values():
            if key in view[tier]:
                view[tier].rescore(key)

    def _pick_skipping(self, index: Index, exclude: tuple[int, ...], resting_for: str | None) -> Key | None:
        """Set aside, while picking, the keys this request tried and (for a model without a view)
        those resting for it: a few at most, SKIP_LIMIT at the very most."""
        held: list[Key] = []
        try:
            while (key := index.pick()) is not None and (
                key.id in exclude or (resting_for is not None and self.rests_for(key, resting_for))
            ):
                if len(held) >= SKIP_LIMIT + len(exclude):
                    return None
                index.discard(key)
                held.append(key)
            return key
        finally:
            for key in held:
                index.add(key)

    def revive(self) -> None:
        """Put keys whose cooldown is over back in their index, and end the rests that are over."""
        now = time.monotonic()
        revived = False
        for heap in self._cooling:
            while heap and heap[0][0] <= now:
                _, key_id = heapq.heappop(heap)
                key = self.keys.get(key_id)
                if key is not None and key.cool_until <= now:
                    self._place(key)
                    revived = True
        ends, wall = self._rest_ends, self.clock()
        while ends and ends[0][0] <= wall:
            until, model, owner = heapq.heappop(ends)
            rests = self._rests.get(model)
            rest = rests.by_owner.get(owner) if rests is not None else None
            if rest is not None and rest.until == until:
                self._end_rest(rest)
                revived = True
        if revived:
            self._wake()

    def usable(self) -> int:
        """Keys that can be picked right now for at least one model, in either tier."""
        self.revive()
        return len(self._indexes[PAID]) + len(self._indexes[FREE])

    # -- rests for one model --------------------------------------------------------------------

    def rests_for(self, key: Key, model: str) -> bool:
        """Whether `key` rests for `model`, by itself or with its account."""
        rests = self._rests.get(model)
        if rests is None:
            return False
        by_owner = rests.by_owner
        return (KEY, key.id) in by_owner or (key.account_id is not None and (ACCOUNT, key.account_id) in by_owner)

    def rest(self, key: Key, model: str, kind: str, until: float, *, whole_account: bool = True) -> Rest:
        """Keep `key` (and, with `whole_account`, its account's other keys) out of `model`'s picks until
        `until`; a longer rest already in place stands."""
        owner = owner_of(key) if whole_account else (KEY, key.id)
        rests = self._rests.get(model)
        if rests is None:
            rests = self._rests[model] = _ModelRests({}, [])
        current = rests.by_owner.get(owner)
        if current is not None and current.until >= until:
            return current
        rest = rests.by_owner[owner] = Rest(model, owner, kind, until)
        heapq.heappush(rests.ends, (until, owner))
        heapq.heappush(self._rest_ends, (until, model, owner))
        view = self._views.get(model)
        if view is None:
            if len(self._views) < MAX_VIEWS and self._held_for(model) >= VIEW_AT:
                self._views[model] = self._open_view(model)
        else:
            for held in self._owned(owner):
                for code in _homes(held.tier, held):
                    if held in view[code]:
                        view[code].discard(held)
            if (len(view[PAID]) + len(view[FREE])) * 4 < self._view_sizes[model]:
                self._views[model] = self._open_view(model)  # compact: dicts never shrink by themselves
        self._on_rest(rest)
        return rest

    def _held_for(self, model: str, enough: int = VIEW_AT) -> int:
        """Keys resting for `model`, counted up to `enough` (a view is only worth it past that)."""
        held: set[int] = set()
        for owner in self._rests[model].by_owner:
            held |= self._owned_ids(owner)
            if len(held) >= enough:
                break
        return len(held)

    def restore(self, rests: Iterable[Rest]) -> None:
        """Rests stored before a restart; those already over are dropped."""
        now = self.clock()
        for rest in rests:
            if rest.until > now:
                rests_of = self._rests.setdefault(rest.model, _ModelRests({}, []))
                rests_of.by_owner[rest.owner] = rest
                heapq.heappush(rests_of.ends, (rest.until, rest.owner))
                heapq.heappush(self._rest_ends, (rest.until, rest.model, rest.owner))
        for model in self._rests:
            if len(self._views) < MAX_VIEWS and self._held_for(model) >= VIEW_AT:
                self._views[model] = self._open_view(model)

    def clear_rests(self, key_id: int | None = None, model: str | None = None) -> list[Rest]:
        """End rests now: those of one key (its own and its account's), of one model, or all."""
        key = self.keys.get(key_id) if key_id is not None else None
        if key_id is not None and key is None:
            return []
        owners = {(KEY, key.id), owner_of(key)} if key is not None else None
        ended = [
            rest
            for name, rests in list(self._rests.items())
            if model is None or name == model
            for rest in list(rests.by_owner.values())
            if owners is None or rest.owner in owners
        ]
        for rest in ended:
            self._end_rest(rest)
        if ended:
            self._wake()
        return ended

    def rests_of(self, key: Key) -> list[Rest]:
        """The rests holding `key` back, its account's included."""
        owners = {(KEY, key.id), owner_of(key)}
        return [rest for rests in self._rests.values() for owner, rest in rests.by_owner.items() if owner in owners]

    def rested_models(self) -> dict[str, tuple[int, Rest]]:
        """Per model with rests: how many keys rest for it, and the rest that ends last."""
        summary = {}
        for model, rests in self._rests.items():
            held = sum(len(self._owned_ids(owner)) for owner in rests.by_owner)
            summary[model] = (held, max(rests.by_owner.values(), key=lambda r: r.until))
        return summary

    def live_rests(self) -> Iterable[Rest]:
        """Every rest not yet over (ended ones leave lazily), for the metrics."""
        now = self.clock()
        return [rest for rests in self._rests.values() for rest in rests.by_owner.values() if rest.until > now]

    def _owned(self, owner: Owner) -> Iterable[Key]:
        scope, who = owner
        if scope == ACCOUNT:
            return self.by_account.get(str(who), ())
        key = self.keys.get(who) if isinstance(who, int) else None
        return () if key is None else (key,)

    def _owned_ids(self, owner: Owner) -> set[int]:
        return {k.id for k in self._owned(owner)}

    def _open_view(self, model: str) -> Tiers:
        """`model`'s view: per tier, the tier's keys that do not rest for it (one pass, at its first rest)."""
        view = _new_tiers(self.strategy)
        for tier, index in enumerate(self._indexes):
            for key in index:
                if not self.rests_for(key, model):
                    view[tier].add(key)
        self._view_sizes[model] = len(view[PAID]) + len(view[FREE])
        return view

    def _end_rest(self, rest: Rest) -> None:
        rests = self._rests[rest.model]
        del rests.by_owner[rest.owner]
        if not rests.by_owner:  # the model's last rest: its view closes, picks go back to the tier indexes
            del self._rests[rest.model]
            self._views.pop(rest.model, None)
            self._view_sizes.pop(rest.model, None)
            return
        view = self._views.get(rest.model)
        if view is None:
            return
        for key in self._owned(rest.owner):
            if not self.rests_for(key, rest.model):
                for code in _homes(key.tier, key):
                    if key not in view[code]:
                        view[code].add(key)

    # -- waiting for a key ------------------------------------------------------------------------

    def next_chance(self, tiers: tuple[int, ...], model: str) -> float | None:
        """Seconds until a key may come back for `model` (a rest or a cooldown ends, or a capped key
        finishes a request), or None when nothing pending would bring one."""
        waits: list[float] = []
        rests = self._rests.get(model)
        earliest = self._first_serving(rests, tiers) if rests is not None else None
        if earliest is not None:
            waits.append(earliest.until - self.clock())
        cools = [until for tier in tiers if (until := self._next_cool_end(tier)) is not None]
        if cools:
            waits.append(min(cools) - time.monotonic())
        if self._capped_in(tiers):
            waits.append(1.0)  # woken early by the release
        return max(0.0, min(waits)) if waits else None

    async def wait_for_change(self, seconds: float) -> None:
        """Sleep up to `seconds`, woken early when a key comes back (a rest ends, a capped key frees)."""
        if self._back is None:
            self._back = asyncio.Event()
        back = self._back
        try:
            async with asyncio.timeout(seconds):
                await back.wait()
        except TimeoutError:
            pass
        finally:
            if back.is_set():
                self._back = None

    def _wake(self) -> None:
        if self._back is not None:
            self._back.set()

    # -- what upstream answers do to a key -----------------------------------------------------

    def _next_cool_end(self, tier: int) -> float | None:
        """When the first key of `tier` that is only resting comes back (stale entries dropped)."""
        if tier == UNKNOWN:  # a part of PAID's heap: looked through, nothing in it is stale for PAID
            return min(
                (
                    u
                    for u, i in self._cooling[PAID]
                    if (k := self.keys.get(i)) is not None and self._only_cools(k, u, tier)
                ),
                default=None,
            )
        heap = self._cooling[tier]
        while heap:
            until, key_id = heap[0]
            key = self.keys.get(key_id)
            if key is not None and self._only_cools(key, until, tier):
                return until
            heapq.heappop(heap)  # stale: `_place` enters the key again if it still rests
        return None

    @staticmethod
    def _only_cools(key: Key, until: float, tier: int) -> bool:
        """Whether `key`'s cooling entry `until` is current, and the key of `tier` once it ends."""
        return key.cool_until == until and _servable(key) and tier in _homes(_tier_of(key), key)

    def _first_serving(self, rests: _ModelRests, tiers: tuple[int, ...]) -> Rest | None:
        """The rest, in order of their ends, that brings back a key able to serve `tiers` (a rest held
        by disabled or zero-balance keys does not help a paid request). The heap is walked in order
        without popping, FIRST_SERVING_LOOKS entries at most; past that, the model's earliest rest."""
        heap, frontier = rests.ends, [(rests.ends[0], 0)] if rests.ends else []
        for _ in range(FIRST_SERVING_LOOKS):
            if not frontier:
                return None
            (until, owner), i = heapq.heappop(frontier)
            rest = rests.by_owner.get(owner)
            if rest is not None and rest.until == until and self._serves(owner, tiers):
                return rest
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))
        return rests.earliest()

    def _serves(self, owner: Owner, tiers: tuple[int, ...]) -> bool:
        return any(_servable(k) and _in_tiers(k, tiers) for k in self._owned(owner))

    def _all_resting(self, tiers: tuple[int, ...], model: str) -> bool:
        """Whether every key in the indexes of `tiers` rests for `model` (an empty tier counts)."""
        view = self._views.get(model)
        if view is not None:
            return not any(len(view[t]) for t in tiers)
        if sum(len(self._indexes[t]) for t in tiers) > SKIP_LIMIT:
            return True  # no view to hold them: a pick that found none gave up after SKIP_LIMIT resting keys
        return all(self.rests_for(k, model) for t in tiers for k in self._indexes[t])

    def _capped_in(self, tiers: tuple[int, ...]) -> bool:
        """Whether a key of `tiers` is out of the indexes only because it is at its cap (back soon)."""
        return any(_in_tiers(key, tiers) for key in self._capped)

    def _held_out(self, tiers: tuple[int, ...]) -> Iterable[Key]:
        """Keys of `tiers` out of every index for now only: cooling down, or at their cap."""
        for key in self._capped:
            if _in_tiers(key, tiers):
                yield key
        now = time.monotonic()
        for heap in {PAID if t == UNKNOWN else t for t in tiers}:
            for until, key_id in self._cooling[heap]:
                cooling = self.keys.get(key_id)
                if (
                    cooling is not None
                    and until > now
                    and self._only_cools(cooling, until, heap)
                    and _in_tiers(cooling, tiers)
                ):
                    yield cooling

    def mark_invalid(self, key: Key, error: str) -> None:
        """The upstream said 401: keep the key, never pick it again until a refresh revives it."""
        key.state = INVALID
        key.last_error = clean(error, MAX_ERROR)
        self._place(key)
        self._on_change(key)

    def set_balance(self, key: Key, balance: float | None, state: str = ACTIVE) -> None:
        """A checked balance; may move the key between tiers or bring an invalid key back."""
        key.balance = balance
        key.state = state
        self._place(key)
        self._on_change(key)

    def account_out_of_balance(self, key: Key, error: str) -> list[Key]:
        """A 30001: balance belongs to the account, so every key of it known here goes to the free tier."""
        keys = {key, *self.by_account.get(key.account_id or "", ())}
        for each in keys:
            if each.balance is None or each.balance > 0:
                each.last_error = clean(error, MAX_ERROR)
                self.set_balance(each, 0.0, each.state)
        return list(keys)

    def cool(self, key: Key, seconds: float, error: str) -> None:
        """Rest the whole key for `seconds`: the network to it failed, or it refuses everything."""
        key.last_error = clean(error, MAX_ERROR)
        if seconds > 0:
            key.cool_until = time.monotonic() + seconds
            self._place(key)
        self._on_change(key)

    def note_error(self, key: Key, error: str) -> None:
        key.last_error = clean(error, MAX_ERROR)
        self._on_change(key)

    def set_enabled(self, key: Key, enabled: bool) -> None:
        key.enabled = enabled
        self._place(key)
        self._on_change(key)

    # -- explaining an empty pick ---------------------------------------------------------------

    def unavailable(self, tiers: tuple[int, ...], model: str = "") -> Unavailable:
        """Why `acquire(tiers, model)` found nothing (the earliest end of a wait gives Retry-After)."""
        if not self.keys:
            return Unavailable("No API keys in the pool: import some in the admin (池中没有 Key，请先导入)", None)
        self.revive()
        rests = self._rests.get(model)
        if rests is not None and self._all_resting(tiers, model):
            out = list(self._held_out(tiers))  # cooling or at their cap: back soon, unless they rest too
            serving = any(len(self._indexes[t]) for t in tiers) or out
            earliest = self._first_serving(rests, tiers)
            if serving and earliest is not None and all(self.rests_for(k, model) for k in out):
                wait = max(1, math.ceil(earliest.until - self.clock()))
                return Unavailable("", wait, rest=earliest)  # the proxy words it (it knows the zone)
        waits = [until for tier in tiers if (until := self._next_cool_end(tier)) is not None]
        if waits:
            wait = max(1, math.ceil(min(waits) - time.monotonic()))
            return Unavailable(
                f"All usable keys are cooling down after upstream errors; retry in {wait}s (所有可用 Key 正在冷却)",
                wait,
            )
        if self._capped_in(tiers):
            return Unavailable(
                f"Every key is serving max_inflight_per_key={self.max_inflight} requests; retry shortly "
                "(所有 Key 都已达到并发上限)",
                1,
            )
        if tiers == (FREE,):
            return Unavailable("No zero-balance key is available for the free token (没有可用的零余额 Key)", None)
        if PAID not in tiers:
            return Unavailable(
                "No zero-balance or unknown-balance key is available for the free token "
                "(没有可用的零余额或余额未知的 Key)",
                None,
            )
        return Unavailable(
            "No usable key: every key is disabled, invalid or out of balance (没有可用的 Key)",
            None,
        )
