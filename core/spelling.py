"""Suggestions for a mistyped name: "unknown tag 意像 (did you mean 意向?)"."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def did_you_mean(word: str, options: Sequence[str]) -> str:
    cutoff = 0.5 if len(word) <= 3 else 0.6  # 意像 → 意向 is one character in two
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]}?)" if close else ""
