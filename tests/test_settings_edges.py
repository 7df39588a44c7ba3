"""Settings that look like one thing to the check and another to a browser or an HTTP client are
refused: a Chart.js "path" that browsers read as another host, a URL with control characters
(which drop every page once in the CSP header), a wildcard, user info, a host no resolver can
look up or an impossible port; a bad value an older version stored falls back to the default;
and the schema API keeps the shape scripts read."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from silicon_pool.app import create_app
from silicon_pool.config import Config
from silicon_pool.settings import BY_NAME, DEFAULT_CHARTJS, SETTINGS, Setting, Settings
from silicon_pool.store import DB_FILE
from silicon_pool.typedefs import SETTINGS as SETTINGS_KEY
from tests.conftest import PoolTestServer


@pytest.mark.parametrize("value", ["/\\evil.example/x.js", "/\\/evil.example/x.js"])
def test_a_chartjs_path_cannot_name_another_host(value: str) -> None:
    with pytest.raises(ValueError):
        Settings.chartjs_url.parse(value)


@pytest.mark.parametrize(
    "value",
    [
        "http://127.0.0.1:9/v\x011",
        "http://127.0.0.1:99999/v1",
        "http://a\\@evil.example/v1",
    ],
)
def test_an_upstream_url_must_be_one_url(value: str) -> None:
    with pytest.raises(ValueError):
        Settings.upstream.parse(value)


async def test_the_schema_api_keeps_the_shape_scripts_read(
    admin: aiohttp.ClientSession,
) -> None:
    async with admin.get("/api/settings/schema") as resp:
        schema = await resp.json()
    assert [s["name"] for s in schema["strategies"]][:1] == ["least_inflight"]
    assert all(isinstance(s["help"], str) for s in schema["settings"])


# -- issue 13: what a setting lets through must not break a header, a page or a connection ----------

_BAD_URLS = [
    "http://127.0.0.1:9/v\x001",  # NUL
    "http://127.0.0.1:9/v1\x7f",  # DEL
    "http://127.0.0.1:9/v\x1b1",  # ESC
    "http://127.0.0.1:9/v\u00e91",  # not ASCII: no header carries it as written
    "https://*",
    "https://*.example.com/x.js",
    "https://cdn.*.example/x.js",
    "http://127.0.0.1:99999/v1",
    "http://127.0.0.1:0/v1",
    "http://127.0.0.1:/v1",
    "http:///v1",
    "http://./v1",
    "http://-/v1",
    "http://a..b/v1",
    "http://a-.example/v1",
    "http://" + "a" * 64 + ".example/v1",  # a label DNS cannot carry (the resolver raises, not refuses)
    "http://999.1.1.1/v1",
    "http://1.2.3.4.5/v1",
    "http://127.1/v1",  # read as 127.0.0.1 by some parsers, as a name by others
    "http://a_b/v1",
    "http://" + "a." * 1100 + "example/v1",
]


@pytest.mark.parametrize("value", _BAD_URLS)
def test_an_upstream_url_names_a_host_and_port_that_can_exist(value: str) -> None:
    with pytest.raises(ValueError):
        Settings.upstream.parse(value)


@pytest.mark.parametrize(
    "value",
    [
        *_BAD_URLS,
        "https://cdn.example/chart\x01.js",  # aiohttp refuses such a CSP header: every page drops
        "/static/chart\x01.js",
        "/static/chart\x00.js",
        "https://cdn.example/chart\x7f.js",
        "https://cdn.example/*.js",
        "https://cdn.example",  # a whole host (or folder) in script-src, not one file
        "https://cdn.example/",
        "https://cdn.example/npm/",
        "http://[::1]/chart.js",  # CSP cannot name an IPv6 host
    ],
)
def test_a_chartjs_url_is_one_file_a_csp_header_can_carry(value: str) -> None:
    with pytest.raises(ValueError):
        Settings.chartjs_url.parse(value)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("https://api.siliconflow.cn/v1/", "https://api.siliconflow.cn/v1"),
        (" http://127.0.0.1:8080/v1 ", "http://127.0.0.1:8080/v1"),
        ("http://[::1]:65535/v1", "http://[::1]:65535/v1"),
        ("http://localhost:1", "http://localhost:1"),
        ("http://upstream-1.internal/v1", "http://upstream-1.internal/v1"),
    ],
)
def test_an_upstream_url_that_can_exist_is_kept(value: str, parsed: str) -> None:
    assert Settings.upstream.parse(value) == parsed


@pytest.mark.parametrize(
    "value",
    [
        "https://cdn.jsdelivr.net/npm/chart.js@4.6.1/dist/chart.umd.min.js",
        "http://10.0.0.2:8000/chart.js?v=4",
        "/static/chart.umd.min.js",
    ],
)
def test_a_chartjs_url_naming_one_file_is_kept(value: str) -> None:
    assert Settings.chartjs_url.parse(value) == value


@pytest.mark.parametrize("value", [["Qwen/Qwen3-8B", "a\x00b"], "a\x1bb", ["x\u200by"], ["x\x7f"]])
def test_model_ids_refuse_control_characters(value: object) -> None:
    with pytest.raises(ValueError):
        Settings.free_models.parse(value)


@pytest.mark.parametrize("value", ["tok\x00en", "tok\x7fen", "tok\u00e9n", "tok\u200ben"])
def test_tokens_refuse_control_characters(value: str) -> None:
    with pytest.raises(ValueError):
        Settings.api_token.parse(value)


_JSON_VALUES = [None, True, 0, -1, 10**30, 1.5, "", "x", "\x00", [], [1], ["a", ["b"]], {}, {"a": 1}]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_any_json_value_is_parsed_or_refused_with_a_value_error(setting: Setting[Any]) -> None:
    """What a stored row or a PATCH may hold: never another exception (a stored one would stop the start)."""
    for value in _JSON_VALUES:
        with contextlib.suppress(ValueError):
            setting.parse(value)


async def test_the_settings_api_refuses_a_chartjs_url_that_would_drop_every_page(
    admin: aiohttp.ClientSession,
) -> None:
    async with admin.patch("/api/settings", json={"chartjs_url": "https://cdn.example/chart\x01.js"}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert "chartjs_url" in error and re.search(r"[\u4e00-\u9fff]", error)  # said in both languages
    async with admin.patch("/api/settings", json={"upstream": "http://127.0.0.1:99999/v1"}) as resp:
        assert resp.status == 400
        assert "upstream" in (await resp.json())["error"]
    async with admin.get("/stats") as resp:  # the header aiohttp would refuse is not sent: the page serves
        assert resp.status == 200
        assert DEFAULT_CHARTJS in resp.headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("chartjs_url", "https://cdn.example/chart\x01.js"),
        ("chartjs_url", "https://*"),
        ("upstream", "http://a..b/v1"),
        ("upstream", "http://127.0.0.1:99999/v1"),
    ],
)
async def test_a_bad_url_stored_by_an_older_version_falls_back_to_the_default(
    tmp_path: Path, upstream_url: str, caplog: pytest.LogCaptureFixture, name: str, bad: str
) -> None:
    data_dir = tmp_path / "data"
    first = PoolTestServer(create_app(Config(data_dir=data_dir, upstream=upstream_url)), host="127.0.0.1")
    await first.start_server()
    await first.close()
    conn = sqlite3.connect(data_dir / DB_FILE)
    with conn:
        conn.execute("INSERT OR REPLACE INTO settings (name, value) VALUES (?, ?)", (name, json.dumps(bad)))
    conn.close()
    server = PoolTestServer(create_app(Config(data_dir=data_dir)), host="127.0.0.1")
    await server.start_server()
    try:
        assert getattr(server.app[SETTINGS_KEY], name) == BY_NAME[name].default
        assert any(name in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
        async with aiohttp.ClientSession() as http, http.get(server.make_url("/login")) as resp:
            assert resp.status == 200
            assert DEFAULT_CHARTJS in resp.headers["Content-Security-Policy"]
    finally:
        await server.close()
