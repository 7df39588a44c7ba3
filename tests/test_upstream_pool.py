"""The bound on upstream connections: the client's line of waiting requests on both event loops,
then the proxy in front of the fake upstream, where running out answers 503 and blames no key."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from silicon_pool.http1 import Answer, ConnectFailed, Disconnected, Http1Client, PoolExhausted, UpstreamTimeout, target
from tests.conftest import Running, paid_keys
from tests.fake_upstream import FakeUpstream
from tests.test_http1 import OK, Upstream, answering, first_then, run, send
from tests.test_metrics import scrape

__all__ = ["run"]  # the fixture, on both event loops

CHAT = "deepseek-ai/DeepSeek-V3"
MESSAGES = [{"role": "user", "content": "hello there"}]


async def post(client: Http1Client, url: str, body: bytes, connect_timeout: float = 2) -> Answer:
    return await client.request("POST", target(url), {}, body, connect_timeout=connect_timeout, read_timeout=5)


def held(gate: asyncio.Event) -> Any:
    """A script that answers each request once `gate` is set (every request, on every connection)."""

    async def script(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await upstream.read_request(reader)
            await gate.wait()
            writer.write(OK)
            await writer.drain()

    return script


async def until(condition: Any) -> None:
    """Let the loop run until `condition()` holds (the test's own timeout bounds it)."""
    while not condition():
        await asyncio.sleep(0.005)


async def holding_the_only_connection(
    client: Http1Client, upstream: Upstream, body: bytes = b"first"
) -> asyncio.Task[Answer]:
    """With one connection allowed, a request that holds it (its answer waits for the script's gate)."""
    client.set_limit(1)
    first = asyncio.create_task(post(client, upstream.url(), body))
    await until(lambda: upstream.requests)
    return first


def bodies(upstream: Upstream) -> list[bytes]:
    return [request.rpartition(b"\r\n\r\n")[2] for request in upstream.requests]


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose listener never accepts and whose queue is full: a connect hangs."""
    listener = socket.socket()
    queued = [socket.socket() for _ in range(2)]
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for sock in queued:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", port))
        yield port
    finally:
        for sock in (*queued, listener):
            sock.close()


# -- the client ------------------------------------------------------------------------------------


def test_a_burst_opens_no_more_connections_than_the_limit(run) -> None:
    busy = [0, 0]  # requests being answered now, the most at once

    async def script(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await upstream.read_request(reader)
            busy[0] += 1
            busy[1] = max(busy)
            await asyncio.sleep(0.005)
            busy[0] -= 1
            writer.write(OK)
            await writer.drain()

    async def body(upstream: Upstream, client: Http1Client) -> None:
        client.set_limit(4)

        async def one(n: int) -> bytes:
            answer = await post(client, upstream.url(), b"%d" % n)
            assert client.open_connections <= 4
            return await answer.read()

        assert await asyncio.gather(*(one(n) for n in range(50))) == [b'{"a":1}'] * 50
        assert upstream.connections == 4 and busy[1] == 4  # each kept alive and reused
        assert client.open_connections == 4 and client.waiting == 0 and client.waited >= 46
        assert client.pool_timeouts == 0

    run(script, body)


def test_keep_alive_reuse_still_works_at_the_limit(run) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        client.set_limit(1)
        for _ in range(5):
            assert await (await send(client, upstream.url())).read() == b'{"a":1}'
        assert upstream.connections == 1 and client.open_connections == 1 and client.waited == 0

    run(answering(*[OK] * 5), body)


def test_waiters_are_served_in_the_order_they_came(run) -> None:
    gate = asyncio.Event()

    async def body(upstream: Upstream, client: Http1Client) -> None:
        first = await holding_the_only_connection(client, upstream, b"0")
        rest = []
        for n in range(1, 6):
            rest.append(asyncio.create_task(post(client, upstream.url(), b"%d" % n)))
            await until(lambda n=n: client.waiting == n)
        gate.set()
        for task in (first, *rest):
            assert await (await task).read() == b'{"a":1}'
        assert bodies(upstream) == [b"%d" % n for n in range(6)] and upstream.connections == 1

    run(held(gate), body)


def test_a_waiter_gives_up_at_connect_timeout_without_blaming_the_upstream(run) -> None:
    gate = asyncio.Event()

    async def body(upstream: Upstream, client: Http1Client) -> None:
        first = await holding_the_only_connection(client, upstream)
        started = time.monotonic()
        with pytest.raises(PoolExhausted, match=r"came free in time \(1 allowed\)") as caught:
            await post(client, upstream.url(), b"second", connect_timeout=0.3)
        assert 0.25 < time.monotonic() - started < 1.5
        assert not isinstance(caught.value, UpstreamTimeout | TimeoutError)  # not the upstream's slowness
        assert client.pool_timeouts == 1 and client.waiting == 0 and client.open_connections == 1
        gate.set()
        assert await (await first).read() == b'{"a":1}'
        assert await (await send(client, upstream.url())).read() == b'{"a":1}'
        assert bodies(upstream) == [b"first", b"{}"] and upstream.connections == 1

    run(held(gate), body)


def test_the_wait_and_the_connect_share_connect_timeout(run) -> None:
    """A connect that runs out of what the wait left of connect_timeout is PoolExhausted as well:
    the time went on waiting, which is no key's fault."""
    gate = asyncio.Event()

    async def body(upstream: Upstream, client: Http1Client) -> None:
        first = await holding_the_only_connection(client, upstream)
        with unanswered_port() as port:
            started = time.monotonic()
            waiting = asyncio.create_task(post(client, f"http://127.0.0.1:{port}/v1/models", b"", connect_timeout=0.5))
            await until(lambda: client.waiting == 1)
            await asyncio.sleep(0.2)
            gate.set()  # the first connection parks and closes for the waiter (another origin), which connects
            assert await (await first).read() == b'{"a":1}'
            with pytest.raises(PoolExhausted):
                await waiting
            assert 0.45 < time.monotonic() - started < 1.5
        assert client.pool_timeouts == 1 and client.open_connections == 0 and upstream.connections == 1

    run(held(gate), body)


def test_a_waiter_that_leaves_leaves_the_line(run) -> None:
    gate = asyncio.Event()

    async def body(upstream: Upstream, client: Http1Client) -> None:
        first = await holding_the_only_connection(client, upstream)
        leaving = asyncio.create_task(post(client, upstream.url(), b"leaving"))
        staying = asyncio.create_task(post(client, upstream.url(), b"staying"))
        await until(lambda: client.waiting == 2)
        leaving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leaving
        assert client.waiting == 1
        gate.set()
        assert await (await first).read() == await (await staying).read() == b'{"a":1}'
        assert bodies(upstream) == [b"first", b"staying"]
        assert client.open_connections == 1 and client.waiting == 0

    run(held(gate), body)


@pytest.mark.parametrize("leaves_first", [False, True])
def test_a_waiter_that_leaves_as_its_slot_comes_hands_the_slot_on(run, leaves_first: bool) -> None:
    """The first connection is given up, its slot going to the first in line, and in that same
    step (just before or after) that waiter's client leaves: the next waiter gets the slot."""

    async def body(upstream: Upstream, client: Http1Client) -> None:
        client.set_limit(1)
        first = await post(client, upstream.url(), b"first")
        assert await first.readany() == b"a"
        leaving = asyncio.create_task(post(client, upstream.url(), b"leaving"))
        staying = asyncio.create_task(post(client, upstream.url(), b"staying"))
        await until(lambda: client.waiting == 2)
        if leaves_first:
            leaving.cancel()
        first.release()  # closes the half-read connection: its slot goes to the first in line
        leaving.cancel()  # a client that leaves before it wakes (again, if it left already)
        with contextlib.suppress(asyncio.CancelledError):
            await leaving
        assert (await staying).status == 200
        assert bodies(upstream) == [b"first", b"staying"] and client.open_connections == 1

    run(first_then(answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n"), answering(OK)), body)


@pytest.mark.parametrize("leaves_first", [False, True])
def test_a_waiter_that_leaves_as_a_connection_comes_hands_it_on(run, leaves_first: bool) -> None:
    """Like the slot, a connection parked for the first in line goes on to the next if that waiter
    leaves in the same step (just before or after)."""
    gate = asyncio.Event()

    async def body(upstream: Upstream, client: Http1Client) -> None:
        first = await holding_the_only_connection(client, upstream)
        leaving = asyncio.create_task(post(client, upstream.url(), b"leaving"))
        staying = asyncio.create_task(post(client, upstream.url(), b"staying"))
        await until(lambda: client.waiting == 2)
        park = client._park

        def park_as_one_leaves(conn: Any) -> None:
            if leaves_first:
                leaving.cancel()
            park(conn)  # hands the connection to the first in line
            leaving.cancel()

        client._park = park_as_one_leaves  # type: ignore[method-assign]
        gate.set()
        await first
        client._park = park  # type: ignore[method-assign]
        with contextlib.suppress(asyncio.CancelledError):
            await leaving
        assert (await staying).status == 200
        assert bodies(upstream) == [b"first", b"staying"] and upstream.connections == 1

    run(held(gate), body)


def test_a_closed_connection_frees_its_slot(run) -> None:
    gate = asyncio.Event()
    closing = b'HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 7\r\n\r\n{"a":1}'

    async def first(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        await gate.wait()
        writer.write(closing)

    async def body(upstream: Upstream, client: Http1Client) -> None:
        held_answer = await holding_the_only_connection(client, upstream)
        waiting = asyncio.create_task(post(client, upstream.url(), b"second"))
        await until(lambda: client.waiting == 1)
        gate.set()  # the answer says the connection closes: its slot goes to the waiter
        assert await (await held_answer).read() == await (await waiting).read() == b'{"a":1}'
        assert upstream.connections == 2 and client.open_connections == 1
        await asyncio.sleep(0.1)  # the upstream closes the second, idle, connection
        assert client.open_connections == 0

    run(first_then(first, answering(OK, then_close=True)), body)


def test_an_idle_connection_to_another_origin_makes_room(run) -> None:
    gate = asyncio.Event()

    async def body(upstream: Upstream, client: Http1Client) -> None:
        client.set_limit(1)
        gate.set()
        assert await (await send(client, upstream.url())).read() == b'{"a":1}'
        other = upstream.url(host="localhost")  # another origin, the same server
        assert await (await send(client, other)).read() == b'{"a":1}'  # the idle one closed, nobody waited
        assert client.waited == 0 and client.open_connections == 1 and upstream.connections == 2
        gate.clear()
        first = asyncio.create_task(send(client, other))
        await until(lambda: len(upstream.requests) == 3)
        waiting = asyncio.create_task(send(client, upstream.url()))
        await until(lambda: client.waiting == 1)
        gate.set()  # the connection parks with a waiter for another origin: it closes for the waiter
        assert await (await first).read() == await (await waiting).read() == b'{"a":1}'
        assert upstream.connections == 3 and client.open_connections == 1

    run(held(gate), body)


def test_the_limit_follows_a_change_at_once(run) -> None:
    gate = asyncio.Event()

    async def body(upstream: Upstream, client: Http1Client) -> None:
        client.set_limit(1)
        tasks = [asyncio.create_task(post(client, upstream.url(), b"0"))]
        await until(lambda: upstream.requests)
        tasks += [asyncio.create_task(post(client, upstream.url(), b"%d" % n)) for n in (1, 2)]
        await until(lambda: client.waiting == 2)
        client.set_limit(3)  # those in line connect now, with the first still busy
        await until(lambda: len(upstream.requests) == 3)
        assert upstream.connections == 3 and client.waiting == 0
        client.set_limit(1)
        gate.set()
        for task in tasks:
            assert await (await task).read() == b'{"a":1}'
        assert client.open_connections == 1  # those over the new limit closed as their answers ended

    run(held(gate), body)


def test_closing_the_client_fails_those_in_line(run) -> None:
    gate = asyncio.Event()

    async def body(upstream: Upstream, client: Http1Client) -> None:
        first = await holding_the_only_connection(client, upstream)
        waiting = asyncio.create_task(post(client, upstream.url(), b"second"))
        await until(lambda: client.waiting == 1)
        await client.close()
        with pytest.raises(ConnectFailed, match="closed"):
            await waiting
        with pytest.raises(Disconnected):  # the one in flight
            await first

    run(held(gate), body)


# -- the proxy -------------------------------------------------------------------------------------


@pytest.fixture
def peers() -> set[Any]:
    """The address of every connection the fake upstream answered a request on."""
    return set()


@pytest.fixture
async def upstream_url(fake: FakeUpstream, aiohttp_server: Any, peers: set[Any]) -> str:
    async def note_peer(request: web.Request, _response: web.StreamResponse) -> None:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))

    fake.app.on_response_prepare.append(note_peer)
    server = await aiohttp_server(fake.app)
    return str(server.make_url("/v1"))


async def test_a_burst_through_the_proxy_keeps_to_the_limit_and_all_succeed(
    proxy: Running, fake: FakeUpstream, peers: set[Any], http: aiohttp.ClientSession
) -> None:
    await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 3)))
    await proxy.set(max_upstream_connections=4)  # a live change: the client began with the default
    fake.stream_chunks, fake.chunk_delay = 3, 0.005
    client = proxy.openai()

    async def one() -> str:
        stream = await client.chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

    assert await asyncio.gather(*(one() for _ in range(40))) == ["fake reply 0. fake reply 1. fake reply 2. "] * 40
    assert len(peers) <= 4
    types, samples = await scrape(proxy, http)
    assert types["silicon_pool_upstream_connections"] == types["silicon_pool_upstream_connection_waiters"] == "gauge"
    assert types["silicon_pool_upstream_connection_waits"] == "counter"  # the parser's name for waits_total
    assert types["silicon_pool_upstream_connection_timeouts"] == "counter"
    assert samples["silicon_pool_upstream_connections"][()] <= 4
    assert samples["silicon_pool_upstream_connection_waiters"][()] == 0
    assert samples["silicon_pool_upstream_connection_waits_total"][()] > 0
    assert samples["silicon_pool_upstream_connection_timeouts_total"][()] == 0


