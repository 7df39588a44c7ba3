"""Read-side SQL for the admin: the call log, stats and today's totals.

Stats read the per-hour totals the writer keeps (`usage_hourly`), never the log itself, so
they stay fast however long the log grows; log pages use the `ts` index.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from ..store import CallRecord

# (column, name in the API): the log page's fields, in SELECT order.
_LOG = (("id", "id"), ("ts", "time"), *((c, c) for c in CallRecord._fields if c != "ts"))
LOG_COLUMNS = ", ".join(column for column, _ in _LOG)
LOG_FIELDS = tuple(name for _, name in _LOG)


@dataclass(frozen=True, slots=True)
class LogFilter:
    model: str | None = None
    endpoint: str | None = None
    status: str | None = None  # "ok" | "error"
    since: float | None = None
    until: float | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[str | float] = []
        if self.model:
            clauses.append("model = ?")
            args.append(self.model)
        if self.endpoint:
            clauses.append("endpoint = ?")
            args.append(self.endpoint)
        if self.status == "ok":
            clauses.append("status < 400 AND error IS NULL")
        elif self.status == "error":  # the very terms of the partial index calls_errors_ts
            clauses.append("(status >= 400 OR error IS NOT NULL)")
        if self.since is not None:
            clauses.append("ts >= ?")
            args.append(self.since)
        if self.until is not None:
            clauses.append("ts < ?")
            args.append(self.until)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def log_page(conn: sqlite3.Connection, where: LogFilter, offset: int, limit: int) -> tuple[list[tuple[Any, ...]], int]:
    sql, args = where.where()
    rows = conn.execute(
        f"SELECT {LOG_COLUMNS} FROM calls{sql} ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?", (*args, limit, offset)
    ).fetchall()
    total = conn.execute(f"SELECT COUNT(*) FROM calls{sql}", args).fetchone()[0]
    return rows, total


def log_choices(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
    """Models and endpoints ever seen, for the filter menus (from the small hourly table)."""
    models = [r[0] for r in conn.execute("SELECT DISTINCT model FROM usage_hourly WHERE model != '' ORDER BY model")]
    endpoints = [r[0] for r in conn.execute("SELECT DISTINCT endpoint FROM usage_hourly ORDER BY endpoint")]
    return models, endpoints


def day_start(day: date) -> float:
    return datetime(day.year, day.month, day.day).timestamp()


def totals_since(conn: sqlite3.Connection, since: float) -> dict[str, int]:
    row = conn.execute(
        "SELECT COALESCE(SUM(calls), 0), COALESCE(SUM(errors), 0), COALESCE(SUM(prompt_tokens), 0),"
        " COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(total_tokens), 0), COALESCE(SUM(images), 0)"
        " FROM usage_hourly WHERE hour >= ?",
        (int(since // 3600 * 3600),),
    ).fetchone()
    return dict(
        zip(("calls", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "images"), row, strict=True)
    )


def stats(conn: sqlite3.Connection, range_: str, day: date) -> dict[str, Any]:
    """Per hour of `day`, or per day of its month: calls, errors, tokens; and tokens per model."""
    if range_ == "day":
        start = day_start(day)
        end = day_start(day + timedelta(days=1))
        labels = [f"{h:02d}:00" for h in range(24)]
    else:
        first = day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        start, end = day_start(first), day_start(following)
        labels = [(first + timedelta(days=i)).isoformat() for i in range((following - first).days)]
    buckets = [
        {"label": label, "calls": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0} for label in labels
    ]
    per_model: dict[str, dict[str, int]] = {}
    rows = conn.execute(
        "SELECT hour, model, SUM(calls), SUM(errors), SUM(prompt_tokens), SUM(completion_tokens), SUM(total_tokens)"
        " FROM usage_hourly WHERE hour >= ? AND hour < ? GROUP BY hour, model",
        (int(start // 3600 * 3600), end),
    )
    for hour, model, calls, errors, prompt, completion, total in rows:
        if hour < start:  # a zone off the whole hour: that UTC hour began before this local day/month
            continue
        local = datetime.fromtimestamp(hour)
        index = local.hour if range_ == "day" else local.day - 1
        if not 0 <= index < len(buckets):
            continue
        bucket = buckets[index]
        bucket["calls"] += calls
        bucket["errors"] += errors
        bucket["prompt_tokens"] += prompt
        bucket["completion_tokens"] += completion
        entry = per_model.setdefault(model or "(none)", {"calls": 0, "total_tokens": 0})
        entry["calls"] += calls
        entry["total_tokens"] += total
    ranked = sorted(per_model.items(), key=lambda item: -item[1]["total_tokens"])
    models = [{"model": m, **v} for m, v in ranked]
    return {"range": range_, "date": day.isoformat(), "buckets": buckets, "models": models}


def parse_when(text: str) -> float:
    """`YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS]` (local time) or a Unix timestamp."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is not a date, a date-time or a timestamp") from None


def today_start() -> float:
    return day_start(datetime.fromtimestamp(time.time()).date())
