"""api_token and free_token are stored encrypted like keys, so pool.db alone (and its WAL) reveals
neither; the plain tokens an earlier release stored keep working and are encrypted at start."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from silicon_pool.store import DB_FILE
from tests.conftest import RELEASE_MANIFEST, Running, StartProxy, login, paid_keys, release_data_dir
from tests.fake_upstream import FakeUpstream

MANIFEST = RELEASE_MANIFEST
TOKENS = (MANIFEST["settings"]["api_token"], MANIFEST["settings"]["free_token"])
OLD_TOKEN = "an-older-token-" + "x" * 100  # longer than the one replacing it: part stays in free space
PAID_MODEL, FREE_MODEL = "deepseek-ai/DeepSeek-V3", "Qwen/Qwen2.5-7B-Instruct"


async def _database_bytes(proxy: Running) -> bytes:
    """pool.db and its WAL, as a thief copying the data dir without secret.key would find them."""
    await proxy.flush()
    await proxy.store.read(lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
    files = sorted(p for p in proxy.data_dir.iterdir() if p.name.startswith(DB_FILE))
    return b"".join(await asyncio.to_thread(lambda: [p.read_bytes() for p in files]))


def _assert_hidden(raw: bytes, *tokens: str) -> None:
    for token in tokens:
        assert token.encode() not in raw, token


async def _chat(proxy: Running, token: str, model: str) -> None:
    await proxy.openai(token).chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])


async def _assert_tokens_work(proxy: Running, api_token: str, free_token: str) -> None:
    await _chat(proxy, api_token, PAID_MODEL)
    await _chat(proxy, free_token, FREE_MODEL)
    with pytest.raises(openai.PermissionDeniedError):
        await _chat(proxy, free_token, PAID_MODEL)
    with pytest.raises(openai.AuthenticationError):
        await _chat(proxy, "not-the-token", PAID_MODEL)


async def test_tokens_set_in_the_admin_are_stored_encrypted(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    api_token, free_token = "tok-Wq81Mz0aLp3xYv", "free-Rt5Hn2Kc9dGs"
    [paid] = paid_keys(fake, 1)
    [zero] = paid_keys(fake, 1, "0.00", seed="zero")
    proxy = await start_proxy()
    await proxy.add_keys((paid, 10.0), (zero, 0.0))
    admin = await login(proxy.base)
    async with admin.patch("/api/settings", json={"api_token": api_token, "free_token": free_token}) as resp:
        assert resp.status == 200
    async with admin.get("/api/settings") as resp:  # the admin shows them as before
        shown = await resp.json()
    await admin.close()
    assert (shown["api_token"], shown["free_token"]) == (api_token, free_token)
    await _assert_tokens_work(proxy, api_token, free_token)
    _assert_hidden(await _database_bytes(proxy), api_token, free_token)
    await proxy.stop()

    again = await start_proxy(data_dir=proxy.data_dir)  # read back through the secret
    await _assert_tokens_work(again, api_token, free_token)
    _assert_hidden(await _database_bytes(again), api_token, free_token)


def _leave_old_traces(db: Path) -> None:
    """What an earlier release may leave: a replaced token in free space, and (killed without a
    checkpoint) a WAL whose frames each copy the settings page, plain tokens and all."""
    code = (
        "import json, os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA secure_delete = OFF')\n"
        "for token in sys.argv[2:]:\n"
        "    c.execute('UPDATE settings SET value = ? WHERE name = ?', (json.dumps(token), 'api_token'))\n"
        "c.close()\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA wal_autocheckpoint=0')\n"
        "for n in [*range(1, 20), 5]:\n"
        "    c.execute('UPDATE settings SET value = ? WHERE name = ?', (str(n), 'max_attempts'))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(db), OLD_TOKEN, TOKENS[0]], check=True)


@pytest.mark.parametrize("traces", [False, True], ids=["clean", "old-traces"])
async def test_a_release_data_dir_s_plain_tokens_keep_working_and_are_encrypted(
    tmp_path: Path, start_proxy: StartProxy, fake: FakeUpstream, traces: bool
) -> None:
    data_dir = release_data_dir(tmp_path)
    if traces:
        _leave_old_traces(data_dir / DB_FILE)
        assert OLD_TOKEN[:20].encode() in (data_dir / DB_FILE).read_bytes()
        assert (data_dir / f"{DB_FILE}-wal").read_bytes().count(TOKENS[0].encode()) >= 20
    assert all(token.encode() in (data_dir / DB_FILE).read_bytes() for token in TOKENS)  # plain in the fixture
    for key in MANIFEST["keys"]:
        fake.add_key(key["key"], str(key["balance"] or 0))
    # Another program (an sqlite3 shell, a backup tool) with pool.db open: the WAL outlives the
    # store's connections closing, so its stale frames are only gone if the upgrade truncated it.
    other = sqlite3.connect(data_dir / DB_FILE)
    other.execute("SELECT COUNT(*) FROM settings").fetchall()

    proxy = await start_proxy(data_dir=data_dir)
    await _assert_tokens_work(proxy, *TOKENS)
    _assert_hidden(await _database_bytes(proxy), *TOKENS, OLD_TOKEN[:20])
    await proxy.stop()
    other.close()
    left = b"".join(p.read_bytes() for p in data_dir.iterdir() if p.name.startswith(DB_FILE))
    _assert_hidden(left, *TOKENS, OLD_TOKEN[:20])

    again = await start_proxy(data_dir=data_dir)  # the encrypted tokens are read back, and nothing else changed
    await _assert_tokens_work(again, *TOKENS)
    conn = sqlite3.connect(data_dir / DB_FILE)
    stored = dict(conn.execute("SELECT name, value FROM settings").fetchall())
    conn.close()
    for name, value in MANIFEST["settings_stored"].items():
        if name in ("api_token", "free_token"):
            assert json.loads(stored[name]).startswith("enc:"), name
        elif name != "upstream":  # --upstream rewrites that one
            assert stored[name] == value, name
