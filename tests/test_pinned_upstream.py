"""What an upstream error answer means for the key that got it, and the line the admin reads."""

from __future__ import annotations

import pytest

from silicon_pool.upstream import Outcome, classify, describe, describe_exception, error_code
from tests.fake_upstream import make_key

NO_BALANCE = b'{"code":30001,"message":"Sorry, your account balance is insufficient","data":null}'


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (401, b'{"code":30001}', Outcome.INVALID),  # a dead key, whatever the body says
        (401, b"", Outcome.INVALID),
        (402, NO_BALANCE, Outcome.NO_BALANCE),
        (403, NO_BALANCE, Outcome.NO_BALANCE),
        (403, b'{"code":30011,"message":"forbidden model"}', Outcome.CLIENT),
        (402, b"payment required", Outcome.CLIENT),
        (400, NO_BALANCE, Outcome.CLIENT),
        (404, NO_BALANCE, Outcome.CLIENT),
        (429, b'{"code":50603}', Outcome.RATE_LIMITED),
        (503, b"", Outcome.BUSY),
        (504, b"", Outcome.BUSY),
        (500, b"", Outcome.RETRY),
        (502, b"", Outcome.RETRY),
        (501, b"", Outcome.CLIENT),
        (505, b"", Outcome.CLIENT),
        (400, b'{"message":"bad model"}', Outcome.CLIENT),
        (413, b"", Outcome.CLIENT),
        (499, b"", Outcome.CLIENT),
    ],
)
def test_each_error_answer_means_what_it_says_for_the_key(status: int, body: bytes, outcome: Outcome) -> None:
    assert classify(status, body) is outcome


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (NO_BALANCE, 30001),
        (b'{"code":0}', 0),
        (b'{"code":"30001"}', None),  # a string is no code
        (b'{"code":null}', None),
        (b'{"message":"x"}', None),
        (b"[30001]", None),
        (b"30001", None),
        (b"not json", None),
        (b"", None),
    ],
)
def test_the_error_code_is_siliconflows_flat_integer(body: bytes, code: int | None) -> None:
    assert error_code(body) == code


@pytest.mark.parametrize(
    ("status", "body", "line"),
    [
        (400, b'{"error":{"message":"Model does not exist.","type":"invalid"}}', "HTTP 400: Model does not exist."),
        (403, NO_BALANCE, "HTTP 403: Sorry, your account balance is insufficient"),
        (400, b'{"error":{"message":5},"message":"flat"}', 'HTTP 400: {"error":{"message":5},"message":"flat"}'),
        (400, b'{"error":"plain","message":"flat"}', "HTTP 400: flat"),
        (500, b'"upstream exploded"', "HTTP 500: upstream exploded"),
        (502, b"<html>Bad Gateway</html>\n", "HTTP 502: <html>Bad Gateway</html>"),
        (503, b"  \n", "HTTP 503: "),
        (500, b"[1, 2]", "HTTP 500: [1, 2]"),
        (500, b'{"message":"  padded  "}', "HTTP 500: padded"),
        (500, b"caf\xc3\xa9 \xff", "HTTP 500: café \ufffd"),
    ],
)
def test_an_error_is_described_in_one_short_line(status: int, body: bytes, line: str) -> None:
    assert describe(status, body) == line


def test_an_error_description_is_bounded_and_never_shows_the_key() -> None:
    key = make_key("echoed")
    long = describe(400, b'{"error":{"message":"invalid key ' + key.encode() + b" " + b"x" * 1000 + b'"}}')
    kept = 200 - len("HTTP 400: invalid key ") - len(key) - 1  # cut to 200 first, then the key masked
    assert long == f"HTTP 400: invalid key {key[:7]}…{key[-4:]} " + "x" * kept
    raw = describe(500, b"y" * 1000)
    assert raw == "HTTP 500: " + "y" * 190


def test_a_failed_connection_is_described_without_the_key() -> None:
    key = make_key("in-error")
    assert describe_exception(TimeoutError()) == "upstream timed out"
    line = describe_exception(OSError(f"connect to {key} refused"))
    assert line.startswith("upstream connection failed: OSError: connect to ")
    assert key not in line
    assert len(describe_exception(OSError("z" * 500))) == 200
