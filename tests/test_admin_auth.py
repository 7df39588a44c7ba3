"""Login, sessions, CSRF and throttling: no admin route is left open."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sqlite3
import sys
import time
from asyncio.subprocess import PIPE
from pathlib import Path

import aiohttp
import pytest
from cryptography.fernet import Fernet

from silicon_pool.admin import auth, pages, queries
from silicon_pool.admin.auth import COOKIE_NAME, SESSION_SECONDS, LoginThrottle, Revocations
from silicon_pool.admin.gate import PUBLIC
from silicon_pool.app import create_app
from silicon_pool.config import Config
from silicon_pool.crypto import Secrets
from silicon_pool.typedefs import ACCOUNT
from tests.conftest import PoolTestServer, Running, StartProxy, db_path, login, paid_keys
from tests.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent


def _api_routes(proxy: Running) -> list[tuple[str, str]]:
    routes = []
    for route in proxy.server.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter", "")
        if path.startswith("/api/") and route.method != "HEAD":
            routes.append((route.method, re.sub(r"\{id[^}]*\}", "1", path)))
    return routes


async def test_every_api_route_but_login_needs_a_session(proxy: Running, http: aiohttp.ClientSession) -> None:
    routes = _api_routes(proxy)
    assert len(routes) >= 20
    for method, path in routes:
        async with http.request(method, proxy.base + path, json={}) as resp:
            if (method, path) in PUBLIC:
                assert resp.status != 401, path
            else:
                assert resp.status == 401, (method, path)
                assert (await resp.json())["error"]


async def test_every_api_route_answers_with_a_session(
    proxy: Running, fake: FakeUpstream, admin: aiohttp.ClientSession
) -> None:
    await proxy.add_keys(*((s, 1.0) for s in paid_keys(fake, 1)))
    for method, path in sorted(_api_routes(proxy), key=lambda r: r[0] == "DELETE"):  # deletions last
        if path == "/api/logout":
            continue
        async with admin.request(method, path, json={}) as resp:
            assert resp.status != 401, (method, path)
            assert resp.status < 500, (method, path, await resp.text())


async def test_unknown_api_path_is_json_404(admin: aiohttp.ClientSession) -> None:
    async with admin.get("/api/nope") as resp:
        assert resp.status == 404 and "error" in await resp.json()


async def test_login_logout_and_me(proxy: Running) -> None:
    client = await login(proxy.base)
    try:
        async with client.get("/api/me") as resp:
            assert await resp.json() == {"username": "admin", "default_password": True}
        cookie = next(c for c in client.cookie_jar if c.key == "SILICON_POOL_SESSION")
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["max-age"] == str(48 * 3600)
        async with client.post("/api/logout") as resp:
            assert resp.status == 200
        async with client.get("/api/me") as resp:
            assert resp.status == 401
    finally:
        await client.close()


async def test_wrong_password_is_refused(proxy: Running, http: aiohttp.ClientSession) -> None:
    for body in ({"username": "admin", "password": "nope"}, {"username": "root", "password": "admin"}):
        async with http.post(f"{proxy.base}/api/login", json=body) as resp:
            assert resp.status == 401
    async with http.post(f"{proxy.base}/api/login", data=b"{bad") as resp:
        assert resp.status == 400


async def test_repeated_wrong_passwords_are_slowed_down(proxy: Running, http: aiohttp.ClientSession) -> None:
    bad = {"username": "admin", "password": "wrong"}
    for _ in range(LoginThrottle.FREE_TRIES):
        async with http.post(f"{proxy.base}/api/login", json=bad) as resp:
            assert resp.status == 401
    async with http.post(f"{proxy.base}/api/login", json={"username": "admin", "password": "admin"}) as resp:
        assert resp.status == 429  # even the right password waits now
        assert int(resp.headers["Retry-After"]) >= 1


def test_throttle_backs_off_and_forgets() -> None:
    throttle = LoginThrottle()
    for _ in range(LoginThrottle.FREE_TRIES):
        assert throttle.wait("a") == 0
        throttle.failed("a")
    assert throttle.wait("a") == 1 and throttle.wait("b") == 0
    throttle.failed("a")
    assert throttle.wait("a") == 2
    throttle.succeeded("a")
    assert throttle.wait("a") == 0


def _lock(throttle: LoginThrottle, client: str) -> None:
    for _ in range(LoginThrottle.FREE_TRIES + 1):
        throttle.failed(client)


def test_throttle_forgets_the_stalest_address_first() -> None:
    """A locked address that keeps trying is not flushed out by a crowd of addresses that came after its first try."""
    throttle = LoginThrottle()
    _lock(throttle, "192.0.2.1")
    crowd = [f"198.51.{i // 256}.{i % 256}" for i in range(LoginThrottle.MAX_ADDRESSES)]
    for client in crowd[:-1]:
        throttle.failed(client)
    throttle.failed("192.0.2.1")  # tried again once its wait was over
    throttle.failed(crowd[-1])  # one too many: the stalest goes
    assert throttle.wait("192.0.2.1") > 0
    assert throttle.wait(crowd[0]) == 0 and throttle.wait(crowd[1]) == 0  # forgotten, then a first try


@pytest.mark.parametrize(
    ("locked", "same", "other"),
    [
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:3::1"),
        ("::ffff:192.0.2.7", "192.0.2.7", "192.0.2.8"),
        ("192.0.2.7", "::ffff:192.0.2.7", "::ffff:192.0.2.8"),
    ],
)
def test_throttle_counts_an_ipv6_network_as_one_client(locked: str, same: str, other: str) -> None:
    """A /64 is one subscriber's; an IPv4-mapped address is the IPv4 one."""
    throttle = LoginThrottle()
    _lock(throttle, locked)
    assert throttle.wait(same) > 0 and throttle.wait(other) == 0
    throttle.succeeded(same)
    assert throttle.wait(locked) == 0


