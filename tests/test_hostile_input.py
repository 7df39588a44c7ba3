"""Issue 13: bytes that are not UTF-8, foreign web pages, keys echoed back, dot segments, long strings.

Each test sends what an attacker (a client, a web page, an upstream) could send, byte for byte
where aiohttp's client would tidy it, and checks what reaches the client, the log and the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest

from silicon_pool.keys import Key
from silicon_pool.pool import PAID
from silicon_pool.store import CallRecord, Store
from tests.conftest import Running, StartProxy, login, paid_keys
from tests.fake_upstream import FakeUpstream

CHAT = "deepseek-ai/DeepSeek-V3"
BODY = orjson.dumps({"model": CHAT, "messages": [{"role": "user", "content": "hi"}]})
JSON = {"Content-Type": "application/json"}
CONTAINED = {"content-security-policy": "sandbox; default-src 'none'", "x-content-type-options": "nosniff"}


async def raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` exactly as written; the status, headers (lower-case names) and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("utf-8", "replace").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
    finally:
        writer.close()
    return int(lines[0].split()[1]), headers, body


def post(path: str, body: bytes = BODY, extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


async def start_scripted(start_proxy: StartProxy, answer: Callable[[bytes], bytes]) -> tuple[Running, asyncio.Server]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (int(line[15:]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
            )
            await reader.readexactly(length)
            writer.write(answer(head))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    proxy = await start_proxy(upstream=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1")
    return proxy, server


def answer(status: str, headers: bytes, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n".encode() + headers + b"\r\n" + body
    )


# -- 1: one byte that is not UTF-8 loses nothing -------------------------------------------------


async def test_a_byte_that_is_not_utf8_costs_no_acknowledged_change(
    start_proxy: StartProxy, fake: FakeUpstream, tmp_path: Path
) -> None:
    proxy = await start_proxy()
    [key] = await proxy.add_keys((paid_keys(fake, 1)[0], 5.0))
    admin = await login(proxy.base)
    try:
        for _ in range(3):  # bad rows before, beside and after the change, in the same batches
            # The head alone, as a client waiting for a go-ahead sends it.
            head = post("/v1/chat/completions", extra=b"Expect: \xff\r\n")[: -len(BODY)]
            status, _, body = await raw(proxy.server.port, head)
            assert status == 417 and orjson.loads(body)["error"]["code"] == "expectation_failed"
            async with admin.patch(f"/api/keys/{key.id}", json={"enabled": False}) as resp:
                assert resp.status == 200
    finally:
        await admin.close()
    rows = await proxy.calls()
    assert [r["status"] for r in rows] == [417, 417, 417]
    assert all("\ufffd" in r["error"] for r in rows)
    await proxy.stop()
    again = await start_proxy(data_dir=proxy.data_dir)
    assert again.pool.keys[key.id].enabled is False


async def test_an_upstream_header_not_utf8_is_stored_cleaned(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    page = b"<html><script>fetch('/api/keys/export')</script></html>"
    proxy, server = await start_scripted(
        start_proxy, lambda _head: answer("200 OK", b"Content-Type: text/html\xff\r\n", page)
    )
    try:
        keys = await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 2)))
        status, _, _ = await raw(proxy.server.port, post("/v1/chat/completions"))
        assert status == 503  # HTML where JSON was due: not the keys' fault, and said so
        await proxy.flush()
        assert all("\ufffd" in (k.last_error or "") for k in keys)
        admin = await login(proxy.base)
        try:
            async with admin.get("/api/keys") as resp:
                assert resp.status == 200
                assert {item["id"] for item in (await resp.json())["items"]} == {k.id for k in keys}
        finally:
            await admin.close()
        [row] = await proxy.calls()
        assert row["status"] == 503
    finally:
        server.close()


async def test_the_writer_sets_aside_only_the_row_it_cannot_write(tmp_path: Path) -> None:
    from silicon_pool.crypto import Secrets

    store = Store(tmp_path, Secrets(tmp_path))
    store.open()
    try:
        [key] = await store.insert_keys([Key(0, "sk-" + "a" * 48, time.time(), 1.0)])
        key.enabled, key.last_error = False, "upstream said \udcff"

        def record(error: str | None, tokens: int = 1) -> CallRecord:
            return CallRecord(
                time.time(), "chat/completions", "m\udcfe", key.id, 200, 1, 1, 1, tokens, 0, 0, 0, False, "none", error
            )

        store.log_call(record("fine"))
        store.log_call(record("bad \udcff"))
        store.log_call(record(None, tokens=2**70))  # beyond what JSON carries to SQLite: set aside
        store.save_key(key)
        await store.flush()
        with sqlite3.connect(tmp_path / "pool.db") as conn:
            enabled, last_error = conn.execute("SELECT enabled, last_error FROM keys").fetchone()
            calls = conn.execute("SELECT error, model FROM calls ORDER BY id").fetchall()
            hourly = conn.execute("SELECT SUM(calls) FROM usage_hourly").fetchone()[0]
        assert (enabled, last_error) == (0, "upstream said \ufffd")
        assert calls == [("fine", "m\ufffd"), ("bad \ufffd", "m\ufffd")] and hourly == 2
        assert store.dropped_rows == 1  # what /metrics reports (test_metrics.py)
    finally:
        store.close()


# -- 2: nothing relayed runs as a page of the proxy ----------------------------------------------


async def test_relayed_answers_are_contained(proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    chat = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}]}
    for path, body in [
        ("/v1/chat/completions", chat),
        ("/v1/chat/completions", {**chat, "stream": True}),
        ("/v1/chat/completions", {**chat, "model": "no/such"}),  # the upstream's 400, relayed
        ("/v1/chat/completions", {"messages": []}),  # the proxy's own 400
    ]:
        async with http.post(f"{proxy.base}{path}", json=body) as resp:
            await resp.read()
            assert {k: resp.headers.get(k) for k in CONTAINED} == CONTAINED, (body, resp.status)
    async with http.get(f"{proxy.base}/v1/models") as resp:
        assert {k: resp.headers.get(k) for k in CONTAINED} == CONTAINED


async def test_the_upstreams_own_policy_headers_never_reach_the_client(
    start_proxy: StartProxy, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Named in another case, the upstream's copies sat beside the proxy's: `x-content-type-options:
    foo` before `nosniff` turns sniffing back on, a second Allow-Origin breaks CORS for loopback pages."""
    policy = (
        b"Content-Type: text/html\r\ncontent-security-policy: script-src *\r\nx-content-type-options: foo\r\n"
        b"access-control-allow-origin: https://evil.example\r\naccess-control-allow-credentials: true\r\n"
    )
    proxy, server = await start_scripted(start_proxy, lambda head: answer("200 OK", policy, b"<script>1</script>"))
    try:
        await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
        async with http.get(f"{proxy.base}/v1/files", headers={"Origin": "http://localhost:3000"}) as resp:
            assert resp.status == 200 and await resp.read() == b"<script>1</script>"
            assert resp.headers.getall("Content-Security-Policy") == [CONTAINED["content-security-policy"]]
            assert resp.headers.getall("X-Content-Type-Options") == ["nosniff"]
            assert resp.headers.getall("Access-Control-Allow-Origin") == ["*"]
            assert "Access-Control-Allow-Credentials" not in resp.headers
    finally:
        server.close()


