"""Every /v1 endpoint through the real proxy, driven by the official openai SDK or raw HTTP."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest

from tests.conftest import Running, paid_keys
from tests.fake_upstream import FakeUpstream

CHAT = "deepseek-ai/DeepSeek-V3"
FREE_CHAT = "Qwen/Qwen2.5-7B-Instruct"
MESSAGES = [{"role": "user", "content": "hello there"}]


async def test_chat_non_stream_answers_and_logs_usage(proxy: Running, fake: FakeUpstream) -> None:
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    answer = await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES)
    assert answer.choices[0].message.content.startswith("fake reply 0.")
    assert fake.requests[-1].key == secret
    assert fake.requests[-1].json == {"model": CHAT, "messages": MESSAGES}
    [row] = await proxy.calls()
    assert (row["endpoint"], row["model"], row["status"], row["stream"]) == ("chat/completions", CHAT, 200, 0)
    assert row["prompt_tokens"] == answer.usage.prompt_tokens > 0
    assert row["completion_tokens"] == answer.usage.completion_tokens
    assert row["total_tokens"] == answer.usage.total_tokens
    assert row["key_id"] == proxy.pool.keys[row["key_id"]].id
    assert proxy.pool.keys[row["key_id"]].usage_count == 1


@pytest.mark.parametrize("split", [False, True])
async def test_chat_stream_passes_every_chunk_and_logs_final_usage(
    proxy: Running, fake: FakeUpstream, split: bool
) -> None:
    fake.split_events = split
    fake.stream_chunks = 7
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    stream = await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "".join(f"fake reply {i}. " for i in range(7))
    [row] = await proxy.calls()
    assert row["stream"] == 1 and row["status"] == 200
    assert row["completion_tokens"] == chunks[-1].usage.completion_tokens == 7
    assert row["prompt_tokens"] == chunks[-1].usage.prompt_tokens > 0
    assert row["ttfb_ms"] is not None and row["ttfb_ms"] <= row["latency_ms"]


async def test_stream_is_not_buffered(proxy: Running, fake: FakeUpstream) -> None:
    fake.stream_chunks = 4
    fake.chunk_delay = 0.2
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    stream = await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
    first_seen = None
    async for _chunk in stream:
        if first_seen is None:
            first_seen = time.monotonic()
    last_sent = fake.chunk_sent_at[-1]
    # Four delays of 200 ms stand between the first chunk and the last one.
    assert first_seen is not None and last_sent - first_seen > 0.5


async def test_a_gzip_upstream_reaches_clients_plain_with_usage_read(proxy: Running, fake: FakeUpstream) -> None:
    fake.compress = True
    await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 1)))
    client = proxy.openai()
    answer = await client.chat.completions.create(model=CHAT, messages=MESSAGES)
    chunks = [c async for c in await client.chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)]
    assert fake.requests[-1].headers["accept-encoding"] == "gzip"
    assert answer.choices[0].message.content and "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain, streamed = await _wait_for_rows(proxy, 2)
    assert plain["total_tokens"] == answer.usage.total_tokens > 0
    assert streamed["total_tokens"] == chunks[-1].usage.total_tokens > 0


async def test_completions_stream_and_not(proxy: Running, fake: FakeUpstream) -> None:
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    client = proxy.openai()
    plain = await client.completions.create(model=CHAT, prompt="def add(a, b):", suffix="\n", max_tokens=16)
    assert plain.choices[0].text.startswith("fake reply")
    stream = await client.completions.create(model=CHAT, prompt="def add(a, b):", stream=True)
    pieces = [c async for c in stream]
    assert "".join(p.choices[0].text for p in pieces).startswith("fake reply 0.")
    rows = await proxy.calls()
    assert [(r["endpoint"], r["stream"]) for r in rows] == [("completions", 0), ("completions", 1)]
    assert rows[0]["total_tokens"] == plain.usage.total_tokens == rows[1]["total_tokens"]


async def test_embeddings_and_models(proxy: Running, fake: FakeUpstream) -> None:
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    client = proxy.openai()
    vectors = await client.embeddings.create(model="BAAI/bge-m3", input=["a b c", "d e"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 8
    models = await client.models.list()
    assert CHAT in [m.id for m in models.data]
    rows = await proxy.calls()
    assert rows[0]["endpoint"] == "embeddings" and rows[0]["prompt_tokens"] == vectors.usage.prompt_tokens > 0
    assert rows[1]["endpoint"] == "models" and rows[1]["status"] == 200


@pytest.mark.parametrize("in_meta", [False, True])
async def test_rerank_usage_top_level_or_meta(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession, in_meta: bool
) -> None:
    fake.rerank_usage_in_meta = in_meta
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    body = {"model": "BAAI/bge-reranker-v2-m3", "query": "apple", "documents": ["apple pie", "car"]}
    async with http.post(f"{proxy.base}/v1/rerank", json=body) as resp:
        assert resp.status == 200
        answer = await resp.json()
    tokens = answer["meta"]["tokens"] if in_meta else answer["tokens"]
    [row] = await proxy.calls()
    assert row["prompt_tokens"] == tokens["input_tokens"] > 0


async def test_images_count_images(proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    body = {"model": "Kwai-Kolors/Kolors", "prompt": "a cat", "batch_size": 3}
    async with http.post(f"{proxy.base}/v1/images/generations", json=body) as resp:
        assert resp.status == 200
        assert len((await resp.json())["images"]) == 3
    [row] = await proxy.calls()
    assert row["images"] == 3


async def test_other_paths_are_forwarded_byte_for_byte(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    body = {"model": "FunAudioLLM/CosyVoice2-0.5B", "input": "你好", "voice": "alex"}
    async with http.post(f"{proxy.base}/v1/audio/speech?x=1", json=body) as resp:
        assert resp.status == 200 and resp.content_type == "audio/mpeg"
        assert len(await resp.read()) == 16 * 1024
    assert fake.requests[-1].path == "/v1/audio/speech"
    async with http.get(f"{proxy.base}/v1/no/such/path") as resp:
        assert resp.status == 404  # the upstream's answer, passed back


async def test_hop_by_hop_and_client_auth_are_not_forwarded(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    headers = {"Authorization": "Bearer client-token", "Cookie": "AIOHTTP_SESSION=x", "X-Custom": "kept"}
    async with http.post(
        f"{proxy.base}/v1/chat/completions", json={"model": CHAT, "messages": MESSAGES}, headers=headers
    ) as resp:
        assert resp.status == 200
    seen = fake.requests[-1]
    assert seen.headers["authorization"] == f"Bearer {secret}"
    assert "cookie" not in seen.headers and seen.headers["x-custom"] == "kept"


async def test_options_preflight(proxy: Running, http: aiohttp.ClientSession) -> None:
    headers = {
        "Origin": "http://localhost:3000",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with http.options(f"{proxy.base}/v1/chat/completions", headers=headers) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert resp.headers["Access-Control-Allow-Headers"] == "authorization, content-type"


# -- access control ----------------------------------------------------------------------------


async def test_api_token_is_required_when_set(proxy: Running, fake: FakeUpstream) -> None:
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    await proxy.set(api_token="main-token")
    with pytest.raises(openai.AuthenticationError) as caught:
        await proxy.openai("wrong").chat.completions.create(model=CHAT, messages=MESSAGES)
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key" and caught.value.body["type"] == "invalid_request_error"
    assert fake.requests == []  # nothing reached the upstream
    answer = await proxy.openai("main-token").chat.completions.create(model=CHAT, messages=MESSAGES)
    assert answer.choices[0].message.content


async def test_no_api_token_accepts_anything(proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    [secret] = paid_keys(fake, 1)
    await proxy.add_keys((secret, 10.0))
    async with http.get(f"{proxy.base}/v1/models") as resp:  # no Authorization at all
        assert resp.status == 200
    rows = await proxy.calls()
    assert rows[-1]["caller"] == "none"


async def test_free_token_uses_zero_balance_keys_only(proxy: Running, fake: FakeUpstream) -> None:
    [paid] = paid_keys(fake, 1)
    [zero] = paid_keys(fake, 1, balance="0", seed="zero")
    await proxy.add_keys((paid, 10.0), (zero, 0.0))
    await proxy.set(api_token="main-token", free_token="free-token")
    client = proxy.openai("free-token")
    for _ in range(4):
        await client.chat.completions.create(model=FREE_CHAT, messages=MESSAGES)
    assert {r.key for r in fake.requests} == {zero}
    rows = await proxy.calls()
    assert {r["caller"] for r in rows} == {"free"}


async def test_the_free_token_is_refused_for_any_other_model_without_touching_a_key(
    proxy: Running, fake: FakeUpstream
) -> None:
    [paid] = paid_keys(fake, 1)
    [zero] = paid_keys(fake, 1, balance="0", seed="zero")
    await proxy.add_keys((paid, 10.0), (zero, 0.0))
    await proxy.set(api_token="main-token", free_token="free-token")
    client = proxy.openai("free-token")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await client.chat.completions.create(model=CHAT, messages=MESSAGES)
    assert caught.value.body["code"] == "free_models_only"  # type: ignore[index]
    assert caught.value.body["type"] == "permission_error"  # type: ignore[index]
    assert CHAT in caught.value.body["message"] and "免费模型" in caught.value.body["message"]  # type: ignore[index]
    for call in (
        client.embeddings.create(model="Qwen/Qwen3-Embedding-8B", input="x"),
        client.images.generate(model="black-forest-labs/FLUX.1-dev", prompt="x"),
        client.audio.speech.create(model="FunAudioLLM/CosyVoice2-0.5B", voice="alloy", input="x"),
    ):
        with pytest.raises(openai.PermissionDeniedError):
            await call
    assert fake.requests == []  # no key was spent on any of them
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": "Bearer free-token"}
        async with http.post(f"{proxy.base}/v1/audio/transcriptions", data=b"\x00", headers=headers) as resp:
            assert resp.status == 403  # no model to read: refused, never a guess
        async with http.get(f"{proxy.base}/v1/user/info", headers=headers) as resp:
            assert resp.status == 404  # never forwarded to any caller
    assert fake.requests == []
    assert {m.id for m in (await client.models.list()).data}  # the model list costs nothing
    await client.chat.completions.create(model=FREE_CHAT, messages=MESSAGES)
    assert fake.requests[-1].key == zero
    rows = await proxy.calls()
    assert [r["status"] for r in rows].count(403) == 5 and all(r["caller"] == "free" for r in rows)


async def test_free_models_try_zero_balance_keys_first_then_paid(proxy: Running, fake: FakeUpstream) -> None:
    [paid] = paid_keys(fake, 1)
    [zero] = paid_keys(fake, 1, balance="0", seed="zero")
    [_, zero_key] = await proxy.add_keys((paid, 10.0), (zero, 0.0))
    client = proxy.openai()
    await client.chat.completions.create(model=FREE_CHAT, messages=MESSAGES)
    assert fake.requests[-1].key == zero
    await client.chat.completions.create(model=CHAT, messages=MESSAGES)
    assert fake.requests[-1].key == paid
    proxy.pool.set_enabled(zero_key, False)
    await client.chat.completions.create(model=FREE_CHAT, messages=MESSAGES)
    assert fake.requests[-1].key == paid  # no zero-balance key left: fall back to keys with balance


async def test_zero_balance_key_refused_on_free_model_moves_on(proxy: Running, fake: FakeUpstream) -> None:
    fake.zero_balance_free_ok = False  # the late-2026 behaviour
    [paid] = paid_keys(fake, 1)
    [zero] = paid_keys(fake, 1, balance="0", seed="zero")
    _, zero_key = await proxy.add_keys((paid, 10.0), (zero, 0.0))
    answer = await proxy.openai().chat.completions.create(model=FREE_CHAT, messages=MESSAGES)
    assert answer.choices[0].message.content
    assert [r.key for r in fake.requests] == [zero, paid]
    assert zero_key.status() == "cooling" and zero_key.state != "invalid"


async def test_strategy_change_applies_to_the_next_request(proxy: Running, fake: FakeUpstream) -> None:
    secrets = paid_keys(fake, 3)
    keys = await proxy.add_keys(*((s, 10.0) for s in secrets))
    for i, key in enumerate(keys):
        key.added_at += i
    client = proxy.openai()
    await proxy.set(strategy="oldest")
    await client.models.list()
    assert fake.requests[-1].key == secrets[0]
    await proxy.set(strategy="newest")
    await client.models.list()
    assert fake.requests[-1].key == secrets[2]


async def _wait_for_rows(proxy: Running, count: int) -> list:
    for _ in range(100):
        rows = await proxy.calls()
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} call-log rows")


@pytest.mark.parametrize("stage", ["before_headers", "mid_stream"])
async def test_client_disconnect_is_logged_and_frees_the_key(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession, stage: str
) -> None:
    [secret] = paid_keys(fake, 1)
    [key] = await proxy.add_keys((secret, 10.0))
    if stage == "before_headers":
        fake.set_behavior(secret, "stall")
        fake.stall_seconds = 5
    else:
        fake.chunk_delay = 0.5
    body = {"model": CHAT, "messages": MESSAGES, "stream": True}

    async def read_a_little() -> None:
        async with http.post(f"{proxy.base}/v1/chat/completions", json=body) as resp:
            await resp.content.readany()
            await asyncio.sleep(5)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(read_a_little(), 0.3)
    [row] = await _wait_for_rows(proxy, 1)
    assert row["status"] == 499 and row["error"] == "client disconnected" and row["key_id"] == key.id
    assert key.inflight == 0 and key.status() == "active"


async def test_browser_requests_get_cors_headers(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 1)))
    async with http.get(f"{proxy.base}/v1/models", headers={"Origin": "http://127.0.0.1:5173"}) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    async with http.get(f"{proxy.base}/v1/models") as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_an_absurd_model_id_is_refused_before_any_key(proxy: Running, fake: FakeUpstream) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    with pytest.raises(openai.BadRequestError) as caught:
        await proxy.openai().chat.completions.create(model="m" * 257, messages=MESSAGES)
    assert caught.value.body["code"] == "model_too_long"  # type: ignore[index]
    assert fake.requests == []
    [row] = await proxy.calls()
    assert row["status"] == 400 and row["model"] is None
