"""The upstream's HTTP/1.1 answers read from bytes, with no socket, pool or timer in sight.

Bytes go in through `feed` as they arrive; out come calls to a handler (as llhttp makes them):
`on_head` once the real answer's head is in (1xx interim answers are skipped), `on_body` for
each piece of the body, `on_end` when the answer is complete, or a ProtocolError. No event
objects: this runs for every event of a stream, hundreds per answer, each in a read of its own.

Framing is checked to the letter of RFC 9112, because a lax parser on a reused connection is one
desync away from handing one answer's bytes to another caller. Bytes are only copied when they
must be: a read that holds whole chunks, or the next piece of a length-framed body, is read where
it lies; only an unfinished head or line is kept for the next read.
"""

from __future__ import annotations

import re
from typing import Protocol

MAX_HEAD = 64 * 1024  # a longer answer head (status line and headers), chunk line or trailer line is refused
NO_BODY_STATUSES = frozenset({204, 304})

# The grammar of RFC 9110 and 9112 as regular expressions, compiled once. The quantifiers are
# possessive (no backtracking): every delimiter lies outside the class before it, so nothing a
# backtrack could find is lost, and a refused 64 KiB line costs a linear scan.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]++"
_TEXT = rb"[\t\x20-\x7e\x80-\xff]*+"  # a field value or reason phrase: no control byte but HTAB
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*+"'
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: " + _TEXT + rb")?+")
_FIELD_LINE = re.compile(_TOKEN + rb":" + _TEXT)
_FIELD_LINES = re.compile(rb"(?:\r\n" + _TOKEN + rb":" + _TEXT + rb")*+")  # a head's, after its status line
_CHUNK_EXT = rb"[ \t]*+;[ \t]*+" + _TOKEN + rb"(?:[ \t]*+=[ \t]*+(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?+"
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:" + _CHUNK_EXT + rb")*+")  # RFC 9112 §7.1 and §7.1.1

# What the parser expects next.
_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE = range(8)


class UpstreamError(Exception):
    """The upstream could not be reached, broke off, or answered something that is not HTTP/1.1."""


class ProtocolError(UpstreamError):
    """The upstream sent bytes that are not a valid HTTP/1.1 answer."""


class AnswerHandler(Protocol):
    """What a ResponseParser tells, as it reads an answer."""

    def on_head(
        self, status: int, headers: list[tuple[str, str]], content_type: str | None, codings: list[str]
    ) -> None:
        """The final answer's head: `codings` are its Content-Encoding values, none for an answer without a body."""
        ...

    def on_body(self, data: bytes) -> None:
        """A piece of the body (never empty), in the order it came."""
        ...

    def on_end(self, keep_alive: bool) -> None:
        """The answer is complete; `keep_alive`: the connection may carry another one."""
        ...


