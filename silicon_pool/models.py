"""The upstream's model list with each model's type, cached: SiliconFlow only filters by type,
so the catalog asks once per sub-type and merges the answers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from .pool import FREE, PAID, KeyPool
from .settings import Settings

CACHE_SECONDS = 600
SUB_TYPES = (
    ("text", "chat"),
    ("text", "embedding"),
    ("text", "reranker"),
    ("image", "text-to-image"),
    ("image", "image-to-image"),
    ("audio", "speech-to-text"),
    ("audio", "text-to-speech"),
    ("video", "text-to-video"),
)


class CatalogUnavailable(Exception):
    """No key could fetch the list (503), or the upstream failed (502)."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class ModelCatalog:
    def __init__(self, session: aiohttp.ClientSession, pool: KeyPool, settings: Settings) -> None:
        self.session, self.pool, self.settings = session, pool, settings
        self._models: list[dict[str, Any]] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def models(self, refresh: bool = False) -> tuple[list[dict[str, Any]], float]:
        """Models (id, type, sub_type, free) and when they were fetched."""
        async with self._lock:
            if refresh or self._models is None or time.monotonic() - self._fetched_at > CACHE_SECONDS:
                self._models = await self._fetch()
                self._fetched_at = time.monotonic()
            free = self.settings.free_model_set
            models = [{**m, "free": m["id"] in free} for m in self._models]
            return models, time.time() - (time.monotonic() - self._fetched_at)

    async def _fetch(self) -> list[dict[str, Any]]:
        key = self.pool.acquire((PAID, FREE))
        if key is None:
            raise CatalogUnavailable("no usable key to ask the upstream with (没有可用的 Key)", 503)
        try:
            everything, *typed = await asyncio.gather(
                self._get(key.auth, {}), *(self._get(key.auth, {"sub_type": sub}) for _, sub in SUB_TYPES)
            )
        finally:
            self.pool.release(key)
        kinds: dict[str, tuple[str, str]] = {}
        for (kind, sub), ids in zip(SUB_TYPES, typed, strict=True):
            for model_id in ids:
                kinds.setdefault(model_id, (kind, sub))
        return [
            {
                "id": model_id,
                "type": kinds.get(model_id, ("other", ""))[0],
                "sub_type": kinds.get(model_id, ("other", ""))[1],
            }
            for model_id in sorted(set(everything) | set(kinds))
        ]

    async def _get(self, auth: str, params: dict[str, str]) -> list[str]:
        timeout = aiohttp.ClientTimeout(total=self.settings.connect_timeout + 30)
        try:
            async with self.session.get(
                self.settings.upstream + "/models", params=params, headers={"Authorization": auth}, timeout=timeout
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise CatalogUnavailable(f"the upstream answered HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CatalogUnavailable(f"the upstream could not be reached: {type(exc).__name__}") from None
        try:
            return [m["id"] for m in orjson.loads(body)["data"] if isinstance(m.get("id"), str)]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise CatalogUnavailable("the upstream's model list was unreadable") from None
