"""A table of messy pastes and what each yields."""

from __future__ import annotations

import pytest

from silicon_pool.keyparse import ParsedPaste, parse_keys
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


def _key(length: int, seed: str = "k") -> str:
    """A key whose `length` characters after `sk-` mix upper case, lower case and digits."""
    letters = "".join(make_key(f"{seed}{i}")[3:] for i in range(length // 48 + 1))[:length]
    return "sk-" + "".join(
        c.upper() if i % 3 == 1 else str(ord(c) % 10) if i % 3 == 2 else c for i, c in enumerate(letters)
    )


MIXED = _key(48)


@pytest.mark.parametrize("invisible", ["\ufeff", "\u200b", "\u200c", "\u200d", "\u2060", "\u00ad"])
def test_a_key_with_invisible_characters_inside_is_found_whole(invisible: str) -> None:
    """Chat apps and editors slip zero-width spaces, joiners, BOMs and soft hyphens into long words."""
    broken_up = MIXED[:10] + invisible + MIXED[10:30] + invisible * 2 + MIXED[30:]
    assert parse_keys(f"{invisible}{broken_up}\n{B}") == ParsedPaste([MIXED, B], 0, 0)


def test_keys_keep_every_character_they_have() -> None:
    """Upper case, lower case and digits all belong to a key; none is dropped or splits it."""
    upper_x = "sk-" + "X" * 10 + MIXED[3:20]
    assert parse_keys(f"{MIXED}\n{upper_x}").keys == [MIXED, upper_x]
    assert parse_keys("sk-" + "7" * 30).keys == ["sk-" + "7" * 30]
    assert parse_keys("sk-" + "Q" * 30).keys == ["sk-" + "Q" * 30]
    assert parse_keys("sk-" + "q" * 30).keys == ["sk-" + "q" * 30]


@pytest.mark.parametrize(("length", "found"), [(19, False), (20, True), (21, True), (128, True), (129, False)])
@pytest.mark.parametrize("after", ["", "\n"])
def test_a_key_has_20_to_128_characters_after_its_prefix(length: int, found: bool, after: str) -> None:
    key = _key(length)
    assert parse_keys(key + after) == (ParsedPaste([key], 0, 0) if found else ParsedPaste([], 0, 1))


@pytest.mark.parametrize("extra", ["A", "z", "5"])
def test_a_run_longer_than_a_key_is_not_cut_into_one(extra: str) -> None:
    """128 characters and one more (letter of either case, or digit) is no key, not a key and a stray."""
    assert parse_keys(_key(128) + extra) == ParsedPaste([], 0, 1)


@pytest.mark.parametrize("word", ["ask", "TASK", "Desk", "whisK"])
def test_sk_inside_a_word_is_not_a_key(word: str) -> None:
    """`task-…` is a word that happens to hold `sk-`, not a key glued to a label (digits are labels: `账号1sk-…`)."""
    glued = word[:-2] + MIXED
    assert parse_keys(glued) == ParsedPaste([], 0, 1)
    assert parse_keys(f"1{MIXED}") == ParsedPaste([MIXED], 0, 0)


SEPARATORS = list(" \t\n,，;；、|()（）[]{}<>《》「」\"'`“”‘’:：=")


@pytest.mark.parametrize("sep", SEPARATORS)
def test_broken_keys_apart_are_each_reported(sep: str) -> None:
    """Two broken keys with any separator between them (or a label before one) are two bad entries."""
    assert parse_keys(f"sk-short1{sep}sk-short2") == ParsedPaste([], 0, 2)
    assert parse_keys(f"{A}{sep}key{sep}sk-short{sep}{B}") == ParsedPaste([A, B], 0, 1)


@pytest.mark.parametrize(
    ("run", "reported"),
    [
        ("abcdefghijklmnopqrst", True),
        ("ABCDEFGHIJKLMNOPQRST", True),
        ("12345678901234567890", True),
        ("abcd_efgh_ijkl_mnop_", True),
        ("abcd-efgh-ijkl-mnop-", True),
        ("abcdefghijklmnopqrs", False),  # 19: a word or an id, not a key
    ],
)
def test_a_long_key_like_run_without_prefix_is_reported(run: str, reported: bool) -> None:
    assert parse_keys(f"{A}\n{run}\n") == ParsedPaste([A], 0, int(reported))


def test_dashes_and_digits_after_a_key_are_a_note_not_a_key() -> None:
    """`sk-…----14.00` and a long row of dashes with a balance are notes, however long."""
    assert parse_keys(f"{A}{'-' * 24}14\n{B}{'-' * 30}3.50\n{'-' * 40}") == ParsedPaste([A, B], 0, 0)


def test_digits_glued_before_a_key_are_a_label_not_a_broken_key() -> None:
    """What stands next to a key is judged on its own: the key takes no room in it."""
    assert parse_keys(f"1234567890123456789{A}") == ParsedPaste([A], 0, 0)
