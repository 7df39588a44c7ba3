"""The gate's /v1 pass-through, attacked with raw request lines on both the real server and the app
under aiohttp's own runner: no trick reaches the admin without a session, an encoded slash after
/v1 is answered alike by both, and an absurd key id is a 404."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from silicon_pool.app import create_app
from silicon_pool.config import Config
from tests.conftest import Running, StartProxy

ADMIN_PATHS = (
    "api/keys/export",
    "api/keys",
    "api/settings",
    "settings",
    "static/js/settings.js",
    "",
)
TRICKS = (
    "/v1/../{p}",
    "/v1/%2e%2e/{p}",
    "/v1/%2E%2E/{p}",
    "/v1%2F..%2F{p}",
    "/v1%2f..%2f{p}",
    "/v1/..%2F{p}",
    "//v1/../{p}",
    "/V1/../{p}",
    "/v1//../{p}",
    "/v1/./../{p}",
    "/v1/x/../../{p}",
    "/%76%31/../{p}",
    "/v1/%252e%252e/{p}",
    "/v1/..;/{p}",
    "/v1\\..\\{p}",
    "http://127.0.0.1/v1/../{p}",
    "http://rebind.example/v1/../{p}",
)


async def _raw(port: int, target: str, method: str = "GET", host: str = "127.0.0.1") -> tuple[int, bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


@pytest.fixture
async def both(
    start_proxy: StartProxy,
    upstream_url: str,
    tmp_path: Path,
    aiohttp_client: Callable[..., Any],
) -> tuple[int, int]:
    real: Running = await start_proxy()
    plain: TestClient[Any, Any] = await aiohttp_client(
        create_app(Config(data_dir=tmp_path / "plain", upstream=upstream_url))
    )
    assert real.server.port is not None and plain.port is not None
    return real.server.port, plain.port


@pytest.mark.parametrize("trick", TRICKS)
async def test_no_request_line_reaches_the_admin_without_a_session(both: tuple[int, int], trick: str) -> None:
    for port in both:
        for path in ADMIN_PATHS:
            for method in ("GET", "POST", "DELETE"):
                status, head, body = await _raw(port, trick.format(p=path), method)
                # The proxy answered (OpenAI error, no keys in the pool), or a 4xx that is no admin answer.
                assert status != 200 or b"text/html" not in head.lower(), (
                    trick,
                    path,
                    method,
                    status,
                )
                assert b"sk-" not in body
                if status == 200:
                    pytest.fail(f"{method} {trick.format(p=path)} on :{port} answered 200: {body[:200]!r}")
                if status in (401, 403) and b'"error":"' in body:
                    # the admin gate answered: it must have been reached without the /v1 pass-through
                    assert b"login required" in body or b"cross-site" in body or b"unknown Host" in body


@pytest.mark.parametrize("target", ["/v1%2Fmodels", "/v1%2fchat%2fcompletions"])
async def test_an_encoded_slash_after_v1_is_answered_alike(both: tuple[int, int], target: str) -> None:
    (real_status, _, real_body), (plain_status, _, plain_body) = [await _raw(port, target) for port in both]
    assert (real_status, real_body[:60]) == (plain_status, plain_body[:60])


async def test_a_key_id_of_thousands_of_digits_is_a_404(
    start_proxy: StartProxy,
) -> None:
    from tests.conftest import login

    proxy = await start_proxy()
    session = await login(proxy.base)
    try:
        async with session.get("/api/keys/" + "1" * 5000 + "/secret") as resp:
            assert resp.status == 404, await resp.text()
    finally:
        await session.close()
