"""A bounded soak: 60 s of mixed traffic while the upstream misbehaves at random.

Afterwards: one log row per proxied request, no upstream connection left checked out, no file
descriptors leaked, memory flat, and every key still in the pool. SOAK_SECONDS shortens it.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource

import aiohttp

from silicon_pool.typedefs import PROXY
from tests.conftest import Running, paid_keys
from tests.fake_upstream import FakeUpstream

SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
FAULTS = ["ok", "ok", "ok", "ok", "rate_limited", "server_error", "reset", "overloaded", "stall"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


async def test_soak(proxy: Running, fake: FakeUpstream) -> None:
    rng = random.Random(2026)
    secrets = paid_keys(fake, 12)
    await proxy.add_keys(*((s, 5.0) for s in secrets))
    await proxy.set(read_timeout=1, cooldown_seconds=0.5, strategy="least_inflight")
    fake.stall_seconds, fake.stream_chunks = 1.5, 6
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SECONDS
    sent = 0
    fds_before, rss_samples = len(os.listdir("/proc/self/fd")), []

    async def chaos() -> None:
        while loop.time() < deadline:
            for secret in rng.sample(secrets, 3):
                fake.set_behavior(secret, rng.choice(FAULTS))
            fake.cut_after_chunks = rng.choice([None, None, None, 2])
            fake.requests.clear()  # the fake's own record of requests is not the proxy's memory
            rss_samples.append(_rss_mb())
            await asyncio.sleep(0.5)

    async def client(http: aiohttp.ClientSession, n: int) -> None:
        nonlocal sent
        while loop.time() < deadline:
            kind = rng.random()
            body = {"model": "deepseek-ai/DeepSeek-V3", "messages": [{"role": "user", "content": f"x{n}"}]}
            try:
                if kind < 0.45:
                    sent += 1
                    async with http.post(f"{proxy.base}/v1/chat/completions", json=body) as resp:
                        await resp.read()
                elif kind < 0.8:
                    sent += 1
                    async with http.post(f"{proxy.base}/v1/chat/completions", json={**body, "stream": True}) as resp:
                        if kind < 0.7:
                            await resp.read()
                        # else: leave after the headers, mid-stream
                elif kind < 0.9:
                    sent += 1
                    async with http.post(
                        f"{proxy.base}/v1/embeddings", json={"model": "BAAI/bge-m3", "input": "x"}
                    ) as r:
                        await r.read()
                else:
                    sent += 1
                    async with http.get(f"{proxy.base}/v1/models") as resp:
                        await resp.read()
            except aiohttp.ClientError:
                pass  # a cut stream can surface as a payload error: the request still counted

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        await asyncio.gather(chaos(), *(client(http, n) for n in range(16)))
    for secret in secrets:
        fake.set_behavior(secret, "ok")
    fake.cut_after_chunks = None
    await asyncio.sleep(2)  # let stalls and cooldowns run out

    rows = await proxy.calls()
    assert sent > 500 and len(rows) == sent
    assert not proxy.server.app[PROXY].client.busy  # no upstream connection checked out and forgotten
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 40
    settled = rss_samples[len(rss_samples) // 3]
    assert rss_samples[-1] - settled < 40, rss_samples
    assert len(proxy.pool) == 12 and not [k for k in proxy.pool.keys.values() if k.state == "invalid"]
    assert all(k.inflight == 0 for k in proxy.pool.keys.values())
