"""Our answer parser against llhttp (the parser of Node.js, through httptools): the same bytes in
the same reads must be read as the same framing, or both must refuse them.

Compared: the final answer's status and header fields, its body, after which read it ended (the
bytes left over are then the next answer's, or a desync), and whether the connection may carry
another answer. Fed: the answers of the other HTTP/1.1 tests, the fuzz test's answers (mutated
or not), and answers built here of every framing and of the forms RFC 9112 allows or forbids;
each a byte a read and in random reads.

llhttp cannot be told what we know, so the harness tells it: that the request was HEAD (it
would wait for a body) by ending the answer at its head; that 1xx answers are interim (it reads
them as answers of their own) by reading past them. httptools does not expose llhttp_finish, so
what the connection's end does to an answer framed by it is not compared (tests/test_http1_parser.py
checks ours). Where the two still differ, KNOWN below says why; each exception applies only to
answers whose bytes show the form it names, and only in the direction it names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import httptools
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from silicon_pool.http1_parser import ProtocolError, ResponseParser
from tests.test_http1_fuzz import Case, cases
from tests.test_http1_parser import READ, REFUSED, pieces

CORPUS = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Reading(NamedTuple):
    """What a parser made of an answer's framing; all of a refused answer is that it was refused."""

    refused: bool
    status: int | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()  # the final head's fields, values without OWS around them
    body: bytes = b""
    end: int | None = None  # bytes fed up to the end of the read in which the answer ended; None: not ended
    keep_alive: bool | None = None


REFUSAL = Reading(refused=True)