class ResponseParser:
    """One connection's answers, one after the other: `expect` one for each request sent."""

    __slots__ = ("_buf", "_keep_alive", "_no_body", "_on_body", "_on_end", "_on_head", "_remaining", "_state")

    def __init__(self, handler: AnswerHandler) -> None:
        self._on_head, self._on_body, self._on_end = handler.on_head, handler.on_body, handler.on_end
        self._buf = bytearray()  # the start of an unfinished head or line, kept for the next read
        self._state = _IDLE
        self._remaining = 0  # body bytes still to come in the current length or chunk
        self._keep_alive = False
        self._no_body = False  # the request was HEAD: the answer has a head only

    @property
    def expecting(self) -> bool:
        """An answer, or the rest of one, is due."""
        return self._state != _IDLE

    def expect(self, no_body: bool) -> None:
        """A request went out: its answer comes next (a head only, if `no_body`: the request was HEAD)."""
        self._state, self._no_body = _HEAD, no_body

    def reset(self) -> None:
        """Expect nothing more, and forget what was held: the connection failed or closes."""
        self._state = _IDLE
        self._buf.clear()

    def feed_eof(self) -> None:
        """The connection ended cleanly: that ends an answer framed by it (calling `on_end`).

        Any other answer due is cut short; telling how is left to the caller (`expecting`)."""
        if self._state == _UNTIL_CLOSE:
            self._state = _IDLE
            self._on_end(False)

    def feed(self, data: bytes) -> None:
        """Bytes as they arrive; a ProtocolError for bytes that are not a valid answer, or for none asked for."""
        if self._state == _LENGTH and len(data) <= self._remaining:
            # The usual case once a length-framed answer's head is in (nothing is held then): the
            # bytes go straight through.
            self._remaining -= len(data)
            if data:
                self._on_body(data)
            if not self._remaining:
                self._finish()
            return
        buf = self._buf
        if buf:  # an unfinished head or line: look for its end in the new bytes only
            state, start = self._state, len(buf)
            buf += data
            if state != _CHUNK_END and _find(buf, 0, state, start) < 0:
                return
            data = bytes(buf)
            buf.clear()
        pos = self._parse(data)
        if pos < len(data):
            buf += memoryview(data)[pos:]

    # -- parsing ------------------------------------------------------------------------------

    def _parse(self, data: bytes) -> int:
        """Consume what `data` holds: a head, then the body in whatever framing the head chose.
        Returns where the bytes begin that must wait for more (an unfinished head or line)."""
        pos, size = 0, len(data)
        while pos < size:
            state = self._state
            if state == _CHUNK_SIZE_LINE:  # first: a stream's events come one chunk a read
                end = data.find(b"\r\n", pos)
                if end < 0 or end - pos > MAX_HEAD:  # rarely: _find refuses a line too long, or it is unfinished
                    _find(data, pos, state)
                    break
                match = _CHUNK_LINE.fullmatch(data, pos, end)
                if match is None:
                    raise ProtocolError(f"a bad chunk-size line: {data[pos : min(end, pos + 40)]!r}")
                pos, chunk = end + 2, int(match[1], 16)
                if not chunk:
                    self._state = _TRAILER
                    continue
                stop = pos + chunk
                if stop > size:  # the chunk goes on in the reads to come
                    self._state, self._remaining = _CHUNK_DATA, stop - size
                    if pos < size:
                        self._on_body(data[pos:])
                    return size
                self._on_body(data[pos:stop])
                if data.startswith(b"\r\n", stop):
                    pos = stop + 2  # the whole chunk was here: the next size line follows
                else:  # its CRLF comes in a later read, or is missing
                    pos, self._state = stop, _CHUNK_END
            elif state == _CHUNK_END:
                if size - pos < 2:
                    break
                if not data.startswith(b"\r\n", pos):
                    raise ProtocolError("a chunk does not end with CRLF")
                pos += 2
                self._state = _CHUNK_SIZE_LINE
            elif state in (_LENGTH, _CHUNK_DATA):
                take = min(self._remaining, size - pos)
                self._remaining -= take
                self._on_body(data[pos : pos + take])
                pos += take
                if not self._remaining:
                    if state == _LENGTH:
                        self._finish()
                    else:
                        self._state = _CHUNK_END
            elif state == _HEAD:
                end = _find(data, pos, state)
                if end < 0:
                    break
                self._head(data, pos, end)
                pos = end + 4
            elif state == _TRAILER:
                end = _find(data, pos, state)
                if end < 0:
                    break
                if end == pos:
                    self._finish()
                elif not _FIELD_LINE.fullmatch(data, pos, end):
                    raise ProtocolError(f"a malformed trailer line: {data[pos : min(end, pos + 40)]!r}")
                pos = end + 2
            elif state == _UNTIL_CLOSE:
                self._on_body(data[pos:])
                pos = size
            else:  # bytes after a complete answer, or for no request: the connection is not to be trusted
                raise ProtocolError("bytes from the upstream when no answer was due")
        return pos

    def _head(self, data: bytes, start: int, end: int) -> None:
        """Read the head in data[start:end] (its blank line not included) and choose the body's framing."""
        line_end = data.find(b"\r\n", start, end)
        if line_end < 0:
            line_end = end
        version = _STATUS_LINE.fullmatch(data, start, line_end)
        if version is None:
            raise ProtocolError(f"not an HTTP/1.0 or HTTP/1.1 status line: {data[start : min(line_end, start + 40)]!r}")
        if not _FIELD_LINES.fullmatch(data, line_end, end):  # names are tokens; no CR, LF or NUL
            raise ProtocolError(f"a malformed header line: {_bad_field_line(data[line_end + 2 : end])[:40]!r}")
        status = int(version[2])
        if 100 <= status < 200:
            if status == 101:
                raise ProtocolError("the upstream switched protocols")
            return  # an interim answer (103 Early Hints…): the real one follows
        headers: list[tuple[str, str]] = []
        content_type = length = encoding = None
        close = False
        codings: list[str] = []
        for line in data[line_end + 2 : end].split(b"\r\n") if line_end < end else ():
            name, _, value = line.partition(b":")
            text = value.strip(b" \t").decode("utf-8", "surrogateescape")
            key = name.decode("latin-1")
            headers.append((key, text))
            lower = key.lower()
            if lower == "content-type":
                content_type = text
            elif lower == "content-length":
                if length is not None and length != text:
                    raise ProtocolError("two different Content-Length headers")
                length = text
            elif lower == "transfer-encoding":
                encoding = text if encoding is None else f"{encoding}, {text}"
            elif lower == "connection":
                close = close or "close" in text.lower()
            elif lower == "content-encoding":
                codings.append(text)
        self._keep_alive = version[1] == b"1" and not close
        if self._no_body or status in NO_BODY_STATUSES:
            self._on_head(status, headers, content_type, [])
            self._finish()
            return
        if encoding is not None:
            if encoding.strip().lower() != "chunked":  # we sent no TE: any other coding is not ours to undo
                raise ProtocolError(f"a transfer coding other than chunked: {encoding[:40]!r}")
            if length is not None:  # both framings: a smuggling risk, never reused (RFC 9112 §6.3)
                self._keep_alive = False
            self._state = _CHUNK_SIZE_LINE
        elif length is not None:
            # At most 19 digits, as a chunk size has at most 16 hex digits: no body is that long.
            if not (length.isascii() and length.isdigit() and len(length) <= 19):
                raise ProtocolError(f"a bad Content-Length: {length[:20]!r}")
            self._remaining, self._state = int(length), _LENGTH
        else:
            self._state, self._keep_alive = _UNTIL_CLOSE, False
        self._on_head(status, headers, content_type, codings)
        if self._state == _LENGTH and not self._remaining:
            self._finish()

    def _finish(self) -> None:
        self._state = _IDLE
        self._on_end(self._keep_alive)


def _find(data: bytes | bytearray, pos: int, state: int, since: int = 0) -> int:
    """Where the head (in state _HEAD) or the line that starts at `pos` ends, looking from `since`
    on (bytes before it were looked at); -1 while more bytes may complete it. One longer than
    MAX_HEAD is refused whether all of it has arrived or not: how the reads split an answer
    never changes whether it is refused."""
    mark = b"\r\n\r\n" if state == _HEAD else b"\r\n"
    end = data.find(mark, max(since - len(mark) + 1, pos))
    length = end - pos if end >= 0 else len(data) - pos - len(mark) + 1  # at least this long, once it ends
    if length > MAX_HEAD:
        what = "the answer's head" if state == _HEAD else "a chunk-size or trailer line"
        raise ProtocolError(f"{what} is over 64 KiB")
    return end


def _bad_field_line(fields: bytes) -> bytes:
    """The first header line that is not `token ":" field-value`, for the error."""
    return next((line for line in fields.split(b"\r\n") if not _FIELD_LINE.fullmatch(line)), fields)
