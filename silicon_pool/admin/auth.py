"""The admin account, its password hash, sessions, login throttling and the CSRF check.

Sessions live in an encrypted cookie (aiohttp-session) whose key is derived from the data
dir's secret, so logins survive a restart. Each session carries the account's `epoch`;
changing the password makes a new epoch, which logs every other session out. Each also
carries a random id; logging out revokes that id (`Revocations`), so a copy of the cookie is
out too, restart or not.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp_session import Session, get_session
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from ..store import Store

log = logging.getLogger(__name__)

DEFAULT_USERNAME = DEFAULT_PASSWORD = "admin"
SESSION_SECONDS = 48 * 3600
COOKIE_NAME = "SILICON_POOL_SESSION"
MAX_REVOKED = 10_000  # session ids logged out and not yet expired (see Revocations)
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(candidate.hex(), digest)


@dataclass(slots=True)
class Account:
    username: str
    password_hash: str
    is_default: bool
    epoch: str


def _default_account() -> Account:
    return Account(DEFAULT_USERNAME, hash_password(DEFAULT_PASSWORD), True, secrets.token_hex(8))


def _write_account(conn: sqlite3.Connection, account: Account) -> None:
    conn.execute(
        "INSERT INTO admin (id, username, password_hash, is_default, epoch) VALUES (1, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET username = excluded.username, password_hash = excluded.password_hash,"
        " is_default = excluded.is_default, epoch = excluded.epoch",
        (account.username, account.password_hash, int(account.is_default), account.epoch),
    )


async def load_account(store: Store) -> Account:
    """The stored account, or admin/admin on first start."""
    row = await store.read(
        lambda c: c.execute("SELECT username, password_hash, is_default, epoch FROM admin WHERE id = 1").fetchone()
    )
    if row is not None:
        return Account(row[0], row[1], bool(row[2]), row[3])
    account = _default_account()
    await store.write(lambda conn: _write_account(conn, account))
    return account


async def save_account(store: Store, account: Account) -> None:
    await store.write(lambda conn: _write_account(conn, account))


def reset_account(db_path: str) -> None:
    """For `--reset-admin`: back to admin/admin, every session logged out."""
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            _write_account(conn, _default_account())
    finally:
        conn.close()


async def check_login(account: Account, username: str, password: str) -> bool:
    """Both compared in constant time; scrypt runs off the event loop."""
    ok_user = hmac.compare_digest(username.encode(), account.username.encode())
    ok_password = await asyncio.to_thread(verify_password, password, account.password_hash)
    return ok_user and ok_password


# -- sessions -----------------------------------------------------------------------------------


def cookie_storage(cookie_key: bytes) -> EncryptedCookieStorage:
    return EncryptedCookieStorage(
        cookie_key, cookie_name=COOKIE_NAME, max_age=SESSION_SECONDS, httponly=True, samesite="Strict"
    )


async def start_session(request: web.Request, account: Account) -> None:
    session = await get_session(request)
    session.clear()
    session["user"] = account.username
    session["epoch"] = account.epoch
    session["sid"] = secrets.token_urlsafe(16)
    session["seen"] = int(time.time())


async def current_session(request: web.Request, account: Account, revoked: Revocations) -> Session | None:
    """The logged-in session, renewed at most once a minute (the 48 h lifetime slides).

    A session without an id (from a release before them) is out: logging out could not end it."""
    session = await get_session(request)
    if session.new or session.get("epoch") != account.epoch or session.get("user") != account.username:
        return None
    sid = session.get("sid")
    if not isinstance(sid, str) or sid in revoked:
        return None
    now = int(time.time())
    seen = session.get("seen")
    if not isinstance(seen, int) or now - seen > SESSION_SECONDS:
        return None
    if now - seen >= 60:
        session["seen"] = now
    return session


async def end_session(request: web.Request, account: Account, revoked: Revocations) -> None:
    """Logout: this session's id is revoked before its cookie is dropped, so no copy of it works either."""
    session = await get_session(request)
    sid = session.get("sid")
    if isinstance(sid, str):
        await revoked.revoke(sid, account)
    session.invalidate()