async def test_session_survives_a_restart(start_proxy: StartProxy) -> None:
    first = await start_proxy()
    client = await login(first.base)
    cookies = {c.key: c.value for c in client.cookie_jar}
    await client.close()
    await first.stop()
    second = await start_proxy(data_dir=first.data_dir)
    async with (
        aiohttp.ClientSession(base_url=second.base, cookies=cookies) as again,
        again.get("/api/me") as resp,
    ):
        assert resp.status == 200


def _copy(client: aiohttp.ClientSession, base: str) -> aiohttp.ClientSession:
    """Another client holding a copy of `client`'s session cookie, as a thief would."""
    cookies = {c.key: c.value for c in client.cookie_jar}
    return aiohttp.ClientSession(base_url=base, cookies=cookies)


async def test_logout_ends_the_session_for_a_copied_cookie_too(proxy: Running) -> None:
    client = await login(proxy.base)
    async with _copy(client, proxy.base) as thief:
        async with thief.get("/api/keys/export") as resp:
            assert resp.status == 200
        async with client.post("/api/logout") as resp:
            assert resp.status == 200
        await client.close()
        async with thief.get("/api/keys/export") as resp:
            assert resp.status == 401
        async with thief.get("/keys", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"].startswith("/login")
        async with thief.post("/api/logout") as resp:
            assert resp.status == 401
    again = await login(proxy.base)  # the account itself is untouched
    async with again.get("/api/keys/export") as resp:
        assert resp.status == 200
    await again.close()


async def test_a_logout_outlives_a_restart_and_expires_with_the_cookie(start_proxy: StartProxy) -> None:
    first = await start_proxy()
    out, kept = await login(first.base), await login(first.base)
    copies = [{c.key: c.value for c in client.cookie_jar} for client in (out, kept)]
    async with out.post("/api/logout") as resp:
        assert resp.status == 200
    await out.close()
    await kept.close()
    await first.stop()
    until = sqlite3.connect(db_path(first)).execute("SELECT until FROM revoked_sessions").fetchall()
    assert len(until) == 1 and until[0][0] == pytest.approx(time.time() + SESSION_SECONDS, abs=60)

    second = await start_proxy(data_dir=first.data_dir)
    for cookies, status in zip(copies, (401, 200), strict=True):
        async with (
            aiohttp.ClientSession(base_url=second.base, cookies=cookies) as replay,
            replay.get("/api/keys/export") as resp,
        ):
            assert resp.status == status
    await second.stop()

    with sqlite3.connect(db_path(first)) as conn:  # once every cookie it could be in has expired
        conn.execute("UPDATE revoked_sessions SET until = ?", (time.time() - 1,))
    third = await start_proxy(data_dir=first.data_dir)
    assert await third.store.read(lambda c: c.execute("SELECT COUNT(*) FROM revoked_sessions").fetchone()) == (0,)


async def test_too_many_logouts_end_every_session_instead(proxy: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """The list of logged-out ids is bounded: the one past the bound logs everyone out and starts it afresh."""
    monkeypatch.setattr(auth, "MAX_REVOKED", 2)
    clients = [await login(proxy.base) for _ in range(4)]
    copies = [_copy(client, proxy.base) for client in clients]
    try:
        for client in clients[:3]:
            async with client.post("/api/logout") as resp:
                assert resp.status == 200
        for copy in copies:
            async with copy.get("/api/me") as resp:
                assert resp.status == 401
        count = await proxy.store.read(lambda c: c.execute("SELECT COUNT(*) FROM revoked_sessions").fetchone())
        assert count == (0,)
        fresh = await login(proxy.base)
        async with fresh.post("/api/logout") as resp:
            assert resp.status == 200
        await fresh.close()
    finally:
        for session in (*clients, *copies):
            await session.close()


async def test_revocations_forget_ids_whose_cookies_have_expired(proxy: Running) -> None:
    now = [time.time()]
    revoked = Revocations(proxy.store, {}, clock=lambda: now[0])
    await revoked.revoke("old", proxy.server.app[ACCOUNT])
    now[0] += SESSION_SECONDS + 1
    await revoked.revoke("new", proxy.server.app[ACCOUNT])
    assert "old" not in revoked and "new" in revoked
    rows = await proxy.store.read(lambda c: c.execute("SELECT sid FROM revoked_sessions").fetchall())
    assert rows == [("new",)]


async def test_a_session_from_before_session_ids_must_log_in_again(proxy: Running) -> None:
    """Such a session could not be ended by logging out, so it ends now."""
    now = int(time.time())
    account = proxy.server.app[ACCOUNT]
    data = {"created": now, "session": {"user": account.username, "epoch": account.epoch, "seen": now}}
    fernet = Fernet(base64.urlsafe_b64encode(Secrets(proxy.data_dir).cookie_key))
    cookie = fernet.encrypt(json.dumps(data).encode()).decode()
    async with (
        aiohttp.ClientSession(base_url=proxy.base, cookies={COOKIE_NAME: cookie}) as old,
        old.get("/api/me") as resp,
    ):
        assert resp.status == 401


async def test_changing_the_password_needs_the_current_one_and_logs_others_out(proxy: Running) -> None:
    mine, other = await login(proxy.base), await login(proxy.base)
    before = _copy(mine, proxy.base)
    try:
        bad = {"current_password": "wrong", "password": "s3cret-pass"}
        async with mine.post("/api/account", json=bad) as resp:
            assert resp.status == 403
        async with mine.post("/api/account", json={"current_password": "admin", "password": "short"}) as resp:
            assert resp.status == 400
        change = {"current_password": "admin", "username": "boss", "password": "s3cret-pass"}
        async with mine.post("/api/account", json=change) as resp:
            assert resp.status == 200
            assert await resp.json() == {"username": "boss", "default_password": False}
        async with mine.get("/api/me") as resp:
            assert resp.status == 200  # this session goes on
        async with other.get("/api/me") as resp:
            assert resp.status == 401  # every other one is out
        async with before.get("/api/me") as resp:
            assert resp.status == 401  # this one's cookie from before the change too
    finally:
        await mine.close()
        await other.close()
        await before.close()
    fresh = await login(proxy.base, "boss", "s3cret-pass")
    await fresh.close()


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({}, True),  # a script: no Origin, no Referer
        ({"Origin": "SAME"}, True),
        ({"Referer": "SAME/keys"}, True),
        ({"Origin": "http://evil.example"}, False),
        ({"Origin": "null"}, False),
        ({"Referer": "http://evil.example/page"}, False),
    ],
)
async def test_foreign_origin_cannot_change_anything(
    proxy: Running, admin: aiohttp.ClientSession, headers: dict[str, str], allowed: bool
) -> None:
    headers = {k: v.replace("SAME", proxy.base) for k, v in headers.items()}
    async with admin.patch("/api/settings", json={"max_attempts": 5}, headers=headers) as resp:
        assert resp.status == (200 if allowed else 403)
    async with admin.get("/api/settings") as resp:
        assert (await resp.json())["max_attempts"] == (5 if allowed else 3)


