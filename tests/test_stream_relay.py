"""The streaming relay as a client sees it: events pass one by one, a slow client pauses the
upstream instead of filling memory, a client that stops reading lets its key go, a client that
leaves closes the upstream at once, and a break upstream ends the stream with an error event.
Each test runs on asyncio's loop and on uvloop (production's), as test_http1.py does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from openai import AsyncStream
from openai.types.chat import ChatCompletionChunk

from silicon_pool.keys import Key
from silicon_pool.typedefs import PROXY
from tests.conftest import Running, StartProxy, paid_keys
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.both_loops

MODEL = "deepseek-ai/DeepSeek-V3"
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"


def event(n: int, pad: int = 0) -> bytes:
    """The n-th event of an answer, with `pad` bytes of content, and the running usage."""
    payload = {
        "choices": [{"index": 0, "delta": {"content": f"{n} " + "x" * pad}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": n + 1, "total_tokens": n + 4},
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class Stream:
    """One answer the upstream is sending, written as the test says."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.sent = 0  # body bytes written so far
        self.closed = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.writer.write(data)
        self.sent += len(data)

    async def flood(self, pad: int) -> None:
        """Events as fast as the proxy takes them, until the connection closes."""
        n = 0
        try:
            while True:
                self.write(chunk(event(n, pad)))
                n += 1
                await self.writer.drain()
        except ConnectionError:
            pass

    async def watch(self) -> None:
        """Until the proxy closes (or resets) the connection; then `closed` is set."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.closed.set()

    async def closed_by_proxy(self) -> None:
        await self.closed.wait()


class ScriptedUpstream:
    """An upstream that answers every request with an SSE head and hands the stream to the test."""

    def __init__(self, head: bytes = SSE_HEAD + b"\r\n") -> None:
        self.head = head
        self.streams: asyncio.Queue[Stream] = asyncio.Queue()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line[15:]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
        )
        await reader.readexactly(length)
        writer.write(self.head)
        stream = Stream(reader, writer)
        await self.streams.put(stream)
        await stream.watch()
        writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def upstream() -> ScriptedUpstream:
    scripted = ScriptedUpstream()
    yield scripted  # type: ignore[misc]
    scripted.close()


async def started(
    start_proxy: StartProxy, fake: FakeUpstream, upstream: ScriptedUpstream, **settings: object
) -> Running:
    proxy = await start_proxy(upstream=await upstream.start(), **settings)
    await proxy.add_keys((paid_keys(fake, 1)[0], 5.0))
    return proxy


OpenStream = Callable[..., Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@pytest.fixture
async def open_stream() -> AsyncIterator[OpenStream]:
    """open_stream(proxy, version): a raw client that sent a streaming chat request; the test
    decides when it reads. Closed at the end of the test."""
    writers: list[asyncio.StreamWriter] = []

    async def send(proxy: Running, version: bytes = b"1.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        body = orjson.dumps({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
        writers.append(writer)
        writer.write(
            b"POST /v1/chat/completions HTTP/" + version + b"\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        await writer.drain()
        return reader, writer

    yield send
    for writer in writers:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def ask(proxy: Running) -> AsyncStream[ChatCompletionChunk]:
    """A streaming chat request through the openai SDK, as clients send it."""
    client = proxy.openai()
    return await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)


async def eventually(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)


async def read_chunk(reader: asyncio.StreamReader) -> bytes:
    """The data of the next chunk of a chunked answer; b"" at its end."""
    size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
    data = await reader.readexactly(size + 2)
    return data[:-2]


async def read_body(reader: asyncio.StreamReader) -> bytes:
    """The rest of a chunked answer's body, without its framing."""
    parts = []
    while part := await read_chunk(reader):
        parts.append(part)
    return b"".join(parts)


def only_key(proxy: Running) -> Key:
    [key] = proxy.pool.keys.values()
    return key


def upstream_connections(proxy: Running) -> list[object]:
    return list(proxy.server.app[PROXY].client.busy)


