"""The answer parser on its own: bytes in, in whatever reads they come, and the calls it makes.

No socket and no loop (tests/test_http1.py has those): each answer here is fed whole, a byte a
read and cut in two at many places, and must be read the same way every time.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import cast

import pytest

from silicon_pool.http1_parser import ProtocolError, ResponseParser
from tests.test_http1 import NOT_HTTP, NOT_REUSED, OK, RFC_ALLOWED
from tests.test_pinned_http1 import CHUNKED, SAID_WRONG

Event = tuple[object, ...]
INTERIM = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
CHUNKED_SSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"b\r\ndata: one\n\n\r\n"
    b"B\r\ndata: two\n\n\r\n"
    b"0\r\n\r\n"
)
UNTIL_CLOSE = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"
# Answers read whole, and each what the request was (HEAD: a head only) and whether the connection ends after it.
READ = {
    "length": (OK, False, False),
    "chunked": (CHUNKED, False, False),
    "chunked-sse": (CHUNKED_SSE, False, False),
    "rfc-allowed": (RFC_ALLOWED, False, False),
    **{name: (answer, False, False) for name, answer in NOT_REUSED.items()},
    "interim": (INTERIM + INTERIM + OK, False, False),
    "interim-100-and-199": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 199 Odd\r\nX: y\r\n\r\n" + OK, False, False),
    "204": (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", False, False),
    "304-chunked": (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", False, False),
    "head": (b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n", True, False),
    "interim-then-head": (INTERIM + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", True, False),
    "empty-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False, False),
    "until-close": (UNTIL_CLOSE, False, True),
    "until-close-1.1": (b"HTTP/1.1 200 OK\r\n\r\nall of it", False, True),
}
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
# More answers, and the ProtocolError each must be refused with (tests/test_pinned_http1.py has others).
SAID_WRONG_HERE = {
    "empty-head-then-more": (b"\r\n\r\n" + b"x" * (70 * 1024), "not an HTTP/1.0 or HTTP/1.1 status line: b''"),
    "crlf-first": (b"\r\nHTTP/1.1 200 OK\r\n\r\n", "not an HTTP/1.0 or HTTP/1.1 status line: b''"),
    "long-status-line": (
        b"HTTP/1.1 2000 " + b"r" * 50 + b"\r\n\r\n",
        "not an HTTP/1.0 or HTTP/1.1 status line: b'HTTP/1.1 2000 " + "r" * 26 + "'",
    ),
    "first-header": (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "a malformed header line: b'Bad Name: x'"),
    "101": (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "the upstream switched protocols"),
    "two-lengths": (OK.replace(b"\r\n\r\n", b"\r\nContent-Length: 8\r\n\r\n"), "two different Content-Length headers"),
    "chunked-twice": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "a transfer coding other than chunked: 'chunked, chunked'",
    ),
    "long-coding": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + b"gzip, " * 10 + b"chunked\r\n\r\n0\r\n\r\n",
        "a transfer coding other than chunked: '" + "gzip, " * 6 + "gzip'",
    ),
    "long-length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: " + b"1" * 25 + b"\r\n\r\n",
        "a bad Content-Length: '" + "1" * 20 + "'",
    ),
    "long-chunk-line": (CHUNKED_HEAD + b"z" * 50 + b"\r\n", "a bad chunk-size line: b'" + "z" * 40 + "'"),
    "empty-chunk-line": (CHUNKED_HEAD + b"\r\nx\r\n0\r\n\r\n", "a bad chunk-size line: b''"),
    "chunk-end": (CHUNKED_HEAD + b"3\r\nabcXY", "a chunk does not end with CRLF"),
    "long-trailer": (
        CHUNKED_HEAD + b"0\r\nBad " + b"t" * 50 + b"\r\n\r\n",
        "a malformed trailer line: b'Bad " + "t" * 36 + "'",
    ),
}
# Answers refused for their framing, and the message if it is pinned.
REFUSED: dict[str, tuple[bytes, str | None]] = {
    **{name: (answer, None) for name, answer in NOT_HTTP.items() if name != "broken-gzip"},  # that one's body is
    **SAID_WRONG,
    **SAID_WRONG_HERE,
}


class Recorder:
    """A handler that writes down every call, body pieces as they came."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_head(
        self, status: int, headers: list[tuple[str, str]], content_type: str | None, codings: list[str]
    ) -> None:
        self.events.append(("head", status, headers, content_type, codings))

    def on_body(self, data: bytes) -> None:
        assert type(data) is bytes and data  # what Answer keeps and joins
        self.events.append(("body", data))

    def on_end(self, keep_alive: bool) -> None:
        self.events.append(("end", keep_alive))

    def merged(self) -> list[Event]:
        """The events with the body pieces in a row joined: what no split may change."""
        merged: list[Event] = []
        for event in self.events:
            if event[0] == "body" and merged and merged[-1][0] == "body":
                merged[-1] = ("body", cast(bytes, merged[-1][1]) + cast(bytes, event[1]))
            else:
                merged.append(event)
        return merged


