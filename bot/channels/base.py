"""What every callback channel shares: signature and timestamp checks, safe XML parsing.

The exception tree:

    CallbackError            the callback cannot be accepted; nothing is stored
    ├── CallbackRejected     403: bad signature, stale timestamp, undecryptable body
    └── MalformedCallback    400: not XML, wrong shape
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

Clock = Callable[[], float]


class CallbackError(Exception):
    status = 400


class CallbackRejected(CallbackError):
    status = 403


class MalformedCallback(CallbackError):
    status = 400


def parse_xml(body: bytes | str) -> dict[str, Any]:
    """The <xml> root's children as a dict of strings (nested elements as dicts); DTDs and entities are refused."""
    if not body:
        raise MalformedCallback("empty body")
    try:
        root = fromstring(body, forbid_dtd=True)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise MalformedCallback(f"not valid XML: {exc}") from None
    if root.tag != "xml":
        raise MalformedCallback("missing <xml> root element")
    return {child.tag: _element_value(child) for child in root}


def _element_value(element: Any) -> Any:
    if len(element):
        return {child.tag: _element_value(child) for child in element}
    return element.text or ""


def sha1_signature(*parts: str) -> str:
    """WeChat's signature: SHA-1 of the sorted parts, concatenated."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def check_signature(expected: str, *parts: str) -> None:
    if not expected or not hmac.compare_digest(expected, sha1_signature(*parts)):
        raise CallbackRejected("bad signature")


def check_timestamp(timestamp: str, tolerance_s: int, clock: Clock = time.time) -> None:
    """Refuse replays of old callbacks; a tolerance of 0 turns the check off."""
    try:
        value = int(timestamp)
    except (TypeError, ValueError):
        raise CallbackRejected("timestamp missing or not a number") from None
    if tolerance_s and abs(clock() - value) > tolerance_s:
        raise CallbackRejected("timestamp outside the tolerance")


def required(query: Mapping[str, str], *names: str) -> list[str]:
    missing = [name for name in names if not query.get(name)]
    if missing:
        raise CallbackRejected("missing query parameters: " + ", ".join(missing))
    return [query[name] for name in names]


def text_of(message: Mapping[str, Any], key: str) -> str:
    value = message.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedCallback(f"<{key}> is not a text element")
    return value
