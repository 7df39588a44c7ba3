"""The database schema, its version, and the migrations that bring an older data dir up to it.

A new data dir gets the current schema (the keys table built from `keys.COLUMNS`) and the
current version in `PRAGMA user_version`. A data dir from an earlier release runs each missing
migration in order, each in its own transaction together with its version stamp, so an upgrade
stopped half-way resumes where it stopped. A data dir from a newer release is refused before
anything is written. Every schema change appends one migration here (and an upgrade test);
tests/test_schema.py checks that an upgraded data dir ends with exactly the schema of a new one.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from .keys import COLUMNS

log = logging.getLogger(__name__)

# The secret is stored apart from the key's columns: encrypted, and fingerprinted for duplicates.
KEYS_IDENTITY = (
    "id INTEGER PRIMARY KEY AUTOINCREMENT",  # never reused: a late update for a deleted key finds no row
    "key_hash TEXT NOT NULL UNIQUE",
    "key_enc BLOB NOT NULL",
)

OTHER_TABLES = """
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE calls (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT,
    key_id INTEGER,
    status INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    ttfb_ms INTEGER,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    images INTEGER NOT NULL DEFAULT 0,
    stream INTEGER NOT NULL DEFAULT 0,
    caller TEXT NOT NULL,
    error TEXT,
    limits TEXT
);
CREATE INDEX calls_ts ON calls (ts);
CREATE INDEX calls_model_ts ON calls (model, ts);
CREATE INDEX calls_endpoint_ts ON calls (endpoint, ts);
CREATE INDEX calls_errors_ts ON calls (ts) WHERE status >= 400 OR error IS NOT NULL;
CREATE TABLE usage_hourly (
    hour INTEGER NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    images INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, model, endpoint)
) WITHOUT ROWID;
CREATE TABLE admin (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    username TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    is_default INTEGER NOT NULL,
    epoch TEXT NOT NULL
);
CREATE TABLE rests (
    scope TEXT NOT NULL,  -- 'key' or 'account'
    owner TEXT NOT NULL,  -- the key's id or the account's id
    model TEXT NOT NULL,
    kind TEXT NOT NULL,  -- the limit met (RPD...), limits.py
    until REAL NOT NULL,  -- Unix time
    PRIMARY KEY (scope, owner, model)
) WITHOUT ROWID;
CREATE TABLE revoked_sessions (
    sid TEXT PRIMARY KEY,  -- a logged-out session's id (admin/auth.py)
    until REAL NOT NULL  -- Unix time after which no cookie with it is valid
) WITHOUT ROWID;
"""


def current_schema() -> str:
    """The whole schema a new data dir gets."""
    keys = ",\n    ".join([*KEYS_IDENTITY, *(f"{c.name} {c.sql}" for c in COLUMNS)])
    return f"CREATE TABLE keys (\n    {keys}\n);\n{OTHER_TABLES}"


# Version 1: the schema releases before versions (up to commit fa0878f) created at every start,
# frozen here as they wrote it. Migration 1 runs it (adding what a data dir from an even earlier
# commit lacks) and checks the keys table before stamping the version.
_V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a late update for a deleted key finds no row
    key_hash TEXT NOT NULL UNIQUE,
    key_enc BLOB NOT NULL,
    added_at REAL NOT NULL,
    balance REAL,
    usage_count INTEGER NOT NULL DEFAULT 0,
    enabled INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL DEFAULT 'active',
    last_used_at REAL,
    last_error TEXT,
    account_id TEXT
);
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT,
    key_id INTEGER,
    status INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    ttfb_ms INTEGER,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    images INTEGER NOT NULL DEFAULT 0,
    stream INTEGER NOT NULL DEFAULT 0,
    caller TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS calls_ts ON calls (ts);
CREATE INDEX IF NOT EXISTS calls_model_ts ON calls (model, ts);
CREATE INDEX IF NOT EXISTS calls_endpoint_ts ON calls (endpoint, ts);
CREATE INDEX IF NOT EXISTS calls_errors_ts ON calls (ts) WHERE status >= 400 OR error IS NOT NULL;
CREATE TABLE IF NOT EXISTS usage_hourly (
    hour INTEGER NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    images INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, model, endpoint)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS admin (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    username TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    is_default INTEGER NOT NULL,
    epoch TEXT NOT NULL
);
"""
_V1_KEY_COLUMNS = frozenset(
    (
        "id",
        "key_hash",
        "key_enc",
        "added_at",
        "balance",
        "usage_count",
        "enabled",
        "state",
        "last_used_at",
        "last_error",
        "account_id",
    )
)


