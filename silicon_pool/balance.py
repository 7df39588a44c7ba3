"""Is a key valid, and what is its balance? Asked of `<upstream>/user/info`.

Only a clear 401 proves a key dead. Timeouts, 429 and 5xx are retried and, if they persist,
leave the key "unreachable": the caller keeps it as it was. Where `/user/info` is retired
(410, China keys since 2026-08), `/models` answering 200 still proves the key valid, with its
balance unknown. A 410 is remembered per upstream for RETIRED_SECONDS, so checks go to
`/models` straight away meanwhile; while nobody knows yet, one check at a time asks
`/user/info` first, so a large import costs one 410, not one per key.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import orjson

from .settings import Settings
from .upstream import describe, describe_exception

RETRIES = 3
BACKOFF_SECONDS = 0.5
RETIRED_SECONDS = 86400.0  # after a 410, /user/info is asked again only this much later


class Verdict(enum.Enum):
    VALID = "valid"
    INVALID = "invalid"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class Check:
    verdict: Verdict
    balance: float | None = None
    account_id: str | None = None
    error: str | None = None


class _Retry(Exception):
    """A transient answer: worth asking again."""


def _parse_user_info(body: bytes) -> Check:
    try:
        data = orjson.loads(body)["data"]
        balance = float(data["totalBalance"])
        if not math.isfinite(balance):
            raise ValueError(balance)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise _Retry("unreadable /user/info answer") from None
    account = data.get("id")
    return Check(Verdict.VALID, balance, str(account) if account is not None else None)


class BalanceChecker:
    """Checks keys with the shared upstream client."""

    def __init__(
        self, session: aiohttp.ClientSession, settings: Settings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.session, self.settings, self.clock = session, settings, clock
        self._retired_until: dict[str, float] = {}  # upstream → when its /user/info is worth asking again
        self._answers: set[str] = set()  # upstreams whose /user/info answered something else than 410
        self._probe = asyncio.Lock()

    def user_info_retired(self) -> bool:
        """Whether the current upstream's `/user/info` answered 410 within RETIRED_SECONDS."""
        return self._retired_until.get(self.settings.upstream, 0.0) > self.clock()

    async def check(self, secret: str) -> Check:
        error = "not checked"
        for attempt in range(RETRIES):
            if attempt:
                await asyncio.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
            try:
                return await self._ask(secret)
            except _Retry as exc:
                error = str(exc)
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = describe_exception(exc)
        return Check(Verdict.UNREACHABLE, error=error)

    async def _ask(self, secret: str) -> Check:
        status, body = await self._user_info(secret)
        if status == 200:
            return _parse_user_info(body)
        if status == 410:  # retired: a 200 from /models still proves the key, its balance unknown
            status, body = await self._get("/models", secret)
            if status == 200:
                return Check(Verdict.VALID)
        if status == 401:
            return Check(Verdict.INVALID, error=describe(status, body))
        if status == 429 or status >= 500:
            raise _Retry(describe(status, body))
        return Check(Verdict.UNREACHABLE, error=describe(status, body))

    async def _user_info(self, secret: str) -> tuple[int, bytes]:
        """`/user/info`'s answer, or the 410 it gave within RETIRED_SECONDS without asking again."""
        if self.settings.upstream not in self._answers:
            async with self._probe:  # nobody knows yet: one asks at a time until the first answer
                if self.user_info_retired():
                    return 410, b""
                if self.settings.upstream not in self._answers:  # else learnt while this one queued
                    return await self._learn(secret)
        return await self._learn(secret)

    async def _learn(self, secret: str) -> tuple[int, bytes]:
        """Ask `/user/info`, and remember whether it is retired (any other outcome: ask it freely)."""
        upstream = self.settings.upstream  # the one `_get` asks, whatever the settings say meanwhile
        try:
            status, body = await self._get("/user/info", secret)
        except (aiohttp.ClientError, TimeoutError):  # not a 410 either: the others need not wait
            self._answers.add(upstream)
            raise
        if status == 410:
            self._retired_until[upstream] = self.clock() + RETIRED_SECONDS
            self._answers.discard(upstream)
        else:
            self._answers.add(upstream)
        return status, body

    async def _get(self, path: str, secret: str) -> tuple[int, bytes]:
        s = self.settings
        timeout = aiohttp.ClientTimeout(total=s.connect_timeout + 30, sock_connect=s.connect_timeout)
        async with self.session.get(
            s.upstream + path, headers={"Authorization": f"Bearer {secret}"}, timeout=timeout
        ) as resp:
            return resp.status, await resp.read()
