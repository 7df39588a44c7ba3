"""A fast fake SiliconFlow for benchmarks: canned answers, so the proxy is what gets measured.

Chat answers are fixed bytes; `"stream": true` gets CHUNKS SSE events (or `X-Bench-Events`), DELAY
seconds apart (or what the `X-Bench-Delay` header asks; with no delay they go out in one burst, so that the fake is
not what limits a throughput run), each stamped with the sender's monotonic clock so a client on
the same machine can tell how long a chunk spent in transit.
`/v1/user/info` answers after USER_INFO_DELAY seconds, like a real account check.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from aiohttp import web

ANSWER = orjson.dumps(
    {
        "id": "0" * 32,
        "object": "chat.completion",
        "created": 0,
        "model": "bench/model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello " * 20}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32},
    }
)
USER_INFO = orjson.dumps(
    {"code": 20000, "message": "OK", "status": True, "data": {"id": "bench", "totalBalance": "9.5"}}
)
MODELS = orjson.dumps(
    {"object": "list", "data": [{"id": "bench/model", "object": "model", "created": 0, "owned_by": ""}]}
)
JSON = {"Content-Type": "application/json"}


def _event(i: int) -> bytes:
    event = {
        "t": time.monotonic(),
        "choices": [{"index": 0, "delta": {"content": "hi "}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": i + 1, "total_tokens": 13 + i},
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def make_app(chunks: int, delay: float, user_info_delay: float) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if b'"stream": true' not in body and b'"stream":true' not in body:
            return web.Response(body=ANSWER, headers=JSON)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        pause = float(request.headers.get("X-Bench-Delay", delay))
        events = int(request.headers.get("X-Bench-Events", chunks))
        if not pause:  # no delay: one burst, so the upstream is not what limits the run
            await response.write(b"".join(_event(i) for i in range(events)) + b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        for i in range(events):
            if i:
                await asyncio.sleep(pause)
            await response.write(_event(i))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def user_info(_request: web.Request) -> web.Response:
        await asyncio.sleep(user_info_delay)
        return web.Response(body=USER_INFO, headers=JSON)

    async def models(_request: web.Request) -> web.Response:
        return web.Response(body=MODELS, headers=JSON)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/user/info", user_info)
    app.router.add_get("/v1/models", models)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--user-info-delay", type=float, default=0.05)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        loop = None
    else:
        loop = uvloop.new_event_loop()
    app = make_app(args.chunks, args.delay, args.user_info_delay)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
