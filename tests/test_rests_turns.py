"""Waiting for a key: a waiter for one set of keys (the free token's zero-balance keys) does not
hold back a caller the idle paid keys can serve at once, and a key enabled while requests wait
serves them at once, waiters and newcomers alike."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.conftest import Running, paid_keys
from tests.fake_upstream import FakeUpstream

FREE_MODEL = "Qwen/Qwen2.5-7B-Instruct"
CHAT = "/v1/chat/completions"


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, object], token: str = "x") -> tuple[int, float]:
    started = time.monotonic()
    async with http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as resp:
        await resp.read()
        return resp.status, time.monotonic() - started


async def test_free_token_waiter_does_not_block_a_main_caller(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await proxy.set(free_token="sk-free-token-1234", free_models=[FREE_MODEL], wait_for_key_seconds=10)
    [zero] = await proxy.add_keys((paid_keys(fake, 1, "0.00", seed="zero")[0], 0.0))
    await proxy.add_keys((paid_keys(fake, 1)[0], 10.0))
    proxy.pool.rest(zero, FREE_MODEL, "RPM", proxy.pool.clock() + 5)
    body = {"model": FREE_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    waiter = asyncio.create_task(_post(http, proxy.base + CHAT, body, "sk-free-token-1234"))
    await asyncio.sleep(0.3)
    status, took = await _post(http, proxy.base + CHAT, body)
    assert status == 200
    assert took < 1.5, f"the main caller queued {took:.1f}s behind a free-token waiter"
    assert (await waiter)[0] == 200


async def test_a_key_enabled_while_requests_wait_serves_them_at_once(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await proxy.set(wait_for_key_seconds=10)
    a, b = await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 2)))
    proxy.pool.set_enabled(b, False)
    proxy.pool.rest(a, "deepseek-ai/DeepSeek-V3", "RPM", proxy.pool.clock() + 5)
    body = {"model": "deepseek-ai/DeepSeek-V3", "messages": [{"role": "user", "content": "hi"}]}
    waiter = asyncio.create_task(_post(http, proxy.base + CHAT, body))
    await asyncio.sleep(0.3)
    proxy.pool.set_enabled(b, True)
    status, took = await waiter
    assert status == 200
    assert took < 1.5, f"the waiter slept {took:.1f}s past the key coming back"
