"""Rests for many models do not tax every request: with 2,000 keys and 200 models each holding one
rested key (an upstream that 429s or 503s whatever model clients name), a pick for an unrelated
model costs within 10x of a pick with no rests, and the views take bounded memory."""

from __future__ import annotations

import time
import tracemalloc

from silicon_pool.keys import Key
from silicon_pool.pool import PAID, KeyPool

KEYS, MODELS, PICKS = 2000, 200, 5000


def _pick_cost(pool: KeyPool) -> float:
    started = time.perf_counter()
    for _ in range(PICKS):
        key = pool.acquire((PAID,), "unrelated/model")
        assert key is not None
        pool.release(key)
    return (time.perf_counter() - started) / PICKS


def test_many_rested_models_leave_other_picks_and_memory_alone() -> None:
    pool = KeyPool("least_inflight", clock=lambda: 1_000_000.0)
    pool.add_many(Key(i, f"sk-{i:048d}", 0.0, 10.0) for i in range(1, KEYS + 1))
    before = min(_pick_cost(pool) for _ in range(3))
    tracemalloc.start()
    for m in range(MODELS):
        pool.rest(pool.keys[1 + m], f"model-{m}", "RPD", 2_000_000.0)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after = min(_pick_cost(pool) for _ in range(3))
    assert after < 10 * before, f"{after * 1e6:.1f} us vs {before * 1e6:.1f} us per pick"
    assert held < 8 * 2**20, f"{held / 2**20:.0f} MiB for {MODELS} rests of one key each"
