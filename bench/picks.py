"""What a pick costs with 100,000 keys, with and without keys resting for the requested model (issue 12).

    python bench/picks.py                 # every strategy, about a minute on 2 cores
    python bench/picks.py --picks 50000   # shorter

In-process, no server: a KeyPool of `--keys` keys (each key its own account, then accounts of
10 keys), and the mean cost of one `acquire((PAID,), "M")` + `release(key)` pair in four states:
no rests; 99 % of the keys (or of the accounts) resting for M; those same rests while picking
for another model N; 50 % resting for M. The wall clock of rests is fixed, so no rest ends
during the run. Also the cost of the rest that opens the model's view (once VIEW_AT keys rest
for it; one pass over the tier) and of the other rests, and the memory a view takes.

Figures only: the one check is that a pick for M never returns a key resting for M.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tables import table  # noqa: E402  (bench/tables.py, beside this file)

from silicon_pool.keys import Key  # noqa: E402
from silicon_pool.pool import PAID, KeyPool  # noqa: E402

STRATEGIES = ("least_inflight", "random", "round_robin", "least_used", "balance_high")
ACCOUNT_SIZE = 10  # keys per account in the second variant
NOW, UNTIL = 1_000_000.0, 2_000_000_000.0  # the pool's fixed wall clock, and the end of every rest
ROUNDS = 10  # a state's picks are timed in this many rounds; the best round's mean is reported
STATES = (
    ("no rests", 0.0, "M"),
    ("99 % rest for M, pick M", 0.99, "M"),
    ("99 % rest for M, pick N", 0.99, "N"),
    ("50 % rest for M, pick M", 0.5, "M"),
)


def build(strategy: str, keys: int, accounts: bool) -> KeyPool:
    pool = KeyPool(strategy)
    pool.clock = lambda: NOW
    pool.add_many(
        Key(
            i,
            f"sk-{i:048d}",
            float(i),
            1.0 + (i % 1000) / 10,  # 1,000 distinct balances, all paid
            account_id=f"acct-{i // ACCOUNT_SIZE}" if accounts else None,
        )
        for i in range(keys)
    )
    return pool


def owners(pool: KeyPool, share: float, accounts: bool, seed: int = 12) -> list[Key]:
    """One key per owner to rest: `share` of the keys, or of the accounts, chosen at random (fixed seed)."""
    heads = [next(iter(keys)) for keys in pool.by_account.values()] if accounts else list(pool.keys.values())
    return random.Random(seed).sample(heads, round(share * len(heads)))


def rest_all(pool: KeyPool, heads: list[Key]) -> tuple[float, float]:
    """Rest every owner in `heads` for M: (ns of the slowest rest, the one that opens M's view once
    VIEW_AT keys rest, and the mean ns of the others)."""
    rest, times = pool.rest, []
    for key in heads:
        start = time.perf_counter_ns()
        rest(key, "M", "RPD", UNTIL)
        times.append(time.perf_counter_ns() - start)
    slowest = max(times)
    return slowest, (sum(times) - slowest) / max(1, len(times) - 1)


def view_memory(strategy: str, keys: int, accounts: bool) -> tuple[float, float]:
    """Bytes traced once M's view opened, and with 99 % of owners resting (view compacted)."""
    pool = build(strategy, keys, accounts)
    heads = owners(pool, 0.99, accounts)
    gc.collect()
    tracemalloc.start()
    opened = 0
    try:
        base = tracemalloc.get_traced_memory()[0]
        for key in heads:
            pool.rest(key, "M", "RPD", UNTIL)
            if not opened and "M" in pool._views:
                opened = tracemalloc.get_traced_memory()[0] - base
        rested = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    return opened, rested


def pick_cost(pool: KeyPool, model: str, picks: int) -> float:
    """Mean ns of one acquire + release pair for `model`: the best of ROUNDS rounds, after a warm-up."""
    # every pool here has free keys, so acquire never returns None: release is typed to take what it returns
    acquire, release, tiers = pool.acquire, cast(Callable[[Key | None], None], pool.release), (PAID,)
    for _ in range(min(picks // 10, 20_000)):
        release(acquire(tiers, model))
    per_round = max(1, picks // ROUNDS)
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(ROUNDS):
            start = time.perf_counter_ns()
            for _ in range(per_round):
                release(acquire(tiers, model))
            best = min(best, (time.perf_counter_ns() - start) / per_round)
    finally:
        gc.enable()
    for _ in range(1000):  # sanity: a pick for M never returns a key resting for M
        key = acquire(tiers, model)
        assert key is not None and (model != "M" or not pool.rests_for(key, "M")), key
        release(key)
    return best


def measure(
    keys: int, picks: int, strategies: tuple[str, ...] = STRATEGIES
) -> list[tuple[str, list[str], list[list[str]]]]:
    """The two tables: pick cost per strategy and state, and the cost and memory of rests and views."""
    pick_rows: list[list[str]] = []
    rest_rows: list[list[str]] = []
    for strategy in strategies:
        for accounts in (False, True):
            variant = f"{keys // ACCOUNT_SIZE:,} × {ACCOUNT_SIZE}" if accounts else "none"
            base = 0.0
            rests: tuple[float, float] | None = None
            for label, share, model in STATES:
                pool = build(strategy, keys, accounts)
                if share:
                    timed = rest_all(pool, owners(pool, share, accounts))
                    if share == 0.99 and rests is None:
                        rests = timed
                ns = pick_cost(pool, model, picks)
                base = base or ns
                pick_rows.append([strategy, variant, label, f"{ns:,.0f}", f"{ns / base:.2f}"])
                del pool
            opened, rested = view_memory(strategy, keys, accounts)
            assert rests is not None
            rest_rows.append(
                [
                    strategy,
                    variant,
                    f"{rests[0] / 1e6:.1f}",
                    f"{rests[1] / 1e3:.2f}",
                    f"{opened / 2**20:.1f}",
                    f"{rested / 2**20:.1f}",
                ]
            )
    return [
        (
            f"pick cost, {keys:,} keys in-process (acquire + release, best of {ROUNDS} rounds of {picks // ROUNDS:,})",
            ["strategy", "accounts", "state", "ns / pick", "× no rests"],
            pick_rows,
        ),
        (
            f"rests for one model, {keys:,} keys (99 % of owners rest; memory traced by tracemalloc)",
            [
                "strategy",
                "accounts",
                "slowest rest ms (opens the view)",
                "other rests µs each",
                "view MB",
                "view + rests MB",
            ],
            rest_rows,
        ),
    ]


def report(*, keys: int = 100_000, picks: int = 200_000) -> None:
    """Print the tables (bench/run.py calls this after its own scenarios)."""
    for title, header, rows in measure(keys, picks):
        table(title, header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000, help="keys in the pool (default 100,000)")
    parser.add_argument("--picks", type=int, default=200_000, help="timed picks per state (default 200,000)")
    parser.add_argument("--strategy", action="append", choices=STRATEGIES, help="only these (repeatable)")
    args = parser.parse_args()

    started = time.monotonic()
    for title, header, rows in measure(args.keys, args.picks, tuple(args.strategy or STRATEGIES)):
        table(title, header, rows)
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
