"""Schema and data-dir edges: a newer release's WAL left untouched, invalid versions and files that
are not databases refused with exit 2 and a message, an older version-0 data dir given what
fa0878f would have added (or refused before the stamp), and two first starts at once."""

from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from silicon_pool.crypto import Secrets
from silicon_pool.schema import VERSION
from silicon_pool.store import DB_FILE, Store
from tests.conftest import FIXTURES, release_data_dir

ROOT = FIXTURES.parent.parent


def _files(data_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(data_dir.iterdir())}


def _start(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "run.py",
            "--data-dir",
            str(data_dir),
            "--port",
            "1",
            "--upstream",
            "http://127.0.0.1:9/v1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _open_and_close(data_dir: Path) -> list[str]:
    store = Store(data_dir, Secrets(data_dir))
    ran = store.open()
    store.close()
    return ran


def _leave_wal_behind(db: Path, *statements: str) -> None:
    """Write in WAL mode from another process and die without a checkpoint (like kill -9)."""
    code = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA wal_autocheckpoint=0')\n"
        "for s in sys.argv[2:]: c.execute(s)\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(db), *statements], check=True)


def test_a_newer_data_dir_with_a_leftover_wal_is_left_untouched(tmp_path: Path) -> None:
    data_dir = release_data_dir(tmp_path)
    _leave_wal_behind(
        data_dir / DB_FILE,
        f"PRAGMA user_version = {VERSION + 1}",
        "INSERT INTO settings VALUES ('newer', '1')",
    )
    assert (data_dir / f"{DB_FILE}-wal").exists()
    wal_before = (data_dir / f"{DB_FILE}-wal").read_bytes()
    db_before = (data_dir / DB_FILE).read_bytes()

    result = _start(data_dir)

    assert result.returncode == 2, result.stderr
    assert "nothing in it was changed" in result.stderr
    # The -shm index may be rebuilt (it is shared memory, not data); the database and its WAL may not.
    assert (data_dir / DB_FILE).read_bytes() == db_before
    assert (data_dir / f"{DB_FILE}-wal").exists(), "check_version checkpointed and deleted the newer release's WAL"
    assert (data_dir / f"{DB_FILE}-wal").read_bytes() == wal_before


@pytest.mark.parametrize("version", [-1, -(2**31)])
def test_a_negative_schema_version_is_refused_untouched(tmp_path: Path, version: int) -> None:
    data_dir = release_data_dir(tmp_path)
    conn = sqlite3.connect(data_dir / DB_FILE)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()
    before = _files(data_dir)

    result = _start(data_dir)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(version) in result.stderr
    assert _files(data_dir) == before


@pytest.mark.parametrize(
    "content",
    [
        b"hello, I am not a database\n",
        b"SQLite format 3\x00" + b"\xff" * 34,
        "truncated",
    ],
    ids=["text", "header cut", "truncated"],
)
def test_a_pool_db_that_is_not_a_database_exits_2_with_a_message(tmp_path: Path, content: bytes | str) -> None:
    data_dir = release_data_dir(tmp_path)
    db = data_dir / DB_FILE
    db.write_bytes(db.read_bytes()[:5000] if content == "truncated" else content)  # type: ignore[arg-type]
    before = _files(data_dir)

    result = _start(data_dir)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(db) in result.stderr
    assert _files(data_dir) == before


@pytest.mark.parametrize(
    "damage",
    [
        ("DROP TABLE admin",),
        (
            "DROP INDEX calls_model_ts",
            "DROP INDEX calls_endpoint_ts",
            "DROP INDEX calls_errors_ts",
        ),
    ],
    ids=["no admin table (before a3b748e)", "no log indexes (before c0ecb4d)"],
)
def test_an_older_version_0_data_dir_gets_what_fa0878f_would_have_added(
    tmp_path: Path, damage: tuple[str, ...]
) -> None:
    """fa0878f ran CREATE TABLE/INDEX IF NOT EXISTS at every start, so a data dir from an earlier
    commit gained the admin table and the log indexes; the version-1 stamp must not lose that."""
    data_dir = release_data_dir(tmp_path)
    conn = sqlite3.connect(data_dir / DB_FILE)
    for statement in damage:
        conn.execute(statement)
    conn.commit()
    conn.close()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _open_and_close(fresh)

    _open_and_close(data_dir)

    def names(path: Path) -> set[str]:
        c = sqlite3.connect(path)
        try:
            return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
        finally:
            c.close()

    assert names(data_dir / DB_FILE) == names(fresh / DB_FILE)


def test_a_version_0_keys_table_missing_a_column_is_refused_before_the_stamp(
    tmp_path: Path,
) -> None:
    data_dir = release_data_dir(tmp_path)
    conn = sqlite3.connect(data_dir / DB_FILE)
    conn.execute("ALTER TABLE keys DROP COLUMN account_id")
    conn.commit()
    conn.close()

    result = _start(data_dir)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "account_id" in result.stderr
    conn = sqlite3.connect(data_dir / DB_FILE)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0  # not stamped as if it were version 1
    conn.close()


def _open_when(go: Any, data_dir: str, out: Any) -> None:
    go.wait()
    try:
        _open_and_close(Path(data_dir))
        out.put("ok")
    except Exception as exc:  # reported to the parent
        out.put(f"{type(exc).__name__}: {exc}")


def test_two_first_starts_at_once_both_open(tmp_path: Path) -> None:
    """Probabilistic (about a third of trials collide). Pre-existing (fa0878f too):
    `PRAGMA journal_mode=WAL` in store.connect() answers
    'database is locked' at once (no busy wait) while the other process holds its schema transaction."""
    ctx = multiprocessing.get_context("fork")
    failures = []
    for trial in range(30):
        data_dir = tmp_path / f"race{trial}"
        data_dir.mkdir()
        Secrets(data_dir)  # the secret first: only the database races here
        go, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_open_when, args=(go, str(data_dir), out)) for _ in range(2)]
        for proc in procs:
            proc.start()
        time.sleep(0.2)  # both waiting on the event, so they start at the same instant
        go.set()
        for proc in procs:
            proc.join(60)
        failures += [r for r in (out.get(timeout=5) for _ in procs) if r != "ok"]
    assert failures == []
