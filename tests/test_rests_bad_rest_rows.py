"""Junk rows in the `rests` table cost no start and no other row: an owner that is a non-ASCII
digit or 5,000 digits, an `until` that is text, a blob or infinity are skipped at load, and a good
rest stored beside them is restored."""

from __future__ import annotations

import math
import sqlite3
import time

import pytest

from silicon_pool.store import DB_FILE
from tests.conftest import StartProxy, paid_keys
from tests.fake_upstream import FakeUpstream


@pytest.mark.parametrize(
    "row",
    [
        "('key', '²', 'm', 'RPD', {until})",
        "('key', '" + "9" * 5000 + "', 'm', 'RPD', {until})",
        "('key', '1', 'm', 'RPD', 'soon')",
        "('key', '1', 'm', 'RPD', x'00ff')",
        "('key', '1', 'm', 'RPD', 'inf')",
    ],
)
async def test_a_junk_rest_row_costs_no_start_and_no_other_rest(
    start_proxy: StartProxy, fake: FakeUpstream, row: str
) -> None:
    proxy = await start_proxy()
    secrets = paid_keys(fake, 2)
    a, b = await proxy.add_keys((secrets[0], 10.0), (secrets[1], 10.0))
    proxy.pool.rest(b, "good-model", "RPH", time.time() + 7200)
    await proxy.flush()
    data_dir = proxy.data_dir
    await proxy.stop()
    conn = sqlite3.connect(data_dir / DB_FILE)
    conn.execute(f"INSERT INTO rests VALUES {row.format(until=time.time() + 7200)}")
    conn.commit()
    conn.close()

    proxy = await start_proxy(data_dir=data_dir)  # must not raise
    pool = proxy.pool
    assert [r.model for r in pool.rests_of(pool.keys[b.id])] == ["good-model"]
    assert all(math.isfinite(r.until) for r in pool.rests_of(pool.keys[a.id]))
