"""`stream_usage`: streams as the upstream sends them, or with usage only where a choice finishes."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

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


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n"])
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
