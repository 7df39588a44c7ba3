"""SiliconFlow's answers in the shape OpenAI's clients read, where the two differ.

Errors come flat (`{"code": 20012, "message": …}`) or as a bare string, where the SDKs read only
an `error` object (the Node SDK then shows `400 status code (no body)`); an image answer lists
`images` where the SDKs read `data`. Only these answers are parsed: every other body passes as
it came.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from .redact import scrub
from .text import clean

MAX_MESSAGE = 2000  # characters of an upstream's error message relayed
NO_BALANCE = 30001  # SiliconFlow's code for an account out of balance


def error_type(status: int, code: object) -> str:
    """The OpenAI error type an SDK maps to the right exception for this status."""
    if status == 402 or (code == NO_BALANCE and status in (402, 403)):
        return "insufficient_quota"
    if status in (401, 403):
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _code(value: object) -> str | None:
    """SiliconFlow's numeric code as OpenAI's string code (`20012` → `"20012"`)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    return scrub(clean(str(value), 64))


def openai_error_body(status: int, body: bytes) -> bytes | None:
    """`body` of a non-2xx answer re-wrapped as `{"error": {message, type, code}}`, no key in it; None
    when it already is one. Plain text (an older 429, a proxy's HTML page) becomes the message.
    Keys are masked once the JSON is decoded: one written with escapes (`\u0073k-…`) hides from a
    search of the bytes."""
    try:
        answer: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer = body.decode("utf-8", "replace")
    if isinstance(answer, dict):
        if isinstance(answer.get("error"), dict):
            return None
        message, code = answer.get("message"), answer.get("code")
        if not isinstance(message, str):
            message = answer.get("error")
    else:
        message, code = answer, None
    if not isinstance(message, str):
        message = body.decode("utf-8", "replace")
    text = scrub(clean(message.strip(), MAX_MESSAGE)) or f"HTTP {status} from the upstream"
    return orjson.dumps({"error": {"message": text, "type": error_type(status, code), "code": _code(code)}})


def openai_images(body: bytes) -> bytes:
    """An image answer that also holds OpenAI's `created` and `data` (SDKs read `data[0].url`),
    SiliconFlow's own fields kept for clients that read them."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    images = answer.get("images") if isinstance(answer, dict) else None
    if not isinstance(images, list):
        return body
    data = [{"url": image} if isinstance(image, str) else image for image in images if isinstance(image, str | dict)]
    return orjson.dumps({"created": int(time.time()), "data": data, **answer})
