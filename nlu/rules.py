"""Keyword rules: the answer when Rasa cannot give one in time.

The rules live in nlu/project/rules.yml, next to the training data, so that a
new intent or product gets both. They are deliberately simple (exact phrases,
substrings, regular expressions): they must answer in microseconds, and they
are the floor of quality when Rasa is down, not a second model.

The FAQ has keyword rules too (FaqRules), made from its entries: a message that
contains an entry's title or one of its questions is that entry, the longest match
winning, and it beats the intents' keywords unless an intent's exact phrase matched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from nlu.faq_training import FaqRows, normal_form
from nlu.intent import (
    FALLBACK_INTENT,
    OUT_OF_SCOPE_INTENT,
    RETRIEVAL_INTENT,
    SOURCE_RULES,
    Entity,
    FaqMatch,
    Intent,
)
from nlu.text import cache_form

EXACT_CONFIDENCE = 0.9
KEYWORD_CONFIDENCE = 0.7
_QUANTITY_VALUE = re.compile(r"\d{1,4}|[一二两三四五六七八九十百几]{1,3}")
EXACT_SCORE = 1000
MIN_FAQ_PHRASE = 2  # a one-character title or question would be found in every other message


@dataclass(frozen=True)
class _IntentRule:
    name: str
    exact: frozenset[str]
    keywords: tuple[str, ...]  # longest first
    patterns: tuple[re.Pattern[str], ...]

    def score(self, text: str) -> int:
        """0: no match; otherwise bigger is more specific (an exact match beats any keyword)."""
        if text in self.exact:
            return EXACT_SCORE
        best = max((len(k) for k in self.keywords if k in text), default=0)
        if any(p.search(text) for p in self.patterns):
            best = max(best, 3)
        return best


class RuleSet:
    """Intent and entity rules loaded from one YAML file."""

    def __init__(self, data: dict[str, Any], source: str = "<rules>") -> None:
        try:
            self._intents = tuple(_intent_rule(name, spec) for name, spec in data["intents"].items())
            self._entities = {name: re.compile(p, re.IGNORECASE) for name, p in data["entities"].items()}
            self._products = tuple(sorted(data.get("products", []), key=len, reverse=True))
        except (KeyError, TypeError, AttributeError, re.error) as exc:
            raise ValueError(f"{source}: invalid rules: {exc!r}") from exc
        self.intent_names = frozenset(r.name for r in self._intents)

    @classmethod
    def load(cls, path: Path) -> RuleSet:
        with path.open(encoding="utf-8") as handle:
            return cls(yaml.safe_load(handle), str(path))

    def classify(self, cleaned: str, faq: FaqRules | None = None) -> Intent:
        """The best rule match for already-cleaned text (the FAQ's rules included); never raises.

        An FAQ match at least as long as the best intent keyword wins: an entry's question is
        more specific than a keyword, and it comes with an answer. An intent's exact phrase
        ("TD", "人工") still wins.
        """
        if not cleaned:
            return Intent(OUT_OF_SCOPE_INTENT, 1.0, (), SOURCE_RULES)
        text = cache_form(cleaned)
        best_name, best_score = FALLBACK_INTENT, 0
        for rule in self._intents:  # file order breaks ties
            score = rule.score(text)
            if score > best_score:
                best_name, best_score = rule.name, score
        entry, length = faq.match(cleaned) if faq is not None else ("", 0)
        if entry and best_score < EXACT_SCORE and length >= best_score:
            return Intent(RETRIEVAL_INTENT, 1.0, self.entities(cleaned), SOURCE_RULES, faq=FaqMatch(entry, 1.0))
        if best_score == 0:
            confidence = 0.0
        else:
            confidence = EXACT_CONFIDENCE if best_score >= EXACT_SCORE else KEYWORD_CONFIDENCE
        return Intent(best_name, confidence, self.entities(cleaned), SOURCE_RULES)

    def plausible(self, name: str, value: str) -> bool:
        """Whether a value another extractor found fits this entity's pattern (DIET can hallucinate)."""
        if name == "quantity":
            return bool(_QUANTITY_VALUE.fullmatch(value.strip()))
        pattern = self._entities.get(name)
        return pattern is None or bool(pattern.fullmatch(value.strip()))

    def entities(self, cleaned: str) -> tuple[Entity, ...]:
        """Phones, codes, quantities and product names found by pattern and list."""
        found: list[Entity] = []
        for name, pattern in self._entities.items():
            for match in pattern.finditer(cleaned):
                group = 1 if pattern.groups else 0
                value = match.group(group)
                if name in ("group_code", "invite_code"):
                    value = value.upper()
                found.append(Entity(name, value, match.start(group), match.end(group), SOURCE_RULES))
        taken: list[tuple[int, int]] = []
        for product in self._products:
            start = cleaned.find(product)
            while start >= 0:
                end = start + len(product)
                if not any(s < end and start < e for s, e in taken):
                    taken.append((start, end))
                    found.append(Entity("product", product, start, end, SOURCE_RULES))
                start = cleaned.find(product, end)
        return tuple(sorted(found, key=lambda e: e.start))


class FaqRules:
    """The FAQ's keyword rules: each entry's title and questions, in normal form, longest first."""

    def __init__(self, rows: FaqRows = (), titles: Mapping[str, str] | None = None) -> None:
        phrases: dict[str, str] = {}
        for entry, questions, _answer in rows:
            for text in ((titles or {}).get(entry, ""), *questions):
                phrase = normal_form(text)
                if len(phrase) >= MIN_FAQ_PHRASE:
                    phrases.setdefault(phrase, entry)  # the first entry keeps a phrase two share
        self._phrases = sorted(phrases.items(), key=lambda item: len(item[0]), reverse=True)

    def __bool__(self) -> bool:
        return bool(self._phrases)

    def match(self, cleaned: str) -> tuple[str, int]:
        """(entry, length of the phrase found) for the longest title or question in the message, or ("", 0)."""
        text = normal_form(cleaned)
        for phrase, entry in self._phrases:
            if phrase in text:
                return entry, len(phrase)
        return "", 0


def _intent_rule(name: str, spec: dict[str, Any]) -> _IntentRule:
    def words(key: str) -> list[str]:
        return [cache_form(str(w)) for w in spec.get(key) or []]

    return _IntentRule(
        name=name,
        exact=frozenset(words("exact")),
        keywords=tuple(sorted(words("keywords"), key=len, reverse=True)),
        patterns=tuple(re.compile(str(p), re.IGNORECASE) for p in spec.get("patterns") or []),
    )


@lru_cache(maxsize=8)
def load_rules(path: Path) -> RuleSet:
    """The rule set of a project (cached: rules are read once per process)."""
    return RuleSet.load(path)
