"""Settings that look like one thing to the check and another to a browser or an HTTP client are
refused: a Chart.js "path" that browsers read as another host, an upstream URL with control
characters, user info or an impossible port; and the schema API keeps the shape scripts read."""

from __future__ import annotations

import aiohttp
import pytest

from silicon_pool.settings import Settings


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
