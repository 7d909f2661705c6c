"""What the FAQ could learn and how its entries do, read from the customers' timelines.

A turn's events are written together with one `created_at` (crm_store.customers.write_timeline),
so "the same turn" is the same customer and the same time, and "after" is a later time.

    unanswered   what customers asked that nothing answered: every `turn.unanswered` (the fallback
                 answered), and every `faq.offered` followed by a handoff within FOLLOW_UP (the choices
                 were not it); each marked when a person was asked for in its turn or within FOLLOW_UP
    faq_stats    per entry: answered, chosen from an offer, offered, and how often an answer was
                 followed within FOLLOW_UP by a handoff or by the same entry again ("did not help")

Both are one query each (plus one for the offers' entries), counted by the database; the
follow-ups are correlated EXISTS on the timeline's customer index. Only "ten minutes later"
is spelled per dialect (`_later`), as reports.week_of does for weeks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, exists, func, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from crm_store.faq_queries import FAQ_ANSWERED, FAQ_OFFERED, TURN_UNANSWERED
from crm_store.models import TimelineEvent, as_utc
from crm_store.reports import rate, window

FOLLOW_UP = timedelta(minutes=10)  # a handoff or the same question this soon after: the answer did not help
HANDOFF_KINDS = ("handoff.opened", "handoff.requested")  # the desk opened one; a flow or the FAQ asked for one
FAQ_REPEATED = "faq_repeated"  # the reason of the FAQ's own handoff when an entry is asked again too soon
CHOICE = "choice"  # faq.answered's source when the customer picked the entry from an offer
MAX_TEXTS = 20_000  # unanswered texts read at most (the newest): plenty to cluster

Event = type[TimelineEvent]
Condition = Callable[[Event], ColumnElement[bool]]


@dataclass(frozen=True)
class Unanswered:
    text: str
    customer_id: int
    at: datetime
    kind: str  # turn.unanswered (the fallback answered) | faq.offered (offered choices, then a handoff)
    handed_off: bool  # a person was asked for in the same turn or within FOLLOW_UP


@dataclass(frozen=True)
class FaqEntryStats:
    entry: str
    asked: int  # answered + chosen: times the entry's answer was given
    answered: int  # at once (rasa, cache or rules were sure)
    chosen: int  # picked by the customer from an offer
    offered: int  # times the entry was among the choices offered
    followed_by_handoff: int  # answers followed by a handoff of the same customer within FOLLOW_UP
    repeated: int  # answers followed by the same entry (or the FAQ's repeat handoff for it) within FOLLOW_UP
    not_helped: int  # answers followed by either: the answer did not help (a proxy)
    not_helped_rate: float | None  # not_helped / asked


def _later(session: AsyncSession, column: Any, delay: timedelta = FOLLOW_UP) -> ColumnElement[Any]:
    """`column + delay` in the dialect's own terms (SQLite keeps times as text: strftime's form compares)."""
    if session.get_bind().dialect.name == "postgresql":
        return column + delay  # type: ignore[no-any-return]
    return func.strftime("%Y-%m-%d %H:%M:%f", column, f"+{int(delay.total_seconds())} seconds")


def _follows(session: AsyncSession, first: Event, kinds: Sequence[str], where: Condition | None = None,
             same_turn: bool = False) -> ColumnElement[bool]:
    """An event of `kinds` of `first`'s customer after it (or in its turn) within FOLLOW_UP, and `where` of it."""
    then = aliased(TimelineEvent)
    start = then.created_at >= first.created_at if same_turn else then.created_at > first.created_at
    conditions = [then.customer_id == first.customer_id, then.kind.in_(kinds), start,
                  then.created_at <= _later(session, first.created_at)]
    return exists().where(*conditions, *([where(then)] if where is not None else []))


def _in_turn_of(first: Event, kind: str, where: Condition) -> ColumnElement[bool]:
    """An event of `kind` in `first`'s turn (same customer, same time), and `where` of it."""
    then = aliased(TimelineEvent)
    return exists().where(then.customer_id == first.customer_id, then.created_at == first.created_at,
                          then.kind == kind, where(then))


async def unanswered(session: AsyncSession, since: datetime | None, limit: int = MAX_TEXTS, *,
                     until: datetime | None = None, person_intents: Sequence[str] = ("want_human", "complain"),
                     ) -> list[Unanswered]:
    """The texts nothing answered in the window, newest first: fallbacks, and offers a handoff followed.

    A fallback in whose own turn the desk handed off for one of `person_intents` is left out: the
    customer asked for a person ("转人工"), which is no question for the FAQ.
    """
    miss = aliased(TimelineEvent)
    handed_off = _follows(session, miss, HANDOFF_KINDS, same_turn=True)
    asked_for_person = _in_turn_of(miss, "handoff.opened",
                                   lambda then: then.data["reason"].as_string().in_(person_intents))
    text = miss.data["text"].as_string()
    rows = await session.execute(
        select(text, miss.customer_id, miss.created_at, miss.kind, handed_off)
        .where(miss.kind.in_((TURN_UNANSWERED, FAQ_OFFERED)), *window(miss.created_at, since, until), text != "",
               or_(miss.kind == TURN_UNANSWERED, handed_off), not_(asked_for_person))
        .order_by(miss.id.desc()).limit(limit))
    return [Unanswered(said, customer_id, as_utc(at), kind, bool(followed))
            for said, customer_id, at, kind, followed in rows.tuples() if said.strip()]


async def faq_stats(session: AsyncSession, since: datetime | None, until: datetime | None = None
                    ) -> list[FaqEntryStats]:
    """Per entry answered or offered in the window: how often, and how often it did not help; most asked first."""
    answer = aliased(TimelineEvent)
    entry = answer.data["entry"].as_string()
    handoff = _follows(session, answer, HANDOFF_KINDS)
    repeat = or_(
        _follows(session, answer, (FAQ_ANSWERED,), lambda then: then.data["entry"].as_string() == entry),
        _follows(session, answer, ("handoff.requested",), lambda then: and_(
            then.data["reason"].as_string() == FAQ_REPEATED, then.data["faq"].as_string() == entry)))
    is_choice = answer.data["source"].as_string() == CHOICE

    def counted(condition: ColumnElement[bool]) -> ColumnElement[int]:
        return func.count(case((condition, 1)))

    rows = await session.execute(
        select(entry, func.count(), counted(is_choice), counted(handoff), counted(repeat),
               counted(or_(handoff, repeat)))
        .where(answer.kind == FAQ_ANSWERED, entry.is_not(None), *window(answer.created_at, since, until))
        .group_by(entry))
    offered = await _offered(session, since, until)
    stats = [FaqEntryStats(name, asked, asked - chosen, chosen, offered.pop(name, 0), handoffs, repeats, either,
                           rate(either, asked))
             for name, asked, chosen, handoffs, repeats, either in rows.tuples()]
    stats += [FaqEntryStats(name, 0, 0, 0, times, 0, 0, 0, None) for name, times in offered.items()]
    return sorted(stats, key=lambda line: (-line.asked, -line.offered, line.entry))


async def _offered(session: AsyncSession, since: datetime | None, until: datetime | None) -> Counter[str]:
    """Times each entry was among the choices offered: the lists are read, a few per customer who was unsure."""
    lists = await session.scalars(select(TimelineEvent.data["entries"]).where(
        TimelineEvent.kind == FAQ_OFFERED, *window(TimelineEvent.created_at, since, until)))
    return Counter(str(entry) for entries in lists if isinstance(entries, list) for entry in entries)
