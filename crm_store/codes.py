"""Share codes: invite codes, group codes, channel codes. Short, random, typed back by people.

Codes use an alphabet without look-alikes (no 0/O, 1/I/L), are shown in upper case
and read case-insensitively. A code typed in a chat may come with spaces, dashes or
full-width characters ("ｋ７Ｐ３ ＱＸ９Ｍ"): `normalise_code` takes all of that away.
A code that rides on a link or QR carries a prefix that says what it is (`inv_…`).
"""

from __future__ import annotations

import re
import secrets
import unicodedata

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
INVITE_PREFIX = "inv_"
GROUP_PREFIX = "gb_"
CHANNEL_PREFIX = "ch_"
INVITE_LENGTH = 8  # 31^8 ≈ 8.5e11: not guessable at any rate WeChat lets a customer type
GROUP_LENGTH = 6  # groups live hours, and joining one costs its members nothing they did not choose

_SEPARATORS = re.compile(r"[\s\-_·.。、,，:：]+")
_CANDIDATE = re.compile(rf"[{ALPHABET}]{{{GROUP_LENGTH},{INVITE_LENGTH}}}")


def new_code(length: int = INVITE_LENGTH) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def normalise_code(text: str) -> str:
    """The code as stored: full-width folded, separators dropped, upper case, prefix removed."""
    folded = unicodedata.normalize("NFKC", text).strip()
    lowered = folded.lower()
    for prefix in (INVITE_PREFIX, GROUP_PREFIX, CHANNEL_PREFIX):
        if lowered.startswith(prefix):
            folded = folded[len(prefix):]
            break
    return _SEPARATORS.sub("", folded).upper()


def is_well_formed(code: str, length: int) -> bool:
    return len(code) == length and all(char in ALPHABET for char in code)


def codes_in(text: str) -> list[str]:
    """Candidate codes in a customer's message ("拼团 k7p-3qx", "我的邀请码是 K7P3QX9M")."""
    folded = unicodedata.normalize("NFKC", text).upper()
    words = re.split(r"[^0-9A-Z\-_ ]+", folded)
    found: list[str] = []
    for word in words:
        squeezed = _SEPARATORS.sub("", word)
        parts = [squeezed] if _CANDIDATE.fullmatch(squeezed) else word.split()
        found.extend(part for part in parts if _CANDIDATE.fullmatch(part))
    return found


def scene_code(scene: str, prefix: str) -> str:
    """The code in an arrival's scene (`inv_K7P3QX9M` → `K7P3QX9M`); empty when the scene is another kind."""
    if scene.lower().startswith(prefix):
        return normalise_code(scene)
    return ""
