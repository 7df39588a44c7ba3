"""The upstream answer's head and framing as the proxy reads them: bytes in any packets, the chunk
lines RFC 9112 allows, bodiless answers, and errors that say what was wrong."""

from __future__ import annotations

import asyncio

import pytest

from silicon_pool.http1 import Http1Client, ProtocolError, _Connection
from tests.test_http1 import OK, Script, Upstream, answering, run, send

__all__ = ["run"]  # the fixture, on both event loops

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Bin: \xff\xfe\r\n\r\n"
    b'a;q="x y\xff\\\t\\ \\\xfe\\z"\r\n0123456789\r\nA ; t =\ttok\r\nabcdefghij\r\n0\r\nX-T: t\r\n\r\n'
)


def byte_by_byte(*answers: bytes) -> Script:
    """A script that writes each answer one byte per packet."""

    async def script(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await upstream.read_request(reader)
            for i in range(len(answer)):
                writer.write(answer[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.001)
        await reader.read()

    return script


def test_an_answer_arriving_a_byte_at_a_time_is_read_whole(run) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        answer = await send(client, upstream.url())
        assert await answer.read() == b"0123456789abcdefghij"
        assert ("X-Bin", b"\xff\xfe".decode("utf-8", "surrogateescape")) in answer.headers  # relayed as it came
        assert await (await send(client, upstream.url())).read() == b'{"a":1}'
        assert upstream.connections == 1

    run(byte_by_byte(CHUNKED, OK), body)


def test_chunk_sizes_in_either_case_and_extensions_with_quotes_are_read(run) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        for _ in range(2):
            assert await (await send(client, upstream.url())).read() == b"0123456789abcdefghij"
        assert upstream.connections == 1

    run(answering(CHUNKED, CHUNKED), body)


def test_an_empty_length_framed_answer_ends_at_once_and_its_connection_is_reused(run) -> None:
    empty = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    async def body(upstream: Upstream, client: Http1Client) -> None:
        answer = await send(client, upstream.url())
        assert answer.status == 200 and await answer.read() == b"" and answer.at_eof()
        assert await (await send(client, upstream.url())).read() == b'{"a":1}'
        assert upstream.connections == 1

    run(answering(empty, OK), body)


# An answer, and the ProtocolError it must be refused with.
SAID_WRONG = {
    "blank-line-first": (b"\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", "not an HTTP/1.0 or HTTP/1.1 status line: b''"),
    "not-http": (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.0 or HTTP/1.1 status line: b'SSH-2.0-OpenSSH'"),
    "header": (
        b"HTTP/1.1 200 OK\r\nX-Ok: 1\r\nBad Name Of A Header That Runs Long: x\r\n\r\n",
        "a malformed header line: b'Bad Name Of A Header That Runs Long: x'",
    ),
    "header-cut": (
        b"HTTP/1.1 200 OK\r\n" + b"N" * 50 + b" : x\r\n\r\n",
        "a malformed header line: b'" + "N" * 40 + "'",
    ),
    "length": (b"HTTP/1.1 200 OK\r\nContent-Length: 12a\r\n\r\n", "a bad Content-Length: '12a'"),
    "huge-head": (b"HTTP/1.1 200 OK\r\nX: " + b"x" * (70 * 1024), "the answer's head is over 64 KiB"),
    "huge-chunk-line": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * (70 * 1024),
        "a chunk-size or trailer line is over 64 KiB",
    ),
}


@pytest.mark.parametrize(("answer", "message"), list(SAID_WRONG.values()), ids=list(SAID_WRONG))
def test_a_protocol_error_says_what_was_wrong(run, answer: bytes, message: str) -> None:
    async def body(upstream: Upstream, client: Http1Client) -> None:
        with pytest.raises(ProtocolError) as caught:
            await (await send(client, upstream.url(), read_timeout=3)).read()
        assert str(caught.value) == message

    run(answering(answer), body)


def test_a_chunk_line_cut_after_large_chunks_is_waited_for(run) -> None:
    """The 64 KiB bound counts the bytes of the unfinished line, not the chunks read before it."""
    chunk = b"7800\r\n" + b"c" * 0x7800 + b"\r\n"  # 30 KiB each

    async def script(upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"\r\n\r\n")
        await reader.read()

    async def body(upstream: Upstream, client: Http1Client) -> None:
        assert await (await send(client, upstream.url())).read() == b"c" * (3 * 0x7800)

    run(script, body)


class _Transport:
    """Enough of a transport for a connection that is fed by hand."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass


def test_a_head_for_a_caller_cancelled_in_the_same_step_is_dropped() -> None:
    """The caller is cancelled (which cancels the future it waits on at once) and its answer's
    head arrives before the caller runs again: no result may be set on the cancelled future."""

    async def main() -> None:
        client = Http1Client(max_connections=8)
        conn = _Connection(client, ("upstream", 80, False))
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        caller = asyncio.ensure_future(conn.send(b"GET / HTTP/1.1\r\n\r\n", False, 5))
        await asyncio.sleep(0)  # the request is out: the caller waits for the head
        caller.cancel()
        conn.data_received(OK)  # the whole answer: the connection is sound and parked
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert client._reuse(conn.origin) is conn
        await client.close()

    asyncio.run(main())