class _Ours:
    """Our parser, its calls kept as a Reading."""

    def __init__(self, no_body: bool) -> None:
        self.parser = ResponseParser(self)
        self.parser.expect(no_body)
        self.no_body = no_body
        self.status: int | None = None
        self.headers: tuple[tuple[bytes, bytes], ...] = ()
        self.body: list[bytes] = []
        self.keep_alive: bool | None = None

    def read(self, reads: Sequence[bytes]) -> Reading:
        fed = 0
        for data in reads:
            fed += len(data)
            try:
                self.parser.feed(data)
            except ProtocolError:
                if self.keep_alive is None:
                    return REFUSAL
                # else: bytes after the end in the same read, which are the next answer's
            if self.keep_alive is not None:
                keep_alive = None if self.no_body else self.keep_alive
                return Reading(False, self.status, self.headers, b"".join(self.body), fed, keep_alive)
        return Reading(False, self.status, self.headers, b"".join(self.body))

    def on_head(
        self, status: int, headers: list[tuple[str, str]], content_type: str | None, codings: list[str]
    ) -> None:
        self.status = status
        self.headers = tuple(
            (name.encode("latin-1"), value.encode("utf-8", "surrogateescape")) for name, value in headers
        )

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_end(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive


class _End(Exception):
    """Raised in a callback to stop llhttp at the end of the answer (it would read on, into the next)."""


class _Llhttp:
    """httptools' response parser, its callbacks kept as a Reading."""

    def __init__(self, no_body: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.no_body = no_body
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.in_head = True
        self.keep_alive: bool | None = None

    def read(self, reads: Sequence[bytes]) -> Reading:
        fed = 0
        for data in reads:
            fed += len(data)
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                if not isinstance(exc.__context__, _End):
                    raise
                keep_alive = None if self.no_body else self.keep_alive
                return Reading(False, self.status, tuple(self.headers), b"".join(self.body), fed, keep_alive)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade):
                return REFUSAL
        if self.status is None:  # the head is not all in: nothing has been read yet
            return Reading(False)
        return Reading(False, self.status, tuple(self.headers), b"".join(self.body))

    def on_message_begin(self) -> None:
        self.status, self.headers, self.body, self.in_head = None, [], [], True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:  # after the head: a trailer
            self.headers.append((name, value.rstrip(b" \t")))  # llhttp leaves trailing OWS in

    def on_headers_complete(self) -> None:
        self.in_head = False
        status = self.parser.get_status_code()
        if status >= 200:
            self.status = status
            if self.no_body:  # the request was HEAD: the head is all of it
                self._end()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.status is not None:  # not an interim answer, which llhttp reads as one of its own
            self._end()

    def _end(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        raise _End


# -- where llhttp and we part, on purpose ------------------------------------------------------------


class Seen(NamedTuple):
    message: bytes
    no_body: bool  # the request was HEAD
    held: bool  # our parser holds an unfinished head or line at the end of the bytes


class Known(NamedTuple):
    why: str
    shows: Callable[[Seen], bool]  # the answer has the form named
    direction: Callable[[Reading, Reading], bool]  # (ours, llhttp's): they differ the way named


def _has(pattern: bytes) -> Callable[[Seen], bool]:
    found = re.compile(pattern, re.IGNORECASE).search
    return lambda seen: found(seen.message) is not None


def _we_refuse(mine: Reading, theirs: Reading) -> bool:
    return mine.refused and not theirs.refused


def _llhttp_refuses(mine: Reading, theirs: Reading) -> bool:
    return theirs.refused and not mine.refused


def _keep_alive_only(mine: Reading, theirs: Reading) -> bool:
    return mine._replace(keep_alive=None) == theirs._replace(keep_alive=None)


def _transfer_codings(seen: Seen) -> list[bytes]:
    return [value.strip(b" \t").lower() for value in re.findall(rb"(?i)\ntransfer-encoding:([^\r\n]*)", seen.message)]


def _bodiless_with_length(seen: Seen) -> bool:
    statuses = re.findall(rb"HTTP/[^ \r\n]* ([0-9]{3})", seen.message)
    return b"content-length:" in seen.message.lower() and (seen.no_body or bool({b"204", b"304"} & set(statuses)))


KNOWN = {
    "judged-when-whole": Known(
        "llhttp refuses a bad head or chunk line at its first bad byte; we judge a head or line once"
        " all of it is in (or it passes 64 KiB), so an unfinished one is neither read nor refused yet",
        lambda seen: seen.held,
        lambda mine, theirs: theirs.refused and not mine.refused and mine.end is None,
    ),
    "duplicate-length": Known(
        "llhttp refuses a second Content-Length even of the same value; RFC 9110 §8.6 lets a recipient"
        " take identical ones as one, and we do (two different ones we refuse too)",
        _has(rb"\ncontent-length:(?:[^\r\n]*\r?\n)+?content-length:"),
        _llhttp_refuses,
    ),
    "long-length": Known(
        "we refuse a Content-Length of 20 digits or more (leading zeros too), as a chunk size of more"
        " than 16 hex digits; llhttp reads values up to 2^64 - 1 however many zeros lead them",
        _has(rb"\ncontent-length:[ \t]*[0-9]{20}"),
        _we_refuse,
    ),
    "both-framings": Known(
        "llhttp refuses Transfer-Encoding with Content-Length; RFC 9112 §6.3 has Transfer-Encoding"
        " win, and we read so, never reusing the connection (and the proxy drops Content-Length)",
        lambda seen: bool(_transfer_codings(seen)) and b"content-length:" in seen.message.lower(),
        _llhttp_refuses,
    ),
    "transfer-coding": Known(
        "we refuse any transfer coding but a single chunked: we send no TE, so no other coding is"
        " ours to undo (RFC 9110 §10.1.4), and chunked twice is forbidden (RFC 9112 §6.1); llhttp"
        " reads until the close when chunked is not last, and chunked when it is",
        lambda seen: _transfer_codings(seen) not in ([], [b"chunked"]),
        _we_refuse,
    ),
    "chunk-bws": Known(
        "RFC 9112 §7.1.1 allows BWS around a chunk extension's `;` and `=`, and we read it; llhttp"
        " refuses it (its lenient_spaces_after_chunk_size is off)",
        lambda seen: re.search(rb"[ \t][;=]|[;=][ \t]", seen.message.partition(b"\r\n\r\n")[2]) is not None,
        _llhttp_refuses,
    ),
    "chunk-ext-empty-value": Known(
        "llhttp reads a chunk extension with `=` and no value; RFC 9112 §7.1.1 has a token or a"
        " quoted string after the `=`, and we refuse the line without one",
        lambda seen: re.search(rb"=[ \t]*(?:;|\r?\n)", seen.message.partition(b"\r\n\r\n")[2]) is not None,
        _we_refuse,
    ),
    "chunk-size-digits": Known(
        "we refuse a chunk size of more than 16 hex digits, leading zeros and all (RFC 9112 §7.1 asks"
        " a recipient to guard against overflow; we bound the line); llhttp reads the value",
        _has(rb"\n[0-9a-f]{17}"),
        _we_refuse,
    ),
    "status-below-100": Known(
        "a status code's first digit is its class (RFC 9110 §15), and 0 is none: we refuse 000-099;"
        " llhttp reads any three digits",
        _has(rb"HTTP/[^ \r\n]* 0"),
        _we_refuse,
    ),
    "version": Known(
        "we read HTTP/1.0 and HTTP/1.1 only (RFC 9112 §2.3); llhttp reads 0.9, 2.0 and others",
        _has(rb"HTTP/(?!1\.[01] )"),
        _we_refuse,
    ),
    "reason-control": Known(
        "RFC 9112 §4 allows HTAB, SP, VCHAR and obs-text in a reason phrase, and we refuse control"
        " bytes there as in field values; llhttp reads them",
        _has(rb"HTTP/[^ \r\n]* [0-9]{3} [^\r\n]*[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"),
        _we_refuse,
    ),
    "bodiless-length": Known(
        "a 204 or 304 answer, or one to HEAD, has no body whatever its Content-Length says (RFC 9112"
        " §6.3), so we do not read the value; llhttp refuses one that is not a number",
        _bodiless_with_length,
        _llhttp_refuses,
    ),
    "empty-line-first": Known(
        "llhttp skips empty lines before a status line (RFC 9112 §2.2 lets a server do so before a"
        " request line); an answer due starts with its status line, and we refuse anything else",
        lambda seen: seen.message.startswith((b"\r", b"\n")) or b"\n\r\n\r\n" in seen.message,
        _we_refuse,
    ),
    "http-1.0-keep-alive": Known(
        "llhttp would reuse an HTTP/1.0 connection that says keep-alive; we never reuse one",
        _has(rb"HTTP/1\.0 [^\r\n]*\r\n(?:[^\r\n]*\r\n)*?connection:[^\r\n]*keep-alive"),
        _keep_alive_only,
    ),
    "head-over-64-kib": Known(
        "we refuse a head, chunk line or trailer line over 64 KiB; llhttp has no bound of its own",
        lambda seen: len(seen.message) > 64 * 1024,
        _we_refuse,
    ),
}


def check(message: bytes, reads: Sequence[bytes], no_body: bool = False) -> set[str]:
    """The two readings of `message` arrived in `reads` agree, or differ as a KNOWN exception says:
    how they agreed, or the names of the exceptions that explained the difference."""
    our_parser = _Ours(no_body)
    mine, theirs = our_parser.read(reads), _Llhttp(no_body).read(reads)
    if mine == theirs:
        return {"alike: " + ("refused" if mine.refused else "unfinished" if mine.end is None else "read")}
    seen = Seen(message, no_body, held=bool(our_parser.parser._buf))  # what only the parser knows
    explained = {name for name, known in KNOWN.items() if known.shows(seen) and known.direction(mine, theirs)}
    assert explained, f"{message[:300]!r} (HEAD: {no_body}) in {len(reads)} reads:\n ours   {mine}\n llhttp {theirs}"
    return explained


def check_all_ways(message: bytes, no_body: bool = False, cuts: Sequence[int] = ()) -> set[str]:
    """`check` with the bytes whole, one a read, and cut at `cuts`."""
    bytewise = [message[i : i + 1] for i in range(len(message))]
    whole = check(message, [message], no_body)
    return whole | check(message, bytewise, no_body) | check(message, pieces(message, cuts), no_body)


# -- the corpora ---------------------------------------------------------------------------------------


def test_the_other_tests_answers_are_read_alike() -> None:
    explained = {}
    for name, (answer, no_body, _) in READ.items():
        explained[name] = check_all_ways(answer, no_body, [len(answer) // 2])
    for name, (answer, _) in REFUSED.items():
        if len(answer) < 8 * 1024:
            explained[name] = check_all_ways(answer, cuts=[len(answer) // 3])
        else:  # 70 KiB: whole and in two reads
            explained[name] = check(answer, [answer]) | check(answer, pieces(answer, [len(answer) // 3]))
    differing = {name: known for name, labels in explained.items() if (known := labels & KNOWN.keys())}
    assert differing == {
        "chunked": {"chunk-bws"},
        "rfc-allowed": {"chunk-bws"},
        "length-and-chunked": {"both-framings"},
        "transfer-coding-gzip": {"transfer-coding"},
        "chunked-twice": {"transfer-coding"},
        "long-coding": {"transfer-coding"},
        "crlf-first": {"empty-line-first"},
        "huge": {"head-over-64-kib"},
        "huge-head": {"head-over-64-kib"},
        "blank-line-first": {"empty-line-first"},
    }


@CORPUS
@given(case=cases())
def test_the_fuzz_tests_answers_are_read_alike(case: Case) -> None:
    message = b"".join(case.packets)
    explained = check(message, case.packets)
    if len(message) < 4096:
        explained |= check(message, [message[i : i + 1] for i in range(len(message))])
    for name in explained:
        event(name)


# The parts of an answer: the forms RFC 9112 allows (and the ones it leaves to us), then the forms
# it forbids or we refuse. An answer gets at most one of the second kind, in the part named FLAWS.
PARTS: dict[str, tuple[list[bytes], list[bytes]]] = {
    "version": ([b"HTTP/1.1"] * 3 + [b"HTTP/1.0"], [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.x", b"http/1.1"]),
    "status": ([b"200"] * 4 + [b"201", b"204", b"304", b"404", b"500", b"600"], [b"099", b"20", b"2000", b"2x0"]),
    "reason": ([b" OK", b" OK", b" ", b"", b" caf\xc3\xa9", b" a\tb"], [b" a\x01b", b" a\x7f", b"\tOK", b"  OK\r"]),
    "interim": (
        [b"", b"", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"],
        [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", b"\r\n", b"HTTP/1.1 103 Hints\r\n\r\n\r\n"],
    ),
    "field": (
        [b"X-A: v", b"X-E:", b"X-T:\t v \t", b"X-O: caf\xc3\xa9", b"Connection: close", b"Connection: keep-alive"],
        [b"X-S : v", b"X-F: a\r\n b", b"X-C: a\x01b", b"X-L: a\nb", b" X-W: v", b"X\x80: v", b": v", b"X-R: a\rb"],
    ),
    # N stands for the body's length
    "length": ([b"N"] * 4 + [b" N \t", b"0N", b"0000000000000000000", b"N3", b"N-1"], [b"", b"-1", b"+N", b"N N"]),
    "second-length": ([b""] * 4 + [b"same"], [b"N1", b"12a", b"9" * 25, "\u00b2".encode(), b"%020d", b"N, N"]),
    "coding": (
        [b"chunked"] * 3 + [b"Chunked", b"CHUNKED"],
        [b"gzip, chunked", b"chunked, chunked", b"chunked\nchunked", b"gzip", b""],
    ),
    "chunk-size": ([b"%x"] * 3 + [b"%X", b"0%x", b"%016x"], [b"%017x", b"-%x", b"0x%x", b" %x"]),
    "extension": (
        [b""] * 4 + [b";a", b";a=b", b';a="q\\"x"', b" ;a", b";a = b", b"; a", b";a=b;c", b";!#$%&'*+-.^_`|~=v"],
        [b";", b";a=", b';"x"', b" ", b";a b", b";a=\x01", b';a="x', b";a\nb"],
    ),
    "chunk-end": ([b"\r\n"], [b"\n", b"", b"\r\n\r\n", b"\r", b"\r\r\n"]),
    "last-chunk": ([b"0", b"0", b"000", b"0000000000000000"], [b"00000000000000000", b"", b"0 "]),
    "trailer": ([b"", b"", b"X-T: t\r\n", b"X-T: t\r\nX-U:\r\n"], [b"X T: t\r\n", b"X-T: t\n", b"X-T: \x01\r\n"]),
}
LEFT_OVER = [b"", b"", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"garbage", b"\r\n", b"0\r\n\r\n"]


class _Parts:
    """Draws the parts of one answer, the flawed one (if any) among the forms that are not allowed."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.flaw: str | None = draw(st.sampled_from([None] * 12 + list(PARTS)), label="flawed part")

    def __call__(self, part: str, flawed: bool = True) -> bytes:
        """A form of `part`: a forbidden one if it is the flawed part and `flawed` (one of several lines)."""
        allowed, forbidden = PARTS[part]
        return self.draw(st.sampled_from(forbidden if flawed and part == self.flaw else allowed), label=part)


def _length(form: bytes, size: int) -> bytes:
    return form % size if b"%" in form else form.replace(b"N", b"%d" % size)


def _chunked(parts: _Parts, body: bytes) -> bytes:
    out = []
    start, first = 0, True
    while start < len(body):
        size = parts.draw(st.integers(1, len(body) - start), label="chunk size")
        line = _length(parts("chunk-size", first), size) + parts("extension", first)
        out.append(line + b"\r\n" + body[start : start + size] + parts("chunk-end", first))
        start, first = start + size, False
    return b"".join(out) + parts("last-chunk") + parts("extension", first) + b"\r\n" + parts("trailer") + b"\r\n"


@st.composite
def answers(draw: st.DrawFn) -> tuple[bytes, bool, list[int]]:
    """An answer as RFC 9112 has it, or with one form it forbids; whether the request was HEAD;
    where the reads cut it."""
    parts = _Parts(draw)
    line = parts("version") + b" " + parts("status") + parts("reason")
    fields = [parts("field", i == 0) for i in range(draw(st.integers(0 if parts.flaw != "field" else 1, 3)))]
    body = draw(st.binary(max_size=60) | st.sampled_from([b"data: {}\n\n", b"", b"\r\n0\r\n\r\n"]), label="body")
    framings = ["length"] * 3 + ["chunked"] * 4 + ["close", "length-and-chunked"]
    framing = draw(st.sampled_from(framings), label="framing")
    if framing in ("length", "length-and-chunked"):
        length = _length(parts("length"), len(body))
        fields.append(b"Content-Length: " + length)
        second = parts("second-length")
        if second:
            fields.append(b"Content-Length: " + (length if second == b"same" else _length(second, len(body))))
    if framing in ("chunked", "length-and-chunked"):
        fields += [b"Transfer-Encoding: " + coding for coding in parts("coding").split(b"\n")]
        body = _chunked(parts, body)
    head = line + b"\r\n" + b"".join(field + b"\r\n" for field in draw(st.permutations(fields))) + b"\r\n"
    message = parts("interim") + head + body + draw(st.sampled_from(LEFT_OVER), label="left over")
    no_body = draw(st.integers(0, 9), label="HEAD?") == 0
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(message) - 1)), max_size=6), label="cuts")))
    return message, no_body, cuts


@CORPUS
@given(answer=answers())
def test_answers_of_every_framing_and_form_are_read_alike(answer: tuple[bytes, bool, list[int]]) -> None:
    message, no_body, cuts = answer
    for name in check_all_ways(message, no_body, cuts):
        event(name)
