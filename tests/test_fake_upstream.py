"""Self-check of the fake upstream, so proxy tests can trust what it imitates."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from aiohttp import ClientConnectionError
from aiohttp.test_utils import TestClient

from tests.fake_upstream import MSG_RATE_LIMITED_LEGACY, MSG_UNVERIFIED_RPD, FakeUpstream, limit_message, make_key

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


# -- rate limits per (account, model) ---------------------------------------------------------------

V3 = "deepseek-ai/DeepSeek-V3"
QWEN = "Qwen/Qwen2.5-7B-Instruct"
FLUX = "black-forest-labs/FLUX.1-dev"
SHANGHAI = timezone(timedelta(hours=8))
NOW = datetime(2026, 12, 1, 13, 47, 25, tzinfo=SHANGHAI).timestamp()  # a Tuesday afternoon in Beijing
CHAT_TOKENS = 6  # "hi" is one prompt token, the reply five completion tokens


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def at(self, *when: int) -> None:
        """Jump to `when` (year, month, day, hour, minute, second...) in Asia/Shanghai."""
        self.now = datetime(*when, tzinfo=SHANGHAI).timestamp()


@pytest.fixture
def clock(fake: FakeUpstream) -> Clock:
    fake.clock = clock = Clock(NOW)
    return clock


async def chat(client: TestClient, seed: int = 1, model: str = V3, stream: bool = False) -> tuple[int, bytes]:
    """Status and raw body of one chat request with the key of `seed`."""
    resp = await client.post(CHAT, json=chat_body(model, stream), headers=auth(seed))
    return resp.status, await resp.read()


def refusal(kind: str) -> bytes:
    """SiliconFlow's 429 body for `kind`, byte for byte."""
    return (
        b'{"message":"Request was rejected due to rate limiting. Details: '
        + kind.encode()
        + b' limit reached.","data":null}'
    )


@pytest.mark.parametrize("kind", ["RPM", "RPH", "RPD"])
async def test_a_request_budget_refuses_the_request_over_it(
    fake: FakeUpstream, clock: Clock, aiohttp_client: Any, kind: str
) -> None:
    """Two requests a minute (hour, day) are served, the third gets SiliconFlow's exact 429."""
    fake.limit(V3, **{kind.lower(): 2})
    client: TestClient = await aiohttp_client(fake.app)
    assert [(await chat(client))[0] for _ in range(2)] == [200, 200]
    resp = await client.post(CHAT, json=chat_body(V3), headers=auth(1))
    assert resp.status == 429 and await resp.read() == refusal(kind)
    assert resp.headers["Content-Type"].startswith("application/json") and "Retry-After" not in resp.headers
    assert fake.refused == [("acct-1", V3, kind)]
    assert fake.spent("acct-1", V3)["RPM"] == 2  # the refused request spent nothing


@pytest.mark.parametrize("kind", ["TPM", "TPD"])
async def test_a_token_budget_counts_the_usage_answered(
    fake: FakeUpstream, clock: Clock, aiohttp_client: Any, kind: str
) -> None:
    """Tokens are the prompt+completion the answers report, streams and embeddings included; once the
    window's spend reaches the budget, requests are refused."""
    fake.limit(V3, **{kind.lower(): 2 * CHAT_TOKENS + 4})
    client: TestClient = await aiohttp_client(fake.app)
    assert (await chat(client))[0] == 200
    assert (await chat(client, stream=True))[0] == 200
    assert fake.spent("acct-1", V3)[kind] == 2 * CHAT_TOKENS
    assert (await chat(client))[0] == 200  # 12 < 16: served, although it goes over
    assert await chat(client) == (429, refusal(kind))
    assert fake.spent("acct-1", V3)[kind] == 3 * CHAT_TOKENS
    fake.limit("BAAI/bge-m3", **{kind.lower(): 3})
    body = {"model": "BAAI/bge-m3", "input": ["twelve chars"]}  # three tokens
    resp = await client.post("/v1/embeddings", json=body, headers=auth(1))
    assert resp.status == 200 and fake.spent("acct-1", "BAAI/bge-m3")[kind] == 3
    resp = await client.post("/v1/embeddings", json=body, headers=auth(1))
    assert resp.status == 429 and await resp.read() == refusal(kind)


