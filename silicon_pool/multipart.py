"""One text field of a `multipart/form-data` body (RFC 7578), read without copying the body.

Uploads (`audio/transcriptions`) name their model in a form field, and the call log, the free
token's rule and the rests need it. The body is forwarded as it came; this only looks: part
headers are read within a bound, part contents are skipped by searching for the next boundary,
and a field sent twice counts as absent (the upstream might read either one).
"""

from __future__ import annotations

import re

MAX_PARTS = 64  # parts looked at; real uploads have a handful
MAX_PART_HEADERS = 2048  # bytes of one part's header block
_BOUNDARY = re.compile(r';\s*boundary="?([^";]{1,70})"?', re.I)  # RFC 2046: at most 70 characters
_NAME = re.compile(rb'(?im)^content-disposition:[ \t]*form-data[ \t]*;(?:[^\r\n]*;)?[ \t]*name="([^"\r\n]*)"')


def boundary(content_type: str | None) -> bytes | None:
    """The boundary a `multipart/form-data` Content-Type names, else None."""
    if content_type is None or content_type[:19].lower() != "multipart/form-data":
        return None
    found = _BOUNDARY.search(content_type)
    if found is None or not found.group(1).isascii():
        return None
    return found.group(1).encode()


def form_field(body: bytes, delimiter: bytes, name: str, limit: int) -> bytes | None:
    """The value of the one part called `name`, if it is there once and at most `limit` bytes long
    (longer: the first `limit + 1` bytes, for the caller to refuse)."""
    wanted = name.encode()
    dash = b"--" + delimiter
    start = body.find(dash)
    found: bytes | None = None
    for _ in range(MAX_PARTS):
        if start < 0 or body.startswith(b"--", start + len(dash)):  # no more parts, or the closing delimiter
            break
        head_start = body.find(b"\r\n", start + len(dash))
        if head_start < 0:
            break
        head_end = body.find(b"\r\n\r\n", head_start, head_start + MAX_PART_HEADERS)
        if head_end < 0:
            break
        next_part = body.find(b"\r\n" + dash, head_end)
        if next_part < 0:
            break
        header = _NAME.search(body, head_start, head_end + 2)
        if header is not None and header.group(1) == wanted:
            if found is not None:
                return None
            found = body[head_end + 4 : min(next_part, head_end + 4 + limit + 1)]
        start = next_part + 2
    return found