@pytest.mark.parametrize(
    ("allowed", "host", "headers", "status"),
    [
        # Behind a TLS-terminating proxy: the browser says https, the proxy speaks http to us.
        (("pool.example",), "pool.example", {"Origin": "https://pool.example"}, 200),
        (("pool.example",), "pool.example", {"Origin": "https://POOL.example:8443"}, 200),
        (("pool.example",), "pool.example", {"Referer": "https://pool.example/keys"}, 200),
        (("pool.example",), "", {"Origin": "https://pool.example"}, 200),  # the proxy sent its own Host
        ((), "", {"Origin": "https://pool.example"}, 403),  # a name nobody allowed
        (("pool.example",), "pool.example", {"Origin": "https://evil.example"}, 403),
        (("pool.example",), "pool.example", {"Origin": "https://pool.example.evil.example"}, 403),
        (("pool.example",), "pool.example", {"Origin": "https://evil.example@pool.example"}, 403),
        (("pool.example",), "pool.example", {"Origin": "ftp://pool.example"}, 403),
        (("pool.example",), "pool.example", {"Referer": "https://[pool.example/"}, 403),
    ],
)
async def test_https_origin_of_an_allowed_host_is_this_site(
    tmp_path: Path,
    upstream_url: str,
    allowed: tuple[str, ...],
    host: str,
    headers: dict[str, str],
    status: int,
) -> None:
    config = Config(data_dir=tmp_path, upstream=upstream_url, allowed_hosts=allowed)
    server = PoolTestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    try:
        base = str(server.make_url("")).rstrip("/")
        sent = {**headers, "Host": host or base.removeprefix("http://")}
        async with aiohttp.ClientSession(base_url=base, cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
            async with client.post("/api/login", json={"username": "admin", "password": "admin"}, headers=sent) as resp:
                assert resp.status == status, await resp.text()
            if status == 200:
                async with client.patch("/api/settings", json={"max_attempts": 5}, headers=sent) as resp:
                    assert resp.status == 200
    finally:
        await server.close()


async def test_reset_admin_from_the_command_line(start_proxy: StartProxy) -> None:
    proxy = await start_proxy()
    client = await login(proxy.base)
    async with client.post("/api/account", json={"current_password": "admin", "password": "forgotten!"}) as resp:
        assert resp.status == 200
    await client.close()
    await proxy.stop()
    reset = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "--reset-admin", "--data-dir", str(proxy.data_dir), cwd=ROOT, stdout=PIPE
    )
    out, _ = await reset.communicate()
    assert reset.returncode == 0 and b"admin / admin" in out
    again = await start_proxy(data_dir=proxy.data_dir)
    client = await login(again.base)
    async with client.get("/api/me") as resp:
        assert (await resp.json())["default_password"] is True
    await client.close()


