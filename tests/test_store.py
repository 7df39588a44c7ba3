"""The writer thread: batches, ordering, and surviving bad input."""

from __future__ import annotations

import time
from pathlib import Path

from silicon_pool.crypto import Secrets
from silicon_pool.keys import Key
from silicon_pool.store import CallRecord, Store
from silicon_pool.usage import token_usage


def _record(**changes: object) -> CallRecord:
    base = CallRecord(time.time(), "chat/completions", "m", None, 200, 1, 5, 3, 1, 2, 3, 0, False, "none", None)
    return base._replace(**changes)


async def test_writer_survives_a_value_sqlite_cannot_store(tmp_path: Path) -> None:
    store = Store(tmp_path, Secrets(tmp_path))
    store.open()
    try:
        store.log_call(_record(prompt_tokens=2**64))  # one bad row spoils its batch, not the writer
        await store.write(lambda conn: None)
        store.log_call(_record())
        count = await store.write(lambda conn: conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
        assert count == 1
    finally:
        store.close()


def test_absurd_token_counts_are_clamped() -> None:
    usage = token_usage(b'{"usage": {"prompt_tokens": 18446744073709551615, "completion_tokens": -5}}')
    assert usage.prompt_tokens == 2**53 and usage.completion_tokens == 0


async def test_hourly_totals_follow_the_log(tmp_path: Path) -> None:
    store = Store(tmp_path, Secrets(tmp_path))
    store.open()
    try:
        for i in range(5):
            store.log_call(_record(model="a" if i % 2 else "b", status=200 if i else 500))
        await store.write(lambda conn: None)
        for _ in range(3):
            store.log_call(_record(model="a"))
        rows = await store.write(
            lambda c: c.execute("SELECT model, calls, errors, total_tokens FROM usage_hourly ORDER BY model").fetchall()
        )
        assert rows == [("a", 5, 0, 15), ("b", 3, 1, 9)]
    finally:
        store.close()


async def test_changed_keys_are_written_field_for_field(tmp_path: Path) -> None:
    """Changed keys go to SQLite as one JSON batch: every field, NULLs and odd text included,
    and a key deleted before its batch is written stays deleted."""
    store = Store(tmp_path, Secrets(tmp_path))
    store.open()
    try:
        changed, deleted = await store.insert_keys(
            [Key(0, "sk-" + "a" * 48, 1.0, 5.0), Key(0, "sk-" + "b" * 48, 2.0, 1.0)]
        )
        changed.balance, changed.usage_count, changed.enabled, changed.state = None, 2**40, False, "invalid"
        changed.last_used_at, changed.account_id = 1_764_000_000.123456789, "acc-1"
        changed.last_error = 'HTTP 401: "Token is invalid."\n\\ 密钥无效 \u2028'
        await store.write(lambda conn: conn.execute("DELETE FROM keys WHERE id = ?", (deleted.id,)))
        deleted.usage_count = 9
        store.save_key(changed)
        store.save_key(deleted)
        await store.flush()
        [loaded] = await store.load_keys()
    finally:
        store.close()
    fields = ("id", "secret", "balance", "usage_count", "enabled", "state", "last_used_at", "last_error", "account_id")
    assert [getattr(loaded, f) for f in fields] == [getattr(changed, f) for f in fields]
    assert not changed.save_queued
