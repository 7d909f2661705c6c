"""Reps and teams: who can take customers over, when, how many at once, and for what.

A rep is "on" when they are active (still at the company), on duty (their own switch, or
the admin's) and inside their hours (their own, or the brand's office hours). Their load is
the handoffs offered to or taken by them; capacity caps it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.handoff_models import Handoff, Rep, Team, TeamMember
from crm_store.models import utcnow
from crm_store.office_hours import HoursError, WeeklyHours

LOADED = ("offered", "taken")
MAX_CAPACITY = 500


class RepError(ValueError):
    """A rep or team command that cannot be done, with what to do instead."""


@dataclass(frozen=True)
class RepView:
    userid: str
    name: str
    active: bool
    on_duty: bool
    on_now: bool  # active, on duty and inside their hours
    hours: str  # their own, or "(office) mon-fri 09:00-18:00"
    capacity: int
    load: int
    teams: tuple[str, ...]


def is_on(rep: Rep, now: datetime, office: WeeklyHours, zone: ZoneInfo) -> bool:
    if not (rep.active and rep.on_duty):
        return False
    return (WeeklyHours.parse(rep.hours) if rep.hours else office).is_open(now, zone)


def check_hours(hours: str) -> str:
    """Normalised hours, or RepError naming the problem; empty means the brand's office hours."""
    if not hours.strip():
        return ""
    try:
        return WeeklyHours.parse(hours).text
    except HoursError as exc:
        raise RepError(str(exc)) from None


def _check_capacity(capacity: int) -> int:
    if not 1 <= capacity <= MAX_CAPACITY:
        raise RepError(f"capacity {capacity}: a rep takes 1 to {MAX_CAPACITY} customers at once")
    return capacity


async def add_rep(
    session: AsyncSession, userid: str, name: str = "", capacity: int = 5, hours: str = "", on_duty: bool = True
) -> Rep:
    userid = userid.strip()
    if not userid or len(userid) > 64:
        raise RepError("userid: the rep's WeCom userid (1-64 characters), e.g. zhangsan")
    existing = await session.get(Rep, userid)
    if existing is not None and existing.active:
        raise RepError(f"rep {userid} already exists (change them with: scrm reps set {userid} …)")
    rep = existing or Rep(userid=userid)
    rep.name, rep.capacity, rep.hours = name.strip(), _check_capacity(capacity), check_hours(hours)
    rep.on_duty, rep.active, rep.left_at = on_duty, True, None
    session.add(rep)
    await session.flush()
    return rep


async def get_rep(session: AsyncSession, userid: str) -> Rep | None:
    return await session.get(Rep, userid)


async def active_rep(session: AsyncSession, userid: str) -> Rep:
    rep = await session.get(Rep, userid)
    if rep is None or not rep.active:
        raise RepError(f"no rep {userid} (see: scrm reps list)")
    return rep


async def update_rep(
    session: AsyncSession, userid: str, *, name: str | None = None, capacity: int | None = None,
    hours: str | None = None, on_duty: bool | None = None,
) -> Rep:
    rep = await active_rep(session, userid)
    if name is not None:
        rep.name = name.strip()
    if capacity is not None:
        rep.capacity = _check_capacity(capacity)
    if hours is not None:
        rep.hours = check_hours(hours)
    if on_duty is not None:
        rep.on_duty = on_duty
    await session.flush()
    return rep


async def mark_left(session: AsyncSession, userid: str, now: datetime | None = None) -> Rep:
    """The rep left the company: never routed to again; their history stays."""
    rep = await active_rep(session, userid)
    rep.active, rep.on_duty, rep.left_at = False, False, now or utcnow()
    await session.execute(delete(TeamMember).where(TeamMember.rep_userid == userid))
    await session.flush()
    return rep


async def loads(session: AsyncSession, userids: Iterable[str] | None = None) -> dict[str, int]:
    query = select(Handoff.rep_userid, func.count()).where(Handoff.status.in_(LOADED)).group_by(Handoff.rep_userid)
    if userids is not None:
        query = query.where(Handoff.rep_userid.in_(list(userids)))
    return {str(userid): int(count) for userid, count in await session.execute(query)}


async def list_reps(
    session: AsyncSession, office: WeeklyHours, zone: ZoneInfo, include_left: bool = False, now: datetime | None = None
) -> list[RepView]:
    now = now or utcnow()
    query = select(Rep).order_by(Rep.userid)
    if not include_left:
        query = query.where(Rep.active.is_(True))
    reps = list(await session.scalars(query))
    load = await loads(session, [rep.userid for rep in reps])
    teams = await teams_of(session, [rep.userid for rep in reps])
    return [
        RepView(rep.userid, rep.name, rep.active, rep.on_duty, is_on(rep, now, office, zone),
                rep.hours or f"(office) {office.text}", rep.capacity, load.get(rep.userid, 0),
                tuple(teams.get(rep.userid, ())))
        for rep in reps
    ]


async def teams_of(session: AsyncSession, userids: Sequence[str]) -> dict[str, list[str]]:
    rows = await session.execute(
        select(TeamMember.rep_userid, TeamMember.team_name)
        .where(TeamMember.rep_userid.in_(list(userids)))
        .order_by(TeamMember.team_name)
    )
    found: dict[str, list[str]] = {}
    for userid, team in rows:
        found.setdefault(userid, []).append(team)
    return found


# ---------------------------------------------------------------- teams


async def set_team(
    session: AsyncSession, name: str, tags: Sequence[str], products: Sequence[str], members: Sequence[str],
    known_tags: Sequence[str],
) -> Team:
    """Create or replace a team: customers with one of `tags`, or asking about one of `products`."""
    name = name.strip()
    if not name or len(name) > 64:
        raise RepError("team name: 1-64 characters, e.g. 大客户")
    unknown = [tag for tag in tags if tag not in known_tags]
    if unknown:
        raise RepError(f"tags not in the catalog (tags.yaml): {', '.join(unknown)}")
    for userid in members:
        await active_rep(session, userid)
    team = await session.get(Team, name) or Team(name=name)
    team.tags, team.products = list(dict.fromkeys(tags)), [p.strip() for p in dict.fromkeys(products) if p.strip()]
    session.add(team)
    await session.flush()
    await session.execute(delete(TeamMember).where(TeamMember.team_name == name))
    session.add_all(TeamMember(team_name=name, rep_userid=userid) for userid in dict.fromkeys(members))
    await session.flush()
    return team


async def delete_team(session: AsyncSession, name: str) -> None:
    team = await session.get(Team, name)
    if team is None:
        raise RepError(f"no team {name!r} (see: scrm reps teams)")
    await session.execute(delete(TeamMember).where(TeamMember.team_name == name))
    await session.delete(team)
    await session.flush()


async def list_teams(session: AsyncSession) -> list[tuple[Team, list[str]]]:
    teams = list(await session.scalars(select(Team).order_by(Team.name)))
    rows = await session.execute(select(TeamMember.team_name, TeamMember.rep_userid).order_by(TeamMember.rep_userid))
    members: dict[str, list[str]] = {}
    for team, userid in rows:
        members.setdefault(team, []).append(userid)
    return [(team, members.get(team.name, [])) for team in teams]
