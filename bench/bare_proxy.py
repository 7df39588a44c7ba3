"""The reference: the thinnest aiohttp pass-through proxy.

One shared ClientSession, a random key from a list, the body streamed straight through, no
logging, no token check, no failover, the standard event loop. silicon-pool is compared to it.
"""

from __future__ import annotations

import argparse
import random

import aiohttp
from aiohttp import web

HOP = {"host", "authorization", "content-length", "connection", "transfer-encoding", "accept-encoding"}


def make_app(upstream: str, keys: list[str]) -> web.Application:
    app = web.Application()

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        headers["Authorization"] = f"Bearer {random.choice(keys)}"
        body = await request.read()
        async with app["session"].request(
            request.method, upstream + request.path_qs[3:], data=body, headers=headers
        ) as upstream_response:
            response = web.StreamResponse(status=upstream_response.status)
            response.content_type = upstream_response.content_type
            await response.prepare(request)
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/v1/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--keys", type=int, default=10)
    args = parser.parse_args()
    keys = [f"sk-bench{i:040d}" for i in range(args.keys)]
    web.run_app(make_app(args.upstream, keys), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
