"""Customer text made safe and canonical before it reaches Rasa or the cache.

Why here and not in Rasa: Rasa treats a message that starts with "/" as an
intent with entities (`/want_human{"phone":"1"}`), so customer text must be
neutralised before it is sent; and the cache needs one canonical form so that
"在吗", " 在吗 " and "在吗\u200b" share one entry.
"""

from __future__ import annotations

import re
import unicodedata

# Rasa's INTENT_MESSAGE_PREFIX. NFKC turns the full-width "／" into this too.
RASA_COMMAND_PREFIX = "/"

# Control, format (zero-width, bidi), surrogate, private-use and unassigned code
# points: invisible to the reader, and able to split the cache or the tokens.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
_SPACES = re.compile(r"\s+")
# "好好好好好好好好" means what "好好好好" means; digits are left alone (phone numbers).
_RUNS = re.compile(r"(\D)\1{4,}")


def clean(text: str, max_chars: int) -> str:
    """Text as Rasa will see it: NFKC, visible characters, single spaces, cut, no "/" command.

    The result never starts with "/" even after Rasa's own `strip()`, so no
    customer can choose an intent or inject entities.
    """
    if not isinstance(text, str):
        text = str(text)
    # Cut early so a 10,000-character message costs no more than a short one.
    text = text[: max_chars * 4]
    text = unicodedata.normalize("NFKC", text)
    text = _SPACES.sub(" ", "".join(ch for ch in text if _visible(ch))).strip()
    while text.startswith(RASA_COMMAND_PREFIX):
        text = text.lstrip(RASA_COMMAND_PREFIX).strip()
    return _RUNS.sub(r"\1\1\1\1", text)[:max_chars].strip()


def _visible(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) not in _DROPPED_CATEGORIES


def looks_like_junk(cleaned: str) -> bool:
    """True for mojibake and binary decoded as text: mostly characters no customer types.

    Chinese, ASCII, punctuation and emoji are what customers send; a message
    made mostly of anything else (Latin-1 soup, replacement characters, box
    drawing) is answered as out_of_scope without a round trip to Rasa.
    """
    if not cleaned:
        return True
    typed = sum(1 for ch in cleaned if _typed_by_customers(ch))
    return typed * 2 < len(cleaned)


def _typed_by_customers(ch: str) -> bool:
    code = ord(ch)
    return (
        code < 0x80
        or 0x4E00 <= code <= 0x9FFF  # CJK unified ideographs
        or 0x3400 <= code <= 0x4DBF  # extension A (rare and traditional characters)
        or 0x3000 <= code <= 0x303F  # CJK punctuation
        or 0xFF00 <= code <= 0xFFEF  # full-width forms
        or 0x2000 <= code <= 0x2BFF  # punctuation, arrows, symbols, dingbats
        or code >= 0x1F000  # emoji
    ) and code != 0xFFFD


def cache_form(cleaned: str) -> str:
    """The cache key's text: case and inner spaces do not change an intent."""
    return cleaned.casefold().replace(" ", "")
