"""Which flow should start: triggers matched against a message, an entry event or a signal.

When several flows match, the flow with the highest priority wins; among equals, the
more certain match (a menu click or keyword over an intent's confidence), then the
flow listed first. A media trigger takes a message by its content kind (core/content.py) only
when it has no words: a transcribed OA voice note is matched as the text it says. Regular expressions are the loader's bounded patterns: customer
text cannot make one run away.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from flows.model import (
    EventTrigger,
    ExternalTrigger,
    FaqTrigger,
    Flow,
    FlowSet,
    IntentTrigger,
    MediaTrigger,
    StageTrigger,
    TagTrigger,
    TextTrigger,
    Trigger,
    content_named,
)
from flows.patterns import compile_pattern
from nlu.intent import RETRIEVAL_INTENT
from nlu.text import cache_form, clean

if TYPE_CHECKING:
    from core.events import InboundEvent
    from nlu.intent import Intent

MAX_TEXT = 1000
CERTAIN = 1.0


@dataclass(frozen=True)
class Match:
    flow: Flow
    trigger: Trigger | None  # None: a menu click naming the flow
    certainty: float

    def describe(self) -> str:
        trigger = self.trigger
        if trigger is None:
            return "menu" if self.certainty >= CERTAIN else "fallback"
        if isinstance(trigger, IntentTrigger):
            return f"intent:{trigger.intent}"
        if isinstance(trigger, TextTrigger):
            return "keywords" if trigger.keywords else "regex"
        if isinstance(trigger, EventTrigger):
            return f"event:{trigger.event}"
        if isinstance(trigger, ExternalTrigger):
            return f"external:{trigger.name}"
        if isinstance(trigger, FaqTrigger):
            return f"faq:{trigger.entry}"
        if isinstance(trigger, MediaTrigger):
            return f"media:{','.join(trigger.kinds)}"
        return f"stage:{trigger.stage}" if isinstance(trigger, StageTrigger) else f"tag:{trigger.tag}"


@lru_cache(maxsize=1024)
def _pattern(text: str):  # type: ignore[no-untyped-def]
    return compile_pattern(text)


def _best(candidates: list[Match]) -> Match | None:
    if not candidates:
        return None
    order = {id(match.flow): index for index, match in enumerate(candidates)}
    return max(candidates, key=lambda m: (m.flow.priority, m.certainty, -order[id(m.flow)]))


def match_message(flows: FlowSet, text: str, menu_id: str, intent: Intent | None,
                  content_kind: str = "text") -> Match | None:
    """The flow a customer message starts, if any; `content_kind` is the event's ("text", "image"…)."""
    if menu_id and menu_id in flows.flows:
        return Match(flows.flows[menu_id], None, CERTAIN)
    cleaned = clean(text, MAX_TEXT)
    normalised = cache_form(cleaned)
    candidates: list[Match] = []
    for flow in flows.flows.values():
        for trigger in flow.triggers:
            certainty = _message_certainty(trigger, cleaned, normalised, intent, content_kind)
            if certainty is not None:
                candidates.append(Match(flow, trigger, certainty))
                break
    return _best(candidates)


def _message_certainty(trigger: Trigger, cleaned: str, normalised: str, intent: Intent | None,
                       content_kind: str) -> float | None:
    if isinstance(trigger, MediaTrigger):  # words win: a message that says something is read as text
        return CERTAIN if not cleaned and content_kind != "text" and content_named(trigger.kinds, content_kind) else None
    if isinstance(trigger, FaqTrigger):  # the flow takes over the FAQ entry the model picked
        faq = intent.faq if intent is not None else None
        if intent is not None and intent.name == RETRIEVAL_INTENT and faq is not None and faq.entry == trigger.entry:
            return faq.confidence
        return None
    if isinstance(trigger, IntentTrigger):
        if intent is not None and intent.name == trigger.intent and intent.confidence >= trigger.min_confidence:
            return intent.confidence
        return None
    if isinstance(trigger, TextTrigger) and normalised:
        if any(keyword and keyword in normalised for keyword in trigger.keywords):
            return CERTAIN
        if trigger.regex and _pattern(trigger.regex).search(cleaned):
            return CERTAIN
    return None


def match_event(flows: FlowSet, event: InboundEvent) -> Match | None:
    """The flow an entry event (enter_session, contact_added, subscribe, scan…) or an external event starts."""
    if event.kind == "external":
        name = str(event.extra.get("name", ""))
        return _best([Match(flow, trigger, CERTAIN) for flow in flows.flows.values() for trigger in flow.triggers
                      if isinstance(trigger, ExternalTrigger) and trigger.name == name])
    candidates = [
        Match(flow, trigger, CERTAIN + len(trigger.code_prefix) / 100)  # the most specific code wins
        for flow in flows.flows.values()
        for trigger in flow.triggers
        if isinstance(trigger, EventTrigger)
        and trigger.event == event.kind
        and trigger.channel in ("", event.channel)
        and event.scene.startswith(trigger.code_prefix)
    ]
    return _best(candidates)


def match_signal(flows: FlowSet, kind: str, value: str) -> Match | None:
    """The flow a stage change ("stage") or an added tag ("tag") starts."""
    candidates = [
        Match(flow, trigger, CERTAIN)
        for flow in flows.flows.values()
        for trigger in flow.triggers
        if (kind == "stage" and isinstance(trigger, StageTrigger) and trigger.stage == value)
        or (kind == "tag" and isinstance(trigger, TagTrigger) and trigger.tag == value)
    ]
    return _best(candidates)
