"""The 429 a client gets names the rest that can bring a key back for it: when every paid key
rests for a model until tonight, a paid request's Retry-After follows those keys, not a shorter
rest held by a disabled or zero-balance key; and a waiter does not wait for such a rest."""

from __future__ import annotations

import time

import aiohttp

from tests.conftest import Running, paid_keys
from tests.fake_upstream import FakeUpstream

V3 = "deepseek-ai/DeepSeek-V3"


async def test_retry_after_ignores_rests_of_keys_that_cannot_serve(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    secrets = paid_keys(fake, 3)
    paid = await proxy.add_keys(*((s, 10.0) for s in secrets))
    [zero] = await proxy.add_keys((paid_keys(fake, 1, "0.00", seed="zero")[0], 0.0))
    pool, now = proxy.pool, proxy.pool.clock()
    for key in paid[:2]:
        pool.rest(key, V3, "RPD", now + 5 * 3600)
    pool.rest(paid[2], V3, "RPM", now + 20)
    pool.set_enabled(paid[2], False)
    pool.rest(zero, V3, "RPM", now + 25)
    body = {"model": V3, "messages": [{"role": "user", "content": "hi"}]}

    async with http.post(f"{proxy.base}/v1/chat/completions", json=body) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) > 5 * 3600 - 60

    await proxy.set(wait_for_key_seconds=60)
    started = time.monotonic()
    async with http.post(f"{proxy.base}/v1/chat/completions", json=body) as resp:
        assert resp.status == 429
    assert time.monotonic() - started < 2  # nothing that could serve it comes back within 60 s
    assert fake.seen("/v1/chat/completions") == []
