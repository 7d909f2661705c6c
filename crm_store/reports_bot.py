"""Read-only reports on what the bot and the team did: nurture and pushes, handoffs, flows, NLU, and
the messages customers sent by kind.

Same rules as crm_store.reports: a window (`since` inclusive, `until` exclusive, UTC), every
count made by the database with GROUP BY. The bot's numbers come from two places: the
conversations table (a row per flow run, with why it ended: "handoff" when a person took
over) and the timeline's "inbound.message" events (data: text, intent, confidence,
intent_source, and `content`, the tagged part of a message that is not text). The timeline has
no index on kind or time, so the NLU and message counts are sequential passes over the window's
events; no index is added for a report. Its data column is JSONB on PostgreSQL: reading a key
does not parse the row's text again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.handoff_models import Handoff
from crm_store.handoff_queries import RepFigures, rep_figures
from crm_store.models import Conversation, TimelineEvent
from crm_store.nurture_models import Enrolment, NurtureSend, Push
from crm_store.reports import rate, window

UNKNOWN_INTENTS = ("nlu_fallback", "out_of_scope")
LOW_CONFIDENCE = 0.5
TOP_UNKNOWN = 20
MESSAGE = "inbound.message"

# ---------------------------------------------------------------- nurture and pushes


@dataclass
class SequenceLine:
    sequence: str
    enrolled: int = 0  # enrolments started in the window
    active: int = 0
    paused: int = 0
    completed: int = 0
    exited: int = 0
    converted: int = 0  # of those enrolments, converted while enrolled
    sent: int = 0  # messages sent in the window (any enrolment)
    replied: int = 0  # of those, answered by the customer
    failed: int = 0
    reply_rate: float | None = None


@dataclass(frozen=True)
class PushLine:
    id: int
    name: str
    status: str
    scheduled_at: datetime
    audience: int
    sent: int
    replied: int
    skipped: int
    failed: int
    pending: int
    reply_rate: float | None


@dataclass(frozen=True)
class NurtureReport:
    sequences: list[SequenceLine]
    pushes: list[PushLine]  # scheduled in the window, newest first


async def nurture_report(session: AsyncSession, since: datetime | None, until: datetime | None) -> NurtureReport:
    """Per sequence: enrolments of the window by status and conversion, and the window's sends and replies;
    per push scheduled in the window: its sends by status. Three grouped queries."""
    lines: dict[str, SequenceLine] = {}
    enrolments = await session.execute(
        select(Enrolment.sequence, Enrolment.status, func.count(), func.count(Enrolment.converted_at))
        .where(*window(Enrolment.enrolled_at, since, until))
        .group_by(Enrolment.sequence, Enrolment.status))
    for name, status, count, converted in enrolments.tuples():
        line = lines.setdefault(name, SequenceLine(name))
        line.enrolled += count
        line.converted += converted
        if status in ("active", "paused", "completed", "exited"):
            setattr(line, status, getattr(line, status) + count)
    sends = await session.execute(
        select(Enrolment.sequence, NurtureSend.status, func.count(), func.count(NurtureSend.replied_at))
        .join(Enrolment, Enrolment.id == NurtureSend.enrolment_id)
        .where(NurtureSend.status.in_(("sent", "failed")), *window(NurtureSend.due_at, since, until))
        .group_by(Enrolment.sequence, NurtureSend.status))
    for name, status, count, replied in sends.tuples():
        line = lines.setdefault(name, SequenceLine(name))
        setattr(line, status, getattr(line, status) + count)
        line.replied += replied
    for line in lines.values():
        line.reply_rate = rate(line.replied, line.sent)
    return NurtureReport([lines[name] for name in sorted(lines)], await _pushes(session, since, until))


async def _pushes(session: AsyncSession, since: datetime | None, until: datetime | None) -> list[PushLine]:
    def status_is(status: str) -> ColumnElement[int]:
        return func.count(case((NurtureSend.status == status, 1)))

    rows = await session.execute(
        select(Push, status_is("sent"), func.count(NurtureSend.replied_at), status_is("skipped"),
               status_is("failed"), status_is("pending"))
        .outerjoin(NurtureSend, NurtureSend.push_id == Push.id)
        .where(*window(Push.scheduled_at, since, until))
        .group_by(Push.id)
        .order_by(Push.scheduled_at.desc(), Push.id.desc()))
    return [PushLine(push.id, push.name, push.status, push.scheduled_at, push.audience, sent, replied, skipped,
                     failed, pending, rate(replied, sent))
            for push, sent, replied, skipped, failed, pending in rows.tuples()]


# ---------------------------------------------------------------- handoffs


@dataclass(frozen=True)
class HandoffReport:
    opened: int  # handoffs opened in the window
    by_reason: dict[str, int]  # flow | want_human | complain | low_confidence…
    by_status: dict[str, int]  # queued | offered | taken | closed, now
    closed_by: dict[str, int]  # of the closed ones: rep | timeout | admin…
    reps: list[RepFigures] = field(default_factory=list)  # crm_store.handoff_queries.rep_figures since `since`


async def handoffs_report(session: AsyncSession, since: datetime | None, until: datetime | None) -> HandoffReport:
    """Handoffs opened in the window by reason, status and closer, and the figures of each rep.

    The per-rep figures are rep_figures', bounded by `since` only (it takes no end).
    """
    rows = await session.execute(
        select(Handoff.reason, Handoff.status, Handoff.closed_by, func.count())
        .where(*window(Handoff.created_at, since, until))
        .group_by(Handoff.reason, Handoff.status, Handoff.closed_by))
    reasons: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    closers: Counter[str] = Counter()
    for reason, status, closed_by, count in rows.tuples():
        reasons[reason or "-"] += count
        statuses[status] += count
        if status == "closed":
            closers[closed_by or "-"] += count
    return HandoffReport(sum(reasons.values()), dict(reasons.most_common()), dict(sorted(statuses.items())),
                         dict(closers.most_common()), await rep_figures(session, since))


# ---------------------------------------------------------------- bot metrics per flow


@dataclass
class FlowLine:
    flow: str
    started: int = 0  # conversations started in the window (sub-flows count for the flow they ended in)
    active: int = 0  # still running
    ended: int = 0
    handoffs: int = 0  # ended because a person took over
    ended_by: dict[str, int] = field(default_factory=dict)  # completed | end | timeout | interrupted | handoff…
    containment: float | None = None  # ended without a handoff / ended
    handoff_rate: float | None = None  # handoffs / started


@dataclass(frozen=True)
class BotReport:
    messages: int  # customer messages received in the window
    conversations: int
    ended: int
    handoffs: int  # conversations that ended in a handoff
    handoffs_opened: int  # every handoff opened in the window, also those asked for outside a flow
    containment: float | None
    handoff_rate: float | None  # conversation handoffs / conversations
    fallback_starts: int  # conversations of the fallback flow: the bot did not understand
    fallback_rate: float | None  # fallback starts / messages
    flows: list[FlowLine]  # most started first


async def bots_report(session: AsyncSession, since: datetime | None, until: datetime | None, *,
                      fallback_flow: str = "fallback") -> BotReport:
    """Conversations per flow and how they ended; containment, handoff and fallback rates."""
    rows = await session.execute(
        select(Conversation.flow_id, Conversation.status, Conversation.end_reason, func.count())
        .where(*window(Conversation.started_at, since, until))
        .group_by(Conversation.flow_id, Conversation.status, Conversation.end_reason))
    flows: dict[str, FlowLine] = {}
    for flow_id, status, reason, count in rows.tuples():
        line = flows.setdefault(flow_id, FlowLine(flow_id))
        line.started += count
        if status == "active":
            line.active += count
            continue
        line.ended += count
        kind = (reason or "-").split(":")[0]  # interrupted:<flow> counts as interrupted
        line.ended_by[kind] = line.ended_by.get(kind, 0) + count
        line.handoffs += count if kind == "handoff" else 0
    for line in flows.values():
        line.ended_by = dict(sorted(line.ended_by.items(), key=lambda item: (-item[1], item[0])))
        line.containment = rate(line.ended - line.handoffs, line.ended)
        line.handoff_rate = rate(line.handoffs, line.started)
    messages = await session.scalar(select(func.count()).select_from(TimelineEvent).where(
        TimelineEvent.kind == MESSAGE, *window(TimelineEvent.created_at, since, until))) or 0
    opened = await session.scalar(select(func.count()).select_from(Handoff).where(
        *window(Handoff.created_at, since, until))) or 0
    lines = sorted(flows.values(), key=lambda line: (-line.started, line.flow))
    started = sum(line.started for line in lines)
    ended = sum(line.ended for line in lines)
    handoffs = sum(line.handoffs for line in lines)
    fallback = flows[fallback_flow].started if fallback_flow in flows else 0
    return BotReport(messages, started, ended, handoffs, opened, rate(ended - handoffs, ended),
                     rate(handoffs, started), fallback, rate(fallback, messages), lines)


# ---------------------------------------------------------------- NLU health


@dataclass(frozen=True)
class UnknownMessage:
    text: str
    count: int


@dataclass(frozen=True)
class NluReport:
    messages: int  # customer messages received in the window
    parsed: int  # of those, given an intent
    fallback: int  # nlu_fallback
    out_of_scope: int
    unknown_rate: float | None  # (fallback + out_of_scope) / parsed
    low_confidence: int  # confidence below LOW_CONFIDENCE
    low_confidence_rate: float | None  # low_confidence / parsed
    by_source: dict[str, int]  # rasa | rules | keyword…: who named the intent
    top_unknown: list[UnknownMessage]  # what it did not understand most often: training data to add


async def nlu_report(session: AsyncSession, since: datetime | None, until: datetime | None) -> NluReport:
    """How well messages were understood, from the intents stored with each inbound message:
    one pass counting by who named the intent, one for the texts not understood."""
    data = TimelineEvent.data
    intent, source = data["intent"].as_string(), data["intent_source"].as_string()
    confidence, text = data["confidence"].as_float(), data["text"].as_string()
    scope = [TimelineEvent.kind == MESSAGE, *window(TimelineEvent.created_at, since, until)]

    def counted(condition: ColumnElement[bool]) -> ColumnElement[int]:
        return func.count(case((condition, 1)))

    by_source = await session.execute(
        select(source, func.count(), func.count(intent), counted(intent == UNKNOWN_INTENTS[0]),
               counted(intent == UNKNOWN_INTENTS[1]), counted(intent.is_not(None) & (confidence < LOW_CONFIDENCE)))
        .where(*scope).group_by(source))
    totals: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    for name, messages, parsed, fallback, out_of_scope, low in by_source.tuples():
        totals.update(messages=messages, parsed=parsed, fallback=fallback, out_of_scope=out_of_scope, low=low)
        if parsed:
            sources[name or "-"] += parsed
    unknown = await session.execute(
        select(text, func.count()).where(*scope, intent.in_(UNKNOWN_INTENTS), text.is_not(None))
        .group_by(text).order_by(func.count().desc(), text).limit(TOP_UNKNOWN))
    parsed, low = totals["parsed"], totals["low"]
    unknowns = totals["fallback"] + totals["out_of_scope"]
    return NluReport(
        totals["messages"], parsed, totals["fallback"], totals["out_of_scope"], rate(unknowns, parsed), low,
        rate(low, parsed), dict(sorted(sources.items(), key=lambda item: (-item[1], item[0]))),
        [UnknownMessage(said, count) for said, count in unknown.tuples()],
    )


# ---------------------------------------------------------------- inbound messages by kind


@dataclass(frozen=True)
class KindLine:
    kind: str  # text | image | voice | video | file | location | link | miniprogram | … | other
    messages: int
    customers: int  # who sent at least one of this kind
    share: float | None  # of the window's messages


@dataclass(frozen=True)
class MessagesReport:
    messages: int  # customer messages received in the window (bots_report's `messages`)
    by_kind: list[KindLine]  # most first


async def messages_report(session: AsyncSession, since: datetime | None, until: datetime | None) -> MessagesReport:
    """Inbound messages by the kind of what they carried, in one grouped pass over the window's messages.

    The kind is the stored content part's tag (`data.content.type`, core.content); a message without one
    is text. A part this version could not read is `other` (its platform type is on the timeline)."""
    kind = func.coalesce(TimelineEvent.data[("content", "type")].as_string(), "text")
    rows = await session.execute(
        select(kind, func.count(), func.count(TimelineEvent.customer_id.distinct()))
        .where(TimelineEvent.kind == MESSAGE, *window(TimelineEvent.created_at, since, until))
        .group_by(kind))
    counted = sorted(rows.tuples(), key=lambda row: (-row[1], row[0]))
    total = sum(messages for _, messages, _ in counted)
    return MessagesReport(total, [KindLine(name, messages, customers, rate(messages, total))
                                  for name, messages, customers in counted])
