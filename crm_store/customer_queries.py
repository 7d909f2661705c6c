"""Finding customers and reading one customer's card: what the admin CLI shows.

A page of customers costs three queries whatever its size (customers with their social
score, their tags, their identities): never one query per customer. Text search is a
case-insensitive substring match over names, channel ids and what customers wrote; it
scans, which is fine for an admin looking someone up, not for a hot path. A customer
without a social_stats row has a social score of 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from sqlalchemy import ColumnElement, SQLColumnExpression, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.customers import timeline
from crm_store.group_buys import groups_of
from crm_store.group_chat_queries import member_of_groups
from crm_store.growth_models import Campaign, InviteCode, SocialStats
from crm_store.lifecycle import Lifecycle
from crm_store.models import Customer, CustomerTag, Identity, StageChange, Tag, TimelineEvent
from crm_store.referrals import inviter_of
from crm_store.rewards import ledger
from crm_store.social import COUNTERS

Sort = Literal["seen", "social"]
LeaderboardOrder = Literal["score", "friends", "converted"]
CARD_GROUPS = 10
CARD_REWARDS = 10


@dataclass(frozen=True)
class CustomerRow:
    id: int
    display_name: str
    stage: str
    tags: tuple[str, ...]
    last_seen_at: datetime | None
    identities: tuple[str, ...]  # "wecom:wmXXXX", "oa:oXXXX"
    social: float = 0.0  # the social score; 0 without a social_stats row


class StageStep(NamedTuple):
    from_stage: str
    to_stage: str
    reason: str
    at: datetime


class TimelineEntry(NamedTuple):
    at: datetime
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class GroupLine:
    code: str
    campaign: str  # the campaign's code
    status: str  # open | filled | expired
    members: int
    size: int
    leader: bool


@dataclass(frozen=True)
class RewardLine:
    id: int
    at: datetime
    kind: str  # grant | reversal
    rule_id: str
    reward: str
    friend_id: int | None
    friend_name: str
    reverses_id: int | None


@dataclass(frozen=True)
class GrowthCard:
    """What the customer brought (counters and score), who brought them, their groups and rewards."""

    counters: dict[str, int]  # social.COUNTERS -> value, all 0 without a social_stats row
    score: float
    inviter_id: int | None
    inviter_name: str
    invite_code: str | None  # only once the customer asked for one
    groups: list[GroupLine]  # newest first
    rewards: list[RewardLine]  # received, newest first


@dataclass(frozen=True)
class CustomerCard:
    row: CustomerRow
    stage_label: str
    marketing_opt_out: bool
    owner_userid: str | None
    stage_history: list[StageStep]  # oldest first
    timeline: list[TimelineEntry]  # newest first
    growth: GrowthCard


@dataclass(frozen=True)
class Influencer:
    customer_id: int
    name: str
    stage: str
    friends: int
    friends_converted: int
    groups_led: int
    groups_filled: int
    downstream_converted: int
    score: float


async def find_customers(
    session: AsyncSession,
    *,
    tags: Sequence[str] = (),
    stage: str | None = None,
    text: str | None = None,
    min_social: float | None = None,
    sort: Sort = "seen",
    limit: int = 50,
    offset: int = 0,
    in_groups: Sequence[int] = (),
) -> list[CustomerRow]:
    """Unmerged customers carrying every one of `tags`, in `stage`, matching `text`, with a social score
    of at least `min_social`, in every one of the customer groups `in_groups` (group_chats ids) now;
    most recently seen first, or highest social score first (`sort="social"`)."""
    social = func.coalesce(SocialStats.score, 0.0)
    query = (
        select(Customer, social)
        .outerjoin(SocialStats, SocialStats.customer_id == Customer.id)
        .where(Customer.merged_into_id.is_(None))
    )
    for name in tags:
        query = query.where(
            exists().where(
                CustomerTag.customer_id == Customer.id, CustomerTag.tag_id == Tag.id, Tag.name == name
            )
        )
    if stage:
        query = query.where(Customer.stage == stage)
    if text and text.strip():
        query = query.where(_matches(text.strip()))
    if min_social is not None:
        query = query.where(social >= min_social)
    query = query.where(*member_of_groups(Customer.id, in_groups))
    recent = (Customer.last_seen_at.desc().nulls_last(), Customer.id.desc())
    query = query.order_by(*((social.desc(), *recent) if sort == "social" else recent))
    found = (await session.execute(query.limit(limit).offset(offset))).tuples().all()
    return await _rows(session, [customer for customer, _ in found], [float(score) for _, score in found])


def _matches(text: str) -> ColumnElement[bool]:
    """Name, a channel id, or an inbound message's text contains `text` (any case).

    `data['text'].as_string()` is `data ->> 'text'` on PostgreSQL and `json_extract` on SQLite.
    """
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{escaped}%"

    def like(column: SQLColumnExpression[str]) -> ColumnElement[bool]:
        return func.lower(column).like(pattern, escape="\\")

    said = TimelineEvent.data["text"].as_string()
    return or_(
        like(Customer.display_name),
        exists().where(Identity.customer_id == Customer.id, like(Identity.external_id)),
        exists().where(
            TimelineEvent.customer_id == Customer.id, TimelineEvent.kind == "inbound.message", like(said)
        ),
    )


async def _rows(session: AsyncSession, customers: list[Customer], scores: Sequence[float]) -> list[CustomerRow]:
    """Rows for a page of customers, with tags and identities loaded in one query each."""
    ids = [customer.id for customer in customers]
    tags: dict[int, list[str]] = defaultdict(list)
    identities: dict[int, list[str]] = defaultdict(list)
    if ids:
        tag_rows = await session.execute(
            select(CustomerTag.customer_id, Tag.name)
            .join(Tag, Tag.id == CustomerTag.tag_id)
            .where(CustomerTag.customer_id.in_(ids))
            .order_by(CustomerTag.added_at, Tag.name)
        )
        for customer_id, name in tag_rows.tuples():
            tags[customer_id].append(name)
        identity_rows = await session.execute(
            select(Identity.customer_id, Identity.kind, Identity.external_id)
            .where(Identity.customer_id.in_(ids))
            .order_by(Identity.id)
        )
        for customer_id, kind, external_id in identity_rows.tuples():
            identities[customer_id].append(f"{kind}:{external_id}")
    return [
        CustomerRow(
            id=customer.id,
            display_name=customer.display_name,
            stage=customer.stage,
            tags=tuple(tags[customer.id]),
            last_seen_at=customer.last_seen_at,
            identities=tuple(identities[customer.id]),
            social=score,
        )
        for customer, score in zip(customers, scores, strict=True)
    ]


async def current_customer(session: AsyncSession, customer_id: int) -> Customer | None:
    """The customer, following merges (a merged id stands for the customer it became)."""
    customer = await session.get(Customer, customer_id)
    seen: set[int] = set()
    while customer is not None and customer.merged_into_id is not None and customer.id not in seen:
        seen.add(customer.id)
        customer = await session.get(Customer, customer.merged_into_id)
    return customer


async def names_of(session: AsyncSession, customer_ids: Iterable[int | None]) -> dict[int, str]:
    """id -> display name for the given ids, in one query (unknown ids are left out)."""
    wanted = sorted({customer_id for customer_id in customer_ids if customer_id is not None})
    if not wanted:
        return {}
    rows = await session.execute(select(Customer.id, Customer.display_name).where(Customer.id.in_(wanted)))
    return {customer_id: name or "" for customer_id, name in rows.tuples()}


async def customer_card(
    session: AsyncSession, customer_id: int, lifecycle: Lifecycle, timeline_limit: int = 50
) -> CustomerCard | None:
    """Everything about one customer; a merged id shows the customer it was merged into."""
    customer = await current_customer(session, customer_id)
    if customer is None:
        return None
    growth = await growth_card(session, customer.id)
    [row] = await _rows(session, [customer], [growth.score])
    moves = await session.scalars(
        select(StageChange).where(StageChange.customer_id == customer.id).order_by(StageChange.id)
    )
    events = await timeline(session, customer.id, timeline_limit)
    return CustomerCard(
        row=row,
        stage_label=lifecycle.label(customer.stage),
        marketing_opt_out=customer.marketing_opt_out,
        owner_userid=customer.owner_userid,
        stage_history=[StageStep(m.from_stage, m.to_stage, m.reason, m.created_at) for m in moves],
        timeline=[TimelineEntry(event.created_at, event.kind, dict(event.data)) for event in events],
        growth=growth,
    )


async def growth_card(session: AsyncSession, customer_id: int) -> GrowthCard:
    """Social value, inviter, invite code (never made here), groups and rewards received."""
    stats = await session.get(SocialStats, customer_id)
    inviter_id = await inviter_of(session, customer_id)
    invite_code = await session.scalar(select(InviteCode.code).where(InviteCode.customer_id == customer_id))
    groups = await groups_of(session, customer_id, limit=CARD_GROUPS)
    campaigns = dict((await session.execute(
        select(Campaign.id, Campaign.code).where(Campaign.id.in_({group.campaign_id for group in groups}))
    )).tuples().all()) if groups else {}
    entries = await ledger(session, customer_id, limit=CARD_REWARDS)
    names = await names_of(session, [inviter_id, *(entry.friend_id for entry in entries)])
    return GrowthCard(
        counters={name: int(getattr(stats, name)) if stats else 0 for name in COUNTERS},
        score=float(stats.score) if stats else 0.0,
        inviter_id=inviter_id,
        inviter_name=names.get(inviter_id, "") if inviter_id is not None else "",
        invite_code=invite_code,
        groups=[GroupLine(group.code, campaigns.get(group.campaign_id, ""), group.status, group.members,
                          group.size, group.leader_id == customer_id) for group in groups],
        rewards=[RewardLine(entry.id, entry.created_at, entry.kind, entry.rule_id, entry.reward, entry.friend_id,
                            names.get(entry.friend_id, "") if entry.friend_id is not None else "",
                            entry.reverses_id) for entry in entries],
    )


async def leaderboard(session: AsyncSession, by: LeaderboardOrder = "score", limit: int = 20) -> list[Influencer]:
    """Unmerged customers with the most social value, friends or converted friends (those with none left out)."""
    key = {"score": SocialStats.score, "friends": SocialStats.friends,
           "converted": SocialStats.friends_converted}[by]
    rows = await session.execute(
        select(SocialStats, Customer.display_name, Customer.stage)
        .join(Customer, Customer.id == SocialStats.customer_id)
        .where(Customer.merged_into_id.is_(None), key > 0)
        .order_by(key.desc(), SocialStats.score.desc(), SocialStats.customer_id)
        .limit(limit)
    )
    return [
        Influencer(stats.customer_id, name or "", stage, stats.friends, stats.friends_converted, stats.groups_led,
                   stats.groups_filled, stats.downstream_converted, float(stats.score))
        for stats, name, stage in rows.tuples()
    ]
