"""kill -9 in the middle of traffic and an import: what was acknowledged is still there."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import aiohttp

from tests.fake_upstream import FakeUpstream, make_key

ROOT = Path(__file__).resolve().parent.parent


async def _start(data_dir: Path, port: int, upstream_url: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "run.py",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--upstream",
        upstream_url,
        "--log-level",
        "WARNING",
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(20):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return proc


async def _admin(base: str) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(base_url=base, cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with session.post("/api/login", json={"username": "admin", "password": "admin"}) as resp:
        assert resp.status == 200
    return session


async def test_kill_9_during_traffic_and_import(
    tmp_path: Path, fake: FakeUpstream, upstream_url: str, unused_tcp_port: int
) -> None:
    base = f"http://127.0.0.1:{unused_tcp_port}"
    acknowledged = [make_key(f"ack-{i}") for i in range(150)]
    in_flight = [make_key(f"late-{i}") for i in range(1500)]
    for key in acknowledged + in_flight:
        fake.add_key(key, "5.00")
    proc = await _start(tmp_path, unused_tcp_port, upstream_url)
    try:
        admin = await _admin(base)
        async with admin.patch("/api/settings", json={"strategy": "round_robin", "cooldown_seconds": 7}) as resp:
            assert resp.status == 200
        async with admin.post("/api/keys/import", json={"keys": "\n".join(acknowledged)}) as resp:
            job_id = (await resp.json())["job_id"]
        async with asyncio.timeout(30):
            while True:
                async with admin.get(f"/api/jobs/{job_id}") as resp:
                    job = await resp.json()
                if job["state"] == "done":
                    break
                await asyncio.sleep(0.05)
        assert job["result"]["imported"] == 150
        fake.user_info_delay = 0.02  # the second import is still running at the kill
        async with admin.post("/api/keys/import", json={"keys": "\n".join(in_flight)}) as resp:
            assert resp.status == 202

        finished: list[float] = []

        async def traffic(http: aiohttp.ClientSession) -> None:
            body = {"model": "deepseek-ai/DeepSeek-V3", "messages": [{"role": "user", "content": "x"}]}
            while True:
                try:
                    async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
                        await resp.read()
                        if resp.status == 200:
                            finished.append(time.monotonic())
                except aiohttp.ClientError:
                    return

        async with aiohttp.ClientSession() as http:
            workers = [asyncio.create_task(traffic(http)) for _ in range(8)]
            await asyncio.sleep(2.5)
            killed_at = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            await asyncio.gather(*workers)
        await admin.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    conn = sqlite3.connect(tmp_path / "pool.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        settings = dict(conn.execute("SELECT name, value FROM settings").fetchall())
        logged = conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    finally:
        conn.close()
    assert settings["strategy"] == '"round_robin"' and settings["cooldown_seconds"] == "7.0"
    safely_old = sum(1 for t in finished if t < killed_at - 1.0)
    assert safely_old > 50 and logged >= safely_old  # at most the last second of the log is lost

    proc = await _start(tmp_path, unused_tcp_port, upstream_url)
    try:
        admin = await _admin(base)
        async with admin.get("/api/keys/export") as resp:
            exported = set((await resp.text()).split())
        await admin.close()
    finally:
        proc.terminate()
        await proc.wait()
    assert set(acknowledged) <= exported  # every key of the acknowledged import
    assert exported <= set(acknowledged) | set(in_flight)  # and nothing else
