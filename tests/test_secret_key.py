"""secret.key and pool.db belong together: a missing, damaged or different secret beside a pool.db
that holds encrypted data stops start-up with a message in both languages, writes nothing and
exits 2; only a data dir with nothing encrypted in it gets a new secret."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from silicon_pool.crypto import SECRET_FILE
from silicon_pool.store import DB_FILE
from tests.conftest import FIXTURES, StartProxy, release_data_dir

ROOT = FIXTURES.parent.parent


def _release_data_dir(tmp_path: Path) -> Path:
    return release_data_dir(tmp_path, "data")


def _files(data_dir: Path) -> dict[str, tuple[bytes, int, int]]:
    """Each file's bytes, mtime and mode: what 'nothing was written' means."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode) for p in sorted(data_dir.iterdir())}


def _start(data_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = ["run.py", "--data-dir", str(data_dir), "--port", "1", "--upstream", "http://127.0.0.1:9/v1", *flags]
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)


def _refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "Nothing was changed" in result.stderr and "未做任何修改" in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


def _leave_wal_behind(db: Path) -> None:
    """Write in WAL mode from another process and die without a checkpoint (like kill -9)."""
    code = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA wal_autocheckpoint=0')\n"
        "c.execute(\"INSERT INTO settings VALUES ('left-in-the-wal', '1')\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(db)], check=True)


@pytest.mark.parametrize("flags", [[], ["--reset-admin"]], ids=["start", "reset-admin"])
def test_a_missing_secret_beside_encrypted_keys_stops_start_up_untouched(tmp_path: Path, flags: list[str]) -> None:
    data_dir = _release_data_dir(tmp_path)
    (data_dir / SECRET_FILE).unlink()
    before = _files(data_dir)

    result = _start(data_dir, *flags)

    _refused(result, f"{data_dir / SECRET_FILE} is missing", "缺少", "cannot be read without it", "backup")
    assert _files(data_dir) == before  # no new secret.key, no -wal or -shm, pool.db as it was


def test_a_missing_secret_with_a_leftover_wal_leaves_the_database_and_its_wal_alone(tmp_path: Path) -> None:
    data_dir = _release_data_dir(tmp_path)
    (data_dir / SECRET_FILE).unlink()
    _leave_wal_behind(data_dir / DB_FILE)
    wal = data_dir / f"{DB_FILE}-wal"
    db_before, wal_before = (data_dir / DB_FILE).read_bytes(), wal.read_bytes()

    result = _start(data_dir)

    _refused(result, "is missing")
    # The -shm index may be rebuilt (it is shared memory, not data); the database and its WAL may not.
    assert (data_dir / DB_FILE).read_bytes() == db_before and wal.read_bytes() == wal_before
    assert not (data_dir / SECRET_FILE).exists()


def test_another_secret_stops_start_up_untouched(tmp_path: Path) -> None:
    data_dir = _release_data_dir(tmp_path)
    (data_dir / SECRET_FILE).write_bytes(os.urandom(32))
    before = _files(data_dir)

    result = _start(data_dir)

    _refused(result, "does not match", "不匹配", "backed up with this pool.db")
    assert _files(data_dir) == before


async def test_a_missing_secret_beside_encrypted_tokens_alone_stops_start_up(
    tmp_path: Path, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(api_token="only-a-token")  # no key at all: the token is what is encrypted
    await proxy.stop()
    (proxy.data_dir / SECRET_FILE).unlink()
    before = _files(proxy.data_dir)

    _refused(_start(proxy.data_dir), "is missing")
    assert _files(proxy.data_dir) == before


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "found 0"),
        (b"x" * 31, "found 31"),
        (b"x" * 33, "found 33"),
        (None, "cannot be read"),  # a directory where the file should be
    ],
    ids=["empty", "short", "long", "directory"],
)
@pytest.mark.parametrize("data", ["release", "new"])
def test_a_damaged_secret_stops_start_up_untouched(
    tmp_path: Path, content: bytes | None, words: str, data: str
) -> None:
    data_dir = _release_data_dir(tmp_path) if data == "release" else tmp_path / "new"
    data_dir.mkdir(exist_ok=True)
    secret = data_dir / SECRET_FILE
    secret.unlink(missing_ok=True)
    if content is None:
        secret.mkdir()
    else:
        secret.write_bytes(content)
    before = {p.name: p.stat().st_mtime_ns for p in data_dir.iterdir()}

    result = _start(data_dir)

    _refused(result, f"{secret} cannot be used", words, "restore secret.key from your backup")
    assert {p.name: p.stat().st_mtime_ns for p in data_dir.iterdir()} == before  # no pool.db made either
    assert content is None or secret.read_bytes() == content


async def test_a_pool_db_with_nothing_encrypted_gets_a_new_secret(tmp_path: Path, start_proxy: StartProxy) -> None:
    data_dir = _release_data_dir(tmp_path)
    conn = sqlite3.connect(data_dir / DB_FILE)
    conn.execute("DELETE FROM keys")  # its tokens are plain text (an earlier release's): nothing is encrypted
    conn.commit()
    conn.close()
    (data_dir / SECRET_FILE).unlink()

    proxy = await start_proxy(data_dir=data_dir)

    assert (data_dir / SECRET_FILE).stat().st_size == 32
    with pytest.raises(openai.AuthenticationError):
        await proxy.openai("wrong").models.list()
    assert len(proxy.pool) == 0


async def test_one_damaged_key_is_not_a_wrong_secret(tmp_path: Path, start_proxy: StartProxy) -> None:
    data_dir = _release_data_dir(tmp_path)
    conn = sqlite3.connect(data_dir / DB_FILE)
    conn.execute("UPDATE keys SET key_enc = randomblob(40) WHERE id = (SELECT MIN(id) FROM keys)")
    conn.commit()
    conn.close()

    proxy = await start_proxy(data_dir=data_dir)

    assert len(proxy.pool) == 9
