"""One bad stored row costs no other row: a keys row with wrong-typed columns or a secret that no
longer decrypts, or a settings row that is not JSON, leaves every other key and setting serving."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from silicon_pool.store import DB_FILE
from silicon_pool.typedefs import SETTINGS
from tests.conftest import RELEASE_MANIFEST, StartProxy, login, release_data_dir

MANIFEST = RELEASE_MANIFEST


def _damaged(tmp_path: Path, *statements: str) -> Path:
    data_dir = release_data_dir(tmp_path, "data")
    conn = sqlite3.connect(data_dir / DB_FILE)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()
    return data_dir


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE keys SET balance = 'abc' WHERE id = 1",
        "UPDATE keys SET usage_count = 'many' WHERE id = 1",  # the fixture's strategy is least_used
        "UPDATE keys SET added_at = 'x' WHERE id = 1",
        "UPDATE keys SET state = 'weird' WHERE id = 1",
        "UPDATE keys SET last_error = randomblob(100000) WHERE id = 1",
        "UPDATE keys SET key_enc = randomblob(40) WHERE id = 1",
        "UPDATE keys SET key_enc = x'00' WHERE id = 1",
    ],
)
async def test_one_bad_key_row_costs_no_other_key(tmp_path: Path, start_proxy: StartProxy, damage: str) -> None:
    proxy = await start_proxy(data_dir=_damaged(tmp_path, damage))
    others = {k["key"] for k in MANIFEST["keys"] if k["id"] != 1}
    assert others <= {k.secret for k in proxy.pool.keys.values()}
    admin = MANIFEST["admin"]
    session = await login(proxy.base, admin["username"], admin["password"])
    try:
        for path in (
            "/api/keys?page_size=100",
            "/api/keys?sort=balance",
            "/api/summary",
            "/api/keys/export",
        ):
            async with session.get(path) as resp:
                assert resp.status == 200, (path, await resp.text())
    finally:
        await session.close()
    conn = sqlite3.connect(proxy.data_dir / DB_FILE)
    assert conn.execute("SELECT COUNT(*) FROM keys").fetchone()[0] == len(MANIFEST["keys"])  # the bad row is kept
    conn.close()


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE settings SET value = '{nope' WHERE name = 'strategy'",
        "UPDATE settings SET value = 'NaN' WHERE name = 'max_attempts'",
        "UPDATE settings SET value = x'ff00fe' WHERE name = 'api_token'",
    ],
)
async def test_one_corrupt_settings_row_costs_no_other_setting(
    tmp_path: Path, start_proxy: StartProxy, damage: str
) -> None:
    proxy = await start_proxy(data_dir=_damaged(tmp_path, damage))
    settings = proxy.server.app[SETTINGS].as_dict()
    damaged = damage.split("name = '")[1].rstrip("'")
    for name, raw in MANIFEST["settings"].items():
        if name not in (damaged, "upstream"):
            assert settings[name] == raw, name
