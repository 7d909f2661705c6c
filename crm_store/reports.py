"""Read-only reports over the store: the funnel, channels, group-buys and referrals (the bot's own
reports, nurture, handoffs, bots and NLU, are in crm_store.reports_bot).

Every report takes the session and a window, `since` (inclusive) and `until` (exclusive), either
of which may be None; times are compared in UTC. Every number is counted by the database with
GROUP BY, in a handful of queries whatever the number of customers: nothing loads every row.
Weeks are ISO weeks in UTC, named by their Monday (YYYY-MM-DD). A rate is None when there is
nothing to divide by, never a division error.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.channels import _arrivals
from crm_store.customer_queries import Influencer, leaderboard
from crm_store.customers import stages_of
from crm_store.growth_models import Campaign, EntryChannel, GroupBuy, Referral, RewardEntry
from crm_store.lifecycle import Lifecycle
from crm_store.models import Customer

LIVE = Customer.merged_into_id.is_(None)
TOP_INVITERS = 10
TOP_INFLUENCERS = 20


def window(column: SQLColumnExpression[datetime], since: datetime | None, until: datetime | None
           ) -> list[ColumnElement[bool]]:
    """`since <= column < until`, each bound optional; aware bounds are turned to UTC (SQLite compares text)."""
    bounds: list[ColumnElement[bool]] = []
    if since is not None:
        bounds.append(column >= _utc(since))
    if until is not None:
        bounds.append(column < _utc(until))
    return bounds


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def week_of(session: AsyncSession, column: SQLColumnExpression[datetime]) -> ColumnElement[Any]:
    """The Monday (UTC) of the column's week in the dialect's own date functions: a timestamp on
    PostgreSQL, text on SQLite; `week_name` makes either YYYY-MM-DD. Grouping by it and naming the
    few groups afterwards spares formatting every row."""
    if session.get_bind().dialect.name == "postgresql":
        return func.date_trunc("week", func.timezone("UTC", column))
    return func.date(column, "weekday 0", "-6 days")


def week_name(week_start: Any) -> str:
    return str(week_start)[:10]


# ---------------------------------------------------------------- funnel


@dataclass(frozen=True)
class FunnelStage:
    stage: str
    label: str
    current: int  # of the window's new customers: in this stage now
    reached: int  # of the window's new customers: ever in this stage
    conversion_from_previous: float | None  # reached / the previous stage's reached


@dataclass(frozen=True)
class CohortWeek:
    week: str  # the Monday, YYYY-MM-DD (UTC)
    new_customers: int
    reached: dict[str, int]  # stage -> customers of this week who have ever been in it


@dataclass(frozen=True)
class FunnelReport:
    new_customers: int
    stages: list[FunnelStage]
    weeks: list[CohortWeek]


async def funnel_report(session: AsyncSession, since: datetime | None, until: datetime | None, *,
                        lifecycle: Lifecycle) -> FunnelReport:
    """Customers new in the window (merged duplicates left out), by week, and how many reached each stage.

    One pass over customers grouped by week, current stage and the stages reached
    (Customer.stages_reached): a few hundred groups, each counted for every stage it reached.
    """
    week = week_of(session, Customer.created_at)
    groups = await session.execute(
        select(week, Customer.stage, Customer.stages_reached, func.count())
        .where(LIVE, *window(Customer.created_at, since, until))
        .group_by(week, Customer.stage, Customer.stages_reached))
    new: Counter[str] = Counter()
    current: Counter[str] = Counter()
    reached: dict[str, Counter[str]] = defaultdict(Counter)
    for week_start, stage, stages_reached, count in groups.tuples():
        name = week_name(week_start)
        new[name] += count
        current[stage] += count
        for been in stages_of(stages_reached, stage):
            reached[name][been] += count
    weeks = [CohortWeek(name, new[name], {stage: reached[name][stage] for stage in lifecycle.stage_ids})
             for name in sorted(new)]
    return FunnelReport(sum(new.values()), _stages(lifecycle, weeks, current), weeks)


def _stages(lifecycle: Lifecycle, weeks: list[CohortWeek], current: Counter[str]) -> list[FunnelStage]:
    """Configured order with the churned stage last; conversion is from the stage before (not for churned)."""
    order = [stage for stage in lifecycle.stage_ids if stage != lifecycle.churned] + [lifecycle.churned]
    rows: list[FunnelStage] = []
    previous: int | None = None
    for stage in order:
        count = sum(w.reached.get(stage, 0) for w in weeks)
        conversion = None if previous is None or stage == lifecycle.churned else rate(count, previous)
        rows.append(FunnelStage(stage, lifecycle.label(stage), current.get(stage, 0), count, conversion))
        previous = count
    return rows


# ---------------------------------------------------------------- channels


@dataclass(frozen=True)
class ChannelLine:
    code: str
    name: str
    kind: str
    active: bool
    adds: int  # customers new in the window who first arrived through the channel
    conversions: int  # of those, now in a purchase stage
    conversion_rate: float | None
    cost_yuan: float
    cost_per_add: float | None
    cost_per_conversion: float | None


async def channels_report(session: AsyncSession, since: datetime | None, until: datetime | None, *,
                          purchase_stages: Iterable[str]) -> list[ChannelLine]:
    """Every entry channel, oldest first, with what it brought in the window: one grouped query.

    The cost is the channel's whole cost (it is not spread over time).
    """
    arrivals = _arrivals(purchase_stages).where(*window(Customer.created_at, since, until)).subquery()
    rows = await session.execute(
        select(EntryChannel, func.coalesce(arrivals.c.adds, 0), func.coalesce(arrivals.c.conversions, 0))
        .outerjoin(arrivals, arrivals.c.channel_id == EntryChannel.id)
        .order_by(EntryChannel.id))
    lines = []
    for channel, adds, conversions in rows.tuples():
        cost = channel.cost_cents / 100
        lines.append(ChannelLine(channel.code, channel.name, channel.kind, channel.active, adds, conversions,
                                 rate(conversions, adds), cost, _per(cost, adds), _per(cost, conversions)))
    return lines


def _per(amount: float, count: int) -> float | None:
    return round(amount / count, 2) if count else None


# ---------------------------------------------------------------- group-buys


@dataclass(frozen=True)
class CampaignLine:
    code: str
    name: str
    status: str  # the campaign's: open | closed
    price_yuan: float
    stock: int
    sold: int  # seats held now by the campaign's open and filled groups (whole campaign)
    groups_opened: int  # groups opened in the window
    filled: int
    expired: int
    still_open: int
    fill_rate: float | None  # filled / (filled + expired): of the groups that were decided
    members: int  # seats taken in the window's groups, whatever became of them
    seats_sold: int  # members of the window's filled groups
    revenue_yuan: float  # seats_sold × price


async def groups_report(session: AsyncSession, since: datetime | None, until: datetime | None
                        ) -> list[CampaignLine]:
    """Each campaign, oldest first, with the groups opened in the window and what became of them."""

    def count(status: str) -> ColumnElement[int]:
        return func.count(case((GroupBuy.status == status, 1)))

    filled_members = func.coalesce(func.sum(case((GroupBuy.status == "filled", GroupBuy.members), else_=0)), 0)
    rows = await session.execute(
        select(Campaign, func.count(GroupBuy.id), count("filled"), count("expired"), count("open"),
               func.coalesce(func.sum(GroupBuy.members), 0), filled_members)
        .outerjoin(GroupBuy, and_(GroupBuy.campaign_id == Campaign.id, *window(GroupBuy.created_at, since, until)))
        .group_by(Campaign.id)
        .order_by(Campaign.id))
    lines = []
    for campaign, opened, filled, expired, still_open, members, seats in rows.tuples():
        price = campaign.price_cents / 100
        lines.append(CampaignLine(campaign.code, campaign.name, campaign.status, price, campaign.stock,
                                  campaign.sold, opened, filled, expired, still_open, rate(filled, filled + expired),
                                  int(members), int(seats), round(int(seats) * price, 2)))
    return lines


# ---------------------------------------------------------------- referrals


@dataclass(frozen=True)
class InviterLine:
    customer_id: int
    name: str
    friends: int  # friends brought in the window
    converted: int  # of those, converted since


@dataclass(frozen=True)
class ReferralReport:
    friends: int  # friends attributed to an inviter in the window
    converted: int  # of those, who bought
    conversion_rate: float | None
    by_channel: dict[str, int]  # where the friends arrived: kf | oa | contacts…
    rewards_granted: int  # ledger grants in the window
    rewards_reversed: int
    top_inviters: list[InviterLine]  # the window's, by friends brought
    influencers: list[Influencer] = field(default_factory=list)  # the all-time leaderboard by social score


async def referrals_report(session: AsyncSession, since: datetime | None, until: datetime | None
                           ) -> ReferralReport:
    """Friends brought and converted, by channel; rewards; the window's top inviters and the leaderboard."""
    bounds = window(Referral.created_at, since, until)
    by_channel = dict((await session.execute(
        select(Referral.channel, func.count()).where(*bounds).group_by(Referral.channel)
        .order_by(func.count().desc(), Referral.channel))).tuples().all())
    converted = await session.scalar(select(func.count(Referral.converted_at)).where(*bounds)) or 0
    ledger = dict((await session.execute(
        select(RewardEntry.kind, func.count()).where(*window(RewardEntry.created_at, since, until))
        .group_by(RewardEntry.kind))).tuples().all())
    friends = func.count()
    top = await session.execute(
        select(Referral.inviter_id, Customer.display_name, friends, func.count(Referral.converted_at))
        .join(Customer, Customer.id == Referral.inviter_id)
        .where(*bounds)
        .group_by(Referral.inviter_id, Customer.display_name)
        .order_by(friends.desc(), func.count(Referral.converted_at).desc(), Referral.inviter_id)
        .limit(TOP_INVITERS))
    total = sum(by_channel.values())
    return ReferralReport(
        total, converted, rate(converted, total), {channel or "-": n for channel, n in by_channel.items()},
        ledger.get("grant", 0), ledger.get("reversal", 0),
        [InviterLine(inviter, name or "", n, bought) for inviter, name, n, bought in top.tuples()],
        await leaderboard(session, "score", TOP_INFLUENCERS),
    )
