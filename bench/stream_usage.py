"""What `stream_usage = final_only` adds per stream event (issue 14: it must stay under 2 µs).

    python bench/stream_usage.py               # a few seconds
    python bench/stream_usage.py --events 20000  # longer rounds

In-process, no server: a SiliconFlow-like chat stream (each event carries the running usage,
the last one finishes with the total) is passed through `FinalUsageOnly.feed` in the shapes
the relay meets, and the cost per event is the best of several rounds. `as_upstream` does
nothing per event (the relay writes each chunk as it came), so this is the whole difference.

Figures only: the one check is that each run gives the client one usage, on the last event.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tables import table  # noqa: E402  (bench/tables.py, beside this file)

from silicon_pool.usage import FinalUsageOnly  # noqa: E402

ROUNDS = 41  # short rounds, the best one kept: on a shared machine most rounds lose time to others


def event(n: int, last: bool) -> bytes:
    """One chunk as SiliconFlow streams it (about 400 bytes), with its running usage."""
    chunk = {
        "id": "0194c8c5a2b0f6a1d2c3b4a5e6f7a8b9",
        "object": "chat.completion.chunk",
        "created": 1737000000,
        "model": "deepseek-ai/DeepSeek-V3",
        "choices": [
            {
                "index": 0,
                "delta": {"content": "" if last else f"第{n}个词 ", "reasoning_content": None, "role": "assistant"},
                "finish_reason": "stop" if last else None,
            }
        ],
        "system_fingerprint": "",
        "usage": {"prompt_tokens": 27, "completion_tokens": n, "total_tokens": 27 + n},
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def stream(events: int) -> list[bytes]:
    return [event(n, n == events) for n in range(1, events + 1)] + [b"data: [DONE]\n\n"]


def one_per_read(events: list[bytes]) -> list[bytes]:
    return events


def split_in_two(events: list[bytes]) -> list[bytes]:
    return [half for e in events for half in (e[: len(e) // 2], e[len(e) // 2 :])]


def four_per_read(events: list[bytes]) -> list[bytes]:
    return [b"".join(events[i : i + 4]) for i in range(0, len(events), 4)]


SHAPES: tuple[tuple[str, Callable[[list[bytes]], list[bytes]]], ...] = (
    ("one event per read (the usual)", one_per_read),
    ("each event split across two reads", split_in_two),
    ("four events per read", four_per_read),
)


def per_event(reads: list[bytes], events: int) -> float:
    """Best mean µs per event over ROUNDS passes of the whole stream through a fresh rewriter."""
    best = float("inf")
    for _ in range(ROUNDS):
        trim = FinalUsageOnly()
        feed = trim.feed
        started = time.perf_counter()
        for read in reads:
            feed(read)
        feed(b"", last=True)
        best = min(best, (time.perf_counter() - started) / events * 1e6)
    return best


def yardstick(one: bytes) -> float:
    """What parsing one event costs on this machine, to read the figures against (a loaded machine runs slower)."""
    body, rounds = one[6:], 20_000
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(rounds):
            orjson.loads(body)
        best = min(best, (time.perf_counter() - started) / rounds * 1e6)
    return best


def check(reads: list[bytes]) -> None:
    trim = FinalUsageOnly()
    out = b"".join(trim.feed(r) for r in reads) + trim.feed(b"", last=True)
    usages = [orjson.loads(e[6:])["usage"] for e in out.split(b"\n\n") if e.startswith(b"data: {")]
    assert all(u is None for u in usages[:-1]) and usages[-1] is not None, "usage left on an unfinished event"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000, help="events in the stream (default 5000)")
    args = parser.parse_args()
    events = stream(args.events)
    rows = []
    for name, shape in SHAPES:
        reads = shape(events)
        check(reads)
        rows.append([name, f"{per_event(reads, args.events + 1):.2f}"])
    rows.append(["yardstick: one orjson.loads of an event", f"{yardstick(events[1]):.2f}"])
    title = f"stream_usage = final_only: {args.events} events of ~{len(events[1])} bytes, best of {ROUNDS} rounds"
    table(title, ["reads", "µs per event"], rows)


if __name__ == "__main__":
    main()
