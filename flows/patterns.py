"""Trigger matching that no customer message can slow down: keywords and RE2 patterns.

Regular expressions in flow files run on every inbound message, so they are
compiled with RE2 (google-re2): matching takes linear time in the text whatever the
pattern, so `(a+)+$` against "a" * 5000 + "!" is as quick as any other. The price:
no backreferences (`\\1`) and no lookaround (`(?=`, `(?<!`); such patterns are
rejected at load time with a clear error, as is a pattern that matches empty text
(it would fire on every message).

Keywords are compared in one normal form, for the keyword and for the message:
NFKC, visible characters only, case-folded, without spaces (`nlu.text.clean` and
`nlu.text.cache_form`, the same as the NLU cache key), so "ＶＩＰ 价格" matches "vip价格".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import re2  # type: ignore[import-untyped,unused-ignore]

from nlu.text import cache_form, clean

MAX_PATTERN_CHARS = 500
MAX_TEXT_CHARS = 2000  # text matched against keywords is cut here, as NLU cuts it
_MAX_MEMORY = 1 << 20  # bytes RE2 may use for one pattern: far more than any sane trigger needs


class PatternError(ValueError):
    """A pattern RE2 cannot compile, or one that would match every message."""


@dataclass(frozen=True)
class Pattern:
    """A compiled trigger pattern; `search` tells whether it occurs anywhere in the text."""

    source: str
    compiled: Any

    def search(self, text: str) -> bool:
        return self.compiled.search(text) is not None


def compile_pattern(text: str) -> Pattern:
    """The pattern compiled with RE2, or a PatternError that quotes it and says why."""
    shown = text if len(text) <= 60 else text[:57] + "..."
    if len(text) > MAX_PATTERN_CHARS:
        raise PatternError(
            f"regex '{shown}' is too long: {len(text)} characters, at most {MAX_PATTERN_CHARS}"
        )
    options = re2.Options()
    options.log_errors = False
    options.max_mem = _MAX_MEMORY
    try:
        compiled = re2.compile(text, options)
    except re2.error as exc:
        reason = (
            exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        )
        raise PatternError(
            f"regex '{shown}' is not valid: {reason} "
            "(patterns are RE2: no backreferences or lookaround, so matching is always fast)"
        ) from None
    if compiled.search("") is not None:
        raise PatternError(f"regex '{shown}' matches empty text, so it would match every message")
    return Pattern(text, compiled)


def normalise(text: str) -> str:
    """The form keywords are stored in and messages are compared in."""
    return cache_form(clean(text, MAX_TEXT_CHARS))
