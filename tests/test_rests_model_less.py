"""Rests of model-less requests (the model list, uploads whose model is not read) can be cleared
from the admin like any other: DELETE /api/rests?model= clears the "" row."""

from __future__ import annotations

import aiohttp

from tests.conftest import Running


async def test_the_home_page_clears_the_model_less_row(proxy: Running, admin: aiohttp.ClientSession) -> None:
    [key] = await proxy.add_keys(("sk-" + "b" * 48, 10.0))
    proxy.pool.rest(key, "", "RPM", proxy.pool.clock() + 30)
    async with admin.get("/api/summary") as resp:
        [row] = (await resp.json())["rests"]
    async with admin.delete("/api/rests", params={"model": row["model"]}) as resp:  # what home.js sends
        assert resp.status == 200, await resp.text()
    assert proxy.pool.rested_models() == {}
