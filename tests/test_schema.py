"""Data outlives the code: a data dir written by an earlier release opens after an upgrade with
nothing lost, a second start changes nothing, and one from a newer release is left untouched."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from silicon_pool import schema
from silicon_pool.crypto import Secrets
from silicon_pool.schema import MIGRATIONS, VERSION, Migration, SchemaTooNew
from silicon_pool.store import DB_FILE, Store
from silicon_pool.typedefs import SETTINGS
from tests.conftest import FIXTURES, RELEASE_MANIFEST, StartProxy, login, release_data_dir

ROOT = FIXTURES.parent.parent


def _release_data_dir(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of the data dir the release wrote, and its manifest."""
    return release_data_dir(tmp_path), RELEASE_MANIFEST


def _layout(path: Path) -> dict[str, Any]:
    """Every table's columns and every index, as SQLite describes them: what a schema amounts to."""
    conn = sqlite3.connect(path)
    try:
        layout = {}
        for table, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            indexes = conn.execute(f"PRAGMA index_list({table})").fetchall()
            layout[table] = {
                "columns": sorted(conn.execute(f"PRAGMA table_info({table})").fetchall(), key=lambda c: c[1]),
                "indexes": sorted(
                    (name, unique, partial, conn.execute(f"PRAGMA index_info({name})").fetchall())
                    for _, name, unique, _, partial in indexes
                ),
                "without_rowid": "WITHOUT ROWID" in sql.upper(),
            }
        return layout
    finally:
        conn.close()


def _open_and_close(data_dir: Path) -> list[str]:
    store = Store(data_dir, Secrets(data_dir))
    ran = store.open()
    store.close()
    return ran


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_release_data_dir_opens_with_everything_intact(tmp_path: Path, start_proxy: StartProxy) -> None:
    data_dir, manifest = _release_data_dir(tmp_path)
    proxy = await start_proxy(data_dir=data_dir)

    keys = {k.secret: k for k in proxy.pool.keys.values()}
    assert set(keys) == {k["key"] for k in manifest["keys"]}  # every key decrypted
    for expected in manifest["keys"]:
        key = keys[expected["key"]]
        assert (key.id, key.balance, key.enabled, key.state, key.account_id, key.usage_count, key.last_error) == (
            expected["id"],
            expected["balance"],
            expected["enabled"],
            expected["state"],
            expected["account_id"],
            expected["usage_count"],
            expected["last_error"],
        )
    settings = proxy.server.app[SETTINGS].as_dict()
    stored = {name: value for name, value in manifest["settings"].items() if name != "upstream"}  # --upstream wins
    assert {name: settings[name] for name in stored} == stored
    assert proxy.pool.strategy == manifest["settings"]["strategy"]

    counts = await proxy.store.read(
        lambda c: c.execute(
            "SELECT (SELECT COUNT(*) FROM calls), (SELECT COUNT(*) FROM usage_hourly),"
            " (SELECT SUM(total_tokens) FROM calls), (SELECT COUNT(*) FROM keys)"
        ).fetchone()
    )
    assert counts == (manifest["calls"], manifest["usage_hourly"], manifest["calls_total_tokens"], len(keys))
    admin = manifest["admin"]
    session = await login(proxy.base, admin["username"], admin["password"])
    async with session.get("/api/keys", params={"page_size": "100"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["total"] == len(manifest["keys"])
    copied = {c.key: c.value for c in session.cookie_jar}
    async with session.post("/api/logout") as resp:  # revoked in the table the upgrade added
        assert resp.status == 200
    await session.close()
    await proxy.stop()

    conn = sqlite3.connect(data_dir / DB_FILE)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == VERSION
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT COUNT(*) FROM revoked_sessions").fetchone()[0] == 1
    conn.close()
    again = await start_proxy(data_dir=data_dir)
    async with (
        aiohttp.ClientSession(base_url=again.base, cookies=copied) as replay,
        replay.get("/api/keys/export") as resp,
    ):
        assert resp.status == 401


def test_the_upgrade_runs_once_and_ends_with_the_schema_of_a_new_data_dir(tmp_path: Path) -> None:
    data_dir, _ = _release_data_dir(tmp_path)
    assert _open_and_close(data_dir) == [m.what for m in MIGRATIONS]
    upgraded = _layout(data_dir / DB_FILE)
    assert _open_and_close(data_dir) == []  # a second start does nothing more
    assert _layout(data_dir / DB_FILE) == upgraded

    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    assert _open_and_close(fresh_dir) == []  # a new data dir is created at the current version at once
    assert _layout(fresh_dir / DB_FILE) == upgraded  # a declared field without its migration fails here


def test_a_failed_migration_leaves_the_data_dir_at_the_version_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir, manifest = _release_data_dir(tmp_path)
    _open_and_close(data_dir)

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE keys ADD COLUMN doomed TEXT")
        conn.execute("UPDATE keys SET doomed = 'x'")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(schema, "MIGRATIONS", (*MIGRATIONS, Migration("add a column, then fail", half_done)))
    monkeypatch.setattr(schema, "VERSION", VERSION + 1)
    with pytest.raises(sqlite3.OperationalError):
        _open_and_close(data_dir)
    conn = sqlite3.connect(data_dir / DB_FILE)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == VERSION
    assert "doomed" not in {c[1] for c in conn.execute("PRAGMA table_info(keys)")}
    assert conn.execute("SELECT COUNT(*) FROM keys").fetchone()[0] == len(manifest["keys"])
    conn.close()


def test_a_newer_data_dir_is_refused_and_left_untouched(tmp_path: Path) -> None:
    data_dir, _ = _release_data_dir(tmp_path)
    _open_and_close(data_dir)
    conn = sqlite3.connect(data_dir / DB_FILE)
    conn.execute(f"PRAGMA user_version = {VERSION + 1}")
    conn.close()
    before = {p.name: _digest(p) for p in data_dir.iterdir()}

    with pytest.raises(SchemaTooNew, match="newer release"):
        _open_and_close(data_dir)
    result = subprocess.run(
        [sys.executable, "run.py", "--data-dir", str(data_dir), "--port", "1", "--upstream", "http://127.0.0.1:9/v1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"schema version {VERSION + 1}" in result.stderr and "nothing in it was changed" in result.stderr
    assert "Traceback" not in result.stderr
    assert {p.name: _digest(p) for p in data_dir.iterdir()} == before