async def test_events_arrive_one_by_one_and_the_call_is_logged(
    start_proxy: StartProxy, fake: FakeUpstream, upstream: ScriptedUpstream
) -> None:
    proxy = await started(start_proxy, fake, upstream)
    asking = asyncio.create_task(ask(proxy))
    sending = await upstream.streams.get()
    sending.write(chunk(event(0)))  # the head goes out with the first bytes of the body
    stream = await asking
    texts = []
    for n in range(5):  # each event reaches the client before the next is sent
        if n:
            sending.write(chunk(event(n)))
        got = await anext(aiter(stream))
        texts.append(got.choices[0].delta.content)
    sending.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    assert [c async for c in stream] == []
    assert texts == [f"{n} " for n in range(5)]
    [row] = await proxy.calls()
    assert (row["status"], row["stream"], row["error"]) == (200, 1, None)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (3, 5, 8)
    assert row["ttfb_ms"] is not None and row["ttfb_ms"] <= row["latency_ms"]
    assert only_key(proxy).inflight == 0


async def test_a_slow_client_pauses_the_upstream_then_gets_every_event(
    start_proxy: StartProxy, fake: FakeUpstream, upstream: ScriptedUpstream, open_stream: OpenStream
) -> None:
    proxy = await started(start_proxy, fake, upstream)
    reader, writer = await open_stream(proxy)
    sending = await upstream.streams.get()
    flood = asyncio.create_task(sending.flood(pad=16 * 1024))
    # The client reads nothing: the upstream is soon paused, and what it sent stops growing.
    await eventually(lambda: any(getattr(c, "paused", False) for c in upstream_connections(proxy)))
    await asyncio.sleep(0.3)
    held = sending.sent
    await asyncio.sleep(0.5)
    assert sending.sent == held  # no buffer grows while the client does not read
    for handler in proxy.server.runner.server.connections:  # type: ignore[union-attr]
        assert handler.transport is None or handler.transport.get_write_buffer_size() < 2 * 1024 * 1024
    # The client reads again: the upstream resumes, and every event arrives, in order.
    await reader.readuntil(b"\r\n\r\n")
    seen, data = 0, b""
    while seen < 400:
        data += await read_chunk(reader)
        events = data.split(b"\n\n")
        data = events.pop()
        for one in events:
            assert orjson.loads(one.partition(b"data: ")[2])["choices"][0]["delta"]["content"].startswith(f"{seen} ")
            seen += 1
    assert sending.sent > held
    writer.close()
    flood.cancel()


async def test_a_client_that_stops_reading_lets_its_key_and_upstream_go(
    start_proxy: StartProxy, fake: FakeUpstream, upstream: ScriptedUpstream, open_stream: OpenStream
) -> None:
    proxy = await started(start_proxy, fake, upstream, read_timeout=1)
    _, writer = await open_stream(proxy)
    sending = await upstream.streams.get()
    flood = asyncio.create_task(sending.flood(pad=16 * 1024))
    async with asyncio.timeout(5):
        await sending.closed_by_proxy()  # read_timeout after the client's socket stopped draining
    [row] = await proxy.calls()
    assert row["status"] == 408 and "read_timeout" in row["error"]
    assert only_key(proxy).inflight == 0
    assert upstream_connections(proxy) == []
    writer.close()
    flood.cancel()


async def test_a_client_that_leaves_mid_stream_closes_the_upstream_at_once(
    start_proxy: StartProxy, fake: FakeUpstream, upstream: ScriptedUpstream, open_stream: OpenStream
) -> None:
    proxy = await started(start_proxy, fake, upstream)
    reader, writer = await open_stream(proxy)
    sending = await upstream.streams.get()
    sending.write(chunk(event(0)))
    await reader.readuntil(b"data: ")
    writer.transport.abort()
    async with asyncio.timeout(2):  # the upstream is silent: only the client's leaving can close it
        await sending.closed_by_proxy()
    [row] = await proxy.calls()
    assert (row["status"], row["error"]) == (499, "client disconnected")
    assert only_key(proxy).inflight == 0


