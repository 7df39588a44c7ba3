"""Pull API keys out of whatever a user pastes.

Users paste lists exported from other tools: one key a line or separated by commas (also
full-width), semicolons or spaces; quoted, in JSON arrays, with balance notes such as
`sk-… (余额: ¥14.00)`, `sk-…(14.00)` or `sk-…----14.00`. Notes and labels are dropped; a token
that tries to be a key and is not one is counted as a bad format, so the user hears of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KEY = re.compile(r"sk-[A-Za-z0-9]{20,128}")
# Balance notes: anything in (half- or full-width) brackets, or after a run of dashes.
_NOTES = re.compile(r"\([^()]*\)|（[^（）]*）|\[[^\[\]]*余额[^\[\]]*\]|-{3,}\S*")
_SEPARATORS = re.compile(r"[\s,，;；、|]+")
_QUOTES = "\"'`“”‘’[]{}<>《》「」"
# A token of 20+ key-like characters without the prefix is a key pasted wrong, not a label.
_KEYLIKE = re.compile(r"[A-Za-z0-9_\-]{20,}")


@dataclass(frozen=True, slots=True)
class ParsedPaste:
    keys: list[str]  # distinct, in the order first seen
    repeated: int  # further copies of a key already in this paste
    invalid_format: int


def parse_keys(text: str) -> ParsedPaste:
    keys: dict[str, None] = {}
    repeated = invalid = 0
    for raw in _SEPARATORS.split(_NOTES.sub(" ", text)):
        token = raw.strip(_QUOTES)
        if not token:
            continue
        # `sk-…:14.00` or `sk-…=14` (a note glued on without a space)
        head = re.split(r"[:：=]", token, maxsplit=1)[0].strip(_QUOTES)
        if KEY.fullmatch(head):
            if head in keys:
                repeated += 1
            else:
                keys[head] = None
        elif head.lower().startswith("sk-") or _KEYLIKE.fullmatch(head):
            invalid += 1
    return ParsedPaste(list(keys), repeated, invalid)
