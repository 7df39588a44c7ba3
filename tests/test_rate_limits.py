"""SiliconFlow's rate limits end to end: the fake counts each (account, model) budget in Beijing's
calendar windows, the real proxy in front of it rests what was refused, and the official openai SDK
sees the result. One clock drives the fake's windows and the pool's rests, so no test waits a minute."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from silicon_pool.keys import Key
from tests.conftest import Running, paid_keys, wait_job
from tests.fake_upstream import MSG_RATE_LIMITED_LEGACY, FakeUpstream, make_key

V3 = "deepseek-ai/DeepSeek-V3"
QWEN = "Qwen/Qwen2.5-7B-Instruct"
FLUX = "black-forest-labs/FLUX.1-dev"
CHAT = "/v1/chat/completions"
SHANGHAI = timezone(timedelta(hours=8))


def beijing(*when: int) -> float:
    """Unix time of a wall-clock time in Asia/Shanghai."""
    return datetime(*when, tzinfo=SHANGHAI).timestamp()


START = beijing(2026, 12, 1, 13, 47, 25)  # a Tuesday afternoon in Beijing
NEXT_MINUTE = beijing(2026, 12, 1, 13, 48)
NEXT_HOUR = beijing(2026, 12, 1, 14, 0)
MIDNIGHT = beijing(2026, 12, 2, 0, 0)  # 16:00 UTC


class Clock:
    """Real time shifted by an offset: tests jump it by hand, yet real waits still take real seconds
    (the proxy's waiters sleep until a rest's `until` by this clock)."""

    def __init__(self, now: float) -> None:
        self.offset = now - time.time()

    def __call__(self) -> float:
        return time.time() + self.offset

    def at(self, now: float) -> None:
        self.offset = now - time.time()


@pytest.fixture
def clock(fake: FakeUpstream, proxy: Running) -> Clock:
    """One clock for the fake's windows and the pool's rests, starting at START."""
    fake.clock = proxy.pool.clock = clock = Clock(START)
    return clock


async def chat(client: AsyncOpenAI, model: str = V3, content: str = "hi") -> str:
    """One non-stream chat through the proxy; its reply."""
    answer = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}])
    return answer.choices[0].message.content or ""


async def ask(client: AsyncOpenAI, model: str) -> None:
    """One request of the endpoint `model` serves: an image for FLUX, else a chat."""
    if model == FLUX:
        await client.images.generate(model=FLUX, prompt="a cat")
    else:
        await chat(client, model)


async def refused(client: AsyncOpenAI, model: str = V3) -> openai.RateLimitError:
    """The 429 a request for `model` gets."""
    with pytest.raises(openai.RateLimitError) as caught:
        await ask(client, model)
    return caught.value


async def refused_or_unavailable(client: AsyncOpenAI) -> openai.APIStatusError:
    """The error a chat for DeepSeek-V3 gets, 429 or 503."""
    with pytest.raises(openai.APIStatusError) as caught:
        await chat(client)
    return caught.value


async def funded(proxy: Running, fake: FakeUpstream, *accounts: tuple[str, float]) -> list[Key]:
    """One key per (account id, balance), known to the fake and the pool with that account."""
    keys = []
    for n, (account, balance) in enumerate(accounts):
        secret = make_key(f"limits-{n}")
        fake.add_key(secret, f"{balance:.2f}", account_id=account)
        [key] = await proxy.add_keys((secret, balance))
        proxy.pool.set_account(key, account)
        keys.append(key)
    return keys


async def last_call(proxy: Running) -> Any:
    return (await proxy.calls())[-1]


# -- (a) how long each kind rests -------------------------------------------------------------------


WINDOW_ENDS = {"M": NEXT_MINUTE, "H": NEXT_HOUR, "D": MIDNIGHT}


@pytest.mark.parametrize("kind", ["RPM", "TPM", "IPM", "RPH", "RPD", "TPD", "IPD"])
async def test_each_kind_rests_until_its_window_turns(
    proxy: Running, fake: FakeUpstream, clock: Clock, kind: str
) -> None:
    """A model refused for `kind` rests until the next full minute (plus up to 2 s), full hour or 00:00
    in Beijing; until then nothing is sent upstream for it, and once the clock passes it is served again."""
    [key] = await proxy.add_keys((paid_keys(fake, 1)[0], 10.0))
    model = FLUX if kind[0] == "I" else V3
    fake.limit(model, **{kind.lower(): 1})
    client = proxy.openai()
    await ask(client, model)  # spends the budget (a chat is six tokens)
    await refused(client, model)
    [rest] = proxy.pool.rests_of(key)
    ends = WINDOW_ENDS[kind[-1]]
    assert (rest.model, rest.kind) == (model, kind)
    assert ends <= rest.until <= ends + (2 if kind.endswith("M") else 0)
    seen = len(fake.requests)
    clock.at(rest.until - 0.5)
    await refused(client, model)
    assert len(fake.requests) == seen  # still resting: the upstream is not asked
    clock.at(rest.until + 0.01)
    await ask(client, model)
    assert len(fake.requests) == seen + 1 and proxy.pool.rests_of(key) == []


async def test_a_minute_rest_lasts_a_few_seconds_at_least(proxy: Running, fake: FakeUpstream, clock: Clock) -> None:
    """Refused half a second before the minute turns, a key still rests 3 s (plus up to 2 s of jitter)."""
    [key] = await proxy.add_keys((paid_keys(fake, 1)[0], 10.0))
    fake.limit(V3, rpm=1)
    clock.at(NEXT_MINUTE - 0.5)
    client = proxy.openai()
    await chat(client)
    before = clock()
    await refused(client)
    after = clock()
    [rest] = proxy.pool.rests_of(key)
    assert rest.kind == "RPM" and before + 3 <= rest.until <= after + 3 + 2


async def test_a_429_that_names_no_kind_rests_for_cooldown(proxy: Running, fake: FakeUpstream, clock: Clock) -> None:
    """The old refusal without "Details: … limit" rests the pair for cooldown_seconds, not a day."""
    await proxy.set(cooldown_seconds=45)
    secret = paid_keys(fake, 1)[0]
    [key] = await proxy.add_keys((secret, 10.0))
    fake.set_behavior(secret, "rate_limited")
    fake.rate_limited_message = MSG_RATE_LIMITED_LEGACY
    client = proxy.openai()
    before = clock()
    error = await refused(client)
    after = clock()
    [rest] = proxy.pool.rests_of(key)
    assert rest.kind == "429" and before + 45 <= rest.until <= after + 45
    assert 44 <= int(error.response.headers["Retry-After"]) <= 46
    fake.set_behavior(secret, "ok")
    clock.at(rest.until + 0.01)
    assert await chat(client)


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_a_retry_after_header_wins(proxy: Running, fake: FakeUpstream, clock: Clock, form: str) -> None:
    """A Retry-After from the upstream (seconds or a date) sets the rest, even against a daily limit."""
    [key] = await proxy.add_keys((paid_keys(fake, 1)[0], 10.0))
    fake.limit(V3, rpd=1)
    client = proxy.openai()
    await chat(client)
    before = clock()
    fake.retry_after = "90" if form == "seconds" else format_datetime(datetime.fromtimestamp(before + 90, SHANGHAI))
    await refused(client)
    after = clock()
    [rest] = proxy.pool.rests_of(key)
    assert rest.kind == "RPD" and before + 89 <= rest.until <= after + 90


# -- (b) the user story ---------------------------------------------------------------------


async def test_a_spent_day_on_one_model_leaves_every_other_model_serving(
    proxy: Running, fake: FakeUpstream, clock: Clock
) -> None:
    """Four unverified accounts spent their 100 DeepSeek-V3 requests today: each is asked once, then Qwen
    still serves all twenty requests, and DeepSeek-V3 answers 429 until 00:00 (UTC+8) without asking
    upstream; after midnight it serves again."""
    secrets = paid_keys(fake, 4)
    keys = await proxy.add_keys(*((secret, 10.0) for secret in secrets))
    for secret in secrets:
        fake.unverified_accounts.add(fake.account_of(secret))
        fake.spend(fake.account_of(secret), V3, requests=100)
    client = proxy.openai()
    for _ in range(3):
        await refused(client)
    assert len(fake.seen(CHAT)) == 4  # one refusal per account, then never asked again today
    assert [[r.kind for r in proxy.pool.rests_of(key)] for key in keys] == [["RPD"]] * 4

    replies = [await chat(client, QWEN) for _ in range(20)]
    assert all(replies) and len(fake.seen(CHAT)) == 24

    error = await refused(client)
    message = error.body["message"] if isinstance(error.body, dict) else ""
    assert V3 in message and "RPD" in message and "requests per day" in message and "每日请求数" in message
    assert "00:00 (UTC+8)" in message
    assert abs(int(error.response.headers["Retry-After"]) - (MIDNIGHT - clock())) <= 2
    assert len(fake.seen(CHAT)) == 24
    row = await last_call(proxy)
    assert (row["status"], row["model"], row["limits"], row["attempts"]) == (429, V3, "RPD", 0)

    clock.at(MIDNIGHT + 1)
    assert await chat(client)
    assert len(fake.seen(CHAT)) == 25


# -- (c) failover skips the siblings of a limited account -------------------------------------------


async def test_failover_skips_the_other_keys_of_a_limited_account(
    proxy: Running, fake: FakeUpstream, clock: Clock
) -> None:
    """Account A's RPM is spent: a request tries one key of A, then goes straight to account B (not to
    A's other key, which the strategy would pick next), and the call log records both attempts and RPM."""
    await proxy.set(strategy="balance_high")  # A's keys first
    a1, a2, b1, b2 = await funded(proxy, fake, ("acc-A", 40.0), ("acc-A", 30.0), ("acc-B", 20.0), ("acc-B", 10.0))
    fake.limit(V3, rpm=5)
    fake.spend("acc-A", V3, requests=5)
    client = proxy.openai()
    assert await chat(client)
    assert [r.key for r in fake.seen(CHAT)] == [a1.secret, b1.secret]
    row = await last_call(proxy)
    assert (row["status"], row["attempts"], row["limits"], row["key_id"]) == (200, 2, "RPM", b1.id)
    assert [r.kind for r in proxy.pool.rests_of(a2)] == ["RPM"]  # held back with its account
    assert proxy.pool.rests_of(b2) == []

    assert await chat(client)  # the next request does not try account A at all
    assert [r.key for r in fake.seen(CHAT)][2:] == [b1.secret]
    assert (await last_call(proxy))["attempts"] == 1


