"""Attacks on the proxy: a misbehaving upstream, vanishing clients, garbage input.

Afterwards the pool must still hold every key, none wrongly marked invalid, and the server
must go on serving. All traffic goes to 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import openai
import pytest

from tests.conftest import Running, paid_keys
from tests.fake_upstream import FakeUpstream

CHAT = "deepseek-ai/DeepSeek-V3"
MESSAGES = [{"role": "user", "content": "hi"}]
BODY = {"model": CHAT, "messages": MESSAGES}


def assert_pool_intact(proxy: Running, expected: int) -> None:
    assert len(proxy.pool) == expected
    assert not [k for k in proxy.pool.keys.values() if k.state == "invalid"]


async def _sse(http: aiohttp.ClientSession, proxy: Running) -> list[str]:
    async with http.post(f"{proxy.base}/v1/chat/completions", json={**BODY, "stream": True}) as resp:
        assert resp.status == 200
        return [e for e in (await resp.text()).split("\n\n") if e]


# -- the upstream misbehaves ---------------------------------------------------------------------


async def test_connection_refused_is_a_clear_503(start_proxy, fake: FakeUpstream, unused_tcp_port: int) -> None:
    proxy = await start_proxy(upstream=f"http://127.0.0.1:{unused_tcp_port}/v1", connect_timeout=1)
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 3)))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES)
    assert caught.value.status_code == 503 and "connection failed" in caught.value.body["message"]
    assert time.monotonic() - started < 5
    assert_pool_intact(proxy, 3)


@pytest.mark.parametrize("broken", ["truncated", "not_json"])
async def test_broken_answers_fail_over_then_say_so(proxy: Running, fake: FakeUpstream, broken: str) -> None:
    fake.broken_answer = broken
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 4)))
    with pytest.raises(openai.APIStatusError) as caught:
        await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES)
    assert caught.value.status_code == 503
    assert len(fake.requests) == 3  # every attempt used, then a clear answer
    assert_pool_intact(proxy, 4)
    fake.broken_answer = None
    if broken == "not_json":  # not the keys' fault: they serve again at once
        answer = await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES)
        assert answer.choices[0].message.content


async def test_stall_mid_stream_ends_with_error_event(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.stall_after_chunks, fake.stall_seconds = 2, 10
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    await proxy.set(read_timeout=1)
    started = time.monotonic()
    events = await _sse(http, proxy)
    assert time.monotonic() - started < 4
    assert events[-1] == "data: [DONE]" and "stream_interrupted" in events[-2] and "timed out" in events[-2]
    assert_pool_intact(proxy, 1)


async def test_a_slow_healthy_drip_never_times_out(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.stream_chunks, fake.chunk_delay = 4, 0.6  # 3 s in all, 0.6 s between reads
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    await proxy.set(read_timeout=1)
    events = await _sse(http, proxy)
    assert events[-1] == "data: [DONE]" and not any("error" in e for e in events)


async def test_a_burst_of_5xx_then_recovery(proxy: Running, fake: FakeUpstream) -> None:
    secrets = paid_keys(fake, 4)
    await proxy.add_keys(*((s, 5.0) for s in secrets))
    for secret in secrets:
        fake.set_behavior(secret, "server_error")
    client = proxy.openai()
    for _ in range(3):
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(model=CHAT, messages=MESSAGES)
    for secret in secrets:
        fake.set_behavior(secret, "ok")
    answer = await client.chat.completions.create(model=CHAT, messages=MESSAGES)
    assert answer.choices[0].message.content
    assert_pool_intact(proxy, 4)


async def test_every_key_rate_limited(proxy: Running, fake: FakeUpstream) -> None:
    secrets = paid_keys(fake, 5)
    await proxy.add_keys(*((s, 5.0) for s in secrets))
    for secret in secrets:
        fake.set_behavior(secret, "rate_limited")
    client = proxy.openai()
    retry_afters = []
    for _ in range(3):
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model=CHAT, messages=MESSAGES)
        assert caught.value.status_code == 429  # every key rests for the model: the client waits
        retry_afters.append(int(caught.value.response.headers["retry-after"]))
    assert len(fake.requests) == 5  # each key (each its own account) tried once, then the pool says wait
    assert all(1 <= r <= 62 for r in retry_afters)  # TPM: until the next full minute
    assert all(proxy.pool.rests_for(k, CHAT) for k in proxy.pool.keys.values())
    assert_pool_intact(proxy, 5)


# -- clients misbehave ---------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_thousand_clients_that_connect_and_vanish(proxy: Running, fake: FakeUpstream) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 2)))
    await proxy.openai().models.list()
    before = _open_fds()
    for _batch in range(10):
        writers = []
        for i in range(100):
            _, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
            if i % 3 == 1:
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 999\r\n\r\n{")
            elif i % 3 == 2:
                writer.write(b"GET /v1/mod")
            writers.append(writer)
        await asyncio.sleep(0)
        for writer in writers:
            writer.transport.abort()
    await asyncio.sleep(0.3)
    answer = await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES)
    assert answer.choices[0].message.content
    assert _open_fds() <= before + 20  # the server let go of them
    assert_pool_intact(proxy, 2)


async def test_a_body_that_never_finishes_times_out(proxy: Running, fake: FakeUpstream) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    await proxy.set(read_timeout=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 500\r\n\r\n{"model": '
    )
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 408")
    assert fake.requests == []
    answer = await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES)
    assert answer.choices[0].message.content


# -- bad input on /v1 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b'{"messages": []}', {"Content-Type": "application/json"}, 400, "model_required"),
        (b'{"model": 3}', {"Content-Type": "application/json"}, 400, "model_required"),
        (b'{"model": "x"}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (b"--b\r\n", {"Content-Type": "multipart/form-data; boundary=b"}, 415, "unsupported_media_type"),
        (b"\xff\xfe garbage", {"Content-Type": "application/json"}, 400, "invalid_json"),
    ],
)
async def test_bad_requests_are_refused_with_clear_errors(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession, body: bytes, headers: dict, status: int, code: str
) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    async with http.post(f"{proxy.base}/v1/chat/completions", data=body, headers=headers) as resp:
        assert resp.status == status
        error = (await resp.json())["error"]
    assert error["code"] == code and error["message"] and error["type"]
    assert fake.requests == []


async def test_a_base_url_without_v1_gets_a_hint(proxy: Running, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{proxy.base}/chat/completions", json=BODY) as resp:
        assert resp.status == 404
        error = (await resp.json())["error"]
    assert "/v1" in error["message"] and error["code"] == "unknown_url"


async def test_control_characters_in_headers_are_refused_and_harmless(proxy: Running, fake: FakeUpstream) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(
        b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad: a\x01b\x7f\r\nAuthorization: Bearer \x00\r\n\r\n"
    )
    async with asyncio.timeout(5):
        answer = await reader.read(200)
    writer.close()
    assert answer.split(b" ")[1] == b"400"
    models = await proxy.openai().models.list()
    assert models.data


# -- bad input on the admin API ------------------------------------------------------------------


async def test_admin_refuses_garbage_and_stores_nothing_half_way(proxy: Running, admin: aiohttp.ClientSession) -> None:
    for path, body in [
        ("/api/keys/import", b"{not json"),
        ("/api/keys/import", b'{"keys": 5}'),
        ("/api/keys/import", b'{"keys": "' + b"sk-" + b"a" * (10 * 1024 * 1024) + b'"}'),  # a 10 MB paste
        ("/api/keys/bulk", b'{"ids": [1, "2"], "action": "delete"}'),
        ("/api/account", b'{"current_password": 1, "password": []}'),
    ]:
        async with admin.post(path, data=body, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400, path
            assert (await resp.json())["error"]
    async with admin.patch("/api/settings", json={"max_attempts": 5, "strategy": "nope"}) as resp:
        assert resp.status == 400
    async with admin.get("/api/settings") as resp:
        assert (await resp.json())["max_attempts"] == 3  # nothing stored half-way
    for params in ({"page": "-1"}, {"page_size": "99999999999999999999"}, {"page": "1e9"}):
        async with admin.get("/api/keys", params=params) as resp:
            assert resp.status == 400
        async with admin.get("/api/logs", params=params) as resp:
            assert resp.status == 400
    sql = "'; DROP TABLE keys; --"
    async with admin.get("/api/keys", params={"q": sql}) as resp:
        assert resp.status == 200 and (await resp.json())["total"] == 0
    async with admin.get("/api/logs", params={"model": sql, "endpoint": sql}) as resp:
        assert resp.status == 200
    async with admin.post("/api/login", json={"username": sql, "password": sql}) as resp:
        assert resp.status == 401
    async with admin.post("/api/keys/import", json={"keys": "你好，世界 🚀 ключ ひらがな"}) as resp:
        assert resp.status == 202
    assert await proxy.store.read(lambda c: c.execute("SELECT COUNT(*) FROM keys").fetchone()[0]) == 0
    assert len(proxy.pool) == 0


async def test_the_proxy_refuses_unknown_host_names(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A DNS-rebinding page could otherwise spend the user's keys through a proxy without api_token."""
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    async with http.post(
        f"{proxy.base}/v1/chat/completions", json=BODY, headers={"Host": "rebind.evil.example"}
    ) as resp:
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "unknown_host"
    assert fake.requests == []
    for host in ("localhost:7898", "127.0.0.1", "[::1]"):
        async with http.get(f"{proxy.base}/v1/models", headers={"Host": host}) as resp:
            assert resp.status == 200, host