@pytest.mark.parametrize("kind", ["IPM", "IPD"])
async def test_an_image_budget_counts_images(fake: FakeUpstream, clock: Clock, aiohttp_client: Any, kind: str) -> None:
    """A batch that would go over the image budget is refused; a smaller one still fits."""
    fake.limit(FLUX, **{kind.lower(): 3})
    client: TestClient = await aiohttp_client(fake.app)

    async def images(batch: int) -> tuple[int, bytes]:
        body = {"model": FLUX, "prompt": "a cat", "batch_size": batch}
        resp = await client.post("/v1/images/generations", json=body, headers=auth(1))
        return resp.status, await resp.read()

    assert (await images(2))[0] == 200
    assert await images(2) == (429, refusal(kind))
    assert (await images(1))[0] == 200
    assert await images(1) == (429, refusal(kind))
    assert fake.spent("acct-1", FLUX)[kind] == 3 and fake.spent("acct-1", FLUX)["RPM"] == 2


async def test_windows_are_calendar_minutes_hours_and_days_in_shanghai(
    fake: FakeUpstream, clock: Clock, aiohttp_client: Any
) -> None:
    """Budgets come back when the minute, the hour or the day (00:00 UTC+8) turns, not a period later."""
    fake.limit(V3, rpm=1, rph=2, rpd=3)
    client: TestClient = await aiohttp_client(fake.app)
    assert (await chat(client))[0] == 200
    clock.at(2026, 12, 1, 13, 47, 59, 999_000)
    assert await chat(client) == (429, refusal("RPM"))
    clock.at(2026, 12, 1, 13, 48, 0)  # 35 s after the first request
    assert (await chat(client))[0] == 200
    clock.at(2026, 12, 1, 13, 59, 30)
    assert await chat(client) == (429, refusal("RPH"))
    clock.at(2026, 12, 1, 14, 0, 0)
    assert (await chat(client))[0] == 200
    clock.at(2026, 12, 1, 23, 59, 59)
    assert await chat(client) == (429, refusal("RPD"))
    clock.at(2026, 12, 2, 0, 0, 0)  # 16:00 UTC: Beijing's new day
    assert (await chat(client))[0] == 200
    assert fake.spent("acct-1", V3) == {"RPM": 1, "RPH": 1, "RPD": 1, "TPM": 6, "TPD": 6, "IPM": 0, "IPD": 0}


async def test_keys_of_one_account_share_its_budget(fake: FakeUpstream, clock: Clock, aiohttp_client: Any) -> None:
    """Limits are the account's: a second key of the account is refused too, another account's is not."""
    fake.add_key(make_key(3), "5.00", account_id="acct-1")
    fake.add_key(make_key(4), "5.00")
    fake.limit(V3, rpm=2)
    client: TestClient = await aiohttp_client(fake.app)
    assert [(await chat(client, seed))[0] for seed in (1, 3)] == [200, 200]
    assert [(await chat(client, seed))[0] for seed in (1, 3, 4, 4)] == [429, 429, 200, 200]
    assert fake.account_of(make_key(3)) == "acct-1" and fake.spent("acct-1", V3)["RPM"] == 2
    assert fake.spent(fake.account_of(make_key(4)), V3)["RPM"] == 2


