"""The FAQ answers a message no flow took: at once when Rasa is sure, with a choice of the closest entries when not.

    a kf button of an earlier offer (menu id `faq:<entry>`), or the number of one on the OA → that entry
    the message's retrieval intent `faq/<entry>` with confidence ≥ flows.faq_answer_at       → the answer
      (Rasa reads the message as `faq`, or as one of flows.faq_answers_intents; also when a flow weaker
      than flows.faq_priority matched; never an entry a flow takes over: `faq: ID`)
    no flow matched: the closest entries ≥ flows.faq_offer_at (faq or not understood)     → a choice
    otherwise                                                                                → the fallback

The answer is the entry of the turn's release (never text from the model): its text, cards,
tags and stage, and a note on the timeline with the entry, the confidence and where the match
came from (rasa, cache, or rules while Rasa is down). An entry asked again within its
`handoff_if_repeated` did not help: a person takes over.
"""

from __future__ import annotations

from datetime import timedelta

from core.events import MenuItem, Reply
from crm_store import lifecycle as stages
from crm_store import tags
from crm_store.faq_queries import FAQ_ANSWERED, FAQ_OFFERED, answered_since, last_offer
from crm_store.lifecycle import Lifecycle
from crm_store.models import utcnow
from flows.faq_model import FaqBook, FaqEntry
from flows.settings import FlowSettings
from flows.turn import Turn
from nlu.intent import FALLBACK_INTENT, RETRIEVAL_INTENT

CHOICE_PREFIX = "faq:"  # a kf menu item's id: the entry the customer picked
OFFER_HEAD = "您是想问哪一个？点一下（或回复数字）我马上告诉您："
REPEAT_HANDOFF = "这个问题我请同事来帮您看看，正在为您转接人工客服，请稍候。"


class FaqAnswerer:
    def __init__(self, settings: FlowSettings, lifecycle: Lifecycle) -> None:
        self.settings = settings
        self.lifecycle = lifecycle

    async def chosen(self, turn: Turn, faq: FaqBook) -> bool:
        """The customer picked an entry the bot offered (a kf button): answered, whatever else matches the text."""
        menu_id = turn.event.menu_id
        entry = faq.get(menu_id.removeprefix(CHOICE_PREFIX)) if menu_id.startswith(CHOICE_PREFIX) else None
        if entry is None:
            return False
        await self.answer(turn, entry, 1.0, "choice")
        return True

    async def take(self, turn: Turn, faq: FaqBook, unsure: bool = True) -> bool:
        """A message no flow took (`unsure`: then an offered entry's number or a choice of the closest too),
        or only a weaker one: a sure match."""
        if not faq or not turn.is_message:
            return False
        picked = await self._numbered_choice(turn, faq) if unsure else None
        if picked is not None:
            await self.answer(turn, picked, 1.0, "choice")
            return True
        intent = turn.intent
        match = intent.faq if intent is not None else None
        if intent is None or match is None:
            return False
        entry = faq.get(intent.sure_faq_entry(self.settings.faq_answer_at, self.settings.faq_answers_intents) or "")
        if entry is not None:
            await self.answer(turn, entry, match.confidence, intent.source)
            return True
        closest = [faq.entries[e] for e, confidence in match.ranking
                   if e in faq.entries and confidence >= self.settings.faq_offer_at][: self.settings.faq_offer_max]
        asked = intent.name in (RETRIEVAL_INTENT, FALLBACK_INTENT, *self.settings.faq_answers_intents)
        if unsure and closest and asked:
            self._offer(turn, closest, match.confidence)
            return True
        return False

    async def answer(self, turn: Turn, entry: FaqEntry, confidence: float, source: str) -> None:
        if entry.handoff_if_repeated_s and await answered_since(
                turn.session, turn.customer.id, entry.id, utcnow() - timedelta(seconds=entry.handoff_if_repeated_s)):
            turn.reply(REPEAT_HANDOFF)
            turn.note("handoff.requested", reason="faq_repeated", faq=entry.id)
            turn.handoff = "faq_repeated"
            return
        turn.reply(entry.answer)
        turn.effects.extend(Reply(link.title, link=link) for link in entry.links)
        if entry.miniprogram is not None:
            turn.effects.append(Reply(entry.miniprogram.title, miniprogram=entry.miniprogram))
        cause = f"faq:{entry.id}"
        added = await tags.add_tags(turn.session, turn.customer, list(entry.tags), cause) if entry.tags else []
        turn.signals.extend(("tag", name) for name in added)
        if entry.set_stage:
            try:
                if await stages.set_stage(turn.session, turn.customer, entry.set_stage, cause, self.lifecycle):
                    turn.signals.append(("stage", entry.set_stage))
            except stages.StageNotAllowed as exc:
                turn.note("stage.refused", stage=entry.set_stage, reason=str(exc), faq=entry.id)
        turn.note(FAQ_ANSWERED, entry=entry.id, confidence=round(confidence, 3), source=source,
                  text=turn.event.text[:200])

    def _offer(self, turn: Turn, entries: list[FaqEntry], confidence: float) -> None:
        """kf: buttons; the OA: numbered lines (the channel renders a menu so), answered by number."""
        menu = tuple(MenuItem(f"{CHOICE_PREFIX}{entry.id}", entry.title) for entry in entries)
        turn.effects.append(Reply(OFFER_HEAD, menu))
        turn.note(FAQ_OFFERED, entries=[entry.id for entry in entries], confidence=round(confidence, 3),
                  text=turn.event.text[:200])

    async def _numbered_choice(self, turn: Turn, faq: FaqBook) -> FaqEntry | None:
        text = turn.event.text.strip()
        if not (text.isdigit() and len(text) <= 2):
            return None
        since = utcnow() - timedelta(seconds=self.settings.faq_offer_ttl_s)
        offered = await last_offer(turn.session, turn.customer.id, since)
        index = int(text) - 1
        return faq.get(offered[index]) if 0 <= index < len(offered) else None
