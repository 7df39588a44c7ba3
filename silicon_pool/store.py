"""SQLite storage with one writer thread: the request path only appends to a list or a queue.

Two kinds of items reach the writer. Telemetry (a changed `Key`, the call-log rows of the last
`FLUSH_SECONDS`, handed over as one list) is batched and committed about every `FLUSH_SECONDS`,
with per-hour usage totals summed by SQLite in the same transaction so stats never scan the
log. Jobs (imports, deletes, settings) are callables run in their own transaction; their
caller awaits the commit. Reads run on a small pool of reader threads with their own
connections (WAL lets them run beside the writer).

Secrets are stored encrypted with the data dir's secret (crypto.py): keys in their own column,
and secret settings (tokens) as a JSON string, SEALED then their ciphertext in base64, so that an
earlier release reading one takes it for a token nobody holds, never for an empty one.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
import operator
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson

from .crypto import Secrets
from .keys import COLUMN_NAMES, STORED, UPDATED, Key, from_row
from .pool import ACCOUNT, KEY, Rest
from .schema import SchemaError, check_version, read_only, upgrade
from .settings import SETTINGS, Token
from .text import clean

log = logging.getLogger(__name__)
T = TypeVar("T")

DB_FILE = "pool.db"
FLUSH_SECONDS = 0.5
SECRET_SETTINGS = frozenset(s.name for s in SETTINGS if isinstance(s, Token))
SEALED = "enc:"
SECRET_SAMPLE = 16  # stored keys tried at start-up: the secret must decrypt one of them (or a token)


class CallRecord(NamedTuple):
    """One proxied request, as the call log stores it."""

    ts: float
    endpoint: str
    model: str | None
    key_id: int | None
    status: int
    attempts: int
    latency_ms: int
    ttfb_ms: int | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    images: int
    stream: bool
    caller: str
    error: str | None
    limits: str | None = None  # the rate-limit kinds the request met (limits.py), comma-separated


# A whole batch in one statement, its rows passed as one JSON array: SQLite unpacks it in C, and
# the GIL is released once per batch instead of once per row.
_INSERT_CALLS = (
    f"INSERT INTO calls ({', '.join(CallRecord._fields)}) SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(CallRecord._fields)))
    + " FROM json_each(?)"
)
# Changed keys the same way: one statement, one JSON array of `_key_row` tuples (the id last).
_UPDATE_KEYS = (
    "UPDATE keys SET "
    + ", ".join(f"{name} = json_extract(batch.value, '$[{i}]')" for i, name in enumerate(UPDATED))
    + f" FROM json_each(?) AS batch WHERE keys.id = json_extract(batch.value, '$[{len(UPDATED)}]')"
)
_UPDATED_ROW = operator.attrgetter(*UPDATED, "id")
_UPSERT_REST = (
    "INSERT INTO rests (scope, owner, model, kind, until) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (scope, owner, model) DO UPDATE SET kind = excluded.kind, until = excluded.until"
)
LONG_REST = 60.0  # seconds: rests ending later than this are stored (an hour's or a day's limit)
MAX_REST_AHEAD = 3 * 86400.0  # a stored rest ending later than this was not written by this project
MAX_REST_TEXT = 256
_LOAD_KEYS = f"SELECT id, key_enc, {', '.join(COLUMN_NAMES)} FROM keys"
_INSERT_KEY = (
    f"INSERT OR IGNORE INTO keys (key_hash, key_enc, {', '.join(COLUMN_NAMES)})"
    f" VALUES (?, ?, {', '.join('?' * len(COLUMN_NAMES))})"
)
# Per-hour totals of the rows just inserted, summed by SQLite itself.
_UPSERT_HOURLY = """
INSERT INTO usage_hourly (hour, model, endpoint, calls, errors, prompt_tokens, completion_tokens, total_tokens, images)
SELECT CAST(ts / 3600 AS INTEGER) * 3600, COALESCE(model, ''), endpoint, COUNT(*),
       SUM(status >= 400 OR error IS NOT NULL), SUM(prompt_tokens), SUM(completion_tokens),
       SUM(total_tokens), SUM(images)
