"""Handoffs in the store: open one, route it to a rep, take, touch, close, and find what is due.

A handoff moves queued → offered → taken → closed (or straight to closed). Every change
happens in the caller's transaction, together with the timeline and the messages it
causes. Routing prefers the customer's owner, then a team whose tags or products match,
then everyone; among candidates the least loaded (or the longest idle, round-robin).
The candidates' rows are locked while loads are counted, so capacity holds under concurrency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.customers import held_events
from crm_store.handoff_models import OPEN_STATUSES, Handoff, Rep, Team, TeamMember
from crm_store.handoff_settings import HandoffSettings
from crm_store.models import Customer, TimelineEvent
from crm_store.reps import LOADED, is_on
from crm_store.tags import tags_of

BUSY_RETRY_S = 60  # all reps busy or off duty during office hours: look again this soon


@dataclass(frozen=True)
class Routed:
    """Where a handoff went: a rep (and why them), or nobody yet and when someone will look."""

    rep: Rep | None
    why: str  # owner | team:<name> | least_loaded | round_robin; nobody: closed | busy
    team: str = ""
    opens_at: datetime | None = None  # "closed": when the office opens


async def open_handoff_of(session: AsyncSession, customer_id: int) -> Handoff | None:
    return await session.scalar(
        select(Handoff).where(Handoff.customer_id == customer_id, Handoff.status.in_(OPEN_STATUSES))
    )


async def start(
    session: AsyncSession, customer: Customer, reason: str, now: datetime, *, detail: str = "", intent: str = "",
    channel: str = "", kf_account: str = "", kf_customer: str = "",
) -> Handoff | None:
    """A new queued handoff, or None when the customer already has an open one (the index decides)."""
    if await open_handoff_of(session, customer.id) is not None:
        return None
    handoff = Handoff(
        customer_id=customer.id, status="queued", reason=reason[:32], detail=detail[:200], intent=intent[:64],
        channel=channel, kf_account=kf_account, kf_customer=kf_customer, stage_at_start=customer.stage,
        created_at=now, tried=[],
    )
    try:
        async with session.begin_nested():
            session.add(handoff)
    except IntegrityError:  # another message of the same customer opened one a moment ago
        return None
    return handoff


async def route(
    session: AsyncSession, handoff: Handoff, customer: Customer, settings: HandoffSettings, now: datetime,
    texts: Sequence[str] = (),
) -> Routed:
    """Offer the handoff to the best rep who is on and has room, or queue it with when to look again."""
    zone, office = ZoneInfo(settings.timezone), settings.hours
    exclude = set(handoff.tried)
    team, members = await _matching_team(session, customer.id, texts, handoff.detail)
    candidates = list(await session.scalars(select(Rep).where(Rep.active.is_(True)).order_by(Rep.userid)))
    on = [rep for rep in candidates if rep.userid not in exclude and is_on(rep, now, office, zone)]
    preferred: list[tuple[Rep, str]] = []
    owner = next((rep for rep in on if rep.userid == customer.owner_userid), None)
    if owner is not None:
        preferred.append((owner, "owner"))
    # Lock every candidate's row, always in userid order (no deadlock between two routings), then
    # count loads: two handoffs routed at once cannot both take a rep's last seat.
    await session.execute(select(Rep.userid).where(Rep.userid.in_([rep.userid for rep in on]))
                          .order_by(Rep.userid).with_for_update())
    load = await _loads(session, [rep.userid for rep in on])
    if settings.routing == "least_loaded":
        on.sort(key=lambda rep: (load.get(rep.userid, 0) / rep.capacity, _idle_key(rep)))
    else:
        on.sort(key=_idle_key)
    # the matching team first; when all of them are full, anyone on duty rather than nobody
    preferred.extend((rep, f"team:{team}") for rep in on if rep.userid in members and rep is not owner)
    preferred.extend((rep, settings.routing) for rep in on if rep.userid not in members and rep is not owner)
    for rep, reason in preferred:
        if load.get(rep.userid, 0) < rep.capacity:
            _offer(handoff, rep, now, settings)
            handoff.team = team if reason.startswith("team:") else ""
            return Routed(rep, reason, team if reason.startswith("team:") else "")
    handoff.status, handoff.rep_userid = "queued", None
    if not office.is_open(now, zone):
        opens = office.next_open(now, zone)
        handoff.due_at = opens
        return Routed(None, "closed", team, opens)
    handoff.due_at = now + timedelta(seconds=BUSY_RETRY_S)
    return Routed(None, "busy", team)


def _offer(handoff: Handoff, rep: Rep, now: datetime, settings: HandoffSettings) -> None:
    handoff.status, handoff.rep_userid, handoff.offered_at = "offered", rep.userid, now
    handoff.tried = [*handoff.tried, rep.userid]
    handoff.due_at = now + timedelta(seconds=settings.answer_within_s)
    rep.last_assigned_at = now


def _idle_key(rep: Rep) -> tuple[int, datetime | str]:
    return (0, "") if rep.last_assigned_at is None else (1, rep.last_assigned_at)


async def _loads(session: AsyncSession, userids: list[str]) -> dict[str, int]:
    rows = await session.execute(
        select(Handoff.rep_userid, func.count())
        .where(Handoff.status.in_(LOADED), Handoff.rep_userid.in_(userids))
        .group_by(Handoff.rep_userid)
    )
    return {str(userid): int(count) for userid, count in rows}


async def _matching_team(
    session: AsyncSession, customer_id: int, texts: Sequence[str], detail: str
) -> tuple[str, set[str]]:
    """The first team (by name) whose tags the customer has or whose products they mention."""
    teams = list(await session.scalars(select(Team).order_by(Team.name)))
    if not teams:
        return "", set()
    customer_tags = set(await tags_of(session, customer_id))
    said = " ".join([*texts, detail])
    for team in teams:
        if customer_tags & set(team.tags) or any(product and product in said for product in team.products):
            members = set(await session.scalars(select(TeamMember.rep_userid).where(TeamMember.team_name == team.name)))
            if members:
                return team.name, members
    return "", set()


def take(handoff: Handoff, rep_userid: str, now: datetime, settings: HandoffSettings) -> None:
    handoff.status, handoff.rep_userid = "taken", rep_userid
    handoff.taken_at = handoff.taken_at or now
    touch(handoff, now, settings)


def touch(handoff: Handoff, now: datetime, settings: HandoffSettings, rep_spoke: bool = False) -> None:
    """Activity on a taken handoff pushes its idle timeout back; a rep's first words are its first response."""
    handoff.last_activity_at = now
    if rep_spoke and handoff.first_response_at is None:
        handoff.first_response_at = now
    if handoff.status == "taken":
        handoff.due_at = now + timedelta(seconds=settings.idle_release_s)


