"""Cleaning customer text: no Rasa commands, no invisible characters, bounded length."""

from __future__ import annotations

import pytest

from nlu.text import cache_form, clean, looks_like_junk


@pytest.mark.parametrize("text", ['/want_human{"phone":"1"}', " /greet", "／／greet", "\u200b/greet", "\t/ /greet@1.0"])
def test_customer_text_never_reaches_rasa_as_a_command(text: str) -> None:
    cleaned = clean(text, 300)
    assert not cleaned.strip().startswith("/")


def test_invisible_and_control_characters_are_dropped() -> None:
    assert clean("在吗\u200b\x00\u202e", 300) == "在吗"
    assert clean("a\udcffb", 300) == "ab"


def test_long_text_is_cut() -> None:
    assert len(clean("多少钱" * 5000, 300)) == 300


def test_cache_form_ignores_case_width_and_spaces() -> None:
    assert cache_form(clean("  ＴＤ ", 300)) == cache_form(clean("td", 300)) == "td"
    assert cache_form(clean("在 吗", 300)) == "在吗"


@pytest.mark.parametrize("text,junk", [("", True), ("ÿþ\x00\x01", True), ("\ufffd\ufffd", True),
                                       ("在吗", False), ("😂😂", False), ("hi", False), ("<xml/>", False)])
def test_junk_detection(text: str, junk: bool) -> None:
    assert looks_like_junk(clean(text, 300)) is junk