FROM calls WHERE id > ? GROUP BY 1, 2, 3
ON CONFLICT (hour, model, endpoint) DO UPDATE SET
    calls = calls + excluded.calls, errors = errors + excluded.errors,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    total_tokens = total_tokens + excluded.total_tokens, images = images + excluded.images
"""


class _Job(NamedTuple):
    fn: Callable[[sqlite3.Connection], Any]
    future: concurrent.futures.Future[Any]


class _Batch(NamedTuple):
    """What the loop thread gathered over one FLUSH_SECONDS: changed keys, call-log rows, long rests."""

    keys: list[Key]
    rows: list[CallRecord]
    rests: list[Rest]


_STOP = object()


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=10000")
    # Switching to WAL does not wait on the busy timeout: a second process starting on a new
    # data dir at the same moment retries instead of failing.
    deadline = time.monotonic() + 10
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _sealed(stored: Any) -> str | None:
    """The base64 ciphertext in a stored secret setting; None if it is plain JSON text (an earlier
    release's), or not text at all."""
    if not isinstance(stored, str):
        return None
    try:
        value = orjson.loads(stored)
    except orjson.JSONDecodeError:
        return None
    return value[len(SEALED) :] if isinstance(value, str) and value.startswith(SEALED) else None


def _in_plain_text(name: Any, stored: Any) -> bool:
    """Whether a settings row is a secret one that an earlier release stored in plain text."""
    return name in SECRET_SETTINGS and isinstance(stored, str) and _sealed(stored) is None


def _ciphertext(stored: Any) -> bytes | None:
    """The ciphertext in a stored secret setting; None if it is in plain text or damaged."""
    sealed = _sealed(stored)
    try:
        return None if sealed is None else base64.b64decode(sealed, validate=True)
    except ValueError:
        return None


def _ciphertexts(path: Path) -> list[bytes]:
    """Some of what `path` holds encrypted (keys, then tokens), read without writing anything."""
    check_version(path)
    if not path.exists() or path.stat().st_size == 0:
        return []
    conn = read_only(path)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        found = []
        if "keys" in tables:
            found += [row[0] for row in conn.execute("SELECT key_enc FROM keys ORDER BY id LIMIT ?", (SECRET_SAMPLE,))]
        if "settings" in tables:
            names = sorted(SECRET_SETTINGS)
            query = f"SELECT value FROM settings WHERE name IN ({', '.join('?' * len(names))})"
            found += [blob for (stored,) in conn.execute(query, names) if (blob := _ciphertext(stored))]
        return found
    except sqlite3.DatabaseError as exc:
        raise SchemaError(f"{path} cannot be read ({exc}); nothing in it was changed") from None
    finally:
        conn.close()


def open_secrets(data_dir: Path) -> Secrets:
    """The data dir's secret, checked against what pool.db holds before anything is written: a
    missing secret is created only for a pool.db with nothing encrypted in it (SecretError else)."""
    return Secrets(data_dir, _ciphertexts(data_dir / DB_FILE))


def _key_row(key: Key) -> tuple[Any, ...]:
    key.save_queued = False  # first: a change made while the row is read queues the key again
    row: tuple[Any, ...] = _UPDATED_ROW(key)
    return row


def _rest_from_row(row: tuple[Any, ...], now: float) -> Rest | None:
    """A stored rest, or None for a row no release wrote: junk costs that row only."""
    scope, owner, model, kind, until = row
    if not isinstance(model, str) or not isinstance(kind, str) or len(model) > MAX_REST_TEXT or len(kind) > 16:
        return None
    if not isinstance(until, int | float) or not now < until <= now + MAX_REST_AHEAD:
        return None
    text = str(owner)
    if scope == KEY and text.isascii() and text.isdigit() and len(text) <= 18:
        return Rest(model, (KEY, int(text)), kind, float(until))
    if scope == ACCOUNT and isinstance(owner, str) and 0 < len(owner) <= MAX_REST_TEXT:
        return Rest(model, (ACCOUNT, owner), kind, float(until))
    return None


def _json_rows(rows: list[tuple[Any, ...]], what: str) -> tuple[bytes, int]:
    """Rows as one JSON array for `json_each`, and how many were set aside. A row that cannot be
    written as JSON (text with bytes that are not UTF-8, a number out of range) has its text
    cleaned or, failing that, is set aside: one bad row never costs the others."""
    try:
        return orjson.dumps(rows), 0
    except TypeError:
        pass
    good, dropped = [], 0
    for row in rows:
        fixed = tuple(clean(v, len(v)) if isinstance(v, str) else v for v in row)
        try:
            orjson.dumps(fixed)
        except TypeError:
            dropped += 1
        else:
            good.append(fixed)
    if dropped:
        log.error("%d %s(s) could not be written as JSON and were set aside", dropped, what)
    return orjson.dumps(good), dropped


def _insert_calls(conn: sqlite3.Connection, rows: bytes) -> None:
    """Call-log rows, and the hourly totals summed from them in the same transaction."""
    last_id = conn.execute("SELECT COALESCE(MAX(id), 0) FROM calls").fetchone()[0]
    conn.execute(_INSERT_CALLS, (rows,))
    conn.execute(_UPSERT_HOURLY, (last_id,))


def _commit(conn: sqlite3.Connection, steps: list[Callable[[], object]]) -> Exception | None:
    """Run `steps` in one transaction; what went wrong, if anything (then nothing of it is kept)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        for step in steps:
            step()
        conn.execute("COMMIT")
    except Exception as exc:  # the writer must outlive any bad batch (a full disk, an absurd value)
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return exc
    return None


class Store:
    """The database file, its writer thread and its readers."""

    def __init__(self, data_dir: Path, secrets: Secrets) -> None:
        self.path = data_dir / DB_FILE
        self.secrets = secrets
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._wake = threading.Event()
        # Not yet handed to the writer (loop thread only): call-log rows and changed keys.
        self._rows: list[CallRecord] = []
        self._keys: list[Key] = []
        self._rests: list[Rest] = []
        self._due = False  # a hand-over is scheduled
        self._writer: threading.Thread | None = None
        self._readers = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="sqlite-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self.dropped_rows = 0  # call-log rows never stored (written by the writer thread only)

    # -- life cycle ---------------------------------------------------------------------------

    def open(self) -> list[str]:
        """Create (owner-only) or upgrade the database, then start the writer; returns the migrations run.

        A database from a newer release raises `SchemaTooNew` before anything is written."""
        check_version(self.path)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        conn = connect(self.path)
        try:
            ran = upgrade(conn, self.path)
            self._seal_plain_settings(conn)
        finally:
            conn.close()
        self._writer = threading.Thread(target=self._write_loop, name="sqlite-writer", daemon=True)
        self._writer.start()
        return ran

    def _seal_plain_settings(self, conn: sqlite3.Connection) -> None:
        """Encrypt the secret settings an earlier release stored in plain text, leaving no trace of them.

        The table is emptied with secure_delete on, which zeroes its pages (and what earlier edits
        left in their free space), and written back; then the WAL, whose older frames copy those
        pages, is checkpointed and truncated (closing this connection would not remove it while
        another program has pool.db open)."""
        conn.execute("PRAGMA secure_delete = ON")  # many SQLite builds default to it, not all
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute("SELECT name, value FROM settings").fetchall()
            plain = {name for name, stored in rows if _in_plain_text(name, stored)}
            if plain:
                conn.execute("DELETE FROM settings")
                conn.executemany(
                    "INSERT INTO settings (name, value) VALUES (?, ?)",
                    [(name, self._seal(stored) if name in plain else stored) for name, stored in rows],
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if plain:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            log.info("encrypted %s, stored in plain text by an earlier release", ", ".join(sorted(plain)))

    def _seal(self, text: str) -> str:
        """A secret setting's stored JSON text, as the JSON string that holds its ciphertext."""
        return orjson.dumps(SEALED + base64.b64encode(self.secrets.encrypt(text)).decode()).decode()

    def _unseal(self, name: Any, stored: Any) -> Any:
        """A stored value's JSON text: a sealed secret setting's decrypted, any other as stored."""
        sealed = _sealed(stored) if name in SECRET_SETTINGS else None
        return stored if sealed is None else self.secrets.decrypt(base64.b64decode(sealed, validate=True))

    def _stored(self, name: str, value: Any) -> str:
        text = orjson.dumps(value).decode()
        return self._seal(text) if name in SECRET_SETTINGS else text

    def close(self) -> None:
        """Flush everything queued, stop the writer and the readers (once traffic has stopped)."""
        if self._writer is not None:
            self.hand_over()
            self._queue.put(_STOP)
            self._wake.set()
            self._writer.join()
            self._writer = None
        self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()
        self._reader_conns.clear()

    # -- loading at start-up ------------------------------------------------------------------

    async def load_keys(self) -> list[Key]:
        return await self.read(self._load_keys)

    async def load_settings(self) -> dict[str, Any]:
        """Stored values by name (secret ones decrypted); a row that is not JSON, or does not decrypt,
        is skipped (the setting keeps its default)."""
        rows = await self.read(lambda conn: conn.execute("SELECT name, value FROM settings").fetchall())
        values = {}
        for name, stored in rows:
            try:
                values[str(name)] = orjson.loads(self._unseal(name, stored))
            except Exception:  # not JSON, or not decrypted: that row only
                log.warning("setting %r in %s cannot be read: its default applies", str(name)[:64], self.path)
        return values

    def _load_keys(self, conn: sqlite3.Connection) -> list[Key]:
        decrypt, keys = self.secrets.decrypt, []
        for row in conn.execute(_LOAD_KEYS):
            try:
                keys.append(from_row(row[0], decrypt(row[1]), row[2:]))
            except Exception:  # one key that cannot be read costs no other; its row stays for a later release
                log.error(
                    "key id %r in %s cannot be decrypted or read: left out of the pool, kept on disk", row[0], self.path
                )
        return keys

    # -- the request path: enqueue only -------------------------------------------------------

    def save_key(self, key: Key) -> None:
        """Persist `key`'s counters and state with the next batch (listed once until written)."""
        if not key.save_queued:
            key.save_queued = True
            self._keys.append(key)
            if not self._due:
                self._hand_over_soon()

    def log_call(self, record: CallRecord) -> None:
        """Keep the row on the loop thread until the batch of FLUSH_SECONDS goes to the writer.

        One list append per request (a large pool changes a key per request too), and the
        writer takes a whole batch at once instead of a row at a time: both threads hold the
        GIL less, and the queue's lock is taken twice a second, not per request."""
        self._rows.append(record)
        if not self._due:
            self._hand_over_soon()

    def save_rest(self, rest: Rest) -> None:
        """Persist a rest that ends more than LONG_REST from now with the next batch; shorter ones live in memory."""
        if rest.until - time.time() > LONG_REST:
            self._rests.append(rest)
            if not self._due:
                self._hand_over_soon()

    def _hand_over_soon(self) -> None:
        self._due = True
        asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.hand_over)

    def hand_over(self) -> None:
        """Queue the keys changed and the rows logged so far for the writer, and wake it."""
        self._due = False
        if self._rows or self._keys or self._rests:
            batch = _Batch(self._keys, self._rows, self._rests)
            self._keys, self._rows, self._rests = [], [], []
            self._queue.put(batch)
            self._wake.set()

    # -- awaited writes -----------------------------------------------------------------------

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one transaction on the writer thread, after everything queued before it."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self.hand_over()
        self._queue.put(_Job(fn, future))
        self._wake.set()
        return await asyncio.wrap_future(future)

    async def flush(self) -> None:
        """Return once everything queued before this call is committed."""
        await self.write(lambda _conn: None)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on a reader thread's own connection."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: fn(self._reader()))

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
            self._reader_conns.append(conn)
        return conn

    # -- common jobs --------------------------------------------------------------------------

    async def insert_keys(self, keys: Iterable[Key]) -> list[Key]:
        """Store new keys (their `id` is set here); those whose secret is already stored are skipped."""
        items = list(keys)
        encrypt, fingerprint = self.secrets.encrypt, self.secrets.fingerprint

        def insert(conn: sqlite3.Connection) -> list[Key]:
            added = []
            for key in items:
                cur = conn.execute(_INSERT_KEY, (fingerprint(key.secret), encrypt(key.secret), *STORED(key)))
                if cur.rowcount and cur.lastrowid is not None:
                    key.id = cur.lastrowid
                    added.append(key)
            return added

        return await self.write(insert)

    async def load_rests(self) -> list[Rest]:
        """The stored rests still running; those over are deleted, unreadable rows skipped."""

        def load(conn: sqlite3.Connection) -> list[Rest]:
            now = time.time()
            conn.execute("DELETE FROM rests WHERE until <= ?", (now,))
            rests = []
            for row in conn.execute("SELECT scope, owner, model, kind, until FROM rests"):
                rest = _rest_from_row(row, now)
                if rest is not None:
                    rests.append(rest)
            return rests

        return await self.write(load)

    async def delete_rests(self, rests: Iterable[Rest]) -> None:
        rows = [(r.owner[0], str(r.owner[1]), r.model) for r in rests]
        if rows:
            await self.write(
                lambda conn: conn.executemany("DELETE FROM rests WHERE scope = ? AND owner = ? AND model = ?", rows)
            )

    async def save_settings(self, values: dict[str, Any]) -> None:
        rows = [(name, self._stored(name, value)) for name, value in values.items()]
        await self.write(
            lambda conn: conn.executemany(
                "INSERT INTO settings (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                rows,
            )
        )

    # -- the writer thread --------------------------------------------------------------------

    def _write_loop(self) -> None:
        """Wake every FLUSH_SECONDS (or when rows or a job arrive), drain the queue, write it in order.

        The request path never wakes this thread itself: call-log rows arrive as one list per
        FLUSH_SECONDS; a job flushes what was queued before it, then runs."""
        conn = connect(self.path)
        running = True
        while running:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            keys: dict[int, Key] = {}
            calls: list[CallRecord] = []
            rests: list[Rest] = []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Batch):
                    for key in item.keys:
                        keys[key.id] = key
                    calls += item.rows
                    rests += item.rests
                else:  # a job or the stop sign
                    self._flush(conn, keys, calls, rests)
                    keys, calls, rests = {}, [], []
                    if item is _STOP:
                        running = False
                        break
                    self._run_job(conn, item)
            self._flush(conn, keys, calls, rests)
        conn.close()

    def queue_depth(self) -> int:
        """Items (batches, jobs) waiting for the writer thread: a backlog that grows means a slow disk."""
        return self._queue.qsize()

    def _flush(
        self, conn: sqlite3.Connection, keys: dict[int, Key], calls: list[CallRecord], rests: list[Rest]
    ) -> None:
        """Commit the batch in one transaction; should that fail, each part in its own, so a
        change the admin was told is saved never waits on a call-log row (or a full disk's luck)."""
        if not keys and not calls and not rests:
            return
        parts: list[tuple[str, Callable[[], object]]] = []
        dropped = 0
        if rests:
            rest_rows = [(r.owner[0], str(r.owner[1]), r.model, r.kind, r.until) for r in rests]
            parts.append(("rests", lambda: conn.executemany(_UPSERT_REST, rest_rows)))
        if keys:
            key_rows, _ = _json_rows([_key_row(k) for k in keys.values()], "key update")
            parts.append(("key updates", lambda: conn.execute(_UPDATE_KEYS, (key_rows,))))
        if calls:
            call_rows, dropped = _json_rows(list(map(tuple, calls)), "call-log row")
            self.dropped_rows += dropped
            parts.append(("call-log rows", lambda: _insert_calls(conn, call_rows)))
        failed = _commit(conn, [run for _, run in parts])
        if failed is None:
            return
        log.error("could not save %d key updates and %d call-log rows together: %r", len(keys), len(calls), failed)
        for what, run in parts:
            failed = _commit(conn, [run])
            if failed is not None:
                log.error("could not save the %s of this batch: %r", what, failed)
                if what == "call-log rows":
                    self.dropped_rows += len(calls) - dropped

    @staticmethod
    def _run_job(conn: sqlite3.Connection, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = job.fn(conn)
            conn.execute("COMMIT")
        except BaseException as exc:  # handed to the awaiting coroutine, which decides
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)
