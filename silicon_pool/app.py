"""The application factory: every resource opened and closed in one cleanup context."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from .config import Config
from .crypto import Secrets, ensure_private_dir
from .pool import FREE, PAID, KeyPool
from .proxy import Proxy
from .settings import Settings
from .store import Store
from .typedefs import CONFIG, POOL, PROXY, SECRETS, SETTINGS, STORE, UPSTREAM
from .upstream import make_session

log = logging.getLogger(__name__)


async def _storage(app: web.Application) -> AsyncIterator[None]:
    """Open the database, load settings and keys into memory; flush and close at the end."""
    config = app[CONFIG]
    ensure_private_dir(config.data_dir)
    secrets = Secrets(config.data_dir)
    store = Store(config.data_dir, secrets)
    await asyncio.to_thread(store.open)
    try:
        settings = Settings(await store.load_settings())
        if config.upstream is not None and config.upstream != settings.upstream:
            parsed = settings.validate({"upstream": config.upstream})
            await store.save_settings(parsed)
            settings.apply(parsed)
        pool = KeyPool(settings.strategy, on_change=store.save_key)
        pool.add_many(await store.load_keys())
        settings.subscribe(lambda changed: pool.set_strategy(settings.strategy) if "strategy" in changed else None)
        app[SECRETS], app[STORE], app[SETTINGS], app[POOL] = secrets, store, settings, pool
        log.info(
            "loaded %d keys (%d with balance, %d zero-balance)", len(pool), pool.tier_size(PAID), pool.tier_size(FREE)
        )
        yield
    finally:
        await asyncio.to_thread(store.close)


async def _upstream(app: web.Application) -> AsyncIterator[None]:
    """The shared upstream client, and the proxy that uses it."""
    session = make_session()
    app[UPSTREAM] = session
    app[PROXY] = Proxy(app[POOL], app[SETTINGS], app[STORE], session)
    yield
    await session.close()


async def change_settings(app: web.Application, changes: dict[str, Any]) -> None:
    """Validate all, persist, then apply: a refused or unsaved change leaves everything as it was."""
    settings = app[SETTINGS]
    parsed = settings.validate(changes)
    await app[STORE].save_settings(parsed)
    settings.apply(parsed)


async def forward(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].handle(request)


async def healthz(request: web.Request) -> web.Response:
    """For monitors: can the pool serve? No secrets, no login."""
    pool = request.app[POOL]
    usable = pool.tier_size(PAID) + pool.tier_size(FREE)
    return web.json_response(
        {"status": "ok" if usable else "no_usable_keys", "keys": len(pool), "usable": usable},
        status=200 if usable else 503,
    )


def create_app(config: Config) -> web.Application:
    # The proxy enforces the `max_body_mb` setting itself; this is only aiohttp's outer bound.
    app = web.Application(client_max_size=1024**3)
    app[CONFIG] = config
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(_upstream)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/v1/{tail:.*}", forward)
    return app
