"""The proxy's HTTP/1.1 client against scripted upstreams, on both event loops it runs on.

Each upstream here is a raw asyncio server that writes exactly the bytes a test wants (good,
odd and broken framing alike); production runs on uvloop and the rest of the suite on the
standard loop, so every test runs on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import gzip
import random
import ssl
import time
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from silicon_pool.http1 import (
    HIGH_WATER,
    WATCH_SECONDS,
    Answer,
    AnswerTooLarge,
    ConnectFailed,
    Disconnected,
    Http1Client,
    ProtocolError,
    UpstreamTimeout,
    target,
)

Script = Callable[["Upstream", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Body = Callable[["Upstream", Http1Client], Awaitable[None]]
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}'
LIMIT = 64  # connections a test's client may open, unless the test sets its own


class Upstream:
    """A raw server that runs `script` on every connection it accepts and keeps what it read."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            await self.script(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def url(self, path: str = "/v1/chat/completions", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        lengths = [int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
        message = head + await reader.readexactly(lengths[0] if lengths else 0)
        self.requests.append(message)
        return message


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[..., None]:
    """run(script, body): an upstream running `script`, a client, and `body(upstream, client)`, on
    a fresh loop of the parametrized kind; both are closed afterwards, whatever happened. An
    exception that escapes a protocol callback (the loop's exception handler) fails the test."""
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def runner(
        script: Script, body: Body, tls: ssl.SSLContext | None = None, trust: ssl.SSLContext | None = None
    ) -> None:
        async def main() -> None:
            escaped: list[dict[str, Any]] = []
            asyncio.get_running_loop().set_exception_handler(lambda loop, context: escaped.append(context))
            upstream = Upstream(script)
            await upstream.start(tls)
            client = Http1Client(trust, max_connections=LIMIT)
            try:
                async with asyncio.timeout(20):
                    await body(upstream, client)
            finally:
                await client.close()
                upstream.close()
            assert not escaped, escaped[0].get("message")

        with asyncio.Runner(loop_factory=factory) as loop_runner:
            loop_runner.run(main())

    return runner