# -- 3: web pages of other sites cannot spend the pool ---------------------------------------------


LOOPBACK = [
    "http://localhost:3000",
    "http://127.0.0.1",
    "http://127.8.9.10:8080",
    "http://[::1]:5173",
    "http://chat.localhost",
]
FOREIGN = [
    "https://evil.example",
    "null",
    "http://192.168.1.9:3000",
    "http://localhost.evil.example",
    "http://127.0.0.1.evil.example",
]


async def test_without_a_token_only_pages_of_this_machine_use_the_pool(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    for origin in FOREIGN:
        # A form post is sent without a preflight: it must be refused before it costs a key.
        form = {"Origin": origin, "Content-Type": "application/x-www-form-urlencoded"}
        async with http.post(f"{proxy.base}/v1/chat/completions", data=BODY, headers=form) as resp:
            assert resp.status == 403 and (await resp.json())["error"]["code"] == "origin_not_allowed"
            assert "Access-Control-Allow-Origin" not in resp.headers
        ask = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        async with http.options(f"{proxy.base}/v1/chat/completions", headers=ask) as resp:
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
    assert not fake.seen("/v1/chat/completions")
    for origin in LOOPBACK:
        async with http.post(
            f"{proxy.base}/v1/chat/completions", data=BODY, headers={"Origin": origin, **JSON}
        ) as resp:
            assert resp.status == 200, origin
            assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_with_a_token_any_page_may_ask_and_private_network_is_allowed(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    await proxy.set(api_token="sk-proxy-token-123")
    ask = {
        "Origin": "https://chat.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
        "Access-Control-Request-Private-Network": "true",
    }
    async with http.options(f"{proxy.base}/v1/chat/completions", headers=ask) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Private-Network"] == "true"
        assert resp.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    sent = {"Origin": "https://chat.example", "Authorization": "Bearer sk-proxy-token-123", **JSON}
    async with http.post(f"{proxy.base}/v1/chat/completions", data=BODY, headers=sent) as resp:
        assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
    async with http.post(
        f"{proxy.base}/v1/chat/completions", data=BODY, headers={"Origin": "https://chat.example"}
    ) as resp:
        assert resp.status == 401  # any page may ask; only the token spends


async def test_preflight_headers_are_echoed_only_when_they_are_header_names(
    proxy: Running, http: aiohttp.ClientSession
) -> None:
    ask = {"Origin": "http://localhost:3000", "Access-Control-Request-Headers": "authorization, x-a\u00ff"}
    async with http.options(f"{proxy.base}/v1/chat/completions", headers=ask) as resp:
        assert resp.status == 204 and resp.headers["Access-Control-Allow-Headers"] == "*, Authorization"


async def test_account_info_is_not_forwarded(proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    for path in ["/v1/user/info", "/v1/User/info", "/v1/user"]:
        async with http.get(f"{proxy.base}{path}") as resp:
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    assert not fake.seen("/v1/user/info")


# -- 6: what a client sends is stored bounded, and clearing the log clears the stats ---------------


async def test_long_model_ids_and_paths_are_logged_cut(
    proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    model = "m" * 250
    async with http.post(f"{proxy.base}/v1/chat/completions", json={"model": model, "messages": []}) as resp:
        await resp.read()
    async with http.get(f"{proxy.base}/v1/" + "p" * 3000) as resp:
        await resp.read()
    rows = await proxy.calls()
    assert [len(r["model"] or "") for r in rows] == [200, 0]
    assert [len(r["endpoint"]) for r in rows] == [len("chat/completions"), 200]


async def test_clearing_the_log_clears_the_hourly_totals(proxy: Running, fake: FakeUpstream) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    await proxy.openai().chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hi"}])
    await proxy.flush()

    def count(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COUNT(*) FROM usage_hourly").fetchone()[0])

    assert await proxy.store.read(count) == 1
    admin = await login(proxy.base)
    try:
        async with admin.delete("/api/logs") as resp:
            assert resp.status == 200 and (await resp.json())["deleted"] == 1
    finally:
        await admin.close()
    assert await proxy.store.read(count) == 0


# -- 9: keys the upstream echoes back are masked ---------------------------------------------------


async def test_keys_echoed_by_the_upstream_are_masked(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    def echo(head: bytes) -> bytes:
        auth = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"authorization:"))[15:].strip()
        body = b'{"error":{"message":"bad request for ' + auth + b'","code":"x"}}'
        return answer("400 Bad Request", b"Content-Type: application/json\r\nX-Seen: " + auth + b"\r\n", body)

    proxy, server = await start_scripted(start_proxy, echo)
    try:
        [secret] = paid_keys(fake, 1)
        await proxy.add_keys((secret, 5.0))
        status, headers, body = await raw(proxy.server.port, post("/v1/chat/completions"))
        assert status == 400
        assert secret not in body.decode() and secret not in headers["x-seen"]
        assert headers["x-seen"] == f"Bearer {secret[:7]}…{secret[-4:]}"
        assert f"{secret[:7]}…{secret[-4:]}".encode() in body
        [row] = await proxy.calls()
        assert secret not in row["error"]
    finally:
        server.close()


# -- 10: dot segments never go upstream -------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/../../x",
        "/v1/./models",
        "/v1/%2e%2e/x",
        "/v1/models/%2E",
        "/v1/models/..%2f..%2fx",
        "/v1/a/..%5cb",
        # what some servers still read as `..`: decoded twice, a path parameter, a C string's end
        "/v1/%252e%252e/x",
        "/v1/models/%25252E%25252E%25252Fx",
        "/v1/..;/x",
        "/v1/models/%2e%2e%3bjsessionid=1/x",
        "/v1/..%00/x",
    ],
)
async def test_dot_segments_are_refused(proxy: Running, fake: FakeUpstream, path: str) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    get = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    status, _, body = await raw(proxy.server.port, get)
    if status == 400:
        assert orjson.loads(body)["error"]["code"] == "invalid_path"
    else:  # aiohttp resolved the dots itself: what goes upstream has none
        assert status == 404 and not path.startswith("/v1/")
    assert not fake.requests


async def test_dots_inside_a_segment_are_fine(proxy: Running, fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 1)))
    async with http.get(f"{proxy.base}/v1/files/Qwen/Qwen2.5-7B-Instruct.v1") as resp:
        await resp.read()
    assert fake.requests and fake.requests[-1].path == "/v1/files/Qwen/Qwen2.5-7B-Instruct.v1"
    async with http.get(f"{proxy.base}/v1/files/a..b%3B.c;d") as resp:
        await resp.read()
    assert fake.requests[-1].path.startswith("/v1/files/a..b")


