"""Token usage read out of upstream answers without parsing (or altering) what need not be.

A chat answer can be large, but its usage object is small, shallow and sits near the end, so
only that object is located (one search back from the end, in work linear in the body however
hostile it is) and parsed. Streams repeat cumulative usage in every event and an event may be
split across reads, so the tracker keeps the stream's recent tail and reads the last usage
object once, when the stream ends.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import orjson


class Usage(NamedTuple):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    images: int = 0


NO_USAGE = Usage()
_TAIL = 64 * 1024
_DEPTH = 3  # usage nests one level (`completion_tokens_details`); an object deeper than this is not usage
_FAILURES = 8  # malformed objects under the name tolerated after the last well-formed one (real answers: none)


def _nested_object(depth: int) -> bytes:
    """A `{...}` holding objects at most `depth` deep. Usage objects hold no strings with braces, so
    braces alone find the end. Possessive (`*+`), it never backtracks: an attempt reads each byte
    once and stops where the depth runs out, however many `}` follow."""
    inner = b"" if depth == 1 else b"(?:" + _nested_object(depth - 1) + rb"[^{}]*+)*+"
    return rb"\{[^{}]*+" + inner + rb"\}"


def _last_object(name: bytes) -> re.Pattern[bytes]:
    """The last `"name": {...}` before the end of the search. `.*` starts at the end and backs off in C,
    skipping to each `"`; a byte lies within at most `_DEPTH` attempts that stay within that depth, so a
    search reads each byte at most a few times (counting braces from every candidate was quadratic)."""
    return re.compile(rb"(?s:.*)" + re.escape(name) + rb"[ \t\r\n]*+:[ \t\r\n]*+(" + _nested_object(_DEPTH) + rb")")


_USAGE, _TOKENS = _last_object(b'"usage"'), _last_object(b'"tokens"')


def _object_after(body: bytes | bytearray, pattern: re.Pattern[bytes]) -> dict[str, Any] | None:
    """The JSON object that is the value of the last `"name":` in `body`, if there is one.

    After an object that is not JSON, the search goes on before it: an object around it holds it, so is
    not JSON either. Each search covers new bytes; the few malformed ones allowed bound the parses."""
    end = len(body)
    for _ in range(_FAILURES):
        found = pattern.match(body, 0, end)
        if found is None:
            return None
        try:
            value = orjson.loads(body[found.start(1) : found.end(1)])
        except orjson.JSONDecodeError:
            end = found.start(1)
            continue
        return value if isinstance(value, dict) else None
    return None


_MAX_TOKENS = 2**53  # beyond any real count, and within what SQLite stores


def _int(value: object) -> int:
    """A token count as stored: a JSON integer clamped to range, else 0 (never a bool, float or string)."""
    if type(value) is not int:
        return 0
    return value if 0 <= value <= _MAX_TOKENS else 0 if value < 0 else _MAX_TOKENS


def token_usage(body: bytes | bytearray) -> Usage:
    """OpenAI `usage`, or rerank's `tokens` (top level or under `meta`)."""
    usage = _object_after(body, _USAGE)
    if usage is not None:
        prompt, completion = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
        return Usage(prompt, completion, _int(usage.get("total_tokens")) or prompt + completion)
    tokens = _object_after(body, _TOKENS)
    if tokens is not None:
        prompt, completion = _int(tokens.get("input_tokens")), _int(tokens.get("output_tokens"))
        return Usage(prompt, completion, prompt + completion)
    return NO_USAGE


