"""Self-check of the fake upstream, so proxy tests can trust what it imitates."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import ClientConnectionError
from aiohttp.test_utils import TestClient

from tests.fake_upstream import FakeUpstream, make_key

CHAT = "/v1/chat/completions"


@pytest.fixture
def fake() -> FakeUpstream:
    """A fake with one funded key (seed 1) and one zero-balance key (seed 2)."""
    up = FakeUpstream()
    up.add_key(make_key(1), "13.8925", account_id="acct-1")
    up.add_key(make_key(2), "0")
    return up


def auth(seed: int) -> dict[str, str]:
    """Bearer header for the key derived from seed."""
    return {"Authorization": f"Bearer {make_key(seed)}"}


def chat_body(model: str, stream: bool = False) -> dict[str, Any]:
    """A minimal chat request."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
    }


async def test_user_info_and_unknown_key(fake: FakeUpstream, aiohttp_client: Any) -> None:
    client: TestClient = await aiohttp_client(fake.app)
    assert make_key(1) != make_key(2) and len(make_key(1)) == 51
    resp = await client.get("/v1/user/info", headers=auth(1))
    data = (await resp.json())["data"]
    assert resp.status == 200 and data["totalBalance"] == "13.8925" and data["id"] == "acct-1"
    resp = await client.get("/v1/user/info", headers=auth(99))
    assert resp.status == 401 and (await resp.json())["code"] == 30014
    resp = await client.post(CHAT, json=chat_body("Qwen/Qwen3-8B"))
    assert resp.status == 401
    assert [s.key for s in fake.requests] == [make_key(1), make_key(99), None]
    assert fake.requests[0].headers["authorization"].startswith("Bearer ")


async def test_zero_balance_rule(fake: FakeUpstream, aiohttp_client: Any) -> None:
    client: TestClient = await aiohttp_client(fake.app)
    resp = await client.post(CHAT, json=chat_body("Qwen/Qwen3-8B"), headers=auth(2))
    assert resp.status == 200
    resp = await client.post(CHAT, json=chat_body("Pro/Qwen/Qwen3-8B"), headers=auth(2))
    assert resp.status == 403 and (await resp.json())["code"] == 30001
    fake.zero_balance_free_ok = False
    resp = await client.post(CHAT, json=chat_body("Qwen/Qwen3-8B"), headers=auth(2))
    assert resp.status == 403
    resp = await client.get("/v1/models", params={"sub_type": "reranker"}, headers=auth(2))
    ids = {m["id"] for m in (await resp.json())["data"]}
    assert resp.status == 200 and "BAAI/bge-reranker-v2-m3" in ids and "BAAI/bge-m3" not in ids
    resp = await client.post(CHAT, json=chat_body("no/such-model"), headers=auth(1))
    assert resp.status == 400 and (await resp.json())["code"] == 20012


async def test_behaviors(fake: FakeUpstream, aiohttp_client: Any) -> None:
    client: TestClient = await aiohttp_client(fake.app)
    fake.set_behavior(make_key(1), "rate_limited")
    resp = await client.post(CHAT, json=chat_body("Qwen/Qwen3-8B"), headers=auth(1))
    assert resp.status == 429 and "code" not in await resp.json()
    fake.set_behavior(make_key(1), "reset")
    with pytest.raises(ClientConnectionError):
        await client.post(CHAT, json=chat_body("Qwen/Qwen3-8B"), headers=auth(1))


async def test_stream_usage_is_cumulative(fake: FakeUpstream, aiohttp_client: Any) -> None:
    client: TestClient = await aiohttp_client(fake.app)
    body = chat_body("deepseek-ai/DeepSeek-V3", stream=True)
    resp = await client.post(CHAT, json=body, headers=auth(1))
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = (await resp.text()).split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [orjson.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert [c["usage"]["completion_tokens"] for c in chunks] == [1, 2, 3, 4, 5, 5]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(fake.chunk_sent_at) == 6
    resp = await client.post(CHAT, json=chat_body(body["model"]), headers=auth(1))
    assert (await resp.json())["usage"] == chunks[-1]["usage"]


async def test_split_events(fake: FakeUpstream, aiohttp_client: Any) -> None:
    fake.split_events = True
    fake.stream_chunks = 2
    client: TestClient = await aiohttp_client(fake.app)
    body = chat_body("Qwen/Qwen3-8B", stream=True)
    resp = await client.post(CHAT, json=body, headers=auth(1))
    pieces = [piece async for piece in resp.content.iter_any()]
    assert any(not p.endswith(b"\n\n") for p in pieces)
    assert b"".join(pieces).endswith(b"data: [DONE]\n\n")
