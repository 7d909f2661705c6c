"""What admins read about handoffs: the list, one handoff with its timeline, and figures per rep.

Read-only queries over crm_store.handoff_models, in the caller's session. Times are UTC as
stored (SQLite gives them back without a zone: `as_utc`). A "since" bounds handoffs by when
they were opened. Figures are computed in Python over one bounded query, so they read the
same on SQLite and PostgreSQL (the `tried` list is JSON, awkward to search in SQL on both).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.handoff_models import OPEN_STATUSES, Handoff, Rep
from crm_store.models import Customer, TimelineEvent, as_utc, utcnow

StatusFilter = Literal["open", "closed", "all"]
EVENT_PREFIXES = ("handoff.", "rep.")
EVENT_SLACK = timedelta(seconds=5)  # timeline rows are stamped when flushed, a moment after the handoff's own times


@dataclass(frozen=True)
class HandoffRow:
    id: int
    customer_id: int
    customer: str  # display name
    stage: str  # the customer's stage when handed off
    reason: str
    detail: str
    rep: str  # the rep it is offered to, taken by, or was last with; "" while queued
    status: str
    created_at: datetime
    offered_at: datetime | None
    taken_at: datetime | None
    first_response_at: datetime | None
    closed_at: datetime | None
    closed_by: str
    outcome_stage: str
    waiting_s: int  # from opening to a person's first response (or taking it), else to closing, else to now


@dataclass(frozen=True)
class HandoffEvent:
    at: datetime
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class HandoffDetail:
    row: HandoffRow
    intent: str
    team: str
    channel: str
    tried: list[str]
    events: list[HandoffEvent]  # the customer's handoff.* and rep.* timeline events of this handoff, oldest first


@dataclass(frozen=True)
class RepFigures:
    userid: str
    name: str
    active: bool
    offered: int  # handoffs offered to the rep (any time it was their turn)
    taken: int  # handoffs the rep took
    open_now: int  # offered to or taken by the rep right now
    median_first_response_s: float | None  # first response (else taking it) minus being offered it
    p90_first_response_s: float | None
    closed_by: dict[str, int] = field(default_factory=dict)  # of the rep's closed handoffs: who or what closed them
    outcomes: dict[str, int] = field(default_factory=dict)  # of the rep's closed handoffs: the stage they ended at
    advanced: int = 0  # closed handoffs that ended at another stage than they started at


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else as_utc(moment)


def _since(since: datetime | None) -> ColumnElement[bool]:
    if since is None:
        return Handoff.id.is_not(None)
    return Handoff.created_at >= (since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC))


def _row(handoff: Handoff, name: str, now: datetime) -> HandoffRow:
    created = as_utc(handoff.created_at)
    answered = handoff.first_response_at or handoff.taken_at or handoff.closed_at
    waited = (as_utc(answered) if answered is not None else now) - created
    return HandoffRow(
        handoff.id, handoff.customer_id, name, handoff.stage_at_start, handoff.reason, handoff.detail,
        handoff.rep_userid or "", handoff.status, created, _utc(handoff.offered_at), _utc(handoff.taken_at),
        _utc(handoff.first_response_at), _utc(handoff.closed_at), handoff.closed_by, handoff.outcome_stage,
        max(0, int(waited.total_seconds())),
    )


async def list_handoffs(
    session: AsyncSession, status: StatusFilter = "open", rep: str | None = None, since: datetime | None = None,
    limit: int = 50, now: datetime | None = None,
) -> list[HandoffRow]:
    """Handoffs, the most recently opened first, with their customer's name."""
    now = now or utcnow()
    query = select(Handoff, Customer.display_name).join(Customer, Customer.id == Handoff.customer_id)
    if status == "open":
        query = query.where(Handoff.status.in_(OPEN_STATUSES))
    elif status == "closed":
        query = query.where(Handoff.status == "closed")
    if rep is not None:
        query = query.where(Handoff.rep_userid == rep)
    rows = await session.execute(
        query.where(_since(since)).order_by(Handoff.created_at.desc(), Handoff.id.desc()).limit(limit))
    return [_row(handoff, name or "", now) for handoff, name in rows.tuples()]


