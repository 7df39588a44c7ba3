"""No key appears whole in logs, errors, pages or the database (export and copy aside)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import openai
import pytest

from tests.conftest import Running, paid_keys
from tests.fake_upstream import FakeUpstream

PAGES = ["/", "/keys", "/models", "/logs", "/stats", "/settings", "/login"]
APIS = [
    "/api/keys?page_size=1000",
    "/api/logs",
    "/api/summary",
    "/api/settings",
    "/api/me",
    "/api/stats",
    "/api/models",
]


async def test_keys_never_leak(
    proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = paid_keys(fake, 4)
    _, dead, limited, gone = secrets
    fake.set_behavior(dead, "invalid")
    fake.set_behavior(limited, "rate_limited")
    fake.set_behavior(gone, "reset")
    await proxy.add_keys(*((s, 5.0) for s in secrets))
    await proxy.set(strategy="round_robin")
    client = proxy.openai()
    seen: list[str] = []
    for _ in range(6):
        try:
            await client.chat.completions.create(
                model="deepseek-ai/DeepSeek-V3", messages=[{"role": "user", "content": "x"}]
            )
        except openai.APIStatusError as exc:
            seen.append(exc.response.text)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="no/such", messages=[{"role": "user", "content": "x"}])
    seen.append(caught.value.response.text)
    async with admin.post("/api/keys/refresh") as resp:
        seen.append(await resp.text())
    await proxy.flush()
    for path in PAGES + APIS:
        async with admin.get(path) as resp:
            seen.append(await resp.text())
    seen.extend(record.getMessage() for record in caplog.records)
    seen.extend(k.last_error or "" for k in proxy.pool.keys.values())
    seen.extend(repr(k) for k in proxy.pool.keys.values())
    await proxy.stop()
    seen.extend(await asyncio.to_thread(lambda: [p.read_bytes().decode("latin-1") for p in proxy.data_dir.iterdir()]))
    blob = "\n".join(seen)
    for secret in secrets:
        assert secret not in blob and secret[3:] not in blob
    # ...while the routes meant for it do show it.
    assert any("Token is invalid" in k.last_error for k in proxy.pool.keys.values() if k.last_error)


async def test_export_and_secret_routes_do_show_the_key(
    proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession
) -> None:
    [secret] = paid_keys(fake, 1)
    [key] = await proxy.add_keys((secret, 1.0))
    async with admin.get("/api/keys/export") as resp:
        assert secret in await resp.text()
    async with admin.get(f"/api/keys/{key.id}/secret") as resp:
        assert (await resp.json())["key"] == secret
