"""The proxy's HTTP/1.1 client fed random and mutated answers over a real loopback socket.

Each example scripts what the upstream writes for one request: a valid answer of some framing
(length, chunked, until close) and coding (plain, gzip of one or more members or two layers,
br passed on, a gzip bomb), perhaps mutated, cut into packets. Whatever it is, the answer ends
within read_timeout, nothing but an UpstreamError comes out of the client (nor out of its
protocol callbacks), a connection that broke is never used again and the next request gets a
sound answer, and a reader holds a bounded amount of it. An answer left valid must also read
back as the body it carries. Examples are derandomized so CI runs the same ones every time.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
import uvloop
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from silicon_pool.http1 import (
    HIGH_WATER,
    WATCH_SECONDS,
    Answer,
    AnswerTooLarge,
    Http1Client,
    UpstreamError,
    UpstreamTimeout,
    target,
)

READ_TIMEOUT = 0.5
LINGER = 0.05  # how long the upstream waits for another request before it hangs up
BOUND = HIGH_WATER + 256 * 1024  # what an answer may hold for its reader: HIGH_WATER and a packet
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}'
FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Case:
    """One example: what the upstream writes and how, how the answer is read, what it must give.

    Not a dataclass: Hypothesis prints those field by field, and a bomb's body is megabytes."""

    def __init__(
        self, packets: list[bytes], ending: str, read: str, limit: int | None, plain: bytes | None, until_close: bool
    ) -> None:
        self.packets = packets
        self.ending = ending  # after the packets: "close", "linger" (hang up unless asked again soon) or "hold"
        self.read = read  # "all", "limit" or "pieces" (readany until the end)
        self.limit = limit
        self.plain = plain  # the body an unmutated answer must read back as; None once mutated
        self.until_close = until_close  # framed by the end of the connection

    def __repr__(self) -> str:
        message = b"".join(self.packets)
        plain = None if self.plain is None else f"{len(self.plain)} bytes"
        return (
            f"Case({message[:300]!r}{'…' if len(message) > 300 else ''} in {len(self.packets)} packets, "
            f"ending={self.ending}, read={self.read}, limit={self.limit}, plain={plain}, "
            f"until_close={self.until_close})"
        )


class Upstream:
    """A server whose first connection writes the example's packets; every request after gets OK."""

    def __init__(self) -> None:
        self.case: Case | None = None
        self.connections = 0
        self.serving: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/chat/completions"

    async def reset(self) -> None:
        """Hang up every connection of the last example and wait for their handlers to end."""
        for writer in self.serving.values():
            writer.close()  # a handler waiting to read sees the end (a cancelled one would be logged)
        if self.serving:
            await asyncio.wait(self.serving)
        self.serving.clear()
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self.case is not None
        self.serving[task] = writer
        self.connections += 1
        case, first = self.case, self.connections == 1
        try:
            await _read_request(reader)
            if first:
                for packet in case.packets:
                    writer.write(packet)
                    await writer.drain()
                    await asyncio.sleep(0)  # let the client take it as a packet of its own
                if case.ending == "close":
                    return
                async with asyncio.timeout(LINGER if case.ending == "linger" else 10):
                    await _read_request(reader)
            while True:
                writer.write(OK)
                await writer.drain()
                await _read_request(reader)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
    await reader.readexactly(length)


class Harness(NamedTuple):
    runner: asyncio.Runner
    upstream: Upstream
    escaped: list[dict[str, Any]]  # what reached the loop's exception handler


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """One loop and one upstream for all examples on a loop kind: a fresh loop each costs more than an example."""
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        escaped: list[dict[str, Any]] = []
        runner.get_loop().set_exception_handler(lambda loop, context: escaped.append(context))
        upstream = Upstream()
        runner.run(upstream.start())
        yield Harness(runner, upstream, escaped)
        upstream.server.close()
        runner.run(upstream.server.wait_closed())


# -- answers ---------------------------------------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
CHUNK_EXTENSIONS = [b"", b"", b";a=1", b' ; q="x\\"y"', b";flag;b=tok"]
SPECIAL_BYTES = b'\r\n\x00 \t;:="\\0aF\x01\x7f\x80\xff,'


def _sse(events: list[str]) -> bytes:
    return b"".join(b'data: {"n": "%s"}\n\n' % event.encode() for event in events) + b"data: [DONE]\n\n"


