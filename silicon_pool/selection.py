"""Per-strategy selection indexes: each one answers "which key next?" in O(1) or O(log n).

Only the active strategy's index is kept (one per tier); switching strategy rebuilds it once,
so memory stays flat with 100,000 keys and the request path never scans the pool.
Each index keeps its own bookkeeping (a key's slot, score or level, in dicts keyed by the key),
so one key can sit in several indexes at once: the pool's per-tier index and the per-model views
that leave out keys resting for one model (pool.py).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .keys import Key


class Index(Protocol):
    """What the pool needs from a strategy index."""

    @property
    def tracks(self) -> str | None:
        """The Key attribute whose change means rescore() must be called."""
        ...

    def __len__(self) -> int: ...
    def __contains__(self, key: Key) -> bool: ...
    def __iter__(self) -> Iterator[Key]: ...
    def add(self, key: Key) -> None: ...
    def discard(self, key: Key) -> None: ...
    def pick(self) -> Key | None: ...
    def rescore(self, key: Key) -> None: ...


class Ring:
    """Keys in a list: O(1) add and remove (swap with the last), and a cursor so equals take turns."""

    __slots__ = ("cursor", "items", "slot")

    def __init__(self) -> None:
        self.items: list[Key] = []
        self.slot: dict[Key, int] = {}  # each key's place in `items`
        self.cursor = 0

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, key: Key) -> bool:
        return key in self.slot

    def __iter__(self) -> Iterator[Key]:
        return iter(self.items)

    def add(self, key: Key) -> None:
        self.slot[key] = len(self.items)
        self.items.append(key)

    def remove(self, key: Key) -> None:
        items = self.items
        i = self.slot.pop(key)
        last = items.pop()
        if last is not key:
            items[i] = last
            self.slot[last] = i

    def next(self) -> Key:
        items = self.items
        i = self.cursor
        if i >= len(items):
            i = 0
        self.cursor = i + 1
        return items[i]


class RandomIndex(Ring):
    """Uniformly random pick: spreads concurrent requests with no shared state."""

    tracks = None

    def discard(self, key: Key) -> None:
        self.remove(key)

    def pick(self) -> Key | None:
        items = self.items
        return items[int(random.random() * len(items))] if items else None

    def rescore(self, key: Key) -> None:  # noqa: ARG002 - nothing is ranked
        return


class RoundRobinIndex(RandomIndex):
    """Each key in turn."""

    def pick(self) -> Key | None:
        return self.next() if self.items else None


class BucketIndex:
    """Keys grouped by score; a heap of scores finds the best group, the group rotates its keys.

    Heap entries are removed lazily (an empty group is dropped at once, its score when it
    reaches the top) and the heap is rebuilt when stale entries outnumber live ones, so it
    never grows without bound, even for `most_used` whose top score climbs forever.
    """

    __slots__ = ("_buckets", "_heap", "_score", "_score_of", "_sign", "tracks")

    def __init__(self, score_of: Callable[[Key], float], *, highest: bool, tracks: str | None) -> None:
        self._score_of = score_of
        self._sign = -1 if highest else 1
        self._buckets: dict[float, Ring] = {}
        self._heap: list[float] = []
        self._score: dict[Key, float] = {}  # the score each key is filed under
        self.tracks = tracks

    def __len__(self) -> int:
        return len(self._score)

    def __contains__(self, key: Key) -> bool:
        return key in self._score

    def __iter__(self) -> Iterator[Key]:
        return iter(self._score)

    def add(self, key: Key) -> None:
        score = self._score[key] = self._sign * self._score_of(key)
        ring = self._buckets.get(score)
        if ring is None:
            ring = self._buckets[score] = Ring()
            if len(self._heap) > 2 * len(self._buckets) + 64:
                self._heap = list(self._buckets)
                heapq.heapify(self._heap)
            else:
                heapq.heappush(self._heap, score)
        ring.add(key)

    def discard(self, key: Key) -> None:
        score = self._score.pop(key)
        ring = self._buckets[score]
        ring.remove(key)
        if not ring.items:
            del self._buckets[score]

    def pick(self) -> Key | None:
        heap, buckets = self._heap, self._buckets
        while heap:
            ring = buckets.get(heap[0])
            if ring is not None:
                return ring.next()
            heapq.heappop(heap)
        return None

    def rescore(self, key: Key) -> None:
        if self._sign * self._score_of(key) != self._score[key]:
            self.discard(key)
            self.add(key)


class InflightIndex:
    """`least_inflight`: keys grouped by requests in flight, in a list indexed by that count.

    The count only moves by one as a request starts or ends, so picking, acquiring and releasing
    are O(1) list and dict steps: the busiest strategy pays no heap on the request path.
    """

    __slots__ = ("_level", "_levels", "_low")
    tracks = "inflight"

    def __init__(self) -> None:
        self._levels: list[Ring] = []
        self._level: dict[Key, int] = {}  # the level each key is filed at
        self._low = 0  # no key sits below this level

    def __len__(self) -> int:
        return len(self._level)

    def __contains__(self, key: Key) -> bool:
        return key in self._level

    def __iter__(self) -> Iterator[Key]:
        return iter(self._level)

    def add(self, key: Key) -> None:
        self._put(key)

    def discard(self, key: Key) -> None:
        self._levels[self._level.pop(key)].remove(key)

    def pick(self) -> Key | None:
        levels, low = self._levels, self._low
        while low < len(levels):
            ring = levels[low]
            if ring.items:
                self._low = low
                return ring.next()
            low += 1
        self._low = low
        return None

    def rescore(self, key: Key) -> None:
        """Move `key` to the level of its current count (twice per request: no discard/add pair)."""
        level = self._level[key]
        if key.inflight != level:
            self._levels[level].remove(key)
            self._put(key)

    def _put(self, key: Key) -> None:
        level = self._level[key] = key.inflight
        levels = self._levels
        while len(levels) <= level:
            levels.append(Ring())
        levels[level].add(key)
        if level < self._low:
            self._low = level


def _balance_or(default: float) -> Callable[[Key], float]:
    """Unknown balances rank last whichever way the strategy sorts."""
    return lambda key: default if key.balance is None else key.balance


def _buckets(score_of: Callable[[Key], float], highest: bool, tracks: str | None = None) -> Callable[[], Index]:
    return lambda: BucketIndex(score_of, highest=highest, tracks=tracks)


# name -> (factory, Chinese help, English help); the admin shows the help next to the choice.
STRATEGIES: dict[str, tuple[Callable[[], Index], str, str]] = {
    "least_inflight": (
        InflightIndex,
        "当前并发请求最少的 Key 优先（高并发推荐）",
        "Fewest requests in flight right now (best under concurrency)",
    ),
    "random": (RandomIndex, "随机选择", "Random key"),
    "round_robin": (RoundRobinIndex, "轮询，依次使用每个 Key", "Each key in turn"),
    "balance_high": (_buckets(_balance_or(-math.inf), True), "余额最多优先", "Highest balance first"),
    "balance_low": (_buckets(_balance_or(math.inf), False), "余额最少优先", "Lowest balance first"),
    "oldest": (_buckets(lambda k: k.added_at, False), "添加时间最早优先", "Oldest key first"),
    "newest": (_buckets(lambda k: k.added_at, True), "添加时间最新优先", "Newest key first"),
    "least_used": (_buckets(lambda k: k.usage_count, False, "usage_count"), "使用次数最少优先", "Least used first"),
    "most_used": (_buckets(lambda k: k.usage_count, True, "usage_count"), "使用次数最多优先", "Most used first"),
}


def make_index(strategy: str) -> Index:
    """A fresh, empty index for `strategy`."""
    return STRATEGIES[strategy][0]()
