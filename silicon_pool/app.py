"""The application factory: every resource opened and closed in one cleanup context.

The app routes everything itself, `/v1/*` to the proxy included, so aiohttp's test client,
`web.run_app` or any other runner serve it whole; server.py only adds a shortcut for `/v1/*`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from .admin.auth import LoginThrottle, cookie_storage, load_account, load_revocations
from .admin.gate import V1_ROUTE, admin_gate
from .admin.pages import add_page_routes, setup_templates
from .admin.routes import add_api_routes
from .balance import BalanceChecker
from .config import Config
from .crypto import ensure_private_dir
from .hosts import HostCheck
from .http1 import Http1Client
from .jobs import Jobs
from .lifecycle import KeyLifecycle
from .metrics import Metrics, scrape
from .models import ModelCatalog
from .pool import FREE, PAID, KeyPool
from .proxy import ENDPOINTS, Proxy, openai_error
from .settings import Settings
from .store import Store, open_secrets
from .typedefs import (
    ACCOUNT,
    CATALOG,
    CHECKER,
    CLIENT,
    CONFIG,
    HOSTS,
    JOBS,
    LIFECYCLE,
    METRICS,
    POOL,
    PROXY,
    REVOKED,
    SECRETS,
    SETTINGS,
    STORE,
    THROTTLE,
    UPSTREAM,
)
from .upstream import make_session

log = logging.getLogger(__name__)
GC_THRESHOLD = 20_000


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _tune_gc() -> None:
    """Keep the loaded pool out of every later collection, and collect less often.

    A proxied request allocates a few hundred objects that die by refcount as it ends; at the
    default threshold (700) the collector ran every few requests, for ~5% of throughput.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


async def _storage(app: web.Application) -> AsyncIterator[None]:
    """Open the database, load settings, keys, the admin account and its logouts; flush and close at the end."""
    config = app[CONFIG]
    store = Store(config.data_dir, app[SECRETS])
    await asyncio.to_thread(store.open)
    try:
        settings = Settings(await store.load_settings(), persist=store.save_settings)
        if config.upstream is not None and config.upstream != settings.upstream:
            await settings.update({"upstream": config.upstream})
        pool = KeyPool(settings.strategy, on_change=store.save_key, on_rest=store.save_rest)
        pool.max_inflight = settings.max_inflight_per_key
        pool.add_many(await store.load_keys())
        pool.restore(await store.load_rests())
        _tune_gc()

        def follow(changed: set[str]) -> None:
            if "strategy" in changed:
                pool.set_strategy(settings.strategy)
            if "max_inflight_per_key" in changed:
                pool.set_max_inflight(settings.max_inflight_per_key)

        settings.subscribe(follow)
        app[STORE], app[SETTINGS], app[POOL] = store, settings, pool
        app[ACCOUNT], app[REVOKED] = await load_account(store), await load_revocations(store)
        if app[ACCOUNT].is_default and not _is_loopback(config.host):
            log.warning(
                "!!! The admin login is still admin/admin and %s is reachable from other machines: "
                "change the password now, or listen on 127.0.0.1 (管理员仍为默认密码，且监听了非本机地址) !!!",
                config.host,
            )
        log.info(
            "loaded %d keys (%d with balance, %d zero-balance)", len(pool), pool.tier_size(PAID), pool.tier_size(FREE)
        )
        yield
    finally:
        await asyncio.to_thread(store.close)


async def _upstream(app: web.Application) -> AsyncIterator[None]:
    """The upstream clients (the proxy's lean one, aiohttp for the admin), and what talks through them."""
    pool, settings, store = app[POOL], app[SETTINGS], app[STORE]
    session, client = make_session(), Http1Client(max_connections=settings.max_upstream_connections)

    def follow(changed: set[str]) -> None:
        if "max_upstream_connections" in changed:
            client.set_limit(settings.max_upstream_connections)

    settings.subscribe(follow)
    app[UPSTREAM], app[CLIENT] = session, client
    app[CATALOG] = ModelCatalog(session, pool, settings)
    app[PROXY] = Proxy(pool, settings, store, client, app[HOSTS], app[CATALOG], app[METRICS])
    app[CHECKER] = BalanceChecker(session, settings)
    app[LIFECYCLE] = KeyLifecycle(pool, store, settings, app[CHECKER])
    yield
    await client.close()
    await session.close()


async def _jobs(app: web.Application) -> AsyncIterator[None]:
    """Background jobs, and the timer that refreshes balances every `refresh_interval_minutes`."""
    jobs = app[JOBS] = Jobs()
    lifecycle = app[LIFECYCLE]

    async def refresh_all() -> None:
        if jobs.running("refresh") is None:
            jobs.start("refresh", lambda job: lifecycle.refresh(job))

    timer = asyncio.create_task(lifecycle.refresh_periodically(refresh_all), name="balance-refresh-timer")
    yield
    timer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await timer
    await jobs.close()


async def missing_v1(request: web.Request) -> web.Response:
    """A client whose base URL lacks /v1: say so in the format it reads."""
    return openai_error(
        404,
        f"Unknown path {request.path}: set the base URL to http://{request.host}/v1 (Base URL 需要以 /v1 结尾)",
        "invalid_request_error",
        "unknown_url",
    )


async def to_proxy(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].handle(request)


async def proxy_decides_expect(_request: web.Request) -> None:
    """The proxy answers `Expect` itself, once it has admitted the request (aiohttp would answer first)."""


async def healthz(request: web.Request) -> web.Response:
    """For monitors: can the pool serve? No secrets, no login."""
    pool = request.app[POOL]
    usable = pool.usable()
    return web.json_response(
        {"status": "ok" if usable else "no_usable_keys", "keys": len(pool), "usable": usable},
        status=200 if usable else 503,
    )


def create_app(config: Config) -> web.Application:
    ensure_private_dir(config.data_dir)
    secrets = open_secrets(config.data_dir)
    app = web.Application(middlewares=[admin_gate(cookie_storage(secrets.cookie_key))])
    app[CONFIG], app[SECRETS], app[THROTTLE] = config, secrets, LoginThrottle()
    app[HOSTS] = HostCheck(config.allowed_hosts)
    app[METRICS] = Metrics((*ENDPOINTS, "models", "audio/speech", "audio/transcriptions"))
    app.cleanup_ctx.extend([_storage, _upstream, _jobs])
    app.router.add_route("*", "/v1/{tail:.*}", to_proxy, name=V1_ROUTE, expect_handler=proxy_decides_expect)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", scrape)
    app.router.add_route(
        "*", r"/{endpoint:(chat/completions|completions|embeddings|models|rerank|images/generations)}", missing_v1
    )
    add_api_routes(app.router)
    add_page_routes(app.router)
    setup_templates(app)
    return app
