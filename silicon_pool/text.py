"""Text from clients and upstreams made safe to store, log and show.

aiohttp and `http1` decode header bytes that are not UTF-8 as lone surrogates
(`surrogateescape`), so the bytes can be relayed unchanged. Such a string cannot be encoded as
UTF-8: one in an error message, a log row or a key's `last_error` would make every JSON dump of
it fail. Whatever such text goes to, it goes through `clean` first.
"""

from __future__ import annotations

MAX_LOGGED = 200  # characters of a client's model id or path kept in the call log and the stats


def clean(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with anything that is not valid Unicode replaced by U+FFFD."""
    text = text[:limit]
    if text.isascii():
        return text
    try:  # the bytes a client or upstream sent, each one that is not UTF-8 shown as U+FFFD
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no decoder made
        data = text.encode("utf-8", "surrogatepass")
    return data.decode("utf-8", "replace")[:limit]
