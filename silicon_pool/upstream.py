"""The admin's HTTP client to SiliconFlow, the headers a proxied request sheds, and what the
upstream's error answers mean for a key. Proxied requests go through `http1.Http1Client`."""

from __future__ import annotations

import enum

import aiohttp
import orjson

from .redact import scrub
from .text import clean

# Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus those the proxy owns:
# the key goes in Authorization, the proxy frames the body and picks the encoding (gzip, undone
# before the answer is relayed, so usage can be read from it), the admin's cookie stays here.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# The body is already read, so a client's `Expect: 100-continue` is answered by the proxy, not passed on.
DROP_FROM_CLIENT = HOP_BY_HOP | {"host", "authorization", "content-length", "accept-encoding", "cookie", "expect"}
# An answer in an encoding the proxy did not ask for is relayed as it is, with its Content-Encoding.
# Who may read an answer, and how a browser treats it, is the proxy's to say (proxy.CONTAINED,
# proxy.CORS), whatever case the upstream writes them in.
DROP_FROM_UPSTREAM = HOP_BY_HOP | {
    "content-length",
    "set-cookie",
    "server",
    "date",
    "content-security-policy",
    "x-content-type-options",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
}


def make_session() -> aiohttp.ClientSession:
    """The admin's pooled client (balance checks, the model list): no connection cap, no cookies kept."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=True,
    )


class Outcome(enum.Enum):
    """What an upstream error answer says about the key that got it."""

    INVALID = "invalid"  # 401: the key is dead; keep it, never pick it
    NO_BALANCE = "no_balance"  # 402/403 code 30001: the account's keys move to the free tier
    RATE_LIMITED = "rate_limited"  # 429: the account's budget for the model is spent; rest the pair
    BUSY = "busy"  # 503/504: nothing wrong with the key; rest it for the model and try another
    RETRY = "retry"  # 500/502: the upstream stumbled; try another key, blame none
    CLIENT = "client"  # the request itself is wrong: no key would help


def error_code(body: bytes) -> int | None:
    """SiliconFlow's flat `{"code": …}`, if the body has one."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    code = answer.get("code") if isinstance(answer, dict) else None
    return code if isinstance(code, int) else None


def classify(status: int, body: bytes) -> Outcome:
    if status == 401:
        return Outcome.INVALID
    if status in (402, 403) and error_code(body) == 30001:
        return Outcome.NO_BALANCE
    if status == 429:
        return Outcome.RATE_LIMITED
    if status in (503, 504):
        return Outcome.BUSY
    if status in (500, 502):
        return Outcome.RETRY
    return Outcome.CLIENT


def describe(status: int, body: bytes) -> str:
    """A short, key-free line for last_error and the call log."""
    text = body[:300].decode("utf-8", "replace")
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    else:
        if isinstance(answer, dict):
            inner = answer.get("error")
            message = inner.get("message") if isinstance(inner, dict) else answer.get("message")
            if isinstance(message, str):
                text = message
        elif isinstance(answer, str):
            text = answer
    return scrub(clean(f"HTTP {status}: {text.strip()}", 200))


def describe_exception(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "upstream timed out"
    return scrub(clean(f"upstream connection failed: {type(exc).__name__}: {exc}", 200))