async def test_a_break_upstream_ends_the_stream_with_an_error_event(
    start_proxy: StartProxy, fake: FakeUpstream, upstream: ScriptedUpstream, open_stream: OpenStream
) -> None:
    proxy = await started(start_proxy, fake, upstream)
    reader, _ = await open_stream(proxy)
    sending = await upstream.streams.get()
    sending.write(chunk(event(0)) + chunk(event(1)[:20]))  # the second event cut off half way
    sending.writer.transport.abort()
    await reader.readuntil(b"\r\n\r\n")
    async with asyncio.timeout(5):
        body = await read_body(reader)
    assert b'"code":"stream_interrupted"' in body
    assert body.endswith(b"\n\ndata: [DONE]\n\n")
    [row] = await proxy.calls()
    assert row["status"] == 200 and "closed the connection" in row["error"]
    assert (row["completion_tokens"], row["total_tokens"]) == (1, 4)
    assert only_key(proxy).inflight == 0


async def test_a_gzip_stream_goes_out_plain_event_by_event(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    upstream = ScriptedUpstream(SSE_HEAD + b"Content-Encoding: gzip\r\n\r\n")
    try:
        proxy = await started(start_proxy, fake, upstream)
        asking = asyncio.create_task(ask(proxy))
        sending = await upstream.streams.get()
        packer = zlib.compressobj(wbits=31)
        stream = None
        for n in range(3):
            sending.write(chunk(packer.compress(event(n)) + packer.flush(zlib.Z_SYNC_FLUSH)))
            stream = stream or await asking
            got = await anext(aiter(stream))
            assert got.choices[0].delta.content == f"{n} "
        sending.write(chunk(packer.compress(b"data: [DONE]\n\n") + packer.flush()) + b"0\r\n\r\n")
        assert [c async for c in stream] == []
        [row] = await proxy.calls()
        assert (row["status"], row["error"], row["completion_tokens"]) == (200, None, 3)
    finally:
        upstream.close()


async def test_a_gzip_bomb_in_a_stream_is_inflated_in_steps_and_bounded(
    start_proxy: StartProxy, fake: FakeUpstream, open_stream: OpenStream
) -> None:
    upstream = ScriptedUpstream(SSE_HEAD + b"Content-Encoding: gzip\r\n\r\n")
    try:
        proxy = await started(start_proxy, fake, upstream, max_answer_mb=1)
        reader, _ = await open_stream(proxy)
        sending = await upstream.streams.get()
        bomb = gzip.compress(b"data: " + b"x" * (64 * 1024 * 1024))  # one event of 64 MB: 64 KiB on the wire
        sending.write(chunk(bomb) + b"0\r\n\r\n")
        ticks = 0

        async def tick() -> None:  # the loop keeps turning while the bomb is undone
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        ticking = asyncio.create_task(tick())
        await reader.readuntil(b"\r\n\r\n")
        async with asyncio.timeout(10):
            got = await read_body(reader)
        ticking.cancel()
        assert b"stream_interrupted" in got and b"max_answer_mb" in got
        assert len(got) < 4 * 1024 * 1024
        assert ticks > 1
        [row] = await proxy.calls()
        assert "max_answer_mb" in row["error"]
    finally:
        upstream.close()


async def test_an_http_10_client_gets_the_stream_unframed(
    start_proxy: StartProxy, fake: FakeUpstream, upstream: ScriptedUpstream, open_stream: OpenStream
) -> None:
    proxy = await started(start_proxy, fake, upstream)
    reader, _ = await open_stream(proxy, version=b"1.0")
    sending = await upstream.streams.get()
    sending.write(chunk(event(0)))
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head
    sending.write(chunk(event(1)) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    async with asyncio.timeout(5):
        body = await reader.read()  # the end of the answer is the end of the connection
    assert body == event(0) + event(1) + b"data: [DONE]\n\n"
