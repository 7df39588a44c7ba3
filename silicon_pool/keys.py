"""One API key, and the one declaration of what is stored about it.

Each stored field of `Key` carries its SQL column in its `field(metadata=...)`; `COLUMNS` is
read off the class, and the schema, the load query, the batched update, the insert and the
admin's key view (`Key.view`) are all built from it (store.py, schema.py). A new stored field is
one line here plus a migration in schema.py.

The secret itself is stored apart from the columns, encrypted (`key_enc`) and fingerprinted
(`key_hash`, for duplicate checks without decrypting), see `schema.KEYS_IDENTITY`.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from .redact import mask

ACTIVE, INVALID, UNCHECKED = "active", "invalid", "unchecked"
MAX_ERROR = 500  # characters of a last error kept
MAX_ACCOUNT_ID = 128


def _stored(sql: str, load: Callable[[Any], Any], *, updated: bool = True) -> Mapping[str, Any]:
    """A field's column: its SQL type, how a stored value reads back, whether changes are written back."""
    return {"sql": sql, "updated": updated, "load": load}


# Readers of stored values: whatever a damaged or hand-edited row holds, one bad value never costs
# the key (let alone the other keys), and nothing unbounded or undecodable reaches the admin.
def _real(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _when(value: Any) -> float:
    return _real(value) or 0.0


def _count(value: Any) -> int:
    number = _real(value)
    return int(min(max(number, 0), 2**53)) if number is not None else 0


def _flag(value: Any) -> bool:
    return value not in (0, "0", False)


def _state(value: Any) -> str:
    return value if value in (ACTIVE, INVALID, UNCHECKED) else UNCHECKED


def _text(limit: int) -> Callable[[Any], str | None]:
    def read(value: Any) -> str | None:
        if value is None:
            return None
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return text[:limit]

    return read


@dataclass(slots=True, eq=False, repr=False)
class Key:
    """One API key: its stored fields, its live counters, and the bookkeeping other modules keep on it."""

    id: int
    secret: str
    added_at: float = field(metadata=_stored("REAL NOT NULL", _when, updated=False))
    balance: float | None = field(default=None, metadata=_stored("REAL", _real))
    usage_count: int = field(default=0, metadata=_stored("INTEGER NOT NULL DEFAULT 0", _count))
    enabled: bool = field(default=True, metadata=_stored("INTEGER NOT NULL DEFAULT 1", _flag))
    state: str = field(default=ACTIVE, metadata=_stored(f"TEXT NOT NULL DEFAULT '{ACTIVE}'", _state))
    last_used_at: float | None = field(default=None, metadata=_stored("REAL", _real))
    last_error: str | None = field(default=None, metadata=_stored("TEXT", _text(MAX_ERROR)))
    account_id: str | None = field(default=None, metadata=_stored("TEXT", _text(MAX_ACCOUNT_ID)))

    # Live, never stored.
    auth: str = field(init=False)  # the Authorization header the upstream gets
    inflight: int = field(default=0, init=False)
    cool_until: float = field(default=0.0, init=False)  # time.monotonic() until which it rests

    # Bookkeeping of other modules, kept on the key so each of their steps stays O(1).
    tier: int | None = field(default=None, init=False)  # pool: the tier whose index holds it, if any
    save_queued: bool = field(default=False, init=False)  # store: waiting for the next batch

    def __post_init__(self) -> None:
        self.auth = f"Bearer {self.secret}"

    @property
    def masked(self) -> str:
        return mask(self.secret)

    def status(self, now: float | None = None) -> str:
        """The one word the admin shows: disabled, invalid, cooling, zero, unchecked or active."""
        if not self.enabled:
            return "disabled"
        if self.state == INVALID:
            return "invalid"
        if self.cool_until > (time.monotonic() if now is None else now):
            return "cooling"
        if self.balance is not None and self.balance <= 0:
            return "zero"
        return self.state

    def view(self, now: float) -> dict[str, Any]:
        """What the admin shows of a key: every stored field, the key masked, `state` as the status word."""
        view = dict(zip(COLUMN_NAMES, STORED(self), strict=True))
        view.update(id=self.id, key_masked=self.masked, state=self.status(now))
        return view

    def __repr__(self) -> str:  # never the whole key
        return f"Key(id={self.id}, {self.masked}, {self.status()})"


class Column(NamedTuple):
    name: str
    sql: str  # type and constraints, as in CREATE TABLE
    updated: bool  # written back when the key changes (False: set once, at insert)
    load: Callable[[Any], Any]  # turns the stored value, whatever it is, back into the field's


COLUMNS: tuple[Column, ...] = tuple(
    Column(f.name, f.metadata["sql"], f.metadata["updated"], f.metadata["load"]) for f in fields(Key) if f.metadata
)
COLUMN_NAMES = tuple(c.name for c in COLUMNS)
UPDATED = tuple(c.name for c in COLUMNS if c.updated)
STORED: Callable[[Key], tuple[Any, ...]] = operator.attrgetter(*COLUMN_NAMES)  # one key's column values, in C
_LOADERS = tuple(c.load for c in COLUMNS)


def from_row(key_id: int, secret: str, values: tuple[Any, ...]) -> Key:
    """A key from its id, its decrypted secret and its COLUMNS values as SQLite returns them."""
    loaded = (load(value) for load, value in zip(_LOADERS, values, strict=True))
    return Key(key_id, secret, **dict(zip(COLUMN_NAMES, loaded, strict=True)))