def _gzip(draw: st.DrawFn, plain: bytes) -> bytes:
    """gzip in one to three members, perhaps padded with zero bytes."""
    cut = sorted(draw(st.lists(st.integers(0, len(plain)), max_size=2), label="member cuts"))
    parts = [plain[start:end] for start, end in zip([0, *cut], [*cut, len(plain)], strict=True)]
    padding = bytes(draw(st.sampled_from([0, 0, 0, 7]), label="zero padding"))
    return b"".join(gzip.compress(part, 1) for part in parts) + padding


def _coded(draw: st.DrawFn, plain: bytes) -> tuple[list[bytes], bytes]:
    """The Content-Encoding header lines and the body as it goes on the wire."""
    coding = draw(st.sampled_from(["none", "none", "gzip", "gzip", "gzip-twice", "br"]), label="coding")
    if coding == "gzip":
        return [b"Content-Encoding: gzip"], _gzip(draw, plain)
    if coding == "gzip-twice":
        lines = draw(
            st.sampled_from([[b"Content-Encoding: gzip, gzip"], [b"Content-Encoding: gzip", b"Content-Encoding: gzip"]])
        )
        return lines, gzip.compress(_gzip(draw, plain), 1)
    if coding == "br":
        return [b"Content-Encoding: br"], plain  # not undone: passed on as it came
    return [], plain


def _chunked(draw: st.DrawFn, body: bytes) -> bytes:
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=6), label="chunk cuts")))
    pieces = [body[start:end] for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True) if body[start:end]]
    framed = [b"%x%s\r\n%s\r\n" % (len(piece), draw(st.sampled_from(CHUNK_EXTENSIONS)), piece) for piece in pieces]
    trailer = draw(st.sampled_from([b"", b"X-Trailer: t\r\n"]), label="trailer")
    return b"".join(framed) + b"0%s\r\n%s\r\n" % (draw(st.sampled_from(CHUNK_EXTENSIONS)), trailer)


def _answer(draw: st.DrawFn) -> tuple[bytes, bytes, bool, bool]:
    """A valid answer: its bytes, the plain body it carries, whether it ends with the connection,
    and whether it is a gzip bomb."""
    bomb = draw(st.integers(0, 9), label="bomb?") == 0
    if bomb:
        plain = bytes(draw(st.integers(2, 8), label="MiB") * 1024 * 1024)
        lines, body = [b"Content-Encoding: gzip"], gzip.compress(plain, 9)
    else:
        plain = draw(
            st.binary(max_size=600) | st.lists(st.text(TOKEN_CHARS, max_size=20), max_size=8).map(_sse), label="body"
        )
        lines, body = _coded(draw, plain)
    status = draw(st.sampled_from([200, 200, 200, 400, 429, 500, 503, 204]), label="status")
    framing = draw(st.sampled_from(["length", "chunked", "close"]), label="framing")
    version = b"1.0" if framing == "close" and draw(st.booleans(), label="HTTP/1.0?") else b"1.1"
    lines.append(b"Content-Type: " + draw(st.sampled_from([b"application/json", b"text/event-stream"])))
    for _ in range(draw(st.integers(0, 3), label="extra headers")):
        name = draw(st.text(TOKEN_CHARS, min_size=1, max_size=12)).encode()
        lines.append(b"X-" + name + b": " + draw(st.sampled_from([b"", b"v", b"a b\tc", b"caf\xc3\xa9"])))
    if status == 204:
        plain = body = b""
    elif framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        body = _chunked(draw, body)
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" if draw(st.booleans(), label="103?") else b""
    head = b"HTTP/%s %d Whatever\r\n%s\r\n" % (version, status, b"".join(line + b"\r\n" for line in lines))
    return interim + head + body, plain, framing == "close" and status != 204, bomb


def _mutated(draw: st.DrawFn, message: bytes) -> bytes:
    """One to four byte-level mutations, most of them in the head and the first chunk lines."""
    for _ in range(draw(st.integers(1, 4), label="mutations")):
        near_start = draw(st.booleans(), label="near the start?")
        pos = draw(st.integers(0, min(len(message), 160) if near_start else len(message)), label="at")
        byte = bytes([draw(st.sampled_from(SPECIAL_BYTES) | st.integers(0, 255), label="byte")])
        kind = draw(st.sampled_from(["replace", "insert", "delete", "cut", "repeat"]), label="mutation")
        if kind == "replace":
            message = message[:pos] + byte + message[pos + 1 :]
        elif kind == "insert":
            message = message[:pos] + byte + message[pos:]
        elif kind == "delete":
            message = message[:pos] + message[pos + 1 :]
        elif kind == "cut":
            message = message[:pos]
        else:
            message = message[:pos] + message[pos : pos + 40] + message[pos:]
    return message


