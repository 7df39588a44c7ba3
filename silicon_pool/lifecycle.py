"""A key's life after the proxy: import, balance refresh, enable/disable, delete.

Nothing here ever drops a key on its own: an import stores every key the user pasted unless
the upstream said a clear 401, and a refresh only changes what a check proved. Memory and
SQLite change together: a key enters the pool only after its row is committed, and leaves
the pool before its row is deleted, so traffic never picks a key that is not stored.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .balance import BalanceChecker, Check, Verdict
from .jobs import Job
from .keyparse import parse_keys
from .keys import ACTIVE, INVALID, UNCHECKED, Key
from .pool import KeyPool
from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)
INSERT_BATCH = 200
MINUTE = 60.0  # seconds; the background refresh timer counts in these


async def _bounded(items: Iterable[Any], limit: int, work: Callable[[Any], Awaitable[None]]) -> None:
    """Run `work` on every item with at most `limit` running at once."""
    queue = list(items)
    queue.reverse()

    async def worker() -> None:
        while queue:
            await work(queue.pop())

    async with asyncio.TaskGroup() as group:  # one worker failing stops the others
        for _ in range(max(1, min(limit, len(queue)))):
            group.create_task(worker())


def _balance_total(keys: Iterable[Key]) -> float:
    """The balance these keys can spend (an invalid key's last balance is not spendable)."""
    return round(sum(k.balance for k in keys if k.balance is not None and k.balance > 0 and k.state != INVALID), 4)


class KeyLifecycle:
    def __init__(self, pool: KeyPool, store: Store, settings: Settings, checker: BalanceChecker) -> None:
        self.pool, self.store, self.settings, self.checker = pool, store, settings, checker

    # -- import -------------------------------------------------------------------------------

    async def import_paste(self, job: Job, text: str) -> dict[str, int]:
        """Check each new key in `text` and store it; the job is done only once all are committed."""
        paste = parse_keys(text)
        new = [k for k in paste.keys if k not in self.pool.by_secret]
        counts = {
            "imported": 0,
            "zero_balance": 0,
            "duplicates": paste.repeated + len(paste.keys) - len(new),
            "invalid_format": paste.invalid_format,
            "rejected": 0,
            "unchecked": 0,
        }
        job.total = len(new)
        pending: list[Key] = []

        async def store_pending() -> None:
            batch = pending[:]
            pending.clear()
            added = await self.store.insert_keys(batch)
            self.pool.add_many(added)
            counts["imported"] += len(added)
            counts["zero_balance"] += sum(1 for k in added if k.balance is not None and k.balance <= 0)
            counts["unchecked"] += sum(1 for k in added if k.state == UNCHECKED)
            counts["duplicates"] += len(batch) - len(added)  # imported meanwhile by someone else

        async def check(secret: str) -> None:
            result = await self.checker.check(secret)
            if result.verdict is Verdict.INVALID:
                counts["rejected"] += 1
            else:
                state = ACTIVE if result.verdict is Verdict.VALID else UNCHECKED
                pending.append(
                    Key(0, secret, time.time(), balance=result.balance, state=state, account_id=result.account_id)
                )
                if len(pending) >= INSERT_BATCH:
                    await store_pending()
            job.done += 1

        await _bounded(new, self.settings.check_concurrency, check)
        if pending:
            await store_pending()
        log.info("import: %s", counts)
        return counts

    # -- refresh ------------------------------------------------------------------------------

    async def refresh(self, job: Job, ids: Iterable[int] | None = None) -> dict[str, Any]:
        """Check balances; only a definite 401 marks a key invalid, and a 200 brings one back."""
        pool = self.pool
        keys = list(pool.keys.values()) if ids is None else [pool.keys[i] for i in ids if i in pool.keys]
        job.total = len(keys)
        counts: dict[str, Any] = {
            "updated": 0,
            "zero_balance": 0,
            "balance_unavailable": 0,  # valid, but the upstream reports no balance (China keys since 2026-08)
            "invalid": 0,
            "unreachable": 0,
        }
        before = _balance_total(keys)

        async def check(key: Key) -> None:
            result = await self.checker.check(key.secret)
            self._apply(key, result, counts)
            job.done += 1

        await _bounded(keys, self.settings.check_concurrency, check)
        counts["balance_before"] = before
        counts["balance_after"] = _balance_total(k for k in keys if k.id in pool.keys)
        log.info("refresh: %s", counts)
        return counts

    def _apply(self, key: Key, result: Check, counts: dict[str, Any]) -> None:
        if self.pool.keys.get(key.id) is not key:  # deleted while it was being checked
            return
        if result.verdict is Verdict.VALID:
            self.pool.set_account(key, result.account_id or key.account_id)
            key.last_error = None
            balance = result.balance if result.balance is not None else key.balance
            self.pool.set_balance(key, balance, ACTIVE)
            counts["updated"] += 1
            counts["zero_balance"] += balance is not None and balance <= 0
            counts["balance_unavailable"] += result.balance is None
        elif result.verdict is Verdict.INVALID:
            self.pool.mark_invalid(key, result.error or "HTTP 401")
            counts["invalid"] += 1
        else:
            counts["unreachable"] += 1

    async def refresh_periodically(self, run: Callable[[], Awaitable[None]]) -> None:
        """Call `run` every `refresh_interval_minutes`; the setting is re-read every tick (0 = off)."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, MINUTE / 4))
            minutes = self.settings.refresh_interval_minutes
            if minutes and time.monotonic() - last >= minutes * MINUTE:
                last = time.monotonic()
                try:
                    await run()
                except Exception:
                    log.exception("background refresh failed")

    # -- enable, disable, delete ---------------------------------------------------------------

    def set_enabled(self, ids: Iterable[int], enabled: bool) -> int:
        changed = 0
        for key_id in ids:
            key = self.pool.keys.get(key_id)
            if key is not None:
                self.pool.set_enabled(key, enabled)
                changed += 1
        return changed

    def mark_funded(self, ids: Iterable[int]) -> int:
        """The user topped these keys' accounts up: their zero-balance keys (the account's others
        too, where known: balance is the account's) go back to the paid tier with their balance
        unknown (a 30001 or a refresh learns it again)."""
        pool, changed = self.pool, 0
        for key_id in ids:
            key = pool.keys.get(key_id)
            for each in () if key is None else {key, *pool.by_account.get(key.account_id or "", ())}:
                if each.balance is not None and each.balance <= 0:
                    pool.set_balance(each, None, each.state)
                    changed += 1
        return changed

    async def delete(self, ids: Iterable[int]) -> int:
        """Out of the pool first (no new request picks it), then out of the database."""
        removed = [(key.id,) for key_id in ids if (key := self.pool.remove(key_id)) is not None]

        def delete(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM keys WHERE id = ?", removed)
            conn.executemany("DELETE FROM rests WHERE scope = 'key' AND owner = CAST(? AS TEXT)", removed)

        if removed:
            await self.store.write(delete)
        return len(removed)