# -- 5, 17: answers too large or not HTTP blame no key ---------------------------------------------


@pytest.mark.parametrize("status", ["200 OK", "400 Bad Request", "500 Internal Server Error"])
async def test_an_answer_over_max_answer_mb_is_a_502_that_blames_no_key(
    start_proxy: StartProxy, fake: FakeUpstream, status: str
) -> None:
    huge = b'{"x":"' + b"a" * (2 * 1024 * 1024) + b'"}'
    proxy, server = await start_scripted(
        start_proxy, lambda _head: answer(status, b"Content-Type: application/json\r\n", huge)
    )
    try:
        await proxy.set(max_answer_mb=1)
        keys = await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 2)))
        code, _, body = await raw(proxy.server.port, post("/v1/chat/completions"))
        assert code == 502 and orjson.loads(body)["error"]["code"] == "answer_too_large"
        assert all(k.status() == "active" and not k.cool_until for k in keys)
        [row] = await proxy.calls()
        assert row["status"] == 502 and row["attempts"] == 1 and "1 MB" in row["error"]
    finally:
        server.close()


async def test_an_answer_that_is_not_http_fails_over_without_resting_the_key(
    start_proxy: StartProxy, fake: FakeUpstream
) -> None:
    proxy, server = await start_scripted(start_proxy, lambda _head: b"HTTP/1.x 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    try:
        keys = await proxy.add_keys(*((s, 5.0) for s in paid_keys(fake, 2)))
        code, _, _ = await raw(proxy.server.port, post("/v1/chat/completions"))
        assert code == 503
        [row] = await proxy.calls()
        assert row["attempts"] == 2 and "not an HTTP" in row["error"]
        assert all(not k.cool_until and k.status() == "active" for k in keys)  # none rests for it
        assert proxy.pool.acquire((PAID,), CHAT) is not None
    finally:
        server.close()


async def test_a_stream_event_over_max_answer_mb_ends_the_stream_blaming_no_key(
    start_proxy: StartProxy, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    first = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
    endless = first + b'data: {"x":"' + b"a" * (3 * 1024 * 1024)  # an event that never ends
    proxy, server = await start_scripted(
        start_proxy, lambda _head: answer("200 OK", b"Content-Type: text/event-stream\r\n", endless)
    )
    try:
        await proxy.set(max_answer_mb=1)
        [key] = await proxy.add_keys((paid_keys(fake, 1)[0], 5.0))
        sent = {**orjson.loads(BODY), "stream": True}
        async with http.post(f"{proxy.base}/v1/chat/completions", json=sent) as resp:
            assert resp.status == 200
            text = await resp.text()
        assert text.startswith(first.decode()) and len(text) < 2 * 1024 * 1024
        events = text.split("\n\n")
        assert events[-3:-1] == [events[-3], "data: [DONE]"] and "stream_interrupted" in events[-3]
        assert "max_answer_mb" in events[-3]
        assert key.last_error is None and not key.cool_until
        [row] = await proxy.calls()
        assert row["status"] == 200 and "max_answer_mb" in row["error"]
    finally:
        server.close()