@st.composite
def cases(draw: st.DrawFn) -> Case:
    message, plain, until_close, bomb = _answer(draw)
    mutated = draw(st.integers(0, 9), label="mutate?") >= 3
    if mutated:
        message = _mutated(draw, message)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(message) - 1)), max_size=8), label="packet cuts")))
    packets = [message[start:end] for start, end in zip([0, *cuts], [*cuts, len(message)], strict=True)]
    ending = draw(st.sampled_from(["close"] * 5 + ["linger"] * 6 + ["hold"]), label="ending")
    read = draw(st.sampled_from(["limit", "pieces"] if bomb else ["all", "limit", "pieces"]), label="read")
    limit = None
    if read == "limit":
        limit = HIGH_WATER if bomb else draw(st.integers(0, len(plain) + 5), label="limit")
    return Case(packets, ending, read, limit, None if mutated else plain, until_close)


# -- the property ------------------------------------------------------------------------------------


async def _read(answer: Answer, case: Case) -> bytes:
    if case.read != "pieces":
        return await answer.read(case.limit)
    parts = []
    while True:
        assert answer._size <= BOUND
        if not (part := await answer.readany()):
            return b"".join(parts)
        assert len(part) <= BOUND
        parts.append(part)


async def _first(client: Http1Client, upstream: Upstream, case: Case) -> bytes | UpstreamError:
    try:
        answer = await client.request(
            "POST", target(upstream.url), {}, b"{}", connect_timeout=2, read_timeout=READ_TIMEOUT
        )
        return await _read(answer, case)
    except UpstreamError as exc:
        return exc


async def _example(upstream: Upstream, case: Case) -> None:
    upstream.case = case
    client = Http1Client(max_connections=4)
    try:
        started = time.monotonic()
        try:
            async with asyncio.timeout(READ_TIMEOUT + 2 * WATCH_SECONDS + 2):
                outcome = await _first(client, upstream, case)
        except TimeoutError:
            pytest.fail(f"the answer did not end within read_timeout ({time.monotonic() - started:.2f} s)")
        _check(client, case, outcome)
        broken = isinstance(outcome, UpstreamError) and not isinstance(outcome, AnswerTooLarge)
        async with asyncio.timeout(5):
            try:
                second = await (
                    await client.request(
                        "GET", target(upstream.url), {}, b"", connect_timeout=2, read_timeout=READ_TIMEOUT
                    )
                ).read()
            except UpstreamError:
                # Only bytes the first answer's framing left over, coming late on a connection it
                # rightly trusted, may break the next answer; never after a broken one.
                assert not broken, "a broken connection was used again"
            else:
                assert second == b'{"a":1}'
            if broken:
                assert upstream.connections == 2  # the next request had a connection of its own
    finally:
        await client.close()
        await upstream.reset()


def _check(client: Http1Client, case: Case, outcome: bytes | UpstreamError) -> None:
    event(f"{'valid' if case.plain is not None else 'mutated'}: {type(outcome).__name__}")
    assert not client.busy, "an answer that ended left its connection busy"
    if isinstance(outcome, UpstreamError) and not isinstance(outcome, AnswerTooLarge):
        assert not any(client._idle.values()), f"a connection was kept after {outcome!r}"
    plain = case.plain
    if plain is None:
        return  # mutated: nothing more is known
    if case.limit is not None and len(plain) > case.limit:
        assert isinstance(outcome, AnswerTooLarge), outcome  # all of it comes at once: before any silence
    elif case.until_close and case.ending == "hold":
        assert isinstance(outcome, UpstreamTimeout), outcome  # it never ends: silence is all there is
    else:
        assert outcome == plain, outcome


@FUZZ
@given(case=cases())
def test_any_answer_ends_in_time_with_a_body_or_an_upstream_error(harness: Harness, case: Case) -> None:
    harness.escaped.clear()
    harness.runner.run(_example(harness.upstream, case))
    assert not harness.escaped, [(context.get("message"), context.get("exception")) for context in harness.escaped]
