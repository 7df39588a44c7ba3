"""Token usage read out of upstream answers without parsing (or altering) what need not be.

A chat answer can be large, but its usage object is small and sits near the end, so only that
object is located and parsed. Streams repeat cumulative usage in every event and an event may
be split across reads, so the tracker keeps the stream's recent tail and reads the last usage
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
_COLON_BRACE = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*\{")  # what follows a key whose value is an object
_FLAT_OBJECT = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*(\{[^{}]*\})")  # ...when that object holds no other


def _object_after(body: bytes | bytearray, name: bytes) -> dict[str, Any] | None:
    """The JSON object that is the value of the last `"name":` in `body`, if there is one."""
    pos = len(body)
    while (pos := body.rfind(name, 0, pos)) >= 0:
        flat = _FLAT_OBJECT.match(body, pos + len(name))  # the usual case: found and cut in one step
        if flat is not None:
            start, end = flat.span(1)
        else:
            opening = _COLON_BRACE.match(body, pos + len(name))
            if opening is None:
                continue
            start = opening.end() - 1
            end = _closing_brace(body, start) + 1
            if end <= 0:
                continue
        try:
            value = orjson.loads(body[start:end])
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _closing_brace(body: bytes | bytearray, start: int) -> int:
    """Index of the `}` closing the `{` at `start`, or -1; usage objects hold no strings with braces,
    so counting braces between closers (all in C) is enough."""
    depth, pos = 1, start + 1
    while depth:
        close = body.find(b"}", pos)
        if close < 0:
            return -1
        depth += body.count(b"{", pos, close) - 1
        pos = close + 1
    return pos - 1


_MAX_TOKENS = 2**53  # beyond any real count, and within what SQLite stores


def _int(value: object) -> int:
    """A token count as stored: a JSON integer clamped to range, else 0 (never a bool, float or string)."""
    if type(value) is not int:
        return 0
    return value if 0 <= value <= _MAX_TOKENS else 0 if value < 0 else _MAX_TOKENS


def token_usage(body: bytes | bytearray) -> Usage:
    """OpenAI `usage`, or rerank's `tokens` (top level or under `meta`)."""
    usage = _object_after(body, b'"usage"')
    if usage is not None:
        prompt, completion = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
        return Usage(prompt, completion, _int(usage.get("total_tokens")) or prompt + completion)
    tokens = _object_after(body, b'"tokens"')
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


class StreamUsage:
    """Watches a passing SSE stream; `result()` reads the last cumulative usage it carried."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = bytearray()

    def feed(self, chunk: bytes) -> None:
        tail = self._tail
        tail += chunk
        if len(tail) > 2 * _TAIL:
            del tail[:-_TAIL]

    def at_event_boundary(self) -> bool:
        """True when what passed so far ends a whole event (an error event may follow directly)."""
        return not self._tail or self._tail.endswith((b"\n\n", b"\r\n\r\n"))

    def result(self) -> Usage:
        return token_usage(self._tail)