def answering(*answers: bytes, then_close: bool = False) -> Script:
    """A script that reads one request per answer and writes the answers in turn."""

    async def script(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await upstream.read_request(reader)
            writer.write(answer)
            await writer.drain()
        if not then_close:
            await reader.read()  # keep the connection open until the client closes it

    return script


def first_then(first: Script, rest: Script) -> Script:
    """A script that runs `first` on the first connection and `rest` on every later one."""

    async def script(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await (first if upstream.connections == 1 else rest)(upstream, reader, writer)

    return script


async def send(
    client: Http1Client, url: str, body: bytes = b"{}", method: str = "POST", read_timeout: float = 5
) -> Answer:
    return await client.request(
        method, target(url), {"Authorization": "Bearer sk-x"}, body, connect_timeout=2, read_timeout=read_timeout
    )


# -- framing ---------------------------------------------------------------------------------------


def test_a_length_framed_answer_and_its_connection_reused(run) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        for _ in range(3):
            answer = await send(client, upstream.url(), b'{"model":"m"}')
            assert answer.status == 200 and answer.content_type == "application/json"
            assert ("Content-Length", "7") in answer.headers
            assert await answer.read() == b'{"a":1}' and answer.at_eof()
            answer.release()
        assert upstream.connections == 1 and not client.busy
        request = upstream.requests[0]
        assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"\r\nAuthorization: Bearer sk-x\r\n" in request and b"\r\nAccept-Encoding: gzip\r\n" in request
        assert request.endswith(b'Content-Length: 13\r\n\r\n{"model":"m"}')

    run(answering(OK, OK, OK), body)


def test_a_chunked_answer_arrives_chunk_by_chunk(run) -> None:
    release = asyncio.Event()

    async def script(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n")
        writer.write(b"6;ext=1\r\ndata: \r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"3\r\none\r\n0\r\nX-Trailer: t\r\n\r\n")  # the end, with a trailer
        await answering(OK)(upstream, reader, writer)

    async def body(upstream: Upstream, client: Http1Client) -> None:
        answer = await send(client, upstream.url())
        assert answer.content_type == "text/event-stream"
        assert await answer.readany() == b"data: " and not answer.at_eof()
        release.set()
        assert await answer.read() == b"one" and answer.at_eof()
        assert await (await send(client, upstream.url())).read() == b'{"a":1}'
        assert upstream.connections == 1

    run(script, body)


def test_an_answer_without_length_ends_when_the_connection_does(run) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        for _ in range(2):
            assert await (await send(client, upstream.url())).read() == b"all of it"
        assert upstream.connections == 2  # a connection that ended the answer is not used again

    run(answering(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", then_close=True), body)


def test_a_gzip_answer_arrives_plain_and_other_encodings_pass_as_they_are(run) -> None:
    text = b'{"data": [' + b", ".join(b"0.%d" % i for i in range(5000)) + b"]}"
    packed = gzip.compress(text)
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(packed[i : i + 100]), packed[i : i + 100]) for i in range(0, len(packed), 100)
    )

    async def script(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed))
        writer.write(packed)
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: GZIP\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(chunked), 333):  # arriving in pieces that cut across chunks
            writer.write(chunked[start : start + 333])
            await writer.drain()
            await asyncio.sleep(0)
        writer.write(b"0\r\n\r\n")
        await answering(b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 4\r\n\r\n\x0b\x01\x80x")(
            upstream, reader, writer
        )

    async def body(upstream: Upstream, client: Http1Client) -> None:
        for _ in range(2):
            answer = await send(client, upstream.url())
            assert await answer.read() == text
            assert not any(name.lower() == "content-encoding" for name, _ in answer.headers)
        answer = await send(client, upstream.url())
        assert await answer.read() == b"\x0b\x01\x80x" and ("Content-Encoding", "br") in answer.headers

    run(script, body)


def gzip_answer(body: bytes, encoding: bytes = b"Content-Encoding: gzip") -> bytes:
    return b"HTTP/1.1 200 OK\r\n%s\r\nContent-Length: %d\r\n\r\n%s" % (encoding, len(body), body)


@pytest.mark.parametrize(
    ("body", "plain"),
    [
        (gzip.compress(b"one, ") + gzip.compress(b"two"), b"one, two"),
        (gzip.compress(b"one, ") + gzip.compress(b"") + gzip.compress(b"two") + b"\0" * 10, b"one, two"),
    ],
    ids=["two-members", "an-empty-member-and-zero-padding"],
)
def test_a_gzip_body_of_several_members_is_undone_whole(run, body: bytes, plain: bytes) -> None:
    async def body_(upstream: Upstream, client: Http1Client) -> None:
        for _ in range(2):
            assert await (await send(client, upstream.url())).read() == plain
        assert upstream.connections == 1

    run(answering(gzip_answer(body), gzip_answer(body)), body_)


@pytest.mark.parametrize(
    "encoding",
    [
        b"Content-Encoding: gzip\r\nContent-Encoding: gzip",
        b"Content-Encoding: gzip, x-gzip",
        b"Content-Encoding: gzip,",
    ],
    ids=["two-headers", "one-list", "an-empty-element"],
)
def test_gzip_once_or_twice_is_undone_whole_and_its_headers_go(run, encoding: bytes) -> None:
    text = b"plain at last " * 1000
    layers = encoding.count(b"gzip")

    async def body(upstream: Upstream, client: Http1Client) -> None:
        answer = await send(client, upstream.url())
        assert await answer.read() == text
        assert not any(name.lower() == "content-encoding" for name, _ in answer.headers)

    packed = text
    for _ in range(layers):
        packed = gzip.compress(packed)
    run(answering(gzip_answer(packed, encoding)), body)


@pytest.mark.parametrize(
    "encoding",
    [
        b"Content-Encoding: gzip, gzip, gzip",
        b"Content-Encoding: gzip\r\nContent-Encoding: br",
        b"Content-Encoding: identity, gzip",
        b"Content-Encoding: deflate",
        b"Content-Encoding: ",
    ],
    ids=["three-layers", "gzip-then-br", "identity-and-gzip", "deflate", "empty"],
)
def test_other_codings_pass_on_untouched_with_their_headers(run, encoding: bytes) -> None:
    packed = gzip.compress(gzip.compress(gzip.compress(b"three times")))

    async def body(upstream: Upstream, client: Http1Client) -> None:
        answer = await send(client, upstream.url())
        assert await answer.read() == packed
        sent = [line.partition(b": ")[::2] for line in encoding.split(b"\r\n")]
        assert [(name, value) for name, value in answer.headers if name == "Content-Encoding"] == [
            (name.decode(), value.decode().strip()) for name, value in sent
        ]

    run(answering(gzip_answer(packed, encoding)), body)


@pytest.mark.parametrize(
    "body",
    [
        gzip.compress(b"whole") + b"garbage",
        gzip.compress(b"whole")[:-3],
        gzip.compress(b"whole") + gzip.compress(b"cut")[:-3],
        gzip.compress(b"whole") + b"\0\0\x1f",
    ],
    ids=["garbage-after", "cut-short", "second-member-cut-short", "padding-then-a-byte"],
)
def test_a_broken_or_cut_gzip_body_is_a_protocol_error_and_its_connection_goes(run, body: bytes) -> None:
    async def body_(upstream: Upstream, client: Http1Client) -> None:
        with pytest.raises(ProtocolError, match="gzip"):
            await (await send(client, upstream.url())).read()
        assert not client.busy and not client._idle.get(target(upstream.url()).origin)
        assert await (await send(client, upstream.url())).read() == b'{"a":1}'
        assert upstream.connections == 2

    run(first_then(answering(gzip_answer(body), OK), answering(OK)), body_)


def test_a_gzip_body_broken_in_a_later_packet_is_a_protocol_error(run) -> None:
    """The later packets of a length-framed body take the fast path in data_received."""
    packed = gzip.compress(random.Random(13).randbytes(50_000))
    broken = packed[:1000] + bytes(1000) + packed[2000:]

    async def script(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(broken))
        writer.write(broken[:500])
        await writer.drain()
        await asyncio.sleep(0.05)  # the head is parsed: what follows comes straight to the body
        writer.write(broken[500:])
        await reader.read()

    async def body(upstream: Upstream, client: Http1Client) -> None:
        answer = await send(client, upstream.url())
        with pytest.raises(ProtocolError, match="broken gzip"):
            await answer.read()
        assert not client.busy

    run(script, body)


def test_interim_answers_are_skipped_and_bodiless_answers_end_at_once(run) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        assert await (await send(client, upstream.url())).read() == b'{"a":1}'
        answer = await send(client, upstream.url(), b"", "DELETE")
        assert answer.status == 204 and await answer.read() == b""
        answer = await send(client, upstream.url("/v1/models"), b"", "HEAD")
        assert answer.status == 200 and answer.at_eof()
        assert ("Content-Encoding", "gzip") in answer.headers  # no body to undo it on: it stays
        assert await (await send(client, upstream.url())).read() == b'{"a":1}'
        assert upstream.connections == 1
        assert upstream.requests[2].startswith(b"HEAD /v1/models HTTP/1.1\r\n")

    answers = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK,
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 999\r\n\r\n",  # the answer to HEAD: a head only
        OK,
    )
    run(answering(*answers), body)


NOT_REUSED = {
    "connection-close": OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length"),
    "length-and-chunked": (
        b'HTTP/1.1 200 OK\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{"a":1}\r\n0\r\n\r\n'
    ),
}


@pytest.mark.parametrize("answer", list(NOT_REUSED.values()), ids=list(NOT_REUSED))
def test_connections_that_must_not_be_reused_are_not(run, answer: bytes) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        for _ in range(2):
            assert await (await send(client, upstream.url())).read() == b'{"a":1}'
        assert upstream.connections == 2

    run(answering(answer, answer), body)


def test_a_keep_alive_connection_the_upstream_closed_is_dropped_and_replaced(run) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        assert await (await send(client, upstream.url())).read() == b'{"a":1}'
        await asyncio.sleep(0.1)  # the upstream has closed the idle connection by now
        assert not client._idle[target(upstream.url()).origin]  # noticed, and dropped
        assert await (await send(client, upstream.url())).read() == b'{"a":1}'
        assert upstream.connections == 2

    run(answering(OK, then_close=True), body)


def test_a_connection_closed_as_the_request_went_out_is_retried_once(run) -> None:
    async def script(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(OK)
        if upstream.connections == 1:
            await upstream.read_request(reader)  # the second request: read, then hang up unanswered
            return
        await reader.read()

    async def body(upstream: Upstream, client: Http1Client) -> None:
        assert await (await send(client, upstream.url())).read() == b'{"a":1}'
        assert await (await send(client, upstream.url())).read() == b'{"a":1}'
        assert upstream.connections == 2 and len(upstream.requests) == 3

    run(script, body)


def test_a_connection_paused_for_a_slow_reader_serves_the_next_request(run) -> None:
    big = b"x" * (HIGH_WATER + 1)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)

    async def body(upstream: Upstream, client: Http1Client) -> None:
        first = await send(client, upstream.url())
        await asyncio.sleep(0.3)  # the whole body arrives unread: reading paused as it ended
        assert await first.read() == big
        second = await send(client, upstream.url(), read_timeout=1)
        assert await second.read() == big
        assert upstream.connections == 1

    run(answering(answer, answer), body)


def test_a_cancelled_caller_leaves_a_connection_that_moved_on_alone(run) -> None:
    """The caller is cancelled in the very step its answer completes, and another request takes
    the parked connection before the caller wakes: that request must go out once, unharmed."""

    async def body(upstream: Upstream, client: Http1Client) -> None:
        await send(client, upstream.url(), b"warm")
        ready = asyncio.get_running_loop().create_future()
        park = client._park

        def park_then_interfere(conn: Any) -> None:
            park(conn)
            if not ready.done():
                ready.set_result(None)  # another handler runs in this same loop step...
                first.cancel()  # ...and the first caller's client disconnects

        client._park = park_then_interfere  # type: ignore[method-assign]

        async def second_request() -> int:
            await ready
            return (await send(client, upstream.url(), b"second")).status

        second = asyncio.create_task(second_request())
        first = asyncio.create_task(send(client, upstream.url(), b"first"))
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert await second == 204
        bodies = [request.rpartition(b"\r\n\r\n")[2] for request in upstream.requests]
        assert bodies == [b"warm", b"first", b"second"]  # nothing sent twice

    run(answering(*[b"HTTP/1.1 204 No Content\r\n\r\n"] * 4), body)


# -- failures --------------------------------------------------------------------------------------


def test_an_answer_cut_off_hands_over_what_came_then_fails(run) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        answer = await send(client, upstream.url())
        assert await answer.readany() == b"part"
        with pytest.raises(Disconnected, match="middle of the answer"):
            await answer.readany()
        assert not client.busy

    run(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart", then_close=True), body)


def test_a_new_connection_closed_without_an_answer_is_not_retried(run) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        with pytest.raises(Disconnected, match="before answering"):
            await send(client, upstream.url())
        assert upstream.connections == 1

    run(answering(b"", then_close=True), body)


# Answers refused with a ProtocolError: for their framing, but for broken-gzip (for its body).
NOT_HTTP = {
    "not-http": b"SSH-2.0-OpenSSH\r\n\r\n",
    "bad-status": b"HTTP/1.1 2OO OK\r\n\r\n",
    "folded": b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "negative-length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "chunk-end": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
    "101": b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    "huge": b"HTTP/1.1 200 OK\r\nX: " + b"x" * (70 * 1024),
    # a digit to str.isdigit, not to HTTP
    "unicode-digit": "HTTP/1.1 200 OK\r\nContent-Length: \u00b2\r\n\r\n".encode(),
    "four-digit-status": b"HTTP/1.1 2000 OK\r\n\r\n",
    "bare-lf": b"HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2\r\n\r\n",
    "nul": b"HTTP/1.1 200 OK\r\nX-A: \x00\r\n\r\n",
    "broken-gzip": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 9\r\n\r\nnot gzip!",
    "version-x": b"HTTP/1.x 200 OK\r\nContent-Length: 0\r\n\r\n",
    "version-1.2": b"HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n",
    "header-name-space": b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n",
    "header-name-control": b"HTTP/1.1 200 OK\r\nX\x01: x\r\nContent-Length: 0\r\n\r\n",
    "header-value-control": b"HTTP/1.1 200 OK\r\nX: a\x01b\r\nContent-Length: 0\r\n\r\n",
    "chunk-ext-bare-lf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;a\nb\r\nx\r\n0\r\n\r\n",
    "chunk-ext-control": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;a=\x01\r\nx\r\n0\r\n\r\n",
    "chunk-ext-open-quote": b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;a="x\r\nx\r\n0\r\n\r\n',
    "chunk-size-leading-space": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n 1\r\nx\r\n0\r\n\r\n",
    "trailer-bare-lf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX: a\nb\r\n\r\n",
    "transfer-coding-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    "length-too-long-for-int": b"HTTP/1.1 200 OK\r\nContent-Length: " + b"1" * 5000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("answer", list(NOT_HTTP.values()), ids=list(NOT_HTTP))
def test_what_is_not_http_is_a_protocol_error(run, answer: bytes) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        with pytest.raises(ProtocolError):
            await (await send(client, upstream.url())).read()
        assert not client.busy

    run(answering(answer), body)


RFC_ALLOWED = (  # odd but valid: no reason phrase, an empty value, BWS in chunk extensions, a trailer
    b"HTTP/1.1 200\r\nX-Empty:\r\nX-Odd: caf\xc3\xa9 \t\r\nTransfer-Encoding: Chunked\r\n\r\n"
    b'1 ; a = "q\\"x" ;b=tok\t;c\r\nx\r\n2;!#$%&\'*+-.^_`|~=v\r\nyz\r\n0;last\r\nX-T: t\r\n\r\n'
)


def test_what_rfc_9112_allows_in_chunk_lines_and_trailers_is_read(run) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        for _ in range(2):
            answer = await send(client, upstream.url())
            assert answer.status == 200 and await answer.read() == b"xyz"
        assert upstream.connections == 1

    run(answering(RFC_ALLOWED, RFC_ALLOWED), body)


def test_silence_longer_than_read_timeout_times_out(run) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        answer = await send(client, upstream.url(), read_timeout=0.3)
        started = time.monotonic()
        assert await answer.readany() == b"a"
        with pytest.raises(UpstreamTimeout, match="timed out"):
            await answer.readany()
        assert 0.2 < time.monotonic() - started < 0.3 + 2 * WATCH_SECONDS
        assert not client.busy

    run(answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n"), body)


def test_a_head_that_never_comes_times_out(run) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        with pytest.raises(UpstreamTimeout):
            await send(client, upstream.url(), read_timeout=0.3)
        assert not client.busy

    run(answering(b""), body)


def test_a_new_connection_the_upstream_closed_before_the_request_is_disconnected(run) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        conn = await client._connection(target(upstream.url()), asyncio.get_running_loop().time() + 2)
        await asyncio.sleep(0.1)  # the upstream hung up at once
        with pytest.raises(Disconnected):
            await conn.send(b"GET / HTTP/1.1\r\n\r\n", False, 5)
        assert not client.busy

    run(answering(then_close=True), body)


def test_a_refused_connection_says_so(run, unused_tcp_port: int) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        with pytest.raises(ConnectFailed, match=f"127.0.0.1:{unused_tcp_port}"):
            await send(client, f"http://127.0.0.1:{unused_tcp_port}/v1/models")

    run(answering(), body)


def test_a_line_break_in_a_header_is_refused_before_sending(run) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        for bad in ("a\r\nX-Injected: 1", "a\nb", "a\rb"):
            with pytest.raises(ValueError, match="line break"):
                await client.request(
                    "POST", target(upstream.url()), {"X-Note": bad}, b"", connect_timeout=2, read_timeout=2
                )
        assert upstream.connections == 0

    run(answering(OK), body)


def test_giving_up_on_an_answer_closes_its_connection(run) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        answer = await send(client, upstream.url())
        assert await answer.readany() == b"a"
        reading = asyncio.ensure_future(answer.readany())
        await asyncio.sleep(0.05)
        reading.cancel()  # the proxy's client went away
        answer.release()
        assert not client.busy
        assert await (await send(client, upstream.url())).read() == b'{"a":1}'
        assert upstream.connections == 2  # the half-read connection was not reused

    endless = answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")

    async def script(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await (endless if upstream.connections == 1 else answering(OK))(upstream, reader, writer)

    run(script, body)


def test_a_slow_reader_pauses_the_upstream_and_loses_nothing(run) -> None:
    size = 8 * HIGH_WATER
    payload = bytes(range(256)) * (size // 256)

    async def script(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for start in range(0, size, 65536):
            writer.write(payload[start : start + 65536])
            await writer.drain()
        await reader.read()

    async def body(upstream: Upstream, client: Http1Client) -> None:
        answer = await send(client, upstream.url(), read_timeout=0.5)
        await asyncio.sleep(1.0)  # nobody reads; the watchdog must not count a pause as silence
        (conn,) = client.busy
        assert conn.paused and answer._size <= HIGH_WATER + 256 * 1024
        assert await answer.read() == payload

    run(script, body)


def test_a_gzip_bomb_is_undone_a_step_at_a_time_as_it_is_read(run) -> None:
    size = 32 * HIGH_WATER
    bomb = gzip.compress(bytes(size), 9)  # 32 KiB that inflate to 32 MiB

    async def body(upstream: Upstream, client: Http1Client) -> None:
        answer = await send(client, upstream.url())
        await asyncio.sleep(0.2)  # it has all arrived; nobody reads
        assert answer._size <= HIGH_WATER
        got = 0
        while chunk := await answer.readany():
            assert len(chunk) <= HIGH_WATER and not chunk.strip(b"\0")
            got += len(chunk)
        assert got == size and answer.at_eof()

    run(answering(gzip_answer(bomb)), body)


def test_a_fast_reader_of_a_gzip_bomb_lets_others_run_between_steps(run) -> None:
    """A relay whose client reads as fast as it can never waits on the upstream once the gzip
    body is in: each step must still give the loop a turn, or a bomb relayed as a binary stream
    (1 GiB from 1 MiB) holds every other request for seconds."""
    steps = 32
    bomb = gzip.compress(bytes(steps * HIGH_WATER), 9)

    async def body(upstream: Upstream, client: Http1Client) -> None:
        answer = await send(client, upstream.url())
        await asyncio.sleep(0.2)  # it has all arrived: nothing more to wait for
        turns = 0

        async def other() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(other())
        await asyncio.sleep(0)
        turns = 0
        while await answer.readany():
            pass
        task.cancel()
        assert turns >= steps - 1

    run(answering(gzip_answer(bomb)), body)


def test_an_endless_gzip_stream_read_slowly_holds_a_bounded_amount(run) -> None:
    """A relay reading slower than a well-compressed stream arrives: the upstream is paused
    with at most HIGH_WATER bytes inflated and the raw bytes of a few packets held."""

    async def script(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n")
        packer = zlib.compressobj(9, wbits=31)
        while True:
            packed = packer.compress(b"data: {}\n\n" * 100_000) + packer.flush(zlib.Z_SYNC_FLUSH)
            writer.write(b"%x\r\n%s\r\n" % (len(packed), packed))
            await writer.drain()

    async def body(upstream: Upstream, client: Http1Client) -> None:
        answer = await send(client, upstream.url(), read_timeout=0.5)
        for _ in range(3):
            await asyncio.sleep(0.3)  # nobody reads; the watchdog must not count a pause as silence
            (conn,) = client.busy
            assert conn.paused and answer._size <= HIGH_WATER
            assert answer._gunzip is not None and len(answer._gunzip.tail) <= 1024 * 1024
            for _ in range(20):
                chunk = await answer.readany()
                assert chunk and len(chunk) <= HIGH_WATER and set(chunk) <= set(b"data: {}\n")
        answer.release()

    run(script, body)


async def endless_json(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await upstream.read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    while True:
        writer.write(b"10000\r\n%s\r\n" % (b" " * 0x10000))
        await writer.drain()


@pytest.mark.parametrize(
    ("script", "limit", "message", "connections"),
    [
        (endless_json, 2 * 1024 * 1024, "over 2 MB", 2),
        (answering(gzip_answer(gzip.compress(bytes(64 * HIGH_WATER)))), HIGH_WATER, "over 1 MB", 2),
        # all of it arrived, framed right: the connection is sound and serves the next request
        (answering(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n12345678", OK), 7, "over 6.67572e-06 MB", 1),
    ],
    ids=["endless-chunked", "gzip-bomb", "one-byte-over"],
)
def test_an_answer_over_the_readers_limit_is_given_up(
    run, script: Script, limit: int, message: str, connections: int
) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        answer = await send(client, upstream.url())
        with pytest.raises(AnswerTooLarge, match=message):
            await answer.read(limit)
        assert answer._chunks == [] and answer._gunzip is None  # nothing more is held
        with pytest.raises(AnswerTooLarge):
            await answer.readany()
        assert not client.busy
        assert await (await send(client, upstream.url())).read(7) == b'{"a":1}'  # exactly the limit: fine
        assert upstream.connections == connections

    run(first_then(script, answering(OK)), body)


def test_an_answer_given_up_is_freed_without_the_garbage_collector(run) -> None:
    """A stored error raised again must not tie the reader's frames (all it read) into a cycle
    with the answer: a quiet proxy runs a full collection rarely, and each answer over the
    limit would stay in memory until then."""
    limit = 8 * 1024 * 1024

    async def give_up(client: Http1Client, url: str) -> None:
        answer = await send(client, url)
        with contextlib.suppress(AnswerTooLarge):
            await answer.read(limit)
        with contextlib.suppress(AnswerTooLarge):
            await answer.readany()
        answer.release()

    async def body(upstream: Upstream, client: Http1Client) -> None:
        gc.disable()
        tracemalloc.start()
        try:
            await give_up(client, upstream.url())
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
            gc.enable()
        assert held < limit // 4

    run(endless_json, body)


# -- TLS ---------------------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def test_https_checks_the_certificate_and_the_name(run, tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert_file, key_file)

    async def body(upstream: Upstream, client: Http1Client) -> None:
        answer = await send(client, upstream.url("/v1/models", "localhost", "https"), b"", "GET")
        assert await answer.read() == b'{"a":1}'
        assert upstream.requests[0].startswith(b"GET /v1/models HTTP/1.1\r\nHost: localhost:")
        with pytest.raises(ConnectFailed, match="certificate"):  # the right certificate, the wrong name
            await send(client, upstream.url("/v1/models", "127.0.0.1", "https"), b"", "GET")
        stranger = Http1Client(max_connections=LIMIT)  # the system's CAs do not know this certificate
        with pytest.raises(ConnectFailed, match="certificate"):
            await send(stranger, upstream.url("/v1/models", "localhost", "https"), b"", "GET")
        await stranger.close()

    run(answering(OK), body, tls=server_side, trust=ssl.create_default_context(cafile=cert_file))


def test_targets_are_parsed_once_with_the_right_host_header() -> None:
    assert target("https://api.siliconflow.cn/v1/chat/completions?x=%20") == (
        ("api.siliconflow.cn", 443, True),
        "api.siliconflow.cn",
        "/v1/chat/completions?x=%20",
    )
    assert target("http://[::1]:8080/v1/models").host_header == "[::1]:8080"
    assert target("http://example.com:80/v1").host_header == "example.com"
    for bad in ("ftp://example.com/v1", "/v1/models"):
        with pytest.raises(ValueError):
            target(bad)