def _v1_baseline(conn: sqlite3.Connection) -> None:
    for statement in _statements(_V1_SCHEMA):
        conn.execute(statement)
    found = {row[1] for row in conn.execute("PRAGMA table_info(keys)")}
    missing = sorted(_V1_KEY_COLUMNS - found)
    if missing:
        raise SchemaError(
            f"the keys table lacks column(s) {', '.join(missing)}: this data dir was not written by silicon-pool, "
            "or is damaged; nothing in it was changed"
        )


class Migration(NamedTuple):
    """Brings a data dir from the version before it to its own (its place in MIGRATIONS, from 1)."""

    what: str
    run: Callable[[sqlite3.Connection], object]


def _v2_rate_limits(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE rests (scope TEXT NOT NULL, owner TEXT NOT NULL, model TEXT NOT NULL, kind TEXT NOT NULL,"
        " until REAL NOT NULL, PRIMARY KEY (scope, owner, model)) WITHOUT ROWID"
    )
    conn.execute("ALTER TABLE calls ADD COLUMN limits TEXT")


def _v3_revoked_sessions(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE revoked_sessions (sid TEXT PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID")


MIGRATIONS: tuple[Migration, ...] = (
    Migration("the schema of releases before versions (up to fa0878f), checked", _v1_baseline),
    Migration("rests that outlive a restart; the rate-limit kinds a call met", _v2_rate_limits),
    Migration("logged-out sessions, revoked until their cookies expire", _v3_revoked_sessions),
)
VERSION = len(MIGRATIONS)
UNREADABLE_RETRIES = 10  # reads, 0.1 s apart, of a database another process may be creating


class SchemaError(RuntimeError):
    """The database cannot be opened as it is; it is left untouched and the message says why."""


class SchemaTooNew(SchemaError):
    """The data dir was written by a newer release."""

    def __init__(self, path: Path, found: int) -> None:
        super().__init__(
            f"{path} has schema version {found}, but this silicon-pool knows versions up to {VERSION}: "
            "it was written by a newer release. Upgrade silicon-pool (or use another --data-dir); "
            "nothing in it was changed."
        )
        self.found = found


def version_of(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_version(path: Path) -> None:
    """Refuse a database from a newer release, or one that is not silicon-pool's, reading only:
    read-only (with a write-ahead log present, so its pages count) or immutable (without one, so
    no log file is even created): a newer release's log is never folded into the database.

    An immutable read takes no lock, so it can catch another process creating the database
    mid-write: an unreadable file is read again for a moment before it is called damaged."""
    if not path.exists() or path.stat().st_size == 0:
        return
    for attempt in range(UNREADABLE_RETRIES + 1):
        try:
            found = _read_version(path)
            break
        except sqlite3.DatabaseError as exc:
            if attempt == UNREADABLE_RETRIES:
                raise SchemaError(
                    f"{path} is not a silicon-pool database, or is damaged ({exc}); nothing in it was changed. "
                    "Restore it from a backup, or use another --data-dir."
                ) from None
            time.sleep(0.1)
    if found > VERSION:
        raise SchemaTooNew(path, found)
    if found < 0:
        raise SchemaError(f"{path} has an invalid schema version {found}; nothing in it was changed")


def read_only(path: Path) -> sqlite3.Connection:
    """A connection that writes nothing to `path` (see check_version)."""
    wal = path.with_name(path.name + "-wal")
    mode = "mode=ro" if wal.exists() and wal.stat().st_size else "immutable=1"
    return sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True)


def _read_version(path: Path) -> int:
    conn = read_only(path)
    try:
        found = version_of(conn)
        conn.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        return found
    finally:
        conn.close()


def _has_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'keys'").fetchone() is not None


def upgrade(conn: sqlite3.Connection, path: Path) -> list[str]:
    """Create or migrate the schema on `conn` (autocommit mode); returns what the migrations did.

    Each step reads the version inside its own transaction, so two processes starting on one
    data dir never run a migration twice."""
    ran: list[str] = []
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = version_of(conn)
            if found > VERSION:
                raise SchemaTooNew(path, found)
            if found < 0:
                raise SchemaError(f"{path} has an invalid schema version {found}; nothing in it was changed")
            if found == VERSION:
                conn.execute("COMMIT")
                return ran
            if found == 0 and not _has_tables(conn):  # a new data dir: the current schema at once
                for statement in _statements(current_schema()):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {VERSION}")
            else:
                migration = MIGRATIONS[found]
                migration.run(conn)
                conn.execute(f"PRAGMA user_version = {found + 1}")
                log.info("database upgraded to schema version %d: %s", found + 1, migration.what)
                ran.append(migration.what)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _statements(script: str) -> list[str]:
    """`script` split into statements (executescript would commit the open transaction)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return statements
