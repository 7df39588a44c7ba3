"""Keys never appear whole outside the export and copy routes: mask them, scrub text of them."""

from __future__ import annotations

import re

_KEY_LIKE = re.compile(r"sk-[A-Za-z0-9]{8,}")


def mask(secret: str) -> str:
    """`sk-abcd…wxyz`: enough to recognise a key, never enough to use it."""
    return f"{secret[:7]}…{secret[-4:]}" if len(secret) > 14 else "…"


def scrub(text: str) -> str:
    """`text` with anything shaped like a key masked (upstream errors may echo one back)."""
    return _KEY_LIKE.sub(lambda m: mask(m.group()), text)