async def test_a_spent_model_leaves_other_models_alone(fake: FakeUpstream, clock: Clock, aiohttp_client: Any) -> None:
    """Each model has its own budget: a day spent on DeepSeek-V3 does not touch Qwen or DeepSeek-R1."""
    fake.limit(V3, rpd=5)
    fake.limit(QWEN, rpm=1)
    fake.spend("acct-1", V3, requests=5)
    client: TestClient = await aiohttp_client(fake.app)
    assert await chat(client) == (429, refusal("RPD"))
    assert (await chat(client, model=QWEN))[0] == 200
    assert (await chat(client, model="deepseek-ai/DeepSeek-R1"))[0] == 200
    assert await chat(client, model=QWEN) == (429, refusal("RPM"))
    assert fake.spent("acct-1", QWEN)["RPD"] == 1 and fake.spent("acct-1", V3)["RPD"] == 5


async def test_other_refusals_and_bad_requests_spend_nothing(
    fake: FakeUpstream, clock: Clock, aiohttp_client: Any
) -> None:
    """Only served requests count: a 400, a 30001 or a per-key behaviour leaves the budget whole."""
    fake.limit(V3, rpd=1)
    client: TestClient = await aiohttp_client(fake.app)
    resp = await client.post(CHAT, json={"model": V3}, headers=auth(1))
    assert resp.status == 400
    assert (await chat(client, seed=2))[0] == 403  # zero balance, paid model
    fake.set_behavior(make_key(1), "overloaded")
    assert (await chat(client))[0] == 503
    fake.set_behavior(make_key(1), "ok")
    assert fake.spent("acct-1", V3)["RPD"] == 0
    assert (await chat(client))[0] == 200


async def test_accounts_without_real_name_verification(fake: FakeUpstream, clock: Clock, aiohttp_client: Any) -> None:
    """Unverified accounts may send 100 requests a day to DeepSeek-R1/V3 and are told so; others are not."""
    fake.add_key(make_key(3), "5.00")
    fake.unverified_accounts.add("acct-1")
    fake.spend("acct-1", V3, requests=100)
    fake.spend(fake.account_of(make_key(3)), V3, requests=100)
    client: TestClient = await aiohttp_client(fake.app)
    resp = await client.post(CHAT, json=chat_body(V3), headers=auth(1))
    assert resp.status == 429
    assert await resp.read() == orjson.dumps({"message": MSG_UNVERIFIED_RPD, "data": None})
    assert MSG_UNVERIFIED_RPD.endswith(
        "Details: RPD limit reached. Could only send 100 requests per day without real name verification."
    )
    assert (await chat(client, model="deepseek-ai/DeepSeek-R1"))[0] == 200
    assert (await chat(client, model=QWEN))[0] == 200  # the cap is for DeepSeek-R1/V3 only
    assert (await chat(client, seed=3))[0] == 200  # a verified account has no such cap
    fake.limit("deepseek-ai/DeepSeek-R1", rpd=1)
    assert await chat(client, model="deepseek-ai/DeepSeek-R1") == (
        429,
        orjson.dumps({"message": MSG_UNVERIFIED_RPD, "data": None}),
    )


async def test_retry_after_and_the_unnamed_refusal_on_request(
    fake: FakeUpstream, clock: Clock, aiohttp_client: Any
) -> None:
    """A test can ask for a Retry-After header on every 429, and for the old message that names no kind."""
    fake.limit(V3, rpm=0)
    fake.retry_after = "7"
    client: TestClient = await aiohttp_client(fake.app)
    resp = await client.post(CHAT, json=chat_body(V3), headers=auth(1))
    assert resp.status == 429 and resp.headers["Retry-After"] == "7" and await resp.read() == refusal("RPM")
    fake.set_behavior(make_key(1), "rate_limited")
    fake.rate_limited_message = MSG_RATE_LIMITED_LEGACY
    resp = await client.post(CHAT, json=chat_body(QWEN), headers=auth(1))
    assert resp.status == 429 and resp.headers["Retry-After"] == "7"
    assert await resp.json() == {"message": MSG_RATE_LIMITED_LEGACY, "data": None}
    assert "Details" not in MSG_RATE_LIMITED_LEGACY
    assert fake.refused == [("acct-1", V3, "RPM")]  # the per-key behaviour is no budget
    assert limit_message("IPD") == "Request was rejected due to rate limiting. Details: IPD limit reached."