def pieces(message: bytes, cuts: Sequence[int]) -> list[bytes]:
    """`message` cut at the (sorted) positions `cuts`."""
    edges = [0, *cuts, len(message)]
    return [message[start:end] for start, end in itertools.pairwise(edges) if end > start]


def read(reads: Sequence[bytes], no_body: bool = False, eof: bool = False) -> tuple[list[Event], str | None]:
    """Feed `reads` to a parser expecting one answer, then the connection's end if `eof`:
    the events (body pieces joined) and the ProtocolError's message, if any."""
    recorder = Recorder()
    parser = ResponseParser(recorder)
    parser.expect(no_body)
    try:
        for data in reads:
            parser.feed(data)
        if eof:
            parser.feed_eof()
    except ProtocolError as exc:
        return recorder.merged(), str(exc)
    return recorder.merged(), None


def splits(message: bytes) -> Iterator[list[bytes]]:
    """A byte a read, and cut in two at every place (every 97th in a long answer, and near its ends)."""
    yield [message[i : i + 1] for i in range(len(message))]
    size = len(message)
    places = range(1, size) if size < 2000 else [*range(1, 8), *range(8, size - 8, 97), *range(size - 8, size)]
    for cut in places:
        yield [message[:cut], message[cut:]]


@pytest.mark.parametrize(("answer", "no_body", "eof"), list(READ.values()), ids=list(READ))
def test_an_answer_reads_the_same_however_its_reads_split(answer: bytes, no_body: bool, eof: bool) -> None:
    whole, error = read([answer], no_body, eof)
    assert error is None and whole[-1][0] == "end" and [e[0] for e in whole].count("head") == 1
    for reads in splits(answer):
        assert read(reads, no_body, eof) == (whole, None), [len(r) for r in reads]


@pytest.mark.parametrize(("answer", "message"), list(REFUSED.values()), ids=list(REFUSED))
def test_an_answer_is_refused_the_same_however_its_reads_split(answer: bytes, message: str | None) -> None:
    _, error = read([answer])
    assert error is not None and (message is None or error == message)
    for reads in splits(answer):
        assert read(reads)[1] == error, [len(r) for r in reads]


def test_what_an_answer_is_read_as() -> None:
    events, _ = read([CHUNKED_SSE])
    sse = ("Content-Type", "text/event-stream")
    assert events == [
        ("head", 200, [sse, ("Transfer-Encoding", "chunked")], "text/event-stream", []),
        ("body", b"data: one\n\ndata: two\n\n"),
        ("end", True),
    ]
    events, _ = read([INTERIM + INTERIM + OK])
    assert events == [
        ("head", 200, [("Content-Type", "application/json"), ("Content-Length", "7")], "application/json", []),
        ("body", b'{"a":1}'),
        ("end", True),
    ]
    assert read([UNTIL_CLOSE], eof=True)[0] == [
        ("head", 200, [("Content-Type", "text/plain")], "text/plain", []),
        ("body", b"all of it"),
        ("end", False),
    ]
    head = b"HTTP/1.1 200 OK\r\nContent-Type: a\r\nX:  \t v  w \t\r\nContent-Type: b\r\nY: XyX\r\n"
    assert read([head + b"Content-Length: 0\r\n\r\n"])[0][0] == (
        "head",
        200,
        [("Content-Type", "a"), ("X", "v  w"), ("Content-Type", "b"), ("Y", "XyX"), ("Content-Length", "0")],
        "b",  # the last one
        [],
    )
    assert read([b"HTTP/1.1 204 No Content\r\n\r\n"])[0] == [("head", 204, [], None, []), ("end", True)]


