"""The request path does no disk I/O: everything it stores goes to the writer thread."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from tests.conftest import Running, paid_keys
from tests.fake_upstream import FakeUpstream

CLIENT_PACKAGES = re.compile(r"[/\\](openai|httpx2?|httpcore2?|anyio)[/\\]")
DISK_CALLS = {
    "open",
    "write",
    "fsync",
    "fdatasync",
    "stat",
    "lstat",
    "listdir",
    "scandir",
    "replace",
    "rename",
    "unlink",
}


def _from_the_client(frame: FrameType | None) -> bool:
    """The openai SDK shares this loop in tests (it probes for numpy on each embeddings call)."""
    while frame is not None:
        if CLIENT_PACKAGES.search(frame.f_code.co_filename):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def disk_watch() -> Iterator[list[str]]:
    """Record every C call on this thread (the event loop's) that reaches SQLite or the file system."""
    seen: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "c_call":
            return
        owner = getattr(arg, "__self__", None)
        module = getattr(arg, "__module__", None) or type(owner).__module__
        name = getattr(arg, "__name__", "")
        if _from_the_client(frame):
            return
        where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
        if "sqlite3" in module or isinstance(owner, sqlite3.Connection | sqlite3.Cursor):
            seen.append(f"sqlite3.{name} at {where}")
        elif module in ("posix", "io", "_io", "builtins", "os") and name in DISK_CALLS and not hasattr(owner, "fileno"):
            seen.append(f"{module}.{name} at {where}")

    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(None)


def test_the_watch_sees_disk_and_sqlite(tmp_path: Path) -> None:
    """The watch can fail: it catches what the hot path must not do."""
    with disk_watch() as seen:
        conn = sqlite3.connect(tmp_path / "x.db")
        conn.execute("SELECT 1")
        conn.close()
        (tmp_path / "f").write_text("x")
    assert any(s.startswith("sqlite3.") for s in seen)
    assert any(".open at " in s for s in seen)


async def test_proxied_requests_touch_no_disk(proxy: Running, fake: FakeUpstream) -> None:
    secrets = paid_keys(fake, 3)
    [_, _, bad] = await proxy.add_keys(*((s, 10.0) for s in secrets))
    fake.set_behavior(secrets[2], "rate_limited")
    client = proxy.openai()
    messages = [{"role": "user", "content": "hi"}]

    async def traffic() -> None:
        await client.chat.completions.create(model="deepseek-ai/DeepSeek-V3", messages=messages)
        stream = await client.chat.completions.create(model="deepseek-ai/DeepSeek-V3", messages=messages, stream=True)
        async for _chunk in stream:
            pass
        await client.embeddings.create(model="BAAI/bge-m3", input="x")

    await traffic()  # first use imports modules lazily (client and server alike): keep that out of the window
    with disk_watch() as seen:
        for _ in range(5):
            await traffic()
    assert seen == []
    rows = await proxy.calls()  # and yet everything was stored, by the writer thread
    assert len(rows) == 18
    assert proxy.pool.rests_for(bad, "deepseek-ai/DeepSeek-V3")