def image_usage(body: bytes | bytearray) -> Usage:
    """Images carry no tokens: count the pictures (`images`, or an OpenAI-style `data` list)."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return NO_USAGE
    if not isinstance(answer, dict):
        return NO_USAGE
    images = answer.get("images")
    if not isinstance(images, list):
        images = answer.get("data")
    return Usage(images=len(images)) if isinstance(images, list) else NO_USAGE


_EVENT_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")  # a blank line after LF, CRLF or lone CR lines (as SSE clients split)


def _end_after(data: bytearray, mark: bytes, start: int) -> int:
    """Where the last `mark` at or after `start` ends, -1 if there is none."""
    found = data.rfind(mark, start)
    return found + len(mark) if found >= 0 else -1


class StreamUsage:
    """Watches a passing SSE stream; `result()` reads the last cumulative usage it carried.

    It keeps only the stream's last 64-128 KiB, and looks at each byte fed a bounded number of
    times (what arrived is searched, never what is kept), however long an event runs: the relay
    passes the bytes on, this only watches. `event_bytes` is how long the open event has run."""

    __slots__ = ("_tail", "event_bytes")

    def __init__(self) -> None:
        self._tail = bytearray()
        self.event_bytes = 0  # bytes since the last event ended: 0 at a boundary

    def feed(self, chunk: bytes) -> None:
        tail = self._tail
        tail += chunk
        if chunk.endswith(b"\n\n"):  # the usual chunk: whole events
            self.event_bytes = 0
        else:
            self._find_event_end(len(chunk))
        if len(tail) > 2 * _TAIL:
            del tail[:-_TAIL]

    def _find_event_end(self, arrived: int) -> None:
        """Where the last event ended in what arrived, or in the 3 bytes before it (an end split across reads)."""
        tail = self._tail
        start = max(len(tail) - arrived - 3, 0)
        end = max(_end_after(tail, mark, start) for mark in _EVENT_ENDS)
        if end < 0:
            self.event_bytes += arrived
        else:
            self.event_bytes = len(tail) - end

    def at_event_boundary(self) -> bool:
        """True when what passed so far ends a whole event (an error event may follow directly)."""
        return self.event_bytes == 0

    def result(self) -> Usage:
        return token_usage(self._tail)


_USAGE_NAME = b'"usage"'
_FINISH = b'"finish_reason"'


def _object_end(data: bytes, start: int) -> int:
    """Where the `{...}` at `start` ends (usage holds no strings, so braces alone tell), or -1."""
    end = data.find(b"}", start)
    inner = data.find(b"{", start + 1, end)
    for _ in range(_DEPTH * 4):
        if inner < 0 or end < 0:
            return end + 1 if end >= 0 else -1
        end = data.find(b"}", end + 1)
        inner = data.find(b"{", inner + 1, end)
    return -1


def _goes_on(data: bytes, line: int, at: int, line_end: int) -> bool:
    """Whether the chunk on `data[line:line_end]` says its choice goes on (`"finish_reason": null`).
    SiliconFlow writes it just before usage, so the search goes back from `at` first."""
    found = data.rfind(_FINISH, line, at)
    if found < 0:
        found = data.find(_FINISH, at, line_end)
        if found < 0:
            return False
    value = data[found + 15 : found + 22].lstrip(b": \t")
    return value.startswith(b"null")


def _without_running_usage(data: bytes) -> bytes:
    """Whole events, with the usage of each chunk whose choice goes on (`finish_reason` null) set to
    null; a chunk that finishes, or holds usage alone, keeps it. JSON holds no raw line break, so a
    chunk is one line, found around each `"usage"` from the end: nothing else is searched or copied.
    Lines end at LF (or CRLF), or at lone CRs when the events do."""
    at = data.rfind(_USAGE_NAME)
    tail, pieces = len(data), list[bytes]()
    brk = b"\r" if data.endswith(b"\r") else b"\n"
    while at >= 0:
        line = data.rfind(brk, 0, at) + 1
        line_end = data.find(brk, at, tail)
        line_end = tail if line_end < 0 else line_end
        start = data.find(b"{", at + 7, at + 16)  # after the colon and any spaces
        if (
            start > 0
            and data[at + 7 : start].strip() == b":"
            and _goes_on(data, line, at, line_end)
            and (end := _object_end(data, start)) > 0
        ):
            pieces += (data[end:tail], b'"usage":null')
            tail = at
        at = data.rfind(_USAGE_NAME, 0, line)
    if not pieces:
        return data
    pieces.append(data[:tail])
    pieces.reverse()
    return b"".join(pieces)


class FinalUsageOnly:
    """Passes an SSE stream on with usage only where a choice finishes, as OpenAI sends it:
    SiliconFlow repeats the running usage in every chunk, and clients that add chunks up
    (langchain) count it many times over.

    Bytes are held only until their event ends (no client can use part of an event); the relay
    bounds how long one event may run."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: list[bytes] = []  # reads of an event not yet ended, joined once it ends (never once a read)

    def feed(self, chunk: bytes, last: bool = False) -> bytes:
        """What of the stream so far may go to the client now; `last` gives back all that is held."""
        held = self._held
        if last or chunk.endswith(b"\n\n"):  # the usual chunk: whole events
            if held:
                held.append(chunk)
                chunk = b"".join(held)
                held.clear()
            return _without_running_usage(chunk)
        # What is held ends no event: only the new bytes (and the 3 held before, across reads as short as a byte) can.
        edge = b"".join([read[-3:] for read in held[-3:]])[-3:]
        probe = edge + chunk if edge else chunk
        lf, crlf, cr = probe.rfind(b"\n\n"), probe.rfind(b"\r\n\r\n"), probe.rfind(b"\r\r")  # as _EVENT_ENDS
        end = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0, cr + 2 if cr >= 0 else 0) - len(edge)
        if end <= 0:
            held.append(chunk)
            return b""
        held.append(chunk[:end])
        data = b"".join(held)
        held[:] = [chunk[end:]] if end < len(chunk) else []
        return _without_running_usage(data)