@pytest.mark.parametrize(
    ("headers", "no_body", "codings"),
    [
        (b"Content-Encoding: gzip\r\nContent-Encoding: br, x\r\nContent-Length: 0", False, ["gzip", "br, x"]),
        (b"Content-Encoding: gzip\r\nContent-Length: 9", True, []),  # the answer to HEAD: no body to decode
        (b"Content-Encoding: gzip\r\nContent-Length: 0", False, ["gzip"]),
    ],
    ids=["in-order", "head", "empty-body"],
)
def test_content_codings_are_told_for_a_body_only(headers: bytes, no_body: bool, codings: list[str]) -> None:
    (head, *_), _ = read([b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n\r\n"], no_body)
    assert head[4] == codings
    (head, *_), _ = read([b"HTTP/1.1 204 No Content\r\n" + headers + b"\r\n\r\n"])
    assert head[4] == []


@pytest.mark.parametrize(
    ("answer", "keep_alive"),
    [
        (OK, True),
        (OK.replace(b"HTTP/1.1", b"HTTP/1.0"), False),
        (OK.replace(b"Content-Length", b"Connection: Keep-Alive, Close\r\nContent-Length"), False),
        (OK.replace(b"Content-Length", b"Connection: close\r\nConnection: keep-alive\r\nContent-Length"), False),
        (OK.replace(b"Content-Length", b"Connection: keep-alive\r\nContent-Length"), True),
        (NOT_REUSED["length-and-chunked"], False),
        (b"HTTP/1.1 204 No Content\r\n\r\n", True),
        (b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", False),
    ],
    ids=["1.1", "1.0", "close-in-a-list", "close-then-keep-alive", "keep-alive", "both-framings", "204", "204-close"],
)
def test_whether_the_connection_may_carry_another_answer(answer: bytes, keep_alive: bool) -> None:
    events, error = read([answer])
    assert error is None and events[-1] == ("end", keep_alive)


def test_the_64_kib_bound_holds_however_the_reads_split() -> None:
    """A head, chunk line or trailer line of exactly 64 KiB is read, one byte more refused: in one
    read, or cut anywhere in its last bytes (the end of the line may have begun to arrive)."""
    bound = 64 * 1024
    start = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for longer in (0, 1):
        head = start + b"X: " + b"h" * (bound - len(start) - 3 + longer)
        chunk_line = b"1;e=" + b"c" * (bound - 4 + longer)
        trailer = b"T: " + b"t" * (bound - 3 + longer)
        for answer, line in (
            (head + b"\r\n\r\n1\r\nx\r\n0\r\n\r\n", head),
            (chunked + chunk_line + b"\r\nx\r\n0\r\n\r\n", chunked + chunk_line),
            (chunked + b"1\r\nx\r\n0\r\n" + trailer + b"\r\n\r\n", chunked + b"1\r\nx\r\n0\r\n" + trailer),
        ):
            ends = len(line)
            for cut in [None, *range(ends - 2, ends + 4)]:
                events, error = read([answer] if cut is None else [answer[:cut], answer[cut:]])
                if longer:
                    assert error is not None and error.endswith("is over 64 KiB"), (cut, error)
                else:
                    assert error is None and events[1:] == [("body", b"x"), ("end", True)], (cut, error)
            events, error = read([answer[: ends - 5], *(answer[i : i + 1] for i in range(ends - 5, len(answer)))])
            assert (error is not None) == bool(longer) and (longer or events[-1] == ("end", True))


def test_an_unfinished_head_or_line_is_refused_once_it_is_sure_to_be_too_long() -> None:
    """Held without its end, it is refused as soon as no end could bring it back to 64 KiB."""
    bound = 64 * 1024
    for start, mark in ((b"HTTP/1.1 200 OK\r\nX: ", b"\r\n\r\n"), (CHUNKED_HEAD + b"1;e=", b"\r\n")):
        for held, refused in ((bound + len(mark) - 1, False), (bound + len(mark), True)):
            parser = ResponseParser(Recorder())
            parser.expect(False)
            line = start + b"x" * (held - len(start) + (len(CHUNKED_HEAD) if mark == b"\r\n" else 0))
            parser.feed(line[: len(start)])
            try:
                parser.feed(line[len(start) :])
            except ProtocolError as exc:
                assert refused and str(exc).endswith("is over 64 KiB"), (held, exc)
            else:
                assert not refused, held


def test_a_length_framed_body_ends_where_its_length_says() -> None:
    recorder = Recorder()
    parser = ResponseParser(recorder)
    parser.expect(False)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(ProtocolError, match="no answer was due"):
        parser.feed(b"cdeHTTP/1.1")  # the rest of the body, and bytes of no answer asked for
    assert recorder.merged()[1:] == [("body", b"abcde"), ("end", True)]


def test_body_bytes_are_handed_over_as_they_lie() -> None:
    recorder = Recorder()
    parser = ResponseParser(recorder)
    parser.expect(False)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    piece = b"0123"
    parser.feed(piece)
    assert recorder.events[-1][1] is piece  # the usual piece of a length-framed body: no copy at all
    parser.feed(b"456789")
    assert recorder.events[-1] == ("end", True)


@pytest.mark.parametrize(
    ("answer", "length"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 3),  # the same value twice: one
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0000000000000000003\r\n\r\nabc", 3),  # 19 digits
        (b"HTTP/1.1 200 OK\r\nContent-Length:  3 \t\r\n\r\nabc", 3),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 00000000000000000003\r\n\r\nabc", None),  # 20
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc", None),
        (b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\nabc", None),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 03\r\n\r\nabc", None),
    ],
    ids=["twice", "19-digits", "spaces", "20-digits", "list", "empty", "same-value-other-digits"],
)
def test_content_length(answer: bytes, length: int | None) -> None:
    events, error = read([answer])
    if length is None:
        assert error is not None and ("Content-Length" in error)
    else:
        assert error is None and events[1:] == [("body", b"abc"[:length]), ("end", True)]


@pytest.mark.parametrize(
    "line",
    [
        b"1",
        b"01",
        b"0000000000000001",
        b"1;a",
        b"1 ; a = b",
        b"1;\ta\t=\tb",
        b'1;a="b\\"c";d',
        b'1;a="\t !#[]~\x80"',
        b"1\t;a",
    ],
    ids=["plain", "leading-zero", "16-digits", "ext", "bws", "tabs", "quoted", "quoted-bytes", "tab"],
)
def test_chunk_size_lines_rfc_9112_allows_are_read(line: bytes) -> None:
    answer = CHUNKED_HEAD + line + b"\r\nx\r\n0\r\n\r\n"
    for reads in splits(answer):
        events, error = read(reads)
        assert error is None and events[1:] == [("body", b"x"), ("end", True)], reads


@pytest.mark.parametrize(
    "line",
    [b"00000000000000001", b"1 ", b"1;", b"1;a=", b"1;a b", b'1;"a"', b"x", b"-1", b"0x1", b"1\x00", b";a", b""],
    ids=[
        "17-digits",
        "space",
        "no-name",
        "no-value",
        "two-words",
        "quoted-name",
        "x",
        "minus",
        "0x",
        "nul",
        "no-size",
        "empty",
    ],
)
def test_chunk_size_lines_it_does_not_allow_are_refused(line: bytes) -> None:
    answer = CHUNKED_HEAD + line + b"\r\nx\r\n0\r\n\r\n"
    for reads in splits(answer):
        error = read(reads)[1]
        assert error is not None and error.startswith("a bad chunk-size line"), reads


def test_the_connections_end_ends_only_an_answer_framed_by_it() -> None:
    recorder = Recorder()
    parser = ResponseParser(recorder)
    parser.feed_eof()  # nothing due: nothing happens
    parser.expect(False)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc")
    parser.feed_eof()
    assert parser.expecting and recorder.events[-1] == ("body", b"abc")  # cut short: the caller says so
    ended = Recorder()
    until_close = ResponseParser(ended)
    until_close.expect(False)
    until_close.feed(UNTIL_CLOSE)
    until_close.feed_eof()
    assert not until_close.expecting and ended.events[-1] == ("end", False)
    assert read([UNTIL_CLOSE[:20]], eof=True) == ([], None)  # a head cut short: nothing came


def test_bytes_when_no_answer_is_due_are_refused() -> None:
    events, error = read([OK + b"HTTP/1.1 200 OK\r\n"])
    assert events[-1] == ("end", True) and error == "bytes from the upstream when no answer was due"
    parser = ResponseParser(Recorder())
    with pytest.raises(ProtocolError, match="no answer was due"):
        parser.feed(b"x")


def test_reset_forgets_what_was_held() -> None:
    recorder = Recorder()
    parser = ResponseParser(recorder)
    parser.expect(False)
    parser.feed(b"HTTP/1.1 200 OK\r\nX-Half")
    parser.reset()
    assert not parser.expecting
    parser.expect(False)
    parser.feed(OK)
    assert recorder.events[-1] == ("end", True) and not parser.expecting
