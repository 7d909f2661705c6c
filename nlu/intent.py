"""What the NLU stage hands to the flow engine: an intent, its confidence, entities, and where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Where an Intent came from (Intent.source):
SOURCE_RASA = "rasa"  # a fresh answer from the Rasa server
SOURCE_CACHE = "cache"  # an earlier Rasa answer for the same normalised text
SOURCE_RULES = "rules"  # the keyword rules: Rasa slow, failing, not ready, or mode "rules";
#                         also empty input, which is never worth a round trip
SOURCES = (SOURCE_RASA, SOURCE_CACHE, SOURCE_RULES)

# Intents beyond the trained ones: Rasa's FallbackClassifier answers this when
# no intent is confident enough, and the rules answer it when nothing matched.
FALLBACK_INTENT = "nlu_fallback"
OUT_OF_SCOPE_INTENT = "out_of_scope"
RETRIEVAL_INTENT = "faq"  # every FAQ entry's questions; the ResponseSelector says which entry (Intent.faq)


@dataclass(frozen=True)
class Entity:
    """A value found in the text, e.g. Entity("phone", "13812345678", 5, 16, "rules")."""

    name: str
    value: str
    start: int = -1
    end: int = -1
    extractor: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"entity": self.name, "value": self.value, "start": self.start, "end": self.end,
                "extractor": self.extractor}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entity:
        return cls(
            name=str(data.get("entity", "")),
            value=str(data.get("value", "")),
            start=int(data.get("start", -1) if data.get("start") is not None else -1),
            end=int(data.get("end", -1) if data.get("end") is not None else -1),
            extractor=str(data.get("extractor") or ""),
        )


@dataclass(frozen=True)
class FaqMatch:
    """The FAQ entry Rasa's ResponseSelector picked for the message (retrieval intent `faq/<entry>`), how
    sure it is, and the closest entries, best first (the bot offers them as choices when it is unsure)."""

    entry: str
    confidence: float
    ranking: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"entry": self.entry, "confidence": round(self.confidence, 4),
                "ranking": [[entry, round(confidence, 4)] for entry, confidence in self.ranking]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaqMatch:
        return cls(str(data["entry"]), float(data["confidence"]),
                   tuple((str(entry), float(confidence)) for entry, confidence in data.get("ranking") or ()))


@dataclass(frozen=True)
class Intent:
    """The NLU result for one message. `source` is one of SOURCES (see above)."""

    name: str
    confidence: float
    entities: tuple[Entity, ...] = field(default=())
    source: str = SOURCE_RASA
    faq: FaqMatch | None = None  # the FAQ entry the message asks, when the model has an FAQ

    def sure_faq_entry(self, answer_at: float, also_intents: tuple[str, ...] = ()) -> str | None:
        """The FAQ entry to answer this message with, or None: the model reads it as an FAQ question (intent
        `faq`, or one of `also_intents`, whose meaning the FAQ holds) and the ResponseSelector picked the
        entry at least `answer_at` sure (flows.faq_answer_at, flows.faq_answers_intents)."""
        asked = self.name == RETRIEVAL_INTENT or self.name in also_intents
        if not asked or self.faq is None or self.faq.confidence < answer_at:
            return None
        return self.faq.entry

    def entity(self, name: str) -> str | None:
        """The first value of entity `name`, or None."""
        return next((e.value for e in self.entities if e.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        data = {"intent": self.name, "confidence": round(self.confidence, 4),
                "entities": [e.to_dict() for e in self.entities], "source": self.source}
        return data | ({"faq": self.faq.to_dict()} if self.faq is not None else {})
