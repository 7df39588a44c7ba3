"""Each setting is declared once: its attribute, form field, schema entry, labels and README row
all come from (or are checked against) that one declaration."""

from __future__ import annotations

import re
from html import escape
from pathlib import Path

import aiohttp

from silicon_pool.settings import BY_NAME, SETTINGS, Integer, Number, Settings, Url

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_rows() -> dict[str, list[str]]:
    """The runtime settings table of the README: name -> its cells."""
    section = README.read_text().split("### 运行时设置", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if match := re.match(r"\| `([a-z_]+)` \|(.*)\|\s*$", line):
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def test_every_setting_has_labels_and_help_in_both_languages() -> None:
    assert len(SETTINGS) == len(BY_NAME) >= 13
    for setting in SETTINGS:
        for words in (setting.label, setting.help):
            assert words.zh.strip() and words.en.strip(), setting.name
            assert re.search(r"[\u4e00-\u9fff]", words.zh), f"{setting.name}: the Chinese text has no Chinese"
            assert words.en.isascii() or "¥" in words.en, f"{setting.name}: the English text is not English"


def test_the_readme_table_lists_every_setting_with_its_default() -> None:
    rows = _readme_rows()
    assert list(rows) == [s.name for s in SETTINGS]  # every one, nothing else, in the order of the form
    for setting in SETTINGS:
        default = rows[setting.name][0]
        if isinstance(setting, Integer | Number):
            assert default == f"`{setting.default:g}`", setting.name
        elif (isinstance(setting, Url) and not setting.paths) or setting.kind in ("choice", "zone"):
            assert default == f"`{setting.default}`", setting.name


def test_values_are_plain_attributes_of_one_object() -> None:
    settings = Settings({"max_attempts": 7, "strategy": "no-such-strategy", "unknown": 1})
    assert set(vars(settings)) >= set(BY_NAME)  # read on the hot path without a descriptor call
    assert settings.max_attempts == 7 and settings.strategy == "least_inflight"  # a bad stored value falls back
    assert Settings.max_attempts is BY_NAME["max_attempts"]
    assert settings.as_dict() == {s.name: s.describe()["default"] for s in SETTINGS} | {"max_attempts": 7}


async def test_the_settings_form_and_schema_come_from_the_declarations(admin: aiohttp.ClientSession) -> None:
    async with admin.get("/settings") as resp:
        page = await resp.text()
    fields = dict(re.findall(r'name="([a-z_]+)"[^>]*data-kind="([a-z]+)"', page))
    assert fields == {s.name: s.kind for s in SETTINGS}
    for setting in SETTINGS:  # a choice explains the option chosen instead of itself
        assert escape(setting.label.zh) in page, setting.name
        assert escape(setting.help.zh) in page or setting.kind == "choice", setting.name
    async with admin.get("/api/settings/schema") as resp:
        schema = (await resp.json())["settings"]
    assert [s["name"] for s in schema] == [s.name for s in SETTINGS]
    assert next(s for s in schema if s["name"] == "max_attempts") | {
        "label": None,
        "help": None,
        "help_i18n": None,
    } == {
        "name": "max_attempts",
        "kind": "integer",
        "default": 3,
        "min": 1,
        "max": 20,
        "label": None,
        "help": None,
        "help_i18n": None,
    }
