"""`stream_usage`: streams as the upstream sends them, or with usage only where a choice finishes."""

from __future__ import annotations

import re
import tracemalloc
from itertools import pairwise

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from silicon_pool.usage import FinalUsageOnly
from tests.conftest import Running, paid_keys
from tests.fake_upstream import FakeUpstream

CHAT = "deepseek-ai/DeepSeek-V3"
MESSAGES = [{"role": "user", "content": "hello there"}]


def _event(n: int, finish: str | None, sep: bytes = b"\n\n") -> bytes:
    usage = {"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n}
    if n > 2:
        usage["completion_tokens_details"] = {"reasoning_tokens": 2}
    chunk = {"id": "x", "choices": [{"index": 0, "delta": {"content": f"第{n}段"}, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(chunk | {"usage": usage}) + sep


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n", b"\r\r"])
def test_usage_stays_only_where_the_choice_finishes_however_the_stream_is_cut(sep: bytes) -> None:
    stream = b"".join(_event(n, None, sep) for n in range(1, 5)) + _event(5, "stop", sep) + b"data: [DONE]" + sep
    for cut in range(1, len(stream)):
        for step in (cut, len(stream)):  # two pieces, or pieces of `cut` bytes each
            trim = FinalUsageOnly()
            pieces = (
                [stream[i : i + step] for i in range(0, len(stream), step)]
                if step == cut
                else [stream[:cut], stream[cut:]]
            )
            out = b"".join(trim.feed(p) for p in pieces) + trim.feed(b"", last=True)
            events = [orjson.loads(e[6:]) for e in out.split(sep) if e.startswith(b"data: {")]
            assert [e["usage"] for e in events[:4]] == [None] * 4, cut
            assert events[4]["usage"]["total_tokens"] == 16 and out.endswith(b"data: [DONE]" + sep)
            assert [e["choices"] for e in events] == [orjson.loads(e[6:])["choices"] for e in stream.split(sep)[:5]]


def test_events_are_held_only_until_they_end() -> None:
    trim = FinalUsageOnly()
    event = _event(1, None)
    assert trim.feed(event[:10]) == b""
    assert trim.feed(event[10:] + b"data: [DO") == event.replace(
        orjson.dumps({"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12}), b"null"
    )
    assert trim.feed(b"NE]\n\n") == b"data: [DONE]\n\n"
    assert trim.feed(b"data: cut", last=True) == b"data: cut"


def test_events_ended_by_lone_crs_are_held_only_until_they_end() -> None:
    trim = FinalUsageOnly()
    first, second = _event(1, None, b"\r\r"), _event(2, "stop", b"\r\r")
    assert trim.feed(first[:-1]) == b""
    assert orjson.loads(trim.feed(first[-1:] + second[:9])[6:-2])["usage"] is None
    assert trim.feed(second[9:]) == second


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n", b"\r\r"])
def test_events_that_come_a_byte_a_read_are_held_only_until_they_end(sep: bytes) -> None:
    """An event's end split over reads of a byte each is seen: missed, every event would wait
    in memory for the stream's end (a hostile upstream's way to grow it without bound)."""
    trim = FinalUsageOnly()
    for n in range(3):
        event = _event(n, None, sep)
        assert [trim.feed(event[i : i + 1]) for i in range(len(event) - 1)] == [b""] * (len(event) - 1)
        assert orjson.loads(trim.feed(event[-1:])[6 : -len(sep)])["usage"] is None


def test_a_read_of_an_unended_event_costs_only_its_own_bytes() -> None:
    """An event arriving in many reads is not copied whole at each read (64 MB in 1 KB reads: 2 TB copied)."""
    trim, piece = FinalUsageOnly(), b"x" * 4096
    assert trim.feed(b"data: ") == b""
    tracemalloc.start()
    try:
        most = 0
        for _ in range(1000):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            assert trim.feed(piece) == b""
            most = max(most, tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()
    assert most < 64 * 1024
    assert trim.feed(b"\n\n") == b"data: " + piece * 1000 + b"\n\n"


def test_spaced_json_and_chunks_without_usage_or_choices() -> None:
    spaced = (
        b'data: {"choices": [{"delta": {"content": "x"}, "finish_reason": null}], "usage": {"total_tokens": 3}}\n\n'
    )
    assert FinalUsageOnly().feed(spaced) == spaced.replace(b'"usage": {"total_tokens": 3}', b'"usage":null')
    alone = b'data: {"choices": [], "usage": {"total_tokens": 3}}\n\n'  # OpenAI's own usage chunk
    plain = b'data: {"choices": [{"delta": {}, "finish_reason": null}], "usage": null}\n\n'
    assert FinalUsageOnly().feed(alone + plain) == alone + plain


async def _stream(proxy: Running, http: aiohttp.ClientSession) -> tuple[bytes, list[dict[str, object]]]:
    body = {"model": CHAT, "messages": MESSAGES, "stream": True}
    async with http.post(f"{proxy.base}/v1/chat/completions", json=body) as resp:
        raw = await resp.read()
    return raw, [orjson.loads(e[6:]) for e in raw.split(b"\n\n") if e.startswith(b"data: {")]


@pytest.mark.parametrize("split", [False, True])
async def test_final_only_gives_clients_that_add_chunks_up_the_right_total(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession, split: bool
) -> None:
    fake.split_events = split
    await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 1)))
    _, chunks = await _stream(proxy, http)
    assert all(c["usage"] for c in chunks)  # as_upstream: every chunk repeats the running total
    await proxy.set(stream_usage="final_only")
    stream = await proxy.openai().chat.completions.create(model=CHAT, messages=MESSAGES, stream=True)
    sdk_chunks = [chunk async for chunk in stream]
    usages = [c.usage for c in sdk_chunks if c.usage is not None]
    assert len(usages) == 1 and sdk_chunks[-1].usage is usages[0]
    assert sum(u.total_tokens for u in usages) == chunks[-1]["usage"]["total_tokens"]  # type: ignore[index]
    assert "".join(c.choices[0].delta.content or "" for c in sdk_chunks) == "".join(
        f"fake reply {i}. " for i in range(5)
    )
    rows = await proxy.calls()
    assert rows[0]["total_tokens"] == rows[1]["total_tokens"] == usages[0].total_tokens > 0


async def test_as_upstream_passes_the_bytes_untouched(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await proxy.add_keys(*((s, 10.0) for s in paid_keys(fake, 1)))
    raw, _ = await _stream(proxy, http)
    assert raw.count(b'"usage":{') == fake.stream_chunks + 1


def _client_events(raw: bytes) -> list[object]:
    """The data of each event as an SSE client reads it (lines end at CRLF, LF or CR), JSON parsed."""
    events, data = [], list[str]()
    for line in re.split(r"\r\n|\n|\r", raw.decode()):
        if not line and data:
            text = "\n".join(data)
            try:
                events.append(orjson.loads(text))
            except orjson.JSONDecodeError:
                events.append(text)
            data = []
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
    return events


_TEXT = st.lists(
    st.sampled_from(["a", "第", "{", "}", '"', "\\", ":", ",", '"usage":', '"finish_reason":null']), max_size=6
)
_USAGE = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "prompt_tokens": st.integers(0, 99),
            "completion_tokens": st.integers(0, 99),
            "total_tokens": st.integers(0, 99),
        },
        optional={"completion_tokens_details": st.fixed_dictionaries({"reasoning_tokens": st.integers(0, 9)})},
    ),
)
_CHOICE = st.fixed_dictionaries(
    {
        "index": st.just(0),
        "delta": st.fixed_dictionaries({"content": _TEXT.map("".join)}),
        "finish_reason": st.sampled_from([None, "stop"]),
    }
)
_CHUNK = st.tuples(st.lists(_CHOICE, max_size=1), _USAGE, st.booleans()).map(
    lambda c: {"usage": c[1], "choices": c[0]} if c[2] else {"choices": c[0], "usage": c[1]}
)


@st.composite
def _streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """A stream of chunks, comments and events that are not JSON, with one line ending, cut into reads."""
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    events = [
        draw(st.sampled_from([b"data: ", b"data:"]))
        + orjson.dumps(c)
        + eol
        + draw(st.sampled_from([b"", b": ping" + eol]))
        for c in draw(st.lists(_CHUNK, max_size=6))
    ]
    raw = eol.join([*events, b'data: not {json} "usage":{}' + eol, b"data: [DONE]" + eol, b""])
    return raw, sorted(draw(st.sets(st.integers(1, len(raw) - 1), max_size=8)))


@settings(
    max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(stream=_streams())
def test_final_only_changes_nothing_but_usage_however_the_stream_comes(stream: tuple[bytes, list[int]]) -> None:
    raw, cuts = stream
    trim, *reads = FinalUsageOnly(), *(raw[a:b] for a, b in pairwise([0, *cuts, len(raw)]))
    out = b"".join(trim.feed(read) for read in reads[:-1]) + trim.feed(reads[-1], last=True)
    sent, got = _client_events(raw), _client_events(out)
    assert [_sans_usage(e) for e in got] == [_sans_usage(e) for e in sent]
    for before, after in zip(sent, got, strict=True):  # usage only where the choice finishes, or alone
        if isinstance(before, dict):
            goes_on = bool(before["choices"]) and before["choices"][0]["finish_reason"] is None
            assert after["usage"] == (None if goes_on else before["usage"])


def _sans_usage(event: object) -> object:
    return {**event, "usage": "-"} if isinstance(event, dict) else event
