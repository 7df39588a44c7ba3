"""A lean HTTP/1.1 client for the proxy's hot path.

aiohttp's ClientSession costs about 50 µs of CPU per request on this project's benchmark
(multidicts, a timer rescheduled on every read, trace hooks, a task per body write on Python
3.11): more than the rest of a proxied request together. The proxy needs a small part of it:
keep-alive connections per origin, the request sent in one write, the answer's head parsed
once and its body handed over in the chunks it arrives in (gzip, which it asks for to spare the
line to the upstream, undone on the way). That part is here; one timer per client watches every
connection for silence instead of one timer per read. The admin's few calls (balance checks,
the model list) still go through aiohttp.

The upstream is not trusted: its framing is checked to the letter of RFC 9112 (by
http1_parser.py, which reads the bytes this module's connections receive), and no answer can
make the proxy hold more than about HIGH_WATER bytes of it, however well it compresses, unless
the reader asks for the whole body, and then only up to the reader's limit.

Connections are bounded too (busy, idle and being opened together): past the limit a request
waits in line, within its connect_timeout, for one to come free, so a burst of clients cannot
open more sockets than the machine or the upstream allows.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import OrderedDict
from typing import NamedTuple, Protocol, cast

from yarl import URL

from .http1_parser import ProtocolError as ProtocolError
from .http1_parser import ResponseParser
from .http1_parser import UpstreamError as UpstreamError

HIGH_WATER = 1024 * 1024  # answer bytes held for a slow reader before the upstream is paused
MAX_GZIP_LAYERS = 2  # gzip applied more times than this is passed on as it came, headers and all
LAYER_STEP = 64 * 1024  # bytes an inner gzip layer takes from the one around it at a time
WATCH_SECONDS = 0.25  # how often silence is checked: timeouts fire up to this much late
IDLE_SECONDS = 60.0  # an unused keep-alive connection is closed after this long
_GZIP = frozenset({"gzip", "x-gzip"})  # RFC 9110 §8.4.1.3: x-gzip is gzip


class ConnectFailed(UpstreamError):
    """No connection: refused, unknown host, TLS handshake failed."""


class Disconnected(UpstreamError):
    """The connection closed before the answer was complete."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """Connecting took longer than connect_timeout, or the upstream went silent for read_timeout."""


class AnswerTooLarge(UpstreamError):
    """The body is larger than the reader's limit (counted after gzip is undone): it was given up."""


class PoolExhausted(UpstreamError):
    """Every connection the limit allows stayed busy for connect_timeout: the proxy's own limit,
    not the upstream's or a key's doing."""


class Target(NamedTuple):
    """Where a request goes, worked out once per URL: the origin, the Host header, the path."""

    origin: tuple[str, int, bool]  # host, port, TLS
    host_header: str
    path: str  # the request target as sent: path and query, already percent-encoded


def target(url: str) -> Target:
    """Parse an http(s) URL; a URL with another scheme or no host is a ValueError."""
    parsed = URL(url, encoded=True)
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parsed.scheme == "https"
    host, port = parsed.raw_host, parsed.port or (443 if tls else 80)
    host_header = f"[{host}]" if ":" in host else host
    if parsed.explicit_port is not None and parsed.explicit_port != (443 if tls else 80):
        host_header += f":{port}"
    return Target((host, port, tls), host_header, parsed.raw_path_qs)


class Sink(Protocol):
    """Where a piped answer's body goes, called from the connection's callback (see Answer.pipe)."""

    def data(self, data: bytes) -> None:
        """Body bytes, plain (gzip undone); the sink may call Answer.hold before it returns."""

    def end(self) -> None:
        """The body has all arrived and is valid."""

    def fail(self, error: UpstreamError) -> None:
        """The answer broke off; the bytes that came before it were given to `data` first."""


