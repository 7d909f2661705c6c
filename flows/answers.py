"""Is this a valid answer to an `ask` step? Typed values are checked and normalised here.

Customers type phone numbers with spaces, dashes, full-width digits or a +86 prefix,
numbers as digits or in Chinese, and choices as the button, its number or its text:
all of those are answers; anything else is a retry with the step's re-prompt.

An ask that expects a photo (voice, video, file, any media, a location) takes a message carrying
that part, whatever its words, and nothing else: a text is a retry as for other expects. The slot
holds a reference, not the bytes: `media:<channel>:<media_id>` (the media_items row the media
fetcher stores it under: its channel and WeChat's media id), or "lat,lng label" for a location.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from core.content import Content, Location, Media
from flows.model import MEDIA_EXPECTS, Ask, MenuChoice
from nlu.text import cache_form

_PHONE = re.compile(r"^(?:\+?86)?(1[3-9]\d{9})$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[a-z]{2,24}$", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d{1,12}(?:\.\d{1,6})?")
_CHINESE_DIGITS = {"零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_CHINESE_NUMERALS = set(_CHINESE_DIGITS) | {"十"}
UNITS = "个件份位号 "  # "3个", "两份": a number with its measure word
INTENT_ANSWER_MIN_CONFIDENCE = 0.5
MEDIA_REFERENCE = "media"  # the prefix of a slot that refers to a stored photo, voice note, video or file


@dataclass(frozen=True)
class Answer:
    value: str
    goto: str = ""  # a choice that jumps somewhere


def normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip()


def answer_to(step: Ask, text: str, menu_id: str, intent: str, confidence: float,
              content: Content | None = None, channel: str = "") -> Answer | None:
    """The answer `step` accepts in this message, or None when it has to ask again.

    `content` and `channel` are the message's part and channel: what a media or location ask takes."""
    if step.expect in MEDIA_EXPECTS:
        return content_answer(step.expect, content, channel)
    text = normalise(text)
    if step.expect == "choice":
        return _choice(step.choices, text, menu_id)
    if step.expect == "intent":
        ok = intent in step.intents and confidence >= INTENT_ANSWER_MIN_CONFIDENCE
        return Answer(intent) if ok else None
    if not text:
        return None
    if step.expect == "phone":
        match = _PHONE.match(re.sub(r"[\s\-()]", "", text))
        return Answer(match.group(1)) if match else None
    if step.expect == "email":
        return Answer(text.lower()) if _EMAIL.match(text) else None
    if step.expect == "number":
        number = parse_number(text)
        return Answer(number) if number is not None else None
    return Answer(text[:500])


def is_typed_answer(step: Ask, text: str, menu_id: str) -> bool:
    """Is the whole message a value of the step's type: a choice (its button, number or label), a phone
    number, a number or an email? Then no intent could make it mean anything else: it needs no parse."""
    if step.expect in ("text", "intent"):
        return False
    if step.expect == "number":
        bare = normalise(text).replace(",", "").strip(UNITS)
        return bool(_NUMBER.fullmatch(bare)) or (bool(bare) and len(bare) <= 3 and set(bare) <= _CHINESE_NUMERALS)
    return answer_to(step, text, menu_id, "", 0.0) is not None


def content_answer(expect: str, content: Content | None, channel: str) -> Answer | None:
    """The slot value of a message carrying what a media or location ask expects, or None."""
    if content is None or content.kind not in MEDIA_EXPECTS[expect]:
        return None
    if isinstance(content, Location):
        label = content.label or content.address
        return Answer(f"{content.latitude},{content.longitude}" + (f" {label[:200]}" if label else ""))
    if isinstance(content, Media) and content.media_id:
        return Answer(media_reference(channel, content.media_id))
    return None


def media_reference(channel: str, media_id: str) -> str:
    """What a slot holds for a photo, voice note, video or file: stable, short, and enough for the rep side
    to find the media_items row (its `channel` and `media_id`) and so the stored bytes."""
    return f"{MEDIA_REFERENCE}:{channel}:{media_id}"


def parse_media_reference(value: str) -> tuple[str, str] | None:
    """(channel, media_id) of a `media_reference`, or None when `value` is not one."""
    prefix, _, rest = value.partition(":")
    channel, _, media_id = rest.partition(":")
    return (channel, media_id) if prefix == MEDIA_REFERENCE and channel and media_id else None


def parse_number(text: str) -> str | None:
    """"12", "１２", "12.5", "三", "十二", "二十" → the number as text; None when none is there."""
    match = _NUMBER.search(text.replace(",", ""))
    if match:
        return match.group(0)
    digits = text.strip(UNITS)
    if digits and set(digits) <= _CHINESE_NUMERALS and len(digits) <= 3:
        return str(_chinese_number(digits))
    return None


def _chinese_number(text: str) -> int:
    if "十" not in text:
        return int("".join(str(_CHINESE_DIGITS[ch]) for ch in text))
    tens, _, ones = text.partition("十")
    return (_CHINESE_DIGITS[tens] if tens else 1) * 10 + (_CHINESE_DIGITS[ones] if ones else 0)


def _choice(choices: tuple[MenuChoice, ...], text: str, menu_id: str) -> Answer | None:
    if menu_id:
        chosen = next((choice for choice in choices if choice.id == menu_id), None)
        return Answer(chosen.id, chosen.goto) if chosen else None
    number = parse_number(text) if len(text) <= 4 else None
    if number is not None and number.isdigit() and 1 <= int(number) <= len(choices):
        chosen = choices[int(number) - 1]
        return Answer(chosen.id, chosen.goto)
    wanted = cache_form(text)
    for choice in choices:
        if wanted and wanted in (cache_form(normalise(choice.text)), cache_form(choice.id)):  # both sides normalised
            return Answer(choice.id, choice.goto)
    return None
