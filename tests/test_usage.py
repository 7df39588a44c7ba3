"""Token usage read out of answers and streams: the shapes the upstream sends, and hostile ones
(repeated `"usage":{`, objects that never close, an SSE event that never ends) in bounded work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest

from silicon_pool.usage import NO_USAGE, StreamUsage, Usage, image_usage, token_usage

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


def test_no_usage_counts_nothing() -> None:
    assert tuple(NO_USAGE) == (0, 0, 0, 0)
    assert tuple(Usage()) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("body", "usage"),
    [
        (b'{"usage":{"prompt_tokens":5,"completion_tokens":3}}', (5, 3, 8, 0)),  # no total: the sum
        (b'{"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":0}}', (5, 3, 8, 0)),
        (b'{"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":20}}', (5, 3, 20, 0)),  # as counted
        (b'{"usage":{"prompt_tokens":0,"completion_tokens":3,"total_tokens":3}}', (0, 3, 3, 0)),
        (b'{"usage":{"prompt_tokens":9,"completion_tokens":0}}', (9, 0, 9, 0)),
        (b'{"usage":{"total_tokens":12}}', (0, 0, 12, 0)),
        (b'{"results":[],"tokens":{"input_tokens":12,"output_tokens":4}}', (12, 4, 16, 0)),  # rerank
        (b'{"results":[],"tokens":{"output_tokens":4}}', (0, 4, 4, 0)),
    ],
)
def test_token_counts_as_logged(body: bytes, usage: tuple[int, ...]) -> None:
    assert tuple(token_usage(body)) == usage


@pytest.mark.parametrize(
    ("count", "stored"),
    [
        (0, 0),
        (1, 1),
        (2**53, 2**53),
        (2**53 + 1, 2**53),
        (2**63, 2**53),
        (-1, 0),
        (-(2**60), 0),
        ("7", 0),
        (7.0, 0),
        (True, 0),
        (None, 0),
    ],
)
def test_a_token_count_is_stored_clamped_or_zero(count: object, stored: int) -> None:
    """Counts SQLite can store and a page can show: huge ones at 2**53, negative or non-integer ones as 0."""
    body = json.dumps({"usage": {"prompt_tokens": count, "completion_tokens": 2}}).encode()
    assert token_usage(body)[:2] == (stored, 2)


@pytest.mark.parametrize("before", [" ", "\t", "\r", "\n"])
@pytest.mark.parametrize("after", [" ", "\t", "\r", "\n"])
def test_usage_in_pretty_printed_json_is_read(before: str, after: str) -> None:
    """Pretty-printed answers (tabs, CRLF line ends) put white space on either side of the colon."""
    body = b'{"usage"' + before.encode() * 2 + b":" + after.encode() * 2 + b'{"prompt_tokens":4,"completion_tokens":1}}'
    assert token_usage(body) == Usage(4, 1, 5)


def test_usage_at_the_very_start_of_what_is_kept_is_read() -> None:
    """A stream's kept tail may begin right at the name."""
    assert token_usage(USAGE) == Usage(1, 2, 3)


@pytest.mark.parametrize(("malformed", "usage"), [(7, Usage(1, 2, 3)), (8, NO_USAGE)])
def test_a_few_malformed_usage_objects_after_the_real_one_are_looked_past(malformed: int, usage: Usage) -> None:
    """Up to 7 broken objects under the name after the last good one are skipped; more are not parsed."""
    body = b"{" + USAGE + b"".join(b',"x%d":{"usage":{bad}}' % i for i in range(malformed)) + b"}"
    assert token_usage(body) == usage


@pytest.mark.parametrize(
    ("body", "images"),
    [
        (b'{"images":[{"url":"a"},{"url":"b"}],"timings":{}}', 2),
        (b'{"data":[{"url":"a"},{"url":"b"},{"url":"c"}]}', 3),  # OpenAI-style
        (b'{"images":null,"data":[{"url":"a"}]}', 1),
        (b'{"images":[],"data":[{"url":"a"}]}', 0),
    ],
)
def test_an_image_answer_counts_its_pictures(body: bytes, images: int) -> None:
    assert tuple(image_usage(body)) == (0, 0, 0, images)


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'"images"', b'{"images":3}', b'{"data":{"a":1}}'])
def test_an_image_answer_without_a_list_counts_none(body: bytes) -> None:
    assert image_usage(body) == NO_USAGE


def _events(size: int) -> bytes:
    """SSE events without usage, `size` bytes in all."""
    event = b'data: {"choices":[{"delta":{"content":"' + b"x" * 1000 + b'"}}]}\n\n'
    whole, part = divmod(size, len(event))
    return event * whole + (b"data: " + b"y" * (part - 8) + b"\n\n" if part else b"")


def test_the_last_64_kib_of_a_long_stream_are_always_read() -> None:
    """Usage within the last 64 KiB is found however long the stream ran before it."""
    stream = StreamUsage()
    stream.feed(_events(300 * 1024))
    event = b"data: {" + USAGE + b"}\n\n"
    stream.feed(event)
    stream.feed(_events(64 * 1024 - len(event)))
    assert stream.result() == Usage(1, 2, 3)
    assert stream.at_event_boundary()


def test_a_stream_keeps_at_most_128_kib() -> None:
    """Whole events or not, what the tracker holds stays bounded: old usage scrolls out."""
    for tail in (b"\n\n", b"\n"):
        stream = StreamUsage()
        stream.feed(b"data: {" + USAGE + b"}\n\n")
        stream.feed(_events(129 * 1024)[: -len(tail)] + tail)
        assert stream.result() == NO_USAGE


@pytest.mark.parametrize(("opening", "open_bytes"), [(b"\n\ndata: x", 7), (b"\r\n\r\ndata: x", 7), (b"\n\n", 0)])
def test_a_stream_that_opens_with_a_blank_line_counts_from_after_it(opening: bytes, open_bytes: int) -> None:
    stream = StreamUsage()
    stream.feed(opening)
    assert stream.event_bytes == open_bytes