class Answer:
    """The upstream's answer: status and headers at once, the body as it arrives."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_ended",
        "_error",
        "_gunzip",
        "_held",
        "_sink",
        "_size",
        "_stepping",
        "_waiter",
        "content_type",
        "headers",
        "status",
    )

    def __init__(
        self,
        conn: _Connection,
        status: int,
        headers: list[tuple[str, str]],
        content_type: str | None,
        gzip_layers: int = 0,
    ) -> None:
        self.status, self.headers, self.content_type = status, headers, content_type
        gunzip = None
        for _ in range(gzip_layers):
            gunzip = _Gunzip(gunzip)
        self._gunzip = gunzip  # the last layer to undo: it gives out the plain body (bytes go in at the first)
        self._conn: _Connection | None = conn  # until the body has all arrived
        self._chunks: list[bytes] = []
        self._size = 0  # bytes in _chunks
        self._ended = False  # all of the body has arrived (gzip may still be undone from it)
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Sink | None = None  # once piped, until the end or a failure is handed over
        self._held = False  # the sink asked for no more bytes until go_on
        self._stepping = False  # a step of gzip inflation is scheduled for the next loop turn

    async def readany(self) -> bytes:
        """What has arrived since the last call (waiting for something if nothing has); b"" at the end.

        Bytes that arrived before a failure are handed over before the failure is raised. gzip
        is undone as the bytes arrive until HIGH_WATER bytes wait to be read; the rest of what
        has arrived, only as the reader asks for it, HIGH_WATER bytes at a time, each step after
        a turn for the rest of the loop (a fast reader never waits otherwise)."""
        turn_given = False
        while not self._chunks:
            if self._error is not None:
                raise _again(self._error)
            if self._gunzip is not None and self._gunzip.pending():
                if not turn_given:
                    turn_given = True
                    await asyncio.sleep(0)
                    continue  # the answer may have failed or been given up meanwhile
                try:
                    self._inflate(HIGH_WATER)
                except ProtocolError as exc:
                    self._break(exc)
                continue
            if self._ended:
                return b""
            conn = self._conn
            assert conn is not None
            if conn.paused:  # nothing is held any more (a last gzip step may give nothing): read on
                conn.resume()
            self._waiter = conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        conn = self._conn
        if conn is not None and conn.paused and not (self._gunzip is not None and self._gunzip.pending()):
            conn.resume()
        return data

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; AnswerTooLarge once it passes `limit` bytes, and the answer is given up."""
        parts = []
        size = 0
        while part := await self.readany():
            size += len(part)
            if limit is not None and size > limit:
                error = AnswerTooLarge(f"the upstream's answer is over {limit / (1024 * 1024):g} MB")
                self._break(error)
                self._chunks.clear()
                self._gunzip = None
                raise _again(error)
            parts.append(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def at_eof(self) -> bool:
        """True once the body has all arrived, been checked and been read."""
        return (
            self._ended
            and not self._chunks
            and self._error is None
            and not (self._gunzip is not None and self._gunzip.pending())
        )

    def release(self) -> None:
        """Done with the answer: a connection still receiving it cannot be reused, so it closes."""
        self._sink = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def pipe(self, sink: Sink) -> None:
        """Hand the rest of the body to `sink` from the connection's own callback, as it arrives:
        no future, no task woken per piece (a stream's events come one read each). What arrived
        before goes first; the end or a failure is reported once, after the last bytes."""
        self._sink = sink
        if self._error is not None:  # it broke before it was piped (the bytes of one read can hold both)
            self._fail(self._error)
        else:
            self._flow()

    def hold(self) -> None:
        """The sink can take no more for now (its client reads slowly): the upstream is paused."""
        self._held = True
        if self._conn is not None:
            self._conn.pause()

    def go_on(self) -> None:
        """The sink can take bytes again: what waits is handed over and the upstream resumed."""
        self._held = False
        self._flow()

    def _flow(self) -> None:
        """Give the sink what is held, undoing gzip one bounded step per loop turn (so a small
        packet that inflates to gigabytes never holds the loop), and its end once all is out."""
        self._stepping = False
        sink = self._sink
        if sink is None or self._held:
            return
        gunzip = self._gunzip
        if gunzip is not None and (gunzip.pending() or self._ended):  # at the end, its end is checked too
            try:
                self._inflate(HIGH_WATER - self._size)
            except ProtocolError as exc:
                self._break(exc)
                return
        if self._chunks:
            chunks = self._chunks
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self._size = 0
            sink.data(data)  # which may hold, or fail the answer
            if self._sink is None or self._held:
                return
        conn = self._conn
        if gunzip is not None and gunzip.pending():
            if conn is not None:
                conn.pause()
            self._stepping = True
            asyncio.get_running_loop().call_soon(self._flow)
        elif self._ended:
            self._sink = None
            sink.end()
        elif conn is not None and conn.paused:
            conn.resume()

    # -- fed by the connection ----------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Body bytes as they arrive; a broken gzip body raises ProtocolError for the connection."""
        gunzip = self._gunzip
        sink = self._sink
        if sink is not None and gunzip is None and not self._held and not self._chunks:
            sink.data(data)  # a piped stream's usual case: straight through
            return
        if gunzip is None:
            self._chunks.append(data)
            self._size += len(data)
        else:
            gunzip.give(data)
            if self._stepping or self._held:
                return  # inflated at the next step, once the sink can take it
            self._inflate(HIGH_WATER - self._size)
        if sink is not None:
            self._flow()
            return
        self._wake()
        if self._size >= HIGH_WATER and self._conn is not None:
            self._conn.pause()  # the reader resumes it once it has taken what is held

    def _inflate(self, budget: int) -> None:
        """Undo gzip into the chunks, `budget` bytes at most; at the end of the body, check its end."""
        gunzip = self._gunzip
        assert gunzip is not None
        while budget > 0 and (part := gunzip.take(budget)):
            self._chunks.append(part)
            self._size += len(part)
            budget -= len(part)
        if self._ended and not gunzip.pending():
            gunzip.check_end()

    def _checked(self) -> bool:
        """The body arrived whole and valid, gzip and all: the connection that carried it is sound.

        A gzip body not yet all undone (its reader lags) is not known to be valid: its
        connection closes rather than wait for the reader."""
        return self._error is None and not (self._gunzip is not None and self._gunzip.pending())

    def _end(self) -> None:
        self._ended = True
        self._conn = None  # the connection may serve another request from here on
        if self._sink is not None:
            self._flow()
            return
        if self._gunzip is not None:
            try:
                self._inflate(HIGH_WATER - self._size)
            except ProtocolError as exc:
                self._fail(exc)
        self._wake()

    def _break(self, error: UpstreamError) -> None:
        """Fail the answer from the reader's side, closing a connection still receiving it."""
        if self._conn is not None:
            self._conn._fail(error)  # which fails this answer too
        else:
            self._fail(error)

    def _fail(self, error: UpstreamError) -> None:
        self._error = error.with_traceback(None)  # its frames hold this answer: a cycle
        self._conn = None
        self._wake()
        sink, self._sink = self._sink, None
        if sink is not None:
            if self._chunks:
                data = b"".join(self._chunks)
                self._chunks.clear()
                self._size = 0
                sink.data(data)
            sink.fail(_again(error))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Gunzip:
    """One layer of gzip, undone in steps of bounded output, over every member the body holds.

    zlib's `max_length` keeps a small packet from inflating to gigabytes at once; what it did
    not take waits in `tail`. A layer with a `source` (gzip applied twice) takes its input
    from that layer's output, in the same bounded steps."""

    __slots__ = ("after_member", "inflater", "more", "source", "tail")

    def __init__(self, source: _Gunzip | None) -> None:
        self.source = source
        self.inflater: zlib._Decompress | None = None  # None between members
        self.tail = b""  # input not yet taken by the inflater
        self.more = False  # the last step filled its limit: the inflater may hold more output
        self.after_member = False  # a member has ended: zero bytes may pad the rest (as gzip(1) allows)

    def give(self, data: bytes) -> None:
        """Body bytes as they arrive (for the outermost layer)."""
        if self.source is not None:
            self.source.give(data)
        else:
            self.tail = self.tail + data if self.tail else data

    def pending(self) -> bool:
        """Input is held that may still give output."""
        return bool(self.tail) or self.more or (self.source is not None and self.source.pending())

    def take(self, limit: int) -> bytes:
        """Up to `limit` plain bytes from the input given so far; b"" once it is used up."""
        while True:
            out = self._inflate(limit)
            if out or self.source is None:
                return out
            feed = self.source.take(LAYER_STEP)
            if not feed:
                return b""
            self.tail = feed  # _inflate gave nothing: it used up all it had

    def check_end(self) -> None:
        """At the end of the body: a member begun and not ended is a body cut short."""
        if self.inflater is not None:
            raise ProtocolError("the gzip body is cut short")
        if self.source is not None:
            self.source.check_end()

    def _inflate(self, limit: int) -> bytes:
        parts = []
        try:
            while limit > 0 and (self.tail or self.more):
                inflater = self.inflater
                if inflater is None:
                    if self.after_member:
                        self.tail = self.tail.lstrip(b"\x00")
                        if not self.tail:
                            break
                    inflater = self.inflater = zlib.decompressobj(wbits=31)
                part = inflater.decompress(self.tail, limit)
                limit -= len(part)
                if inflater.eof:  # what follows is another member, padding, or garbage (a zlib.error)
                    self.tail, self.inflater, self.more, self.after_member = inflater.unused_data, None, False, True
                else:
                    self.tail, self.more = inflater.unconsumed_tail, not limit
                if part:
                    parts.append(part)
        except zlib.error as exc:
            raise ProtocolError(f"a broken gzip body: {exc}") from None
        return parts[0] if len(parts) == 1 else b"".join(parts)


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an origin: the socket, its place in the pool, flow control and
    silence. The bytes go to a ResponseParser, which calls on_head, on_body and on_end back."""

    def __init__(self, client: Http1Client, origin: tuple[str, int, bool]) -> None:
        self.client, self.origin, self.loop = client, origin, client.loop
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser(self)
        self.head_waiter: asyncio.Future[Answer] | None = None
        self.answer: Answer | None = None
        self.last_read = 0.0  # loop time of the last bytes received, or of sending the request
        self.read_timeout = 0.0
        self.got_bytes = False  # any byte of the current answer arrived
        self.paused = False
        self.closed = False
        self.requests = 0  # requests sent on this connection: tells a caller whether it moved on

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        self.got_bytes = True
        try:
            self.parser.feed(data)
        except UpstreamError as exc:  # bad framing, a broken gzip body
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client._forget(self)
        if exc is None:
            self.parser.feed_eof()  # which ends an answer framed by the connection's end
        if self.parser.expecting:
            if self.head_waiter is not None:
                self._fail(Disconnected("the upstream closed the connection before answering"))
            else:
                self._fail(Disconnected("the upstream closed the connection in the middle of the answer"))

    def pause_writing(self) -> None:
        """The request body waits in the transport's buffer; it is already in memory anyway."""

    def resume_writing(self) -> None:
        """See pause_writing."""

    # -- the parser's callbacks ---------------------------------------------------------------

    def on_head(
        self, status: int, headers: list[tuple[str, str]], content_type: str | None, codings: list[str]
    ) -> None:
        layers = _gzip_layers(codings) if codings else 0
        if layers:  # undone here, so the headers go: the client gets plain bytes
            headers = [header for header in headers if header[0].lower() != "content-encoding"]
        answer = self.answer = Answer(self, status, headers, content_type, layers)
        waiter, self.head_waiter = self.head_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def on_body(self, data: bytes) -> None:
        answer = self.answer
        assert answer is not None  # on_head made it; a failure stops the parser
        answer._feed(data)  # a broken gzip body raises ProtocolError, for data_received

    def on_end(self, keep_alive: bool) -> None:
        """The answer is complete: the connection goes back to the pool, or closes."""
        answer, self.answer = self.answer, None
        assert answer is not None
        answer._end()  # which may find the gzip body broken or cut short
        if keep_alive and not self.closed and answer._checked():
            self.resume()  # a pause was for the answer's reader; the next answer must be read
            self.client._park(self)
        else:
            self.close()

    # -- requests -----------------------------------------------------------------------------

    async def send(self, message: bytes, no_body: bool, read_timeout: float) -> Answer:
        """Send one request and wait for the head of its answer."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise Disconnected("the upstream closed the connection before answering")
        self.parser.expect(no_body)
        self.read_timeout = read_timeout
        self.got_bytes = False
        self.last_read = self.loop.time()
        self.requests += 1
        mine = self.requests
        self.client.busy.add(self)
        waiter: asyncio.Future[Answer] = self.loop.create_future()
        self.head_waiter = waiter
        try:
            transport.write(message)
            return await waiter
        except BaseException:
            # Cancelled or failed half way, the connection's state is unknown: close it. Unless the
            # answer already ended and the connection has moved on (parked, or serving another request).
            if self.requests == mine and self.parser.expecting:
                self.close()
            raise

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.last_read = self.loop.time()  # silence is counted from here: the pause was ours
            self.transport.resume_reading()

    def close(self) -> None:
        """Close for good (safe to call twice); whoever waits on this connection gets Disconnected."""
        self.client._forget(self)
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        if self.parser.expecting:
            self._fail(Disconnected("the connection was closed"))

    def _fail(self, error: UpstreamError) -> None:
        self.parser.reset()
        waiter, self.head_waiter = self.head_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        answer, self.answer = self.answer, None
        if answer is not None:
            answer._fail(error)
        self.close()


def _again(error: UpstreamError) -> UpstreamError:
    """A copy of a stored error, to raise: raising the stored one would put the reader's frames
    (and all the body they read) in a cycle with the answer that holds it, freed only by the
    garbage collector's rare full passes."""
    return type(error)(*error.args)


def _gzip_layers(values: list[str]) -> int:
    """How many layers of gzip the Content-Encoding values ask to undo; 0 to pass the body on as it
    came (another coding among them, or too many layers), headers and all."""
    codings = [coding.strip().lower() for value in values for coding in value.split(",") if coding.strip()]
    if len(codings) > MAX_GZIP_LAYERS or not _GZIP.issuperset(codings):
        return 0
    return len(codings)


class Http1Client:
    """Keep-alive connections per origin, at most `max_connections` open at once, and one watchdog
    timer; made once per process."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, *, max_connections: int) -> None:
        self.loop = asyncio.get_running_loop()
        self._ssl = ssl_context
        self._idle: dict[tuple[str, int, bool], dict[_Connection, None]] = {}
        self.busy: set[_Connection] = set()
        self._limit = max_connections
        self._open = 0  # connections counted against the limit (busy, idle, handed over) and connects under way
        self._counted: set[_Connection] = set()  # the connections among them, each freeing its slot once
        # Requests in line for a connection, first come first served: each future gets a connection
        # parked for its origin, or None for a slot kept for it to connect.
        self._waiters: OrderedDict[asyncio.Future[_Connection | None], tuple[str, int, bool]] = OrderedDict()
        self.waited = 0  # requests that found every connection busy and waited in line
        self.pool_timeouts = 0  # of those, the ones that gave up at connect_timeout (PoolExhausted)
        self._watch = self.loop.call_later(WATCH_SECONDS, self._check)
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def request(
        self,
        method: str,
        target: Target,
        headers: dict[str, str],
        body: bytes,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> Answer:
        """Send a request and return its answer once the head has arrived.

        A keep-alive connection the upstream closed while it sat idle is replaced by
        another; any other failure is raised for the caller to decide (another key, an error).
        Waiting for a free connection and connecting share connect_timeout."""
        message = self._message(method, target, headers, body)
        no_body = method == "HEAD"
        conn = None if self._waiters else self._reuse(target.origin)  # with others in line, behind them
        deadline = None
        while True:
            if conn is None:
                if deadline is None:
                    deadline = self.loop.time() + connect_timeout
                conn = await self._connection(target, deadline)
            kept_alive = conn.requests > 0
            try:
                return await conn.send(message, no_body, read_timeout)
            except Disconnected:
                if conn.got_bytes or not kept_alive:
                    raise
            conn = None

    def set_limit(self, max_connections: int) -> None:
        """A new limit, at once: more room goes to those in line; idle connections over it close."""
        self._limit = max_connections
        while self._open > max_connections and (conn := self._any_idle()) is not None:
            conn.close()
        self._grant()

    async def close(self) -> None:
        """Close every connection; requests in flight fail with Disconnected, those in line with ConnectFailed."""
        self._closed = True
        self._watch.cancel()
        waiters, self._waiters = self._waiters, OrderedDict()
        for future in waiters:
            if not future.done():
                future.set_exception(ConnectFailed("the client is closed"))
        for conn in [*self._counted]:
            conn.close()
        await asyncio.sleep(0)  # let the transports finish closing

    @staticmethod
    def _message(method: str, target: Target, headers: dict[str, str], body: bytes) -> bytes:
        head = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        text = (
            f"{method} {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n{head}"
            f"Accept-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        lines = len(headers) + 5
        if text.count("\n") != lines or text.count("\r") != lines:
            raise ValueError("a line break inside a request header")
        message = text.encode("utf-8", "surrogateescape")
        return message + body if body else message

    @staticmethod
    def _usable(conn: _Connection) -> bool:
        return not (conn.closed or conn.paused or conn.transport is None or conn.transport.is_closing())

    def _reuse(self, origin: tuple[str, int, bool]) -> _Connection | None:
        """The most recently used idle connection to `origin` (the one most likely still open)."""
        idle = self._idle.get(origin)
        while idle:
            conn = idle.popitem()[0]
            if self._usable(conn):
                return conn
            conn.close()
        return None

    def _any_idle(self) -> _Connection | None:
        return next((conn for idle in self._idle.values() for conn in idle), None)

    async def _connection(self, target: Target, deadline: float) -> _Connection:
        """A new connection while there is room; at the limit, in line behind the requests that came
        first, whichever frees first: a connection parked for this origin, or a slot to connect in."""
        while True:
            if not self._waiters and self._room():
                self._open += 1
                return await self._connect(target, deadline)
            conn = await self._wait(target.origin, deadline)
            if conn is None:
                try:
                    return await self._connect(target, deadline)
                except UpstreamTimeout:  # what the wait left of connect_timeout was not enough: no key's fault
                    raise self._exhausted() from None
            if self._usable(conn):
                return conn
            conn.close()  # it broke on the way over: its slot goes to the next in line

    def _room(self) -> bool:
        """Below the limit, once idle connections (to other origins: the caller found none to its own)
        are closed as needed: a request never waits while an idle connection holds its slot."""
        while self._open >= self._limit:
            conn = self._any_idle()
            if conn is None:
                return False
            conn.close()
        return True

    async def _wait(self, origin: tuple[str, int, bool], deadline: float) -> _Connection | None:
        """In line until a connection parked for `origin` (returned) or a slot (None: kept for the
        caller) comes free; PoolExhausted at `deadline`. A caller that leaves hands on what it was given."""
        future: asyncio.Future[_Connection | None] = self.loop.create_future()
        self._waiters[future] = origin
        self.waited += 1
        try:
            async with asyncio.timeout_at(deadline):
                return await future
        except BaseException as exc:
            if self._waiters.pop(future, None) is None and _given(future):
                conn = future.result()
                if conn is None:
                    self._release()
                elif not conn.closed:
                    self._park(conn)
            if isinstance(exc, TimeoutError):
                raise self._exhausted() from None
            raise

    def _exhausted(self) -> PoolExhausted:
        self.pool_timeouts += 1
        return PoolExhausted(f"no connection to the upstream came free in time ({self._limit} allowed)")

    async def _connect(self, target: Target, deadline: float) -> _Connection:
        """A new connection in a slot already counted, which a failure frees."""
        host, port, tls = target.origin
        try:
            if self._closed:
                raise ConnectFailed("the client is closed")
            context = (self._ssl or _default_ssl()) if tls else None
            async with asyncio.timeout_at(deadline):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self, target.origin),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if tls else None,
                )
        except BaseException as exc:
            self._release()
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(f"connecting to {target.host_header} timed out") from None
            if isinstance(exc, OSError):  # refused, unknown host, TLS failures (ssl.SSLError is an OSError)
                raise ConnectFailed(f"cannot connect to {target.host_header}: {exc}") from exc
            raise
        if conn.closed:  # lost before this resumed, uncounted: its slot is freed here
            self._release()
        else:
            self._counted.add(conn)
        return conn

    def _park(self, conn: _Connection) -> None:
        """An answer ended on `conn`: the first in line takes it (or the slot it frees), else it waits idle."""
        self.busy.discard(conn)
        conn.last_read = self.loop.time()
        if self._open > self._limit:  # the limit came down: connections over it close as they end
            conn.close()
            return
        waiters = self._waiters
        while waiters:
            future, origin = next(iter(waiters.items()))
            if future.done():  # its caller left and has yet to wake up
                del waiters[future]
            elif origin == conn.origin:
                del waiters[future]
                future.set_result(conn)
                return
            else:
                conn.close()
                return
        self._idle.setdefault(conn.origin, {})[conn] = None

    def _forget(self, conn: _Connection) -> None:
        self.busy.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle is not None:
            idle.pop(conn, None)
        if conn in self._counted:
            self._counted.remove(conn)
            self._release()

    def _release(self) -> None:
        """A slot is free: the first in line takes it."""
        self._open -= 1
        if self._waiters:
            self._grant()

    def _grant(self) -> None:
        """Slots below the limit go to those in line, in order."""
        waiters = self._waiters
        while waiters and self._open < self._limit:
            future, _ = waiters.popitem(last=False)
            if not future.done():  # else its caller left and has yet to wake up
                self._open += 1
                future.set_result(None)

    def _check(self) -> None:
        """Time out answers that went silent; close connections idle too long."""
        now = self.loop.time()
        silent = [c for c in self.busy if not c.paused and now - c.last_read > c.read_timeout]
        for conn in silent:
            conn._fail(UpstreamTimeout("upstream timed out"))
        for idle in self._idle.values():
            stale = [c for c in idle if now - c.last_read > IDLE_SECONDS]
            for conn in stale:
                conn.close()
        if not self._closed:
            self._watch = self.loop.call_later(WATCH_SECONDS, self._check)


def _given(future: asyncio.Future[_Connection | None]) -> bool:
    """The future holds a connection or a slot (not a cancellation or the client's closing)."""
    return future.done() and not future.cancelled() and future.exception() is None


_DEFAULT_SSL: list[ssl.SSLContext] = []


def _default_ssl() -> ssl.SSLContext:
    """The system's trusted CAs, loaded on the first TLS connection and shared afterwards."""
    if not _DEFAULT_SSL:
        _DEFAULT_SSL.append(ssl.create_default_context())
    return _DEFAULT_SSL[0]
