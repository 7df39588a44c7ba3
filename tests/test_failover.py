"""What each upstream error does to the key that got it, and what the client sees."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import openai
import orjson
import pytest

from silicon_pool.keys import INVALID
from tests.conftest import Running, paid_keys
from tests.fake_upstream import FakeUpstream

CHAT = "deepseek-ai/DeepSeek-V3"
MESSAGES = [{"role": "user", "content": "hi"}]


async def _bad_then_good(proxy: Running, fake: FakeUpstream, behavior: str) -> tuple:
    """One misbehaving key and one healthy key; the bad one is tried first (oldest strategy)."""
    bad, good = paid_keys(fake, 2)
    fake.set_behavior(bad, behavior)
    await proxy.set(strategy="oldest")
    bad_key, good_key = await proxy.add_keys((bad, 10.0), (good, 10.0))
    good_key.added_at += 1  # make the order certain
    await proxy.set(strategy="oldest")
    answer = await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES)
    assert answer.choices[0].message.content
    assert [r.key for r in fake.requests] == [bad, good]
    [row] = await proxy.calls()
    assert row["attempts"] == 2 and row["status"] == 200 and row["key_id"] == good_key.id
    return bad_key, good_key


async def test_401_marks_key_invalid_keeps_it_and_moves_on(proxy: Running, fake: FakeUpstream) -> None:
    bad_key, _ = await _bad_then_good(proxy, fake, "invalid")
    assert bad_key.state == INVALID and bad_key.status() == "invalid"
    assert bad_key.id in proxy.pool.keys  # kept, never deleted
    assert "Token is invalid" in bad_key.last_error
    await proxy.flush()
    state = await proxy.store.read(lambda c: c.execute("SELECT state FROM keys WHERE id=?", (bad_key.id,)).fetchone())
    assert state == ("invalid",)


@pytest.mark.parametrize("status", [402, 403])
async def test_30001_moves_key_to_free_tier(proxy: Running, fake: FakeUpstream, status: int) -> None:
    fake.no_balance_status = status
    bad, good = paid_keys(fake, 2)
    fake.set_balance(bad, "0")  # the upstream knows it is empty; the pool does not yet
    await proxy.set(strategy="oldest")
    bad_key, good_key = await proxy.add_keys((bad, None), (good, 10.0))
    good_key.added_at += 1
    await proxy.set(strategy="oldest")
    await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES)
    assert [r.key for r in fake.requests] == [bad, good]
    assert bad_key.balance == 0 and bad_key.status() == "zero"
    # It now serves free models.
    await proxy.openai().chat.completions.create(model="Qwen/Qwen2.5-7B-Instruct", messages=MESSAGES)
    assert fake.requests[-1].key == bad


@pytest.mark.parametrize(
    ("behavior", "kind", "scope"),
    [("rate_limited", "TPM", "key"), ("overloaded", "503", "key"), ("gateway_timeout", "504", "key")],
)
async def test_a_busy_or_limited_key_rests_for_that_model_only_and_the_request_moves_on(
    proxy: Running, fake: FakeUpstream, behavior: str, kind: str, scope: str
) -> None:
    bad_key, _ = await _bad_then_good(proxy, fake, behavior)
    assert bad_key.status() == "active" and bad_key.state != INVALID  # it still serves other models
    [rest] = proxy.pool.rests_of(bad_key)
    assert (rest.model, rest.kind, rest.scope) == (CHAT, kind, scope)
    assert proxy.pool.rests_for(bad_key, CHAT) and not proxy.pool.rests_for(bad_key, "Qwen/Qwen2.5-7B-Instruct")
    assert bad_key.last_error


async def test_a_broken_connection_cools_the_whole_key(proxy: Running, fake: FakeUpstream) -> None:
    bad_key, _ = await _bad_then_good(proxy, fake, "reset")
    assert bad_key.status() == "cooling" and proxy.pool.rests_of(bad_key) == []
    assert bad_key.last_error


async def test_timeout_cools_the_key_and_moves_on(proxy: Running, fake: FakeUpstream) -> None:
    fake.stall_seconds = 5
    await proxy.set(read_timeout=1)
    bad_key, _ = await _bad_then_good(proxy, fake, "stall")
    assert bad_key.status() == "cooling" and "timed out" in bad_key.last_error


async def test_server_error_tries_another_key_without_blame(proxy: Running, fake: FakeUpstream) -> None:
    bad_key, _ = await _bad_then_good(proxy, fake, "server_error")
    assert bad_key.status() == "active"


@pytest.mark.parametrize(("behavior", "status", "code"), [("bad_request", 400, 20015), ("model_disabled", 403, 30003)])
async def test_request_errors_return_to_the_client_and_mark_nothing(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession, behavior: str, status: int, code: int
) -> None:
    [secret] = paid_keys(fake, 1)
    fake.set_behavior(secret, behavior)
    [key] = await proxy.add_keys((secret, 10.0))
    async with http.post(f"{proxy.base}/v1/chat/completions", json={"model": CHAT, "messages": MESSAGES}) as resp:
        assert resp.status == status
        assert (await resp.json())["error"]["code"] == str(code)  # in OpenAI's shape (test_openai_surface.py)
    assert len(fake.requests) == 1 and key.status() == "active" and key.last_error is None


async def test_unknown_model_returns_upstream_400(proxy: Running, fake: FakeUpstream) -> None:
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    with pytest.raises(openai.BadRequestError) as caught:
        await proxy.openai().chat.completions.create(model="no/such-model", messages=MESSAGES)
    assert caught.value.code == "20012" and len(fake.requests) == 1


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"', b""])
async def test_non_object_body_is_refused_without_spending_a_key(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession, body: bytes
) -> None:
    [secret] = paid_keys(fake, 1)
    [key] = await proxy.add_keys((secret, 10.0))
    headers = {"Content-Type": "application/json"}
    async with http.post(f"{proxy.base}/v1/chat/completions", data=body, headers=headers) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "invalid_json" and error["message"]
    assert fake.requests == [] and key.usage_count == 0


async def test_body_over_the_limit_is_413(proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    await proxy.set(max_body_mb=1)
    big = b'{"model": "x", "input": "' + b"a" * (1024 * 1024) + b'"}'
    async with http.post(f"{proxy.base}/v1/embeddings", data=big, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "body_too_large"
    assert fake.requests == []


# -- when no key can serve ----------------------------------------------------------------------


async def _expect_503(proxy: Running) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES)
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "no_key_available" and caught.value.body["type"] == "service_unavailable"
    return caught.value


async def test_empty_pool_is_503(proxy: Running, fake: FakeUpstream) -> None:
    error = await _expect_503(proxy)
    assert "No API keys" in error.body["message"] and "retry-after" not in error.response.headers
    assert fake.requests == []


async def test_all_disabled_or_invalid_is_503(proxy: Running, fake: FakeUpstream) -> None:
    a, b = paid_keys(fake, 2)
    key_a, key_b = await proxy.add_keys((a, 10.0), (b, 10.0))
    proxy.pool.set_enabled(key_a, False)
    proxy.pool.mark_invalid(key_b, "HTTP 401")
    error = await _expect_503(proxy)
    assert "disabled, invalid" in error.body["message"]
    assert fake.requests == []


async def test_all_cooling_is_503_with_retry_after(proxy: Running, fake: FakeUpstream) -> None:
    [a] = paid_keys(fake, 1)
    [key] = await proxy.add_keys((a, 10.0))
    proxy.pool.cool(key, 20, "HTTP 429")
    error = await _expect_503(proxy)
    assert "cooling" in error.body["message"]
    assert 1 <= int(error.response.headers["retry-after"]) <= 20


async def test_every_key_failing_is_503_naming_the_error(proxy: Running, fake: FakeUpstream) -> None:
    keys = paid_keys(fake, 4)
    for secret in keys:
        fake.set_behavior(secret, "overloaded")
    await proxy.add_keys(*((s, 10.0) for s in keys))
    error = await _expect_503(proxy)
    assert "All 3 keys tried failed" in error.body["message"] and "too busy" in error.body["message"]
    assert error.response.headers["retry-after"] == "30"
    assert len(fake.requests) == 3  # max_attempts
    assert len(proxy.pool.keys) == 4  # nothing lost
    [row] = await proxy.calls()
    assert row["status"] == 503 and row["attempts"] == 3 and row["limits"] is None


async def test_every_key_tried_rate_limited_is_429_naming_the_kind(proxy: Running, fake: FakeUpstream) -> None:
    keys = paid_keys(fake, 4)
    for secret in keys:
        fake.set_behavior(secret, "rate_limited")
    await proxy.add_keys(*((s, 10.0) for s in keys))
    with pytest.raises(openai.RateLimitError) as caught:
        await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES)
    message = caught.value.body["message"]  # type: ignore[index]
    assert "All 3 keys tried are rate limited" in message and "(TPM)" in message and CHAT in message
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 62  # the next full minute
    assert caught.value.body["type"] == "rate_limit_error"  # type: ignore[index]
    assert len(fake.requests) == 3
    [row] = await proxy.calls()
    assert row["status"] == 429 and row["attempts"] == 3 and row["limits"] == "TPM"


async def test_max_attempts_setting_is_honoured(proxy: Running, fake: FakeUpstream) -> None:
    keys = paid_keys(fake, 4)
    for secret in keys:
        fake.set_behavior(secret, "overloaded")
    await proxy.add_keys(*((s, 10.0) for s in keys))
    await proxy.set(max_attempts=2)
    await _expect_503(proxy)
    assert len(fake.requests) == 2


# -- failures after the stream began -------------------------------------------------------------


async def test_stream_cut_midway_ends_with_error_event_and_done(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake.stream_chunks = 6
    fake.cut_after_chunks = 3
    [secret] = paid_keys(fake, 1)
    [key] = await proxy.add_keys((secret, 10.0))
    body = {"model": CHAT, "messages": MESSAGES, "stream": True}
    async with http.post(f"{proxy.base}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        text = (await resp.read()).decode()
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert '"code":"stream_interrupted"' in events[-2]
    assert sum('"content":"fake reply' in e for e in events) == 3
    [row] = await proxy.calls()
    assert row["error"] and row["completion_tokens"] == 3
    assert key.status() == "active"  # a cut stream is not the key's fault


async def test_sdk_sees_an_error_not_a_hang_when_stream_breaks(proxy: Running, fake: FakeUpstream) -> None:
    fake.cut_after_chunks = 2
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    stream = await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError, match="interrupted"):
        async for _chunk in stream:
            pass


async def test_failure_before_first_byte_fails_over(proxy: Running, fake: FakeUpstream) -> None:
    """An upstream that answers 200 and dies before any byte is still a failover case."""
    fake.cut_after_chunks = 0
    [secret] = paid_keys(fake, 1)
    [key] = await proxy.add_keys((secret, 10.0))
    with pytest.raises(openai.APIStatusError) as caught:
        stream = await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
        async for _chunk in stream:
            pass
    assert caught.value.status_code == 503
    assert key.status() == "cooling"


async def test_zero_balance_refusals_leave_attempts_for_keys_with_balance(proxy: Running, fake: FakeUpstream) -> None:
    fake.zero_balance_free_ok = False
    zeros = paid_keys(fake, 6, balance="0", seed="zero")
    [paid] = paid_keys(fake, 1)
    await proxy.add_keys(*((s, 0.0) for s in zeros), (paid, 5.0))
    answer = await proxy.openai().chat.completions.create(model="Qwen/Qwen2.5-7B-Instruct", messages=MESSAGES)
    assert answer.choices[0].message.content
    assert [r.key for r in fake.requests][-1] == paid and len(fake.requests) == 2


async def test_client_leaving_mid_stream_is_not_blamed_on_the_key(proxy: Running, fake: FakeUpstream) -> None:
    fake.stream_chunks = 8
    fake.chunk_delay = 0.1
    a, b = paid_keys(fake, 2)
    key_a, key_b = await proxy.add_keys((a, 10.0), (b, 10.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    body = b'{"model": "deepseek-ai/DeepSeek-V3", "messages": [{"role": "user", "content": "x"}], "stream": true}'
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await reader.read(200)
    writer.write_eof()  # a half-close, then gone
    writer.close()
    rows = []
    async with asyncio.timeout(5):
        while not rows:
            await asyncio.sleep(0.05)
            rows = await proxy.calls()
    assert rows[0]["status"] == 499
    assert len(fake.requests) == 1  # no second key was spent on a client that left
    assert key_a.status() == key_b.status() == "active"
    assert key_a.inflight == key_b.inflight == 0


async def test_expect_continue_is_not_forwarded(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    body = {"model": CHAT, "messages": MESSAGES}
    async with http.post(f"{proxy.base}/v1/chat/completions", json=body, expect100=True) as resp:
        assert resp.status == 200
    assert "expect" not in fake.requests[-1].headers


async def test_an_unknown_expectation_is_refused_before_a_key_is_spent(proxy: Running, fake: FakeUpstream) -> None:
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 20\r\nExpect: 200-ok\r\n\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")  # the body never comes: the answer must not wait for it
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
    body = await reader.readexactly(length)
    writer.close()
    assert head.startswith(b"HTTP/1.1 417")
    assert orjson.loads(body)["error"]["code"] == "expectation_failed"
    assert fake.requests == []


async def test_absolute_form_request_line_goes_to_the_same_path(proxy: Running, fake: FakeUpstream) -> None:
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(b"GET http://127.0.0.1/v1/models?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert fake.requests[-1].path == "/v1/models"
