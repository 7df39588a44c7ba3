"""Token usage read out of answers and streams: the shapes the upstream sends, and hostile ones
(repeated `"usage":{`, objects that never close, an SSE event that never ends) in bounded work."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest

from silicon_pool.usage import NO_USAGE, StreamUsage, Usage, token_usage

ROOT = Path(__file__).resolve().parent.parent
USAGE = b'"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}'


@pytest.mark.parametrize(
    ("body", "usage"),
    [
        (b'{"id":"x","choices":[],' + USAGE + b',"system_fingerprint":""}', Usage(1, 2, 3)),
        (
            b'{"usage" : {"prompt_tokens":31,"completion_tokens":412,"total_tokens":443,'
            b'"completion_tokens_details":{"reasoning_tokens":120}}}',
            Usage(31, 412, 443),
        ),
        (b'data: {"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\ndata: {' + USAGE + b"}\n\n", Usage(1, 2, 3)),
        (b"{" + USAGE + b',"x":{"usage":{not json}}}', Usage(1, 2, 3)),  # the last object that is JSON
        (b"{" + USAGE + b',"x":{"usage":null}}', Usage(1, 2, 3)),
        (b'{"results":[],"tokens":{"input_tokens":12,"output_tokens":1}}', Usage(12, 1, 13)),
        (b'{"results":[],"meta":{"billed_units":{"search_units":1},"tokens":{"input_tokens":5}}}', Usage(5, 0, 5)),
        (b'{"usage":{"prompt_tokens":7,"a":{"b":{"c":1}}}}', Usage(7, 0, 7)),
        (b'{"usage":{"prompt_tokens":7,"a":{"b":{"c":{"d":1}}}}}', NO_USAGE),  # deeper than any usage object
        (b'{"usage":{"prompt_tokens":1', NO_USAGE),
        (b"", NO_USAGE),
    ],
)
def test_usage_is_the_last_object_under_its_name(body: bytes, usage: Usage) -> None:
    assert token_usage(body) == usage


# Run apart, so that a scan that takes hours (as counting braces from every `"usage":{` did on these
# bodies) is killed at the bound; a linear one takes a fraction of a second. The bound is no speed target.
_HOSTILE_ANSWERS = """
from silicon_pool.usage import NO_USAGE, Usage, token_usage
size = 4 * 1024 * 1024
real = b'{%s,"junk":' % USAGE
for unit in (b'"usage":{', b'"usage":{' + b"{}" * 10, b'"tokens":{' + b"{}" * 10, b'"usage":{x}'):
    junk = unit * (size // len(unit))
    assert token_usage(junk) == NO_USAGE, unit
    if unit != b'"usage":{x}':  # a real object under thousands of malformed ones is not looked for
        assert token_usage(real + junk) == Usage(1, 2, 3), unit
nested = b'"usage":{' * (size // 10) + b"x" + b"}" * (size // 10)
assert token_usage(nested) == NO_USAGE
"""


def test_hostile_answers_are_read_in_linear_work() -> None:
    script = f"USAGE = {USAGE!r}\n{_HOSTILE_ANSWERS}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def test_an_event_end_split_across_chunks_is_seen() -> None:
    stream = StreamUsage()
    assert stream.at_event_boundary() and stream.event_bytes == 0
    for chunk, open_bytes in [
        (b"data: {}\n", 9),
        (b"\ndata: ", 6),
        (b"{}\r\n\r", 11),
        (b"\n", 0),
        (b"\r\n\r\ndata: x", 7),
        (b"\n\n", 0),
    ]:
        stream.feed(chunk)
        assert stream.event_bytes == open_bytes, chunk
        assert stream.at_event_boundary() == (open_bytes == 0)


def test_an_event_ended_by_blank_lines_of_lone_cr_is_seen() -> None:
    """SSE lines may end in a lone CR (and clients such as the openai SDK split events on CR CR):
    missed, a stream of small events is taken for one endless event and cut at max_answer_mb."""
    stream = StreamUsage()
    for chunk, open_bytes in [
        (b"data: {}\r\r", 0),
        (b"data: {}\r", 9),
        (b"\rdata: x\r", 8),
        (b"\r", 0),
    ]:
        stream.feed(chunk)
        assert stream.event_bytes == open_bytes, chunk


def test_an_endless_event_is_watched_in_bounded_memory_and_work() -> None:
    """4 MiB of one event built so that reading usage by counting braces took seconds on the part kept."""
    stream = StreamUsage()
    stream.feed(b"data: {" + USAGE + b"}\n\ndata: ")
    unit = b'"usage":{' + b"{}" * 10
    chunk = unit * (16 * 1024 // len(unit))
    results: list[Usage] = []

    def watch() -> None:
        for _ in range(256):
            stream.feed(chunk)
        results.append(stream.result())

    tracemalloc.start()
    try:
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        watcher.join(10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert results == [NO_USAGE]  # the usage event has long scrolled out of what is kept
    assert peak < 1024 * 1024  # what is kept is bounded, not the event
    assert stream.event_bytes == 6 + 256 * len(chunk)
    assert not stream.at_event_boundary()
