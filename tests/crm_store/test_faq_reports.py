"""What the FAQ could learn and how its entries did, read from timelines written as turns write them.

Every event is a TimelineEvent row with its own time: a turn's events share one time (as
crm_store.customers.write_timeline writes them), a follow-up comes minutes later.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from crm_store.customers import resolve_customer
from crm_store.faq_queries import FAQ_ANSWERED, FAQ_OFFERED, TURN_UNANSWERED
from crm_store.faq_reports import FaqEntryStats, faq_stats, unanswered
from crm_store.models import TimelineEvent, utcnow
from tests.conftest import Sessions

START = utcnow().replace(microsecond=0) - timedelta(hours=2)
Event = tuple[int, str, dict[str, Any]]  # minutes after START, kind, data


async def timeline(sessions: Sessions, *customers: list[Event]) -> list[int]:
    """One customer per list of events; their ids."""
    async with sessions() as session, session.begin():
        ids = [(await resolve_customer(session, "wecom", f"wm{n}")).id for n in range(len(customers))]
        for customer_id, events in zip(ids, customers, strict=True):
            session.add_all(TimelineEvent(customer_id=customer_id, kind=kind, data=data,
                                          created_at=START + timedelta(minutes=minutes, microseconds=123_456))
                            for minutes, kind, data in events)
    return ids


def fallback(minutes: int, text: str) -> list[Event]:
    """A message nothing answered: its inbound row and the engine's note, in one turn."""
    return [(minutes, "inbound.message", {"text": text, "intent": "nlu_fallback"}),
            (minutes, TURN_UNANSWERED, {"text": text})]


def opened(minutes: int, reason: str) -> Event:
    return minutes, "handoff.opened", {"handoff": 1, "reason": reason}


def answered(minutes: int, entry: str, source: str = "rasa") -> Event:
    return minutes, FAQ_ANSWERED, {"entry": entry, "confidence": 0.9, "source": source, "text": "…"}


async def test_unanswered_are_fallbacks_and_offers_a_handoff_followed(sessions: Sessions) -> None:
    ids = await timeline(
        sessions,
        # asked, missed; asked for a person two minutes later ("转人工" itself is no FAQ question)
        [*fallback(0, "能开发票吗"), *fallback(2, "转人工"), opened(2, "want_human")],
        # missed, nobody came; later offered choices, then a person was asked for; an offer on its own
        [*fallback(1, "新疆发货吗"), (30, FAQ_OFFERED, {"entries": ["shipping"], "text": "发票抬头怎么改"}),
         (33, "handoff.requested", {"reason": "want_human"}), (50, FAQ_OFFERED, {"entries": ["a"], "text": "运费"})],
        # missed twice: the desk handed off in the second miss's own turn; a handoff 11 minutes after a miss
        [*fallback(3, "保质期多久"), *fallback(4, "保质期几个月"), opened(4, "low_confidence"),
         *fallback(60, "批发价"), opened(71, "want_human")],
        [*fallback(-200, "昨天的问题")],  # before the window
    )
    async with sessions() as session:
        found = await unanswered(session, START - timedelta(minutes=1))
    assert [(item.text, item.customer_id, item.kind, item.handed_off) for item in found] == [
        ("批发价", ids[2], TURN_UNANSWERED, False),
        ("保质期几个月", ids[2], TURN_UNANSWERED, True),
        ("保质期多久", ids[2], TURN_UNANSWERED, True),
        ("发票抬头怎么改", ids[1], FAQ_OFFERED, True),
        ("新疆发货吗", ids[1], TURN_UNANSWERED, False),
        ("能开发票吗", ids[0], TURN_UNANSWERED, True),
    ]
    assert found[0].at == START + timedelta(minutes=60, microseconds=123_456)


async def test_unanswered_keeps_the_newest_within_the_limit_and_window(sessions: Sessions) -> None:
    await timeline(sessions, [*fallback(0, "一"), *fallback(10, "二"), *fallback(20, "三"), *fallback(30, "")])
    async with sessions() as session:
        assert [item.text for item in await unanswered(session, START, 2)] == ["三", "二"]  # "" is no text
        assert [item.text for item in await unanswered(session, None, until=START + timedelta(minutes=5))] == ["一"]
        assert await unanswered(session, START + timedelta(hours=1)) == []


async def test_faq_stats_count_answers_choices_offers_and_what_did_not_help(sessions: Sessions) -> None:
    await timeline(
        sessions,
        [answered(0, "shipping"), answered(5, "shipping")],  # asked again 5 minutes later: a repeat
        [(0, FAQ_OFFERED, {"entries": ["shipping", "invoice"], "text": "发货"}), answered(1, "shipping", "choice"),
         opened(4, "want_human")],  # chosen from an offer, then a person: did not help
        [answered(0, "shipping"), opened(15, "want_human")],  # a handoff 15 minutes later: not counted
        [answered(0, "shipping", "cache"), (4, "handoff.requested", {"reason": "faq_repeated", "faq": "shipping"}),
         (4, "inbound.message", {"text": "多久发货"})],  # the FAQ's own repeat handoff: a repeat and a handoff
        [answered(0, "invoice"), opened(0, "high_value")],  # a handoff in the answer's own turn: not after it
        [answered(0, "invoice"), answered(3, "shipping"), (6, FAQ_OFFERED, {"entries": ["returns"], "text": "x"})],
        [answered(-300, "invoice")],  # before the window
    )
    async with sessions() as session:
        stats = await faq_stats(session, START - timedelta(minutes=1))
    assert stats == [
        # 6 answers (1 chosen); a handoff after: the choice and the repeat handoff; a repeat after: customer
        # 0's first answer and the one the FAQ handed off for; either: 3 of 6
        FaqEntryStats("shipping", 6, 5, 1, 1, 2, 2, 3, 0.5),
        FaqEntryStats("invoice", 2, 2, 0, 1, 0, 0, 0, 0.0),
        FaqEntryStats("returns", 0, 0, 0, 1, 0, 0, 0, None),
    ]


async def test_faq_stats_of_a_window_without_answers_is_empty(sessions: Sessions) -> None:
    await timeline(sessions, [answered(0, "shipping")])
    async with sessions() as session:
        assert await faq_stats(session, START + timedelta(hours=1)) == []
        assert await faq_stats(session, None, START - timedelta(minutes=1)) == []
        [line] = await faq_stats(session, None)
    assert (line.asked, line.followed_by_handoff, line.repeated, line.not_helped_rate) == (1, 0, 0, 0.0)