class Revocations:
    """Ids of sessions logged out while a cookie carrying them may still be valid.

    Held in memory, so a request checks a dict, and written through to `revoked_sessions` by
    the store's writer (a logout is rare), so they outlive a restart. An id is kept until no
    cookie with it can be valid: SESSION_SECONDS after the logout, since a revoked session is
    never renewed. Past MAX_REVOKED live ids, the account's epoch is rolled instead: every
    session ends, and none needs remembering."""

    def __init__(self, store: Store, until: dict[str, float], clock: Callable[[], float] = time.time) -> None:
        self._store, self._until, self._clock = store, until, clock

    def __contains__(self, sid: str) -> bool:
        return sid in self._until

    async def revoke(self, sid: str, account: Account) -> None:
        now = self._clock()
        live = {s: until for s, until in self._until.items() if until > now}
        if len(live) >= MAX_REVOKED:
            await self._end_all(account)
            return
        until = live[sid] = now + SESSION_SECONDS
        self._until = live  # before the write: the id is out at once, even if the disk fails

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM revoked_sessions WHERE until <= ?", (now,))
            conn.execute("INSERT OR REPLACE INTO revoked_sessions (sid, until) VALUES (?, ?)", (sid, until))

        await self._store.write(write)

    async def _end_all(self, account: Account) -> None:
        log.warning(
            "%d sessions logged out within %d h: every session is logged out now", MAX_REVOKED, SESSION_SECONDS // 3600
        )
        account.epoch = secrets.token_hex(8)

        def write(conn: sqlite3.Connection) -> None:
            _write_account(conn, account)
            conn.execute("DELETE FROM revoked_sessions")

        await self._store.write(write)
        self._until = {}


async def load_revocations(store: Store) -> Revocations:
    """The stored revocations still in force; those over are deleted, rows no release wrote skipped."""

    def load(conn: sqlite3.Connection) -> dict[str, float]:
        now = time.time()
        conn.execute("DELETE FROM revoked_sessions WHERE until <= ?", (now,))
        rows = conn.execute("SELECT sid, until FROM revoked_sessions").fetchall()
        return {sid: float(until) for sid, until in rows if isinstance(sid, str) and isinstance(until, int | float)}

    return Revocations(store, await store.write(load))


# -- CSRF -----------------------------------------------------------------------------------------


def same_origin(request: web.Request, allowed_hosts: Iterable[str]) -> bool:
    """False when Origin (or, lacking it, Referer) names another site; scripts sending neither pass.

    Besides this server's own scheme and Host, `https://` with a name from `--allowed-host` (any
    port) counts: a reverse proxy that terminates TLS talks plain http to us, and may not pass the
    browser's Host on. The user named that host as the admin's, so no foreign page is served there."""
    sent = request.headers.get("Origin")
    if sent is None:
        sent = request.headers.get("Referer")
        if not sent:
            return True
    try:
        parts = urlsplit(sent)
    except ValueError:  # a broken IPv6 literal
        return False
    if f"{parts.scheme}://{parts.netloc}".lower() == f"{request.scheme}://{request.host}".lower():
        return True
    named = {h.lower() for h in allowed_hosts}
    return parts.scheme.lower() == "https" and parts.username is None and parts.hostname in named


# -- login throttling ---------------------------------------------------------------------------


def client_of(address: str) -> str:
    """Who a login attempt is counted against: an IPv4 address (mapped into IPv6 or not), or an
    IPv6 /64, which one subscriber gets whole and can try from address by address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP (a Unix socket, "unknown"): counted as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class LoginThrottle:
    """After FREE_TRIES wrong passwords from one client (`client_of`), each further try waits twice as long.

    At most MAX_ADDRESSES clients are remembered; past that the one whose last failure is oldest
    is forgotten, so a crowd of fresh addresses cannot flush out one that is still trying."""

    FREE_TRIES = 5
    FORGET_SECONDS = 900
    MAX_WAIT = 300
    MAX_ADDRESSES = 10_000

    def __init__(self) -> None:
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # oldest last failure first

    def wait(self, address: str) -> int:
        """Seconds `address` must wait before the next try (0: go ahead)."""
        client = client_of(address)
        count, last = self._failures.get(client, (0, 0.0))
        now = time.monotonic()
        if now - last > self.FORGET_SECONDS:
            self._failures.pop(client, None)
            return 0
        if count < self.FREE_TRIES:
            return 0
        delay = min(self.MAX_WAIT, 2 ** (count - self.FREE_TRIES))
        return max(0, int(last + delay - now + 0.999))

    def failed(self, address: str) -> None:
        client = client_of(address)
        count, _ = self._failures.pop(client, (0, 0.0))
        self._failures[client] = (count + 1, time.monotonic())
        if len(self._failures) > self.MAX_ADDRESSES:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(client_of(address), None)