def close(handoff: Handoff, closed_by: str, stage: str, now: datetime) -> None:
    handoff.status, handoff.closed_by, handoff.closed_at = "closed", closed_by[:32], now
    handoff.outcome_stage, handoff.due_at = stage, None


async def claim_due(session: AsyncSession, now: datetime, limit: int) -> list[Handoff]:
    """Open handoffs whose next step is due, locked; another instance skips them."""
    return list(
        await session.scalars(
            select(Handoff)
            .where(Handoff.status.in_(OPEN_STATUSES), Handoff.due_at <= now)
            .order_by(Handoff.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )


async def handoffs_of_rep(session: AsyncSession, userid: str, statuses: Sequence[str] = LOADED) -> list[Handoff]:
    return list(
        await session.scalars(
            select(Handoff).where(Handoff.rep_userid == userid, Handoff.status.in_(list(statuses)))
            .order_by(Handoff.id)
        )
    )


async def last_customer_texts(session: AsyncSession, customer_id: int, limit: int) -> list[str]:
    """The customer's last messages, oldest first: what the rep reads before answering."""
    newest = [event.data for event in held_events(session, customer_id, ("inbound.message",))][:limit]
    if len(newest) < limit:
        newest += await session.scalars(
            select(TimelineEvent.data)
            .where(TimelineEvent.customer_id == customer_id, TimelineEvent.kind == "inbound.message")
            .order_by(TimelineEvent.id.desc())
            .limit(limit - len(newest))
        )
    return [str(data.get("text", "")) for data in reversed(newest) if data.get("text")]


async def previous_not_understood(session: AsyncSession, customer_id: int) -> bool:
    """Did the customer's previous message also go not understood (with no handoff since)?

    The current message is already on the timeline (or held by the turn); the previous turn's notes follow
    its message.
    """
    kinds = ("inbound.message", "nlu.not_understood", "handoff.closed")
    newest = [event.kind for event in held_events(session, customer_id, kinds)][:2]
    if len(newest) < 2:
        newest += await session.scalars(
            select(TimelineEvent.kind)
            .where(TimelineEvent.customer_id == customer_id, TimelineEvent.kind.in_(kinds))
            .order_by(TimelineEvent.id.desc())
            .limit(2 - len(newest))
        )
    return newest == ["inbound.message", "nlu.not_understood"]


async def handed_off_since(session: AsyncSession, customer_id: int, reason: str, since: datetime) -> bool:
    found = await session.scalar(
        select(Handoff.id).where(
            Handoff.customer_id == customer_id, Handoff.reason == reason,
            or_(Handoff.created_at >= since, Handoff.status.in_(OPEN_STATUSES)),
        ).limit(1)
    )
    return found is not None

