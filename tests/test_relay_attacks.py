"""The streaming relay and the connection bound under attack: a hostile upstream, odd clients.

Each attack ends with the same check: the key's inflight count and the client's connection
slots come back, whatever path the request ended on. On asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import zlib
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from silicon_pool.typedefs import PROXY
from tests.conftest import Running, StartProxy, paid_keys
from tests.fake_upstream import FakeUpstream
from tests.test_stream_relay import (
    MODEL,
    SSE_HEAD,
    OpenStream,
    ScriptedUpstream,
    Stream,
    chunk,
    event,
    open_stream,
    read_body,
    read_chunk,
    started,
    upstream,
)

__all__ = ["open_stream", "upstream"]  # the fixtures

pytestmark = pytest.mark.both_loops


@pytest.fixture(autouse=True)
async def nothing_unhandled(caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    """No exception reaches the loop's handler (a protocol callback's, a forgotten task's), and
    neither the proxy nor aiohttp logs an error, whatever the attack."""
    seen: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: seen.append(context))
    yield
    assert seen == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def request(version: bytes = b"1.1", headers: bytes = b"") -> bytes:
    """A streaming chat request as a raw client writes it."""
    body = orjson.dumps({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    return (
        b"POST /v1/chat/completions HTTP/%b\r\nHost: 127.0.0.1\r\n%bContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (version, headers, len(body), body)
    )


async def let_go(proxy: Running, idle: int = 0) -> None:
    """The key is free again and no connection is held but `idle` kept-alive ones."""
    client = proxy.server.app[PROXY].client
    async with asyncio.timeout(2):
        while client.busy or client.open_connections != idle:
            await asyncio.sleep(0.01)
    assert [key.inflight for key in proxy.pool.keys.values()] == [0]


async def test_an_answer_that_breaks_in_the_read_of_its_first_bytes_ends_the_stream(
    start_proxy: StartProxy, fake: FakeUpstream, open_stream: OpenStream
) -> None:
    """The head, the first chunk and garbage in one read: the answer has failed before the relay
    takes it over, and the stream must still end (it waited for an end that had been and gone)."""
    upstream = ScriptedUpstream(SSE_HEAD + b"\r\n" + chunk(event(0)) + b"zz\r\n")
    try:
        proxy = await started(start_proxy, fake, upstream)
        reader, _ = await open_stream(proxy)
        await reader.readuntil(b"\r\n\r\n")
        async with asyncio.timeout(3):
            body = await read_body(reader)
        assert body.startswith(event(0)) and b'"code":"stream_interrupted"' in body
        [row] = await proxy.calls()
        assert row["status"] == 200 and "bad chunk-size line" in row["error"] and row["completion_tokens"] == 1
        await let_go(proxy)
    finally:
        upstream.close()


GZIP_SSE_HEAD = SSE_HEAD + b"Content-Encoding: gzip\r\n\r\n"


async def test_a_gzip_stream_cut_short_ends_with_an_error_not_as_whole(
    start_proxy: StartProxy, fake: FakeUpstream, open_stream: OpenStream
) -> None:
    """The chunked body ends, the gzip member in it does not: the relay must not end the
    stream as if whole, nor park the connection as sound."""
    upstream = ScriptedUpstream(GZIP_SSE_HEAD)
    try:
        proxy = await started(start_proxy, fake, upstream)
        reader, _ = await open_stream(proxy)
        sending = await upstream.streams.get()
        packer = zlib.compressobj(wbits=31)
        sending.write(chunk(packer.compress(event(0)) + packer.flush(zlib.Z_SYNC_FLUSH)))
        await reader.readuntil(b"\r\n\r\n")
        assert await read_chunk(reader) == event(0)  # the relay has the stream now
        sending.write(chunk(packer.compress(event(1)) + packer.flush(zlib.Z_SYNC_FLUSH)) + b"0\r\n\r\n")
        async with asyncio.timeout(3):
            body = await read_body(reader)
        assert body.startswith(event(1)) and b'"code":"stream_interrupted"' in body and b"cut short" in body
        [row] = await proxy.calls()
        assert row["status"] == 200 and "cut short" in row["error"] and row["completion_tokens"] == 2
        await let_go(proxy)
    finally:
        upstream.close()


async def test_an_http_10_client_that_asks_for_keep_alive_still_sees_the_end(
    start_proxy: StartProxy, fake: FakeUpstream, upstream: ScriptedUpstream
) -> None:
    """An HTTP/1.0 stream has no framing: its end is the connection's. aiohttp would keep a
    connection the client asked to keep alive open after it, and the client would wait on."""
    proxy = await started(start_proxy, fake, upstream)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    try:
        writer.write(request(b"1.0", b"Connection: keep-alive\r\n"))
        sending = await upstream.streams.get()
        sending.write(chunk(event(0)))
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"keep-alive" not in head.lower()
        sending.write(chunk(event(1)) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        async with asyncio.timeout(3):
            assert await reader.read() == event(0) + event(1) + b"data: [DONE]\n\n"
        await let_go(proxy, idle=1)
    finally:
        writer.close()


async def small_buffered_client(
    proxy: Running, upstream: ScriptedUpstream
) -> tuple[Stream, asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that sent its request, its socket buffers (and the proxy's for it) as small as
    the kernel allows: the proxy's socket is full once a few hundred KiB wait, and drains as
    soon as the client reads (large buffers hold megabytes, and wake the writer only once
    much of them is free). Also the upstream's end of the stream."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", proxy.server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(request())
    sending = await upstream.streams.get()
    for handler in proxy.server.runner.server.connections:  # type: ignore[union-attr]
        handler.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return sending, reader, writer


def gzipped(*parts: bytes, end: bool) -> list[bytes]:
    """The parts as one gzip body, a chunk each, the body's end after the last if `end`."""
    packer = zlib.compressobj(wbits=31)
    pieces = [chunk(packer.compress(part) + packer.flush(zlib.Z_SYNC_FLUSH)) for part in parts]
    if end:
        pieces[-1] += chunk(packer.flush()) + b"0\r\n\r\n"
    return pieces