async def test_imported_keys_learn_their_account_so_siblings_are_skipped(
    proxy: Running, fake: FakeUpstream, clock: Clock, admin: aiohttp.ClientSession
) -> None:
    """Keys imported through the admin take their account from /user/info: no one sets it by hand, and
    a limited account's other key is still skipped."""
    await proxy.set(strategy="balance_high")
    a1, a2, b1 = make_key("imp-a1"), make_key("imp-a2"), make_key("imp-b1")
    fake.add_key(a1, "40.00", account_id="acc-A")
    fake.add_key(a2, "30.00", account_id="acc-A")
    fake.add_key(b1, "20.00", account_id="acc-B")
    async with admin.post("/api/keys/import", json={"keys": f"{a1}\n{a2}\n{b1}"}) as resp:
        job = await wait_job(admin, (await resp.json())["job_id"])
    assert job["result"]["imported"] == 3
    fake.limit(V3, rpm=1)
    fake.spend("acc-A", V3, requests=1)
    fake.requests.clear()
    assert await chat(proxy.openai())
    assert [r.key for r in fake.seen(CHAT)] == [a1, b1]


# -- (d) every key resting ------------------------------------------------------------------------------


async def test_every_key_resting_answers_429_without_asking_upstream(
    proxy: Running, fake: FakeUpstream, clock: Clock, http: aiohttp.ClientSession
) -> None:
    """When every key rests for the model the client gets an OpenAI-shaped 429 (not 503) with Retry-After
    until the first rest ends, no upstream request is spent, and the pool still counts as healthy."""
    secrets = paid_keys(fake, 3)
    await proxy.add_keys(*((secret, 10.0) for secret in secrets))
    fake.limit(V3, rpm=1)
    for secret in secrets:
        fake.spend(fake.account_of(secret), V3, requests=1)
    client = proxy.openai()
    await refused(client)  # meets all three limits
    seen = len(fake.requests)
    body = {"model": V3, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(f"{proxy.base}/v1/chat/completions", json=body) as resp:
        assert resp.status == 429
        answer = await resp.json()
        retry = int(resp.headers["Retry-After"])
    assert answer["error"]["type"] == "rate_limit_error" and answer["error"]["code"] == "rate_limit_exceeded"
    assert V3 in answer["error"]["message"] and "RPM" in answer["error"]["message"]
    assert 1 <= NEXT_MINUTE - clock() <= retry <= NEXT_MINUTE + 2 - clock() + 1
    assert len(fake.requests) == seen
    row = await last_call(proxy)
    assert (row["status"], row["attempts"], row["key_id"], row["limits"]) == (429, 0, None, "RPM")
    async with http.get(f"{proxy.base}/healthz") as resp:
        assert resp.status == 200  # resting for one model is not being unable to serve


async def test_a_key_only_at_its_cap_is_not_reported_as_resting_until_midnight(
    proxy: Running, fake: FakeUpstream, clock: Clock
) -> None:
    """Account A's day is spent, B's key is only busy with a stream (max_inflight_per_key=1): the client
    must not be told every key has reached the daily limit and to come back at midnight; B is back as
    soon as its stream ends."""
    await proxy.set(strategy="balance_high", max_inflight_per_key=1)
    limited, busy = await funded(proxy, fake, ("acc-A", 20.0), ("acc-B", 10.0))
    fake.limit(V3, rpd=100)
    fake.spend("acc-A", V3, requests=100)
    client = proxy.openai()
    assert await chat(client)  # A is refused and rests until midnight, B serves
    assert [r.kind for r in proxy.pool.rests_of(limited)] == ["RPD"] and proxy.pool.rests_of(busy) == []
    fake.chunk_delay = 0.15
    async with asyncio.timeout(5):
        chunks = await client.chat.completions.create(
            model=V3, messages=[{"role": "user", "content": "long"}], stream=True
        )
        with pytest.raises(openai.APIStatusError) as caught:
            await chat(client)
        async for _ in chunks:
            pass
    message = caught.value.body["message"] if isinstance(caught.value.body, dict) else ""
    assert int(caught.value.response.headers["Retry-After"]) <= 1, message
    assert "every key" not in message and "00:00" not in message


async def test_a_key_only_cooling_is_not_reported_as_resting_until_midnight(
    proxy: Running, fake: FakeUpstream, clock: Clock
) -> None:
    """Account A's day is spent, B's connection was reset (B cools for cooldown_seconds): the client must
    not be told every key has reached the daily limit and to retry after ten hours; B is back in 30 s."""
    await proxy.set(strategy="balance_high", cooldown_seconds=30)
    limited, cooling = await funded(proxy, fake, ("acc-A", 20.0), ("acc-B", 10.0))
    fake.limit(V3, rpd=100)
    fake.spend("acc-A", V3, requests=100)
    fake.set_behavior(cooling.secret, "reset")
    client = proxy.openai()
    with pytest.raises(openai.APIStatusError) as caught:
        await chat(client)
    assert [r.key for r in fake.seen(CHAT)][:2] == [limited.secret, cooling.secret]
    assert cooling.cool_until > time.monotonic() + 25  # B cools as a whole, A rests for the day
    for answer in (caught.value, await refused_or_unavailable(client)):
        message = answer.body["message"] if isinstance(answer.body, dict) else ""
        assert int(answer.response.headers["Retry-After"]) <= 30, message
        assert "every key" not in message and "00:00" not in message


# -- (e) wait_for_key_seconds ---------------------------------------------------------------------------


async def test_a_request_waits_for_a_rest_that_ends_within_its_budget(
    proxy: Running, fake: FakeUpstream, clock: Clock
) -> None:
    """With wait_for_key_seconds, a request whose only key is limited for a second waits and is served."""
    await proxy.set(wait_for_key_seconds=5)
    [key] = await proxy.add_keys((paid_keys(fake, 1)[0], 10.0))
    fake.limit(V3, rpm=1)
    fake.spend(fake.account_of(key.secret), V3, requests=1)
    fake.retry_after = "1"
    clock.at(NEXT_MINUTE - 0.5)  # the fake's minute turns before the rest ends
    started = time.monotonic()
    async with asyncio.timeout(4):
        assert await chat(proxy.openai())
    assert 0.8 <= time.monotonic() - started <= 3
    assert len(fake.seen(CHAT)) == 2
    row = await last_call(proxy)
    assert (row["status"], row["attempts"], row["limits"]) == (200, 2, "RPM")


async def test_a_rest_ending_after_the_budget_is_refused_at_once(
    proxy: Running, fake: FakeUpstream, clock: Clock
) -> None:
    """A rest that ends after wait_for_key_seconds is not waited for: 429 at once, then no upstream request."""
    await proxy.set(wait_for_key_seconds=2)
    [key] = await proxy.add_keys((paid_keys(fake, 1)[0], 10.0))
    fake.limit(V3, rpm=1)
    fake.spend(fake.account_of(key.secret), V3, requests=1)  # the rest ends at 13:48, 35 s ahead
    client = proxy.openai()
    for upstream in (1, 1):
        started = time.monotonic()
        await refused(client)
        assert time.monotonic() - started < 0.5
        assert len(fake.seen(CHAT)) == upstream


async def test_a_client_that_leaves_stops_waiting(proxy: Running, fake: FakeUpstream, clock: Clock) -> None:
    """A waiting client that gives up is logged as 499 at once, and its request is never sent on later."""
    await proxy.set(wait_for_key_seconds=30)
    [key] = await proxy.add_keys((paid_keys(fake, 1)[0], 10.0))
    fake.limit(V3, rpm=1)
    fake.spend(fake.account_of(key.secret), V3, requests=1)
    fake.retry_after = "20"
    waiting = asyncio.create_task(chat(proxy.openai()))
    async with asyncio.timeout(3):
        while not fake.refused:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # now waiting in the proxy
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    rows: list[Any] = []
    async with asyncio.timeout(3):
        while not rows:
            await asyncio.sleep(0.05)
            rows = await proxy.calls()
    assert (rows[0]["status"], rows[0]["error"]) == (499, "client disconnected")
    proxy.pool.clear_rests()  # a key is back: a waiter still there would take it now
    clock.at(NEXT_MINUTE + 1)
    await asyncio.sleep(0.3)
    assert len(fake.seen(CHAT)) == 1 and key.inflight == 0


async def test_waiters_are_served_in_arrival_order(proxy: Running, fake: FakeUpstream, clock: Clock) -> None:
    """Requests waiting for a limited model are served first come, first served when it frees up."""
    await proxy.set(wait_for_key_seconds=5)
    [key] = await proxy.add_keys((paid_keys(fake, 1)[0], 10.0))
    fake.limit(V3, rpm=3)
    fake.spend(fake.account_of(key.secret), V3, requests=3)
    fake.retry_after = "1"
    clock.at(NEXT_MINUTE - 0.3)
    client = proxy.openai()
    first = asyncio.create_task(chat(client, content="first"))
    async with asyncio.timeout(3):
        while not fake.refused:
            await asyncio.sleep(0.01)
    second = asyncio.create_task(chat(client, content="second"))
    await asyncio.sleep(0.1)
    third = asyncio.create_task(chat(client, content="third"))
    async with asyncio.timeout(4):
        assert all(await asyncio.gather(first, second, third))
    order = [r.json["messages"][0]["content"] for r in fake.seen(CHAT)]
    assert order == ["first", "first", "second", "third"]


# -- (f) max_inflight_per_key -----------------------------------------------------------------------------


async def test_a_key_at_its_cap_takes_no_second_request_until_the_first_ends(
    proxy: Running, fake: FakeUpstream, clock: Clock
) -> None:
    """With max_inflight_per_key=1 a second request never reaches the upstream while the key streams:
    refused without waiting, and with wait_for_key_seconds served once the stream ends."""
    await proxy.set(max_inflight_per_key=1)
    [key] = await proxy.add_keys((paid_keys(fake, 1)[0], 10.0))
    fake.chunk_delay = 0.15
    client = proxy.openai()
    events = []

    async def stream() -> None:
        chunks = await client.chat.completions.create(
            model=V3, messages=[{"role": "user", "content": "long"}], stream=True
        )
        async for chunk in chunks:
            events.append(chunk)
        events.append("done")

    async with asyncio.timeout(5):
        streaming = asyncio.create_task(stream())
        while not events:
            await asyncio.sleep(0.01)
        with pytest.raises(openai.APIStatusError) as caught:
            await chat(client, content="second")
        assert caught.value.status_code == 503 and caught.value.response.headers["Retry-After"] == "1"
        assert len(fake.seen(CHAT)) == 1 and not streaming.done()
        await streaming

    await proxy.set(wait_for_key_seconds=5)
    events.clear()
    async with asyncio.timeout(5):
        streaming = asyncio.create_task(stream())
        while not events:
            await asyncio.sleep(0.01)
        second = asyncio.create_task(chat(client, content="second"))
        await asyncio.sleep(0.3)
        assert len(fake.seen(CHAT)) == 2 and not second.done()  # waiting, not sent upstream
        await streaming
        assert await second
    assert len(fake.seen(CHAT)) == 3 and fake.seen(CHAT)[-1].json["messages"][0]["content"] == "second"
    assert key.inflight == 0


# -- (g) a busy upstream rests only the (key, model) ------------------------------------------------------


@pytest.mark.parametrize(("behavior", "kind"), [("overloaded", "503"), ("gateway_timeout", "504")])
async def test_a_busy_upstream_rests_only_that_key_for_that_model(
    proxy: Running, fake: FakeUpstream, clock: Clock, behavior: str, kind: str
) -> None:
    """503 "System is too busy" (or a 504) rests that key for that model for cooldown_seconds: its account
    sibling still serves the model, and the key itself still serves every other model."""
    await proxy.set(strategy="balance_high", cooldown_seconds=40)
    busy, sibling = await funded(proxy, fake, ("acc-1", 20.0), ("acc-1", 10.0))
    fake.set_behavior(busy.secret, behavior)
    client = proxy.openai()
    before = clock()
    assert await chat(client)
    assert [r.key for r in fake.seen(CHAT)] == [busy.secret, sibling.secret]
    [rest] = proxy.pool.rests_of(busy)
    assert (rest.model, rest.kind, rest.scope) == (V3, kind, "key")
    assert before + 40 <= rest.until <= clock() + 40
    assert proxy.pool.rests_of(sibling) == []

    fake.set_behavior(busy.secret, "ok")
    assert await chat(client, QWEN)  # another model: the busy key is first again
    assert await chat(client)  # the model it was busy for: the sibling
    assert [r.key for r in fake.seen(CHAT)][2:] == [busy.secret, sibling.secret]
    clock.at(rest.until + 0.01)
    assert await chat(client)
    assert fake.seen(CHAT)[-1].key == busy.secret
