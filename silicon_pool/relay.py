"""A streamed answer, from the upstream connection's callback straight to the client's socket.

A model streams hundreds of small SSE events, each in a read of its own. Handing each to a task
(a future set, a wake-up, `readany`, `await write`) costs more than the reads and writes
themselves; here the upstream's `data_received` frames the bytes and writes them to the client's
transport in the same call, and the usage scan runs inline on them. The task that serves the
request sleeps until the answer ends, and wakes between only when the client's socket is full:
then the upstream is paused (no buffer grows without bound) until the client drains, or for at
most `read_timeout`, after which the client is taken to have stopped reading. The writes that go
through aiohttp's writer (the head with the first piece, the end, an error event) wait no longer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import cast

from aiohttp import web
from aiohttp.http_writer import StreamWriter

from .http1 import Answer, AnswerTooLarge, UpstreamError
from .usage import FinalUsageOnly, StreamUsage

MB = 1024 * 1024
SLACK = 128  # bytes a write adds to its data, at most: a status line, chunk framing, the end of the body


class ClientStalled(Exception):
    """The client's socket did not drain for read_timeout: it stopped reading."""


class StreamRelay:
    """Relays one answer's body to one client (see the module's docstring).

    `process` is what every piece of the body goes through, first one included (which the
    request's task read, and `run` writes with the answer's head): the usage scan, the bound on
    one event, and `stream_usage`'s trimming."""

    __slots__ = (
        "_answer",
        "_chunked",
        "_error",
        "_finished",
        "_full",
        "_protocol",
        "_transport",
        "_waiter",
        "_writer",
        "event_limit",
        "first_byte",
        "sse",
        "trim",
    )

    def __init__(
        self,
        request: web.BaseRequest,
        answer: Answer,
        sse: StreamUsage | None,
        trim: FinalUsageOnly | None,
        event_limit: int,
    ) -> None:
        self._answer = answer
        self._transport = request.transport
        self._protocol = request.protocol
        self._writer = cast(StreamWriter, request.writer)
        self._chunked = True  # known once the head is out (run): HTTP/1.0 clients get the bytes as they are
        self.sse, self.trim, self.event_limit = sse, trim, event_limit
        self.first_byte: float | None = None  # when the first byte went to the client (monotonic)
        self._waiter: asyncio.Future[None] | None = None
        self._finished = False
        self._full = False  # the client's socket is full: the upstream is held until it drains
        self._error: BaseException | None = None

    def process(self, data: bytes) -> bytes:
        """What of `data` goes to the client; AnswerTooLarge when one event runs past the limit."""
        sse = self.sse
        if sse is not None:
            sse.feed(data)
            if sse.event_bytes > self.event_limit:
                raise AnswerTooLarge(f"one event of the stream is over max_answer_mb ({self.event_limit // MB} MB)")
        trim = self.trim
        return data if trim is None else trim.feed(data)

    async def run(self, first: bytes, read_timeout: float) -> None:
        """Write the head with `first` (what the request's task read), then relay the rest of the
        body; returns at its end. Raises the upstream's failure, ConnectionResetError when the
        client has gone, ClientStalled when it stopped reading."""
        loop = asyncio.get_running_loop()
        writer = self._writer
        self._chunked = getattr(writer, "chunked", True)
        await writer.write(first, drain=False)  # a full socket is waited for below, within read_timeout
        self._full = self._protocol.writing_paused
        self._answer.pipe(self)
        while not self._finished:
            if self._full:
                self._full = False
                await _within(writer.drain(), read_timeout)
                self._answer.go_on()  # which may fill the socket, or end the answer, at once
                continue
            waiter = self._waiter = loop.create_future()
            await waiter
        error, self._error = self._error, None
        if error is not None:
            raise error

    async def finish(self, response: web.StreamResponse, data: bytes, read_timeout: float) -> None:
        """Write `data` and the end of the body (the head with them if it has not gone). aiohttp
        then waits for the client's socket to drain, as long as the relay would at most; only a
        write that may fill the socket pays for the timer (one that cannot never waits)."""
        size = len(data) + SLACK
        if not self._writer.output_size:  # the head goes with them: 4 bytes a character at most, and ": \r\n"
            size += 4 * sum(len(name) + len(value) + 4 for name, value in response.headers.items())
        transport = self._transport
        if transport is None or self._protocol.writing_paused or not self._fits(transport, size):
            await _within(response.write_eof(data), read_timeout)
        else:
            await response.write_eof(data)

    @staticmethod
    def _fits(transport: asyncio.Transport, size: int) -> bool:
        """`size` more bytes leave the client's socket below its high-water mark: no wait for it to drain."""
        return transport.get_write_buffer_size() + size <= transport.get_write_buffer_limits()[1]

    # -- the answer's Sink, called from the upstream connection's callback ----------------------

    def data(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            self._stop(ConnectionResetError("the client went away"))
            return
        try:
            out = self.process(data)
        except AnswerTooLarge as exc:
            self._stop(exc)
            return
        if not out:
            return
        transport.write(b"%x\r\n%b\r\n" % (len(out), out) if self._chunked else out)
        if self.first_byte is None:
            self.first_byte = time.monotonic()
        if self._protocol.writing_paused:
            self._full = True
            self._answer.hold()
            self._wake()

    def end(self) -> None:
        self._finished = True
        self._wake()

    def fail(self, error: UpstreamError) -> None:
        self._stop(error)

    def _stop(self, error: BaseException) -> None:
        """End the relay with `error`; the upstream is held until the request's task lets it go."""
        if not self._finished:
            self._finished, self._error = True, error
            self._answer.hold()
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def _within(writing: Awaitable[None], read_timeout: float) -> None:
    """Wait for a write to drain to the client; ClientStalled after read_timeout."""
    try:
        async with asyncio.timeout(read_timeout):
            await writing
    except TimeoutError:
        raise ClientStalled(f"the client read nothing for {read_timeout:g} s (read_timeout)") from None