@pytest.mark.parametrize(("host", "loud"), [("0.0.0.0", True), ("127.0.0.1", False), ("localhost", False)])
async def test_default_password_on_an_open_host_is_a_loud_warning(
    host: str, loud: bool, tmp_path: Path, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = PoolTestServer(create_app(Config(host=host, data_dir=tmp_path, upstream=upstream_url)), host="127.0.0.1")
    await server.start_server()
    await server.close()
    assert any("admin/admin" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records) == loud


@pytest.mark.parametrize("host", ["rebind.evil.example", "evil.example:7898"])
async def test_unknown_host_names_are_refused(proxy: Running, http: aiohttp.ClientSession, host: str) -> None:
    """DNS rebinding: a foreign page pointing its own name at 127.0.0.1 sends that name as Host."""
    headers = {"Host": host, "Origin": f"http://{host}"}
    async with http.post(
        f"{proxy.base}/api/login", json={"username": "admin", "password": "admin"}, headers=headers
    ) as resp:
        assert resp.status == 403
    async with http.get(f"{proxy.base}/login", headers=headers) as resp:
        assert resp.status == 403


async def test_allowed_host_names_and_ip_literals_pass(
    tmp_path: Path, upstream_url: str, http: aiohttp.ClientSession
) -> None:
    config = Config(data_dir=tmp_path, upstream=upstream_url, allowed_hosts=("pool.lan",))
    server = PoolTestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    try:
        for host in ("pool.lan", "localhost:1", "127.0.0.1", "[::1]:7898", "192.168.1.5"):
            async with http.get(server.make_url("/login"), headers={"Host": host}) as resp:
                assert resp.status == 200, host
    finally:
        await server.close()


async def test_guesses_sent_at_once_are_throttled(proxy: Running, http: aiohttp.ClientSession) -> None:
    async def guess() -> int:
        async with http.post(f"{proxy.base}/api/login", json={"username": "admin", "password": "nope"}) as resp:
            return resp.status

    statuses = await asyncio.gather(*(guess() for _ in range(20)))
    assert statuses.count(401) <= LoginThrottle.FREE_TRIES and statuses.count(429) >= 20 - LoginThrottle.FREE_TRIES


async def test_a_huge_chunked_body_is_cut_off(proxy: Running, http: aiohttp.ClientSession) -> None:
    async def body():
        for _ in range(64):
            yield b"x" * (256 * 1024)

    async with http.post(f"{proxy.base}/api/login", data=body(), headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400


async def test_an_unexpected_failure_is_logged_and_answered_without_a_traceback(
    proxy: Running, admin: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: object) -> None:
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(queries, "totals_since", broken)
    async with admin.get("/api/summary") as resp:
        assert resp.status == 500 and resp.content_type == "application/json"
        body = await resp.text()
    assert "internal error" in body and "Traceback" not in body and "malformed" not in body
    monkeypatch.setattr(pages, "translator", broken)
    async with admin.get("/keys") as resp:
        assert resp.status == 500 and resp.content_type == "text/plain"
        assert "Traceback" not in await resp.text()
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    failures = [r for r in caplog.records if r.levelname == "ERROR" and r.exc_info]
    assert [r.getMessage() for r in failures] == ["admin GET /api/summary failed", "admin GET /keys failed"]
    monkeypatch.undo()
    async with admin.get("/api/summary") as resp:  # and the server goes on serving
        assert resp.status == 200
