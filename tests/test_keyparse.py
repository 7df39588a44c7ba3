"""A table of messy pastes and what each yields."""

from __future__ import annotations

import pytest

from silicon_pool.keyparse import parse_keys
from tests.fake_upstream import make_key

A, B, C = make_key("a"), make_key("b"), make_key("c")


@pytest.mark.parametrize(
    ("paste", "keys", "repeated", "invalid"),
    [
        (f"{A}\n{B}\n{C}", [A, B, C], 0, 0),
        (f"{A},{B}，{C}", [A, B, C], 0, 0),
        (f"{A};{B}；{C}", [A, B, C], 0, 0),
        (f"{A} {B}\t{C}", [A, B, C], 0, 0),
        (f"{A}\r\n\r\n  {B}  \r\n", [A, B], 0, 0),
        (f"{A} (余额: ¥14.00)\n{B}(14.00)\n{C}----14.00", [A, B, C], 0, 0),
        (f"{A}（余额：14）\n{B} [余额 3.2]", [A, B], 0, 0),
        (f"\"{A}\", '{B}', “{C}”", [A, B, C], 0, 0),
        (f'["{A}", "{B}"]', [A, B], 0, 0),
        (f"{A}\n{A}\n{B}\n{A}", [A, B], 2, 0),
        (f"{A}:14.00\n{B}=3", [A, B], 0, 0),
        (f"{A}\nsk-short\nnot-a-key\nsk-has_underscore_in_it_here_1234567", [A], 0, 2),
        (f"{A[3:]}\n{B}", [B], 0, 1),  # a key without its prefix is reported, not guessed at
        ("余额 14.00 ¥ 用户 hello", [], 0, 0),
        ("", [], 0, 0),
        (f"{A.upper().replace('SK-', 'sk-')}", [A.upper().replace("SK-", "sk-")], 0, 0),
        (f"key={A}\n({B})\n账号1{C}", [A, B, C], 0, 0),  # glued to labels and brackets
        (f"\ufeff{A}\u200b\n✅{B}", [A, B], 0, 0),  # invisible characters and emoji
        (f"https://x.example/?k={A}", [A], 0, 0),
        (f"{A}\n{A}:0.5\n{A}----1", [A], 2, 0),
    ],
)
def test_messy_pastes(paste: str, keys: list[str], repeated: int, invalid: int) -> None:
    parsed = parse_keys(paste)
    assert (parsed.keys, parsed.repeated, parsed.invalid_format) == (keys, repeated, invalid)


def test_large_paste_is_linear_enough() -> None:
    many = [make_key(i) for i in range(5000)]
    parsed = parse_keys("\n".join(f"{k} (余额: ¥1.00)" for k in many))
    assert parsed.keys == many
