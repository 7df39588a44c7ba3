"""The app routes /v1 itself: served by any aiohttp runner (here aiohttp's own test server on
`create_app` alone), the proxy answers exactly as through the real server's shortcut."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from silicon_pool.app import create_app
from silicon_pool.config import Config
from silicon_pool.keys import Key
from silicon_pool.typedefs import POOL, SETTINGS, STORE
from tests.conftest import Running, StartProxy, paid_keys
from tests.fake_upstream import FakeUpstream

TOKEN = "sp-routing-token"
CHAT = {"model": "deepseek-ai/DeepSeek-V3", "messages": [{"role": "user", "content": "你好"}]}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Ids, clocks and the server's own port differ from one answer to the next.
VARYING = re.compile(rb'[0-9a-f]{32}|"created":\s*\d+|"id":\s*"[^"]*"|127\.0\.0\.1:\d+')
JSON = {**AUTH, "Content-Type": "application/json"}
IGNORED_HEADERS = {"date", "server", "content-length"}

# name -> (the status both must answer, method, path, keyword arguments for aiohttp's request)
REQUESTS: dict[str, tuple[int, str, str, dict[str, Any]]] = {
    "chat": (200, "POST", "/v1/chat/completions", {"json": CHAT, "headers": AUTH}),
    "chat stream": (200, "POST", "/v1/chat/completions", {"json": {**CHAT, "stream": True}, "headers": AUTH}),
    "embeddings": (200, "POST", "/v1/embeddings", {"json": {"model": "BAAI/bge-m3", "input": "x"}, "headers": AUTH}),
    "models": (200, "GET", "/v1/models", {"headers": AUTH}),
    "upstream 400": (400, "POST", "/v1/chat/completions", {"json": {**CHAT, "model": "no/such"}, "headers": AUTH}),
    "wrong token": (401, "POST", "/v1/chat/completions", {"json": CHAT, "headers": {"Authorization": "Bearer no"}}),
    "not json": (400, "POST", "/v1/chat/completions", {"data": b"{nope", "headers": JSON}),
    "wrong type": (415, "POST", "/v1/embeddings", {"data": b"x", "headers": {**AUTH, "Content-Type": "text/plain"}}),
    "too large": (413, "POST", "/v1/embeddings", {"data": b"x" * (2 * 1024 * 1024 + 1), "headers": JSON}),
    "100-continue": (200, "POST", "/v1/chat/completions", {"json": CHAT, "headers": AUTH, "expect100": True}),
    "odd expect, body sent": (200, "POST", "/v1/chat/completions", {"json": CHAT, "headers": {**AUTH, "Expect": "x"}}),
    "preflight": (
        204,
        "OPTIONS",
        "/v1/chat/completions",
        {"headers": {"Origin": "http://127.0.0.1:3000", "Access-Control-Request-Headers": "authorization"}},
    ),
    "browser": (
        200,
        "POST",
        "/v1/chat/completions",
        {"json": CHAT, "headers": {**AUTH, "Origin": "http://127.0.0.1"}},
    ),
    "unknown host": (403, "GET", "/v1/models", {"headers": {**AUTH, "Host": "rebind.example"}}),
    "other path": (404, "GET", "/v1/no/such/path", {"headers": AUTH}),
    "no /v1": (404, "POST", "/chat/completions", {"json": CHAT, "headers": AUTH}),
}


async def _answer(session: aiohttp.ClientSession, base: str, name: str) -> tuple[int, dict[str, str], bytes]:
    _, method, path, kwargs = REQUESTS[name]
    async with session.request(method, base + path, **kwargs) as resp:
        body = await resp.read()
        headers = {k.lower(): v for k, v in resp.headers.items() if k.lower() not in IGNORED_HEADERS}
        return resp.status, headers, VARYING.sub(b"<varies>", body)


@pytest.fixture
async def both(
    start_proxy: StartProxy, fake: FakeUpstream, upstream_url: str, tmp_path: Path, aiohttp_client: Callable[..., Any]
) -> tuple[Running, TestClient[Any, Any]]:
    """The real server (with its /v1 shortcut) and `create_app` alone under aiohttp's test server."""
    [secret] = paid_keys(fake, 1)
    real = await start_proxy(api_token=TOKEN, max_body_mb=2)
    await real.add_keys((secret, 5.0))
    plain: TestClient[Any, Any] = await aiohttp_client(
        create_app(Config(data_dir=tmp_path / "plain", upstream=upstream_url))
    )
    await plain.app[SETTINGS].update({"api_token": TOKEN, "max_body_mb": 2})
    plain.app[POOL].add_many(await plain.app[STORE].insert_keys([Key(0, secret, 1.0, 5.0)]))
    return real, plain


@pytest.mark.parametrize("name", list(REQUESTS))
async def test_the_app_alone_answers_as_the_real_server(
    both: tuple[Running, TestClient[Any, Any]], http: aiohttp.ClientSession, name: str
) -> None:
    real, plain = both
    through_shortcut = await _answer(http, real.base, name)
    through_router = await _answer(http, str(plain.make_url("")).rstrip("/"), name)
    assert through_router == through_shortcut
    status, _, body = through_shortcut
    assert status == REQUESTS[name][0], body
