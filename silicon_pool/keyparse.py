"""Pull API keys out of whatever a user pastes.

Users paste lists exported from other tools: one key a line or separated by commas (also
full-width), semicolons or spaces; quoted, in JSON arrays, with balance notes such as
`sk-… (余额: ¥14.00)`, `sk-…(14.00)` or `sk-…----14.00`, glued to labels (`key=sk-…`,
`账号1sk-…`). Keys are found wherever they stand; of what is left, a token that tries to be a key
and is not one is counted as a bad format, so the user hears of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KEY = re.compile(r"(?<![A-Za-z])sk-[A-Za-z0-9]{20,128}(?![A-Za-z0-9])")
# Invisible characters that editors and chat apps slip into copied text.
_INVISIBLE = dict.fromkeys(map(ord, "\ufeff\u200b\u200c\u200d\u2060\u00ad"))
_SEPARATORS = re.compile(r"[\s,，;；、|()（）\[\]{}<>《》「」\"'`“”‘’:：=]+")
# What is left of a key pasted wrong: `sk-` with too little or the wrong characters, or a long
# key-like run without the prefix.
_BROKEN = re.compile(r"sk-\S*|[A-Za-z0-9_\-]{20,}", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ParsedPaste:
    keys: list[str]  # distinct, in the order first seen
    repeated: int  # further copies of a key already in this paste
    invalid_format: int


def parse_keys(text: str) -> ParsedPaste:
    text = text.translate(_INVISIBLE)
    keys: dict[str, None] = {}
    repeated = 0
    for match in KEY.finditer(text):
        if match.group() in keys:
            repeated += 1
        else:
            keys[match.group()] = None
    rest = KEY.sub(" ", text)
    invalid = sum(
        1
        for token in _SEPARATORS.split(rest)
        if _BROKEN.fullmatch(token) and not re.fullmatch(r"-+[\d.]*", token)  # `----14.00` is a note
    )
    return ParsedPaste(list(keys), repeated, invalid)