MANY_EVENTS = b"".join(event(n, 1024) for n in range(1500))  # 1.6 MB, 19 KiB gzipped


@pytest.mark.parametrize(
    ("pieces", "status", "idle"),
    [
        (gzipped(MANY_EVENTS, end=False), 408, 0),  # the first piece (a gzip step's 1 MB) fills the socket
        (gzipped(MANY_EVENTS[:900_000], end=True), 408, 1),  # all of the answer at once, more than fits
        ([*gzipped(event(0), MANY_EVENTS, end=False), b"zz\r\n"], 200, 0),  # full, and a break in the same read
    ],
    ids=["first-piece", "whole-answer", "break-when-full"],
)
async def test_a_client_that_never_reads_is_let_go_however_the_answer_comes(
    start_proxy: StartProxy, fake: FakeUpstream, pieces: list[bytes], status: int, idle: int
) -> None:
    """Every write to the client (the first piece with the head, the end, an error event) waits
    for its socket at most read_timeout: no write may hold the key for as long as the client
    keeps the connection open without reading."""
    upstream = ScriptedUpstream(GZIP_SSE_HEAD)
    try:
        proxy = await started(start_proxy, fake, upstream, read_timeout=1)
        sending, _, writer = await small_buffered_client(proxy, upstream)  # which reads nothing
        try:
            sending.write(pieces[0])
            if len(pieces) > 1:
                await asyncio.sleep(0.2)  # the relay has the stream
                sending.write(b"".join(pieces[1:]))
            async with asyncio.timeout(4):
                while not await proxy.calls():
                    await asyncio.sleep(0.05)
            [row] = await proxy.calls()
            assert row["status"] == status and row["error"]
            await let_go(proxy, idle)
        finally:
            writer.close()
    finally:
        upstream.close()


async def test_a_slow_reader_is_served_for_as_long_as_it_drains_then_let_go(
    start_proxy: StartProxy, fake: FakeUpstream, upstream: ScriptedUpstream
) -> None:
    """The upstream stays paused for far longer than read_timeout while the client reads a
    little at a time: neither the upstream's watchdog (the pause is the proxy's) nor the
    client's fires while each read drains the socket. Once the client stops, it is let go."""
    proxy = await started(start_proxy, fake, upstream, read_timeout=1)
    sending, reader, writer = await small_buffered_client(proxy, upstream)
    try:
        flood = asyncio.create_task(sending.flood(pad=16 * 1024))
        await reader.readuntil(b"\r\n\r\n")
        # 2.4 s at 850 KB/s, each pause of the upstream shorter than read_timeout: at most an upstream
        # read (256 KiB) and the high-water mark (64 KiB) wait for the client to drain them.
        for _ in range(16):
            await asyncio.sleep(0.15)
            await reader.readexactly(128 * 1024)
            assert await proxy.calls() == []
        assert sending.sent > 16 * 128 * 1024
        async with asyncio.timeout(3):
            await sending.closed_by_proxy()
        [row] = await proxy.calls()
        assert row["status"] == 408 and "read_timeout" in row["error"] and row["completion_tokens"] > 16 * 8
        await let_go(proxy)
        flood.cancel()
    finally:
        writer.close()


async def test_a_thousand_streams_at_once_through_8_connections_are_all_answered(
    proxy: Running, fake: FakeUpstream
) -> None:
    """Each gets its stream or, after connect_timeout in line, a 503 in OpenAI's shape; none
    hangs, no more than 8 connections are ever open, and everything held is let go."""
    await proxy.add_keys(*((secret, 10.0) for secret in paid_keys(fake, 4)))
    await proxy.set(max_upstream_connections=8, connect_timeout=1)
    fake.stream_chunks, fake.chunk_delay = 3, 0.01
    client = proxy.server.app[PROXY].client
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, client.open_connections)
            await asyncio.sleep(0)

    async def one(http: aiohttp.ClientSession, n: int) -> tuple[int, bytes, str | None]:
        await asyncio.sleep(n // 100 * 0.02)  # the connections come in waves: the listen queue holds 128
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with http.post(f"{proxy.base}/v1/chat/completions", json=body) as resp:
            return resp.status, await resp.read(), resp.headers.get("Retry-After")

    watching = asyncio.create_task(watch())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http, asyncio.timeout(15):
        answers = await asyncio.gather(*(one(http, n) for n in range(1000)))
    watching.cancel()
    for status, body, retry_after in answers:
        if status == 503:
            assert orjson.loads(body)["error"]["code"] == "upstream_connections_busy" and retry_after == "1"
        else:
            assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    rows = await proxy.calls()
    assert sorted(row["status"] for row in rows) == sorted(status for status, _, _ in answers)
    assert all(row["key_id"] is None for row in rows if row["status"] == 503)
    assert most <= 8 and client.waiting == 0 and client.open_connections <= 8
    assert [key.inflight for key in proxy.pool.keys.values()] == [0] * 4
