"""What an upstream refusal says about a rate limit, and how long the pair it hit should rest.

SiliconFlow limits each account per model, in seven kinds: requests, tokens or images per
minute, hour or day (RPM, RPH, RPD, TPM, TPD, IPM, IPD). A 429 names the kind it hit
(`Details: TPM limit reached.`), and the kind says when the budget comes back: the next full
minute, the next full hour, or the upstream's next day. A `Retry-After` header wins when one
comes. Rests are wall-clock times (`time.time()`), so the long ones can outlive a restart.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, tzinfo
from email.utils import parsedate_to_datetime

from .settings import Words

# Kinds a 429 names, then the other reasons a (key, model) pair rests.
KINDS: dict[str, Words] = {
    "RPM": Words("每分钟请求数", "requests per minute"),
    "RPH": Words("每小时请求数", "requests per hour"),
    "RPD": Words("每日请求数", "requests per day"),
    "TPM": Words("每分钟 token 数", "tokens per minute"),
    "TPD": Words("每日 token 数", "tokens per day"),
    "IPM": Words("每分钟图片数", "images per minute"),
    "IPD": Words("每日图片数", "images per day"),
}
RATE_LIMITED = "429"  # a 429 whose kind could not be read
BUSY = "503"  # "System is too busy"
GATEWAY_TIMEOUT = "504"
REASONS: dict[str, Words] = {
    **KINDS,
    RATE_LIMITED: Words("限流", "a rate limit"),
    BUSY: Words("上游繁忙", "the upstream being busy"),
    GATEWAY_TIMEOUT: Words("上游网关超时", "upstream gateway timeouts"),
}

MIN_REST = 3.0  # seconds: a limit hit just before the minute turns still rests a moment
JITTER = 2.0  # seconds at most added to a per-minute rest, so a pool does not wake all at once
MAX_RETRY_AFTER = 2 * 86400.0  # an absurd Retry-After is cut to this
_DETAILS = re.compile(rb"Details:\s*([RTI]P[MHD])\s+limit", re.IGNORECASE)
_SCAN = 4096  # bytes of a refusal searched for its kind


def limit_kind(body: bytes) -> str | None:
    """The kind a 429 body names (`Details: RPD limit reached.`), if it names one."""
    found = _DETAILS.search(body, 0, _SCAN)
    if found is None:
        return None
    kind = found.group(1).decode("ascii").upper()
    return kind if kind in KINDS else None


def retry_after(header: str | None, now: float) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date), within bounds."""
    if header is None:
        return None
    text = header.strip()[:64]
    if text.isascii() and text.isdigit():
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def rest_until(kind: str, now: float, *, day_zone: tzinfo, cooldown: float, jitter: float = 0.0) -> float:
    """When a pair that met `kind` at `now` may serve again.

    Per-minute kinds rest to the next full minute (at least MIN_REST, plus `jitter` so a pool does
    not wake all at once), per-hour to the next full hour (of UTC, so no DST shift stretches it),
    per-day to midnight in `day_zone`;
    anything else (an unnamed 429, a busy or timed-out upstream) for `cooldown` seconds."""
    period = kind[-1] if kind in KINDS else ""
    if period == "M":
        return max(math.floor(now / 60 + 1) * 60, now + MIN_REST) + jitter
    if period == "H":  # the hour turns at once everywhere that matters (UTC+8 has no DST)
        return math.floor(now / 3600 + 1) * 3600
    local = datetime.fromtimestamp(now, day_zone)
    if period == "D":
        tomorrow = local.date() + timedelta(days=1)
        return datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=day_zone).timestamp()
    return now + cooldown


def clock_time(until: float, day_zone: tzinfo) -> str:
    """`00:00 (UTC+8)`: when a rest ends, as the client's message shows it."""
    local = datetime.fromtimestamp(until, day_zone)
    offset = local.utcoffset() or timedelta()
    hours, minutes = divmod(abs(int(offset.total_seconds())) // 60, 60)
    sign = "+" if offset >= timedelta() else "-"
    shown = f"UTC{sign}{hours}" + (f":{minutes:02d}" if minutes else "")
    return f"{local:%H:%M:%S} ({shown})" if local.second else f"{local:%H:%M} ({shown})"