async def handoff_detail(session: AsyncSession, handoff_id: int, now: datetime | None = None) -> HandoffDetail | None:
    """One handoff and what happened during it on the customer's timeline; None when there is no such handoff."""
    now = now or utcnow()
    handoff = await session.get(Handoff, handoff_id)
    if handoff is None:
        return None
    customer = await session.get(Customer, handoff.customer_id)
    row = _row(handoff, customer.display_name if customer else "", now)
    return HandoffDetail(row, handoff.intent, handoff.team, handoff.channel, [str(u) for u in handoff.tried],
                         await _events(session, row, now))


async def _events(session: AsyncSession, row: HandoffRow, now: datetime) -> list[HandoffEvent]:
    """Events that name this handoff, and those that name none (a rep's note) made while it was open."""
    start, end = row.created_at, row.closed_at or now
    found = await session.scalars(
        select(TimelineEvent)
        .where(TimelineEvent.customer_id == row.customer_id,
               or_(*(TimelineEvent.kind.startswith(prefix) for prefix in EVENT_PREFIXES)),
               TimelineEvent.created_at >= start - EVENT_SLACK, TimelineEvent.created_at <= end + EVENT_SLACK)
        .order_by(TimelineEvent.id)
    )
    events = []
    for event in found:
        at, data = as_utc(event.created_at), event.data or {}
        named = data.get("handoff")
        if named == row.id or (named is None and start - EVENT_SLACK <= at <= end):
            events.append(HandoffEvent(at, event.kind, data))
    return events


# ---------------------------------------------------------------- figures per rep


def _p90(values: Sequence[float]) -> float | None:
    """The nearest-rank 90th percentile: the smallest value at least 90% of the values do not exceed."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


@dataclass
class _Tally:
    offered: int = 0
    taken: int = 0
    open_now: int = 0
    responses: list[float] = field(default_factory=list)
    closed_by: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    advanced: int = 0

    def add_own(self, handoff: Any) -> None:
        """A handoff whose rep_userid is this rep: taken (and how fast), and how it ended."""
        if handoff.status in ("taken", "closed") and handoff.taken_at is not None:
            self.taken += 1
            if handoff.offered_at is not None:
                answered = as_utc(handoff.first_response_at or handoff.taken_at)
                self.responses.append(max(0.0, (answered - as_utc(handoff.offered_at)).total_seconds()))
        if handoff.status == "closed":
            self.closed_by[handoff.closed_by or "-"] += 1
            self.outcomes[handoff.outcome_stage or "-"] += 1
            self.advanced += handoff.outcome_stage != handoff.stage_at_start


async def rep_figures(session: AsyncSession, since: datetime | None = None) -> list[RepFigures]:
    """Per rep (active ones, and departed ones with handoffs since `since`), by userid."""
    reps = {rep.userid: rep for rep in await session.scalars(select(Rep).order_by(Rep.userid))}
    tallies: defaultdict[str, _Tally] = defaultdict(_Tally)
    handoffs = await session.execute(  # the columns counted, not whole ORM objects
        select(Handoff.tried, Handoff.rep_userid, Handoff.status, Handoff.taken_at, Handoff.offered_at,
               Handoff.first_response_at, Handoff.closed_by, Handoff.outcome_stage, Handoff.stage_at_start)
        .where(_since(since)).order_by(Handoff.id))
    for handoff in handoffs:
        for userid in {str(u) for u in handoff.tried or []}:
            tallies[userid].offered += 1
        if handoff.rep_userid is not None:
            tallies[handoff.rep_userid].add_own(handoff)
    open_now = await session.execute(
        select(Handoff.rep_userid).where(Handoff.status.in_(OPEN_STATUSES), Handoff.rep_userid.is_not(None))
    )
    for (holder,) in open_now.tuples():
        tallies[str(holder)].open_now += 1
    wanted = sorted({userid for userid, rep in reps.items() if rep.active} | set(tallies))
    return [_figures(userid, reps.get(userid), tallies.get(userid, _Tally())) for userid in wanted]


def _figures(userid: str, rep: Rep | None, tally: _Tally) -> RepFigures:
    return RepFigures(
        userid, rep.name if rep else "", bool(rep and rep.active), tally.offered, tally.taken, tally.open_now,
        statistics.median(tally.responses) if tally.responses else None, _p90(tally.responses),
        dict(sorted(tally.closed_by.items())), dict(sorted(tally.outcomes.items())), tally.advanced,
    )
