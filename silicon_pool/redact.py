"""Keys never appear whole outside the export and copy routes: mask them, scrub text of them."""

from __future__ import annotations

import re

_KEY_LIKE = re.compile(r"sk-[A-Za-z0-9]{8,}")
_BEARER = re.compile(r"(?i)(bearer[ \t]+)([^\s\"',;]+)")
_KEY_LIKE_BYTES = re.compile(rb"sk-[A-Za-z0-9]{8,}")
_BEARER_BYTES = re.compile(rb"(?i)(bearer[ \t]+)([^\s\"',;]+)")
_ELLIPSIS = "…".encode()


def mask(secret: str) -> str:
    """`sk-abcd…wxyz`: enough to recognise a key, never enough to use it."""
    return f"{secret[:7]}…{secret[-4:]}" if len(secret) > 14 else "…"


def _mask_bytes(secret: bytes) -> bytes:
    return secret[:7] + _ELLIPSIS + secret[-4:] if len(secret) > 14 else _ELLIPSIS


def scrub(text: str) -> str:
    """`text` with bearer tokens and anything shaped like a key masked (upstreams may echo the key they got)."""
    text = _BEARER.sub(lambda m: m.group(1) + mask(m.group(2)), text)
    return _KEY_LIKE.sub(lambda m: mask(m.group()), text)


def scrub_bytes(body: bytes) -> bytes:
    """`scrub` for a body that may not be text at all."""
    body = _BEARER_BYTES.sub(lambda m: m.group(1) + _mask_bytes(m.group(2)), body)
    return _KEY_LIKE_BYTES.sub(lambda m: _mask_bytes(m.group()), body)
