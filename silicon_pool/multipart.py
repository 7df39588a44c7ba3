"""One text field of a `multipart/form-data` body (RFC 7578), read without copying the body.

Uploads (`audio/transcriptions`) name their model in a form field, and the call log, the free
token's rule and the rests need it. The body is forwarded as it came; this only looks: part
headers are read within a bound, part contents are skipped by searching for the next boundary.
The upstream parses the body its own way, so a value is read only from a plain body, where any
parser reads the same: each delimiter line exact, the closing one present, at most MAX_PARTS
parts with short headers, and the field named once, by one quoted `name=` (anything else that
names it, or a field sent twice, and it counts as absent: the upstream might read another value).
"""

from __future__ import annotations

import re

MAX_PARTS = 64  # parts looked at; real uploads have a handful
MAX_PART_HEADERS = 2048  # bytes of one part's header block
_BCHARS = r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]"  # RFC 2046: at most 70, no space last
_BOUNDARY = re.compile(rf';\s*boundary=(?:"({_BCHARS})"|([0-9A-Za-z\'+_\-.]{{1,70}}))\s*(?:;|$)', re.I)
_NAME = re.compile(rb'(?im)^content-disposition:[ \t]*form-data[ \t]*;(?:[^\r\n]*;)?[ \t]*name="([^"\r\n]*)"')
_ANY_NAME = re.compile(rb'(?i)[;\s]name\*?[ \t]*=[ \t]*("[^"\r\n]*"?|[^;\s]*)')  # every way a header may name one


def boundary(content_type: str | None) -> bytes | None:
    """The boundary a `multipart/form-data` Content-Type names once, else None."""
    if content_type is None or content_type[:19].lower() != "multipart/form-data":
        return None
    found = _BOUNDARY.search(content_type)
    if found is None or content_type.lower().count("boundary") != 1:
        return None
    return (found.group(1) or found.group(2)).encode()


def form_field(body: bytes, delimiter: bytes, name: str, limit: int) -> bytes | None:
    """The value of the one part called `name`, if the body is plain and it is there once, at most
    `limit` bytes long (longer: the first `limit + 1` bytes, for the caller to refuse)."""
    wanted = name.encode()
    dash = b"--" + delimiter
    start = body.find(dash)
    if start < 0 or (start > 0 and body[start - 2 : start] != b"\r\n"):
        return None
    found: bytes | None = None
    for _ in range(MAX_PARTS):
        after = start + len(dash)
        if body.startswith(b"--", after):  # the closing delimiter: the walk is done
            return found
        if not body.startswith(b"\r\n", after):  # no delimiter line, or one parsers may read otherwise
            return None
        head_end = body.find(b"\r\n\r\n", after, after + MAX_PART_HEADERS)
        next_part = body.find(b"\r\n" + dash, head_end + 4) if head_end >= 0 else -1
        if next_part < 0:
            return None
        named = [n.group(1).strip(b'"') for n in _ANY_NAME.finditer(body, after, head_end + 2)]
        if any(wanted in n.lower() for n in named):
            header = _NAME.search(body, after, head_end + 2)
            if found is not None or len(named) != 1 or header is None or header.group(1) != wanted:
                return None
            found = body[head_end + 4 : min(next_part, head_end + 4 + limit + 1)]
        start = next_part + 2
    return None