async def test_no_connection_in_time_is_a_503_that_blames_no_key(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    [key] = await proxy.add_keys((paid_keys(fake, 1)[0], 10.0))
    await proxy.set(max_upstream_connections=1, connect_timeout=1)
    fake.stall_after_chunks, fake.stall_seconds = 1, 30
    client = proxy.openai()
    stalled = await client.chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
    await stalled.__anext__()  # the one connection is busy with this stream now
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model=CHAT, messages=MESSAGES)
    error = caught.value
    assert error.status_code == 503 and error.response.headers["Retry-After"] == "1"
    assert isinstance(error.body, dict) and error.body["code"] == "upstream_connections_busy"
    assert "max_upstream_connections" in error.body["message"] and "请稍后重试" in error.body["message"]
    assert key.cool_until <= time.monotonic() and key.last_error is None and key.status() == "active"
    assert len([seen for seen in fake.requests if seen.path == "/v1/chat/completions"]) == 1
    _, samples = await scrape(proxy, http)
    assert samples["silicon_pool_upstream_connection_timeouts_total"][()] == 1
    assert samples["silicon_pool_upstream_connections"][()] == 1
    await stalled.close()  # the stream's client leaves: its connection goes, and with it the slot
    fake.stall_after_chunks = None
    answer = await client.chat.completions.create(model=CHAT, messages=MESSAGES)
    assert answer.choices[0].message.content
    rows = await proxy.calls()
    exhausted = [row for row in rows if row["status"] == 503]
    assert len(exhausted) == 1 and exhausted[0]["key_id"] is None
    assert "max_upstream_connections" in exhausted[0]["error"]
