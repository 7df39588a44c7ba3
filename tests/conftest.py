"""Fixtures: a fake SiliconFlow on 127.0.0.1, the real proxy app in front of it, real clients."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from silicon_pool.app import create_app
from silicon_pool.config import Config
from silicon_pool.keys import Key
from silicon_pool.pool import KeyPool
from silicon_pool.server import PoolRunner
from silicon_pool.store import DB_FILE, Store
from silicon_pool.typedefs import POOL, SETTINGS, STORE
from tests.fake_upstream import FakeUpstream, make_key


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Tests marked `both_loops` run twice: on asyncio's loop and on uvloop, which production runs."""
    if item.get_closest_marker("both_loops") is None:
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class PoolTestServer(TestServer):
    """A TestServer that serves the app as `run.py` does: `/v1/*` straight to the proxy."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return PoolRunner(self.app, **kwargs)


@dataclass
class Running:
    """A started proxy, with the shortcuts tests need."""

    server: PoolTestServer
    data_dir: Path
    clients: list[AsyncOpenAI] = field(default_factory=list)

    @property
    def base(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def pool(self) -> KeyPool:
        return self.server.app[POOL]

    @property
    def store(self) -> Store:
        return self.server.app[STORE]

    async def add_keys(self, *entries: tuple[str, float | None]) -> list[Key]:
        """Put keys in the store and the pool, as an import does (without asking the upstream)."""
        keys = await self.store.insert_keys(Key(0, secret, time.time(), balance) for secret, balance in entries)
        self.pool.add_many(keys)
        return keys

    async def set(self, **changes: Any) -> None:
        await self.server.app[SETTINGS].update(changes)

    def openai(self, api_key: str = "anything") -> AsyncOpenAI:
        client = AsyncOpenAI(base_url=f"{self.base}/v1", api_key=api_key, max_retries=0, timeout=10)
        self.clients.append(client)
        return client

    async def flush(self) -> None:
        """Wait until everything queued for the writer is committed."""
        await self.store.flush()

    async def calls(self) -> list[sqlite3.Row]:
        await self.flush()

        def read(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            conn.row_factory = sqlite3.Row
            try:
                return conn.execute("SELECT * FROM calls ORDER BY id").fetchall()
            finally:
                conn.row_factory = None

        return await self.store.read(read)

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        self.clients.clear()
        await self.server.close()


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
async def upstream_url(fake: FakeUpstream, aiohttp_server: Any) -> str:
    server = await aiohttp_server(fake.app)
    return str(server.make_url("/v1"))


StartProxy = Callable[..., Awaitable[Running]]

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RELEASE = "fa0878f"  # the release whose data dir tests/fixtures keeps (make_release_data_dir.py)
RELEASE_MANIFEST: dict[str, Any] = json.loads((FIXTURES / f"data-{RELEASE}.json").read_text())


def release_data_dir(tmp_path: Path, name: str = f"data-{RELEASE}") -> Path:
    """A copy of the data dir release fa0878f wrote, to upgrade or to damage (its manifest: RELEASE_MANIFEST)."""
    data_dir = tmp_path / name
    shutil.copytree(FIXTURES / f"data-{RELEASE}", data_dir)
    return data_dir


@pytest.fixture
async def start_proxy(upstream_url: str, tmp_path: Path) -> AsyncIterator[StartProxy]:
    """Start the real app on a free port; `data_dir` may be reused to test a restart."""
    running: list[Running] = []

    async def start(data_dir: Path | None = None, **settings: Any) -> Running:
        config = Config(data_dir=data_dir or tmp_path / "data", upstream=upstream_url)
        server = PoolTestServer(create_app(config), host="127.0.0.1")
        await server.start_server()
        proxy = Running(server, config.data_dir)
        running.append(proxy)
        if settings:
            await proxy.set(**settings)
        return proxy

    yield start
    for proxy in running:
        await proxy.stop()


@pytest.fixture
async def proxy(start_proxy: StartProxy) -> Running:
    return await start_proxy()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def paid_keys(fake: FakeUpstream, count: int, balance: str = "10.00", seed: str = "paid") -> list[str]:
    """`count` keys the fake knows, each with `balance`."""
    keys = [make_key(f"{seed}-{i}") for i in range(count)]
    for key in keys:
        fake.add_key(key, balance)
    return keys


def db_path(proxy: Running) -> Path:
    return proxy.data_dir / DB_FILE


async def login(base: str, username: str = "admin", password: str = "admin") -> aiohttp.ClientSession:
    """A browser-like client (cookies kept, even for 127.0.0.1) logged in to the admin."""
    session = aiohttp.ClientSession(base_url=base, cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with session.post("/api/login", json={"username": username, "password": password}) as resp:
        assert resp.status == 200, await resp.text()
    return session


@pytest.fixture
async def admin(proxy: Running) -> AsyncIterator[aiohttp.ClientSession]:
    session = await login(proxy.base)
    yield session
    await session.close()


async def wait_job(admin: aiohttp.ClientSession, job_id: str) -> dict[str, Any]:
    """Poll a job until it is no longer running (30 s at most); returns its last view."""
    async with asyncio.timeout(30):
        while True:
            async with admin.get(f"/api/jobs/{job_id}") as resp:
                assert resp.status == 200
                job = await resp.json()
            if job["state"] != "running":
                return job
            await asyncio.sleep(0.02)
