"""Serving the app, with a shortcut: `/v1/*` goes straight to the proxy, everything else through the app.

The app routes `/v1/*` to the same handler itself (app.py); the shortcut only skips the router
and the admin's middleware, which are about a tenth of what a proxied request costs
(bench/run.py). tests/test_routing.py checks both ways answer alike.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from .typedefs import PROXY


class PoolRunner(web.AppRunner):
    """An AppRunner whose server hands `/v1/*` to the proxy before any routing."""

    async def setup(self) -> None:
        await super().setup()  # runs the app's startup, which creates the proxy
        server = self.server
        assert server is not None
        to_app = server.request_handler
        proxy = self.app[PROXY].handle

        def dispatch(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
            # A plain function handing back the handler's coroutine: no extra coroutine per request.
            # The router's own test (it matches `path_safe`): `/v1%2F...` is no /v1 path either way.
            return proxy(request) if request.rel_url.path_safe.startswith("/v1/") else to_app(request)

        server.request_handler = dispatch


async def serve(app: web.Application, host: str, port: int, on_ready: Callable[[], None]) -> None:
    """Listen until cancelled (SIGINT/SIGTERM end the loop), then close everything in order."""
    runner = PoolRunner(app, access_log=None, handle_signals=True, handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        on_ready()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(
    app: web.Application, host: str, port: int, on_ready: Callable[[], None], loop: asyncio.AbstractEventLoop
) -> None:
    """`web.run_app` for a PoolRunner: serve on `loop` until a signal, then clean up."""
    asyncio.set_event_loop(loop)
    main = loop.create_task(serve(app, host, port, on_ready))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
