"""What the nurture dispatcher's decisions of one batch read: loaded with one query per kind of fact.

The batch's customers' quota allowances (kf, OA) are read locked, like the sends, and live in
the batch while it is decided: a send spends from the batch's copy, and the changed ones are
written back once, a statement per channel, in the batch's transaction.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.delivery import notify_call
from core.allowance import QUOTA_CHANNELS, Allowance
from core.sequences import Condition, NurtureSequence
from crm_store import allowances
from crm_store.enrolments import SequenceCatalog
from crm_store.growth_models import GroupBuy, GroupMember, SocialStats
from crm_store.handoff_models import OPEN_STATUSES, Handoff
from crm_store.models import Conversation, Customer, CustomerTag, Identity, Tag, as_utc
from crm_store.nurture_models import Enrolment, NurtureSend, Push, SequenceState

CAP_WINDOW = timedelta(hours=24)


@dataclass
class Batch:
    """What the decisions of one batch read, loaded with one query each."""

    customers: dict[int, Customer]
    enrolments: dict[int, Enrolment]
    pushes: dict[int, Push]
    paused: set[str]
    handed_off: set[int]
    recent: dict[int, tuple[int, datetime]]  # marketing sent in the cap window: count, oldest
    group_messages: dict[int, int]  # this month, brand time
    tags: dict[int, set[str]]
    social: dict[int, float]
    slots: dict[int, dict[str, str]]
    wecom_ids: dict[int, str]
    groups_filled: dict[int, datetime]  # the customer's latest filled group-buy
    sequences: dict[tuple[str, int], NurtureSequence]  # (name, version) of the batch's enrolments
    allowances: dict[tuple[int, str], Allowance] = field(default_factory=dict)  # (customer, channel), locked
    spent: set[tuple[int, str]] = field(default_factory=set)

    def left(self, customer_id: int, channel: str, now: datetime) -> int:
        """Messages the platform lets the bot send the customer on `channel` now (none without a ledger row)."""
        allowance = self.allowances.get((customer_id, channel))
        return 0 if allowance is None else allowance.left(now.timestamp())

    def spend(self, customer_id: int, channel: str, now: datetime) -> None:
        key = (customer_id, channel)
        self.allowances[key] = self.allowances[key].spent(1, now.timestamp())
        self.spent.add(key)

    async def save_allowances(self, session: AsyncSession) -> None:
        """The allowances this batch spent from, written back: one upsert per channel."""
        by_channel: dict[str, dict[int, Allowance]] = defaultdict(dict)
        for customer_id, channel in self.spent:
            by_channel[channel][customer_id] = self.allowances[(customer_id, channel)]
        for group in by_channel.values():
            await allowances.save_many(session, group)
        self.spent.clear()


class BatchLoader:
    """One query per kind of fact, and only for the customers whose decision can need it."""

    def __init__(self, zone: ZoneInfo, budgets: bool) -> None:
        self.zone = zone
        self.budgets = budgets  # read (and lock) the customers' quota allowances
        self.catalog = SequenceCatalog()

    async def load(self, session: AsyncSession, sends: list[NurtureSend], now: datetime) -> Batch:
        ids = list({send.customer_id for send in sends})
        enrolment_ids = [send.enrolment_id for send in sends if send.enrolment_id]
        push_ids = list({send.push_id for send in sends if send.push_id})
        customers = {c.id: c for c in await session.scalars(select(Customer).where(Customer.id.in_(ids)))}
        enrolments = {e.id: e for e in await session.scalars(select(Enrolment).where(Enrolment.id.in_(enrolment_ids)))}
        pushes = {p.id: p for p in await session.scalars(select(Push).where(Push.id.in_(push_ids)))} if push_ids else {}
        sequences = {key: await self.catalog.get(session, *key)
                     for key in {(e.sequence, e.version) for e in enrolments.values()}}
        paused = set(await session.scalars(select(SequenceState.name).where(SequenceState.paused.is_(True))))
        handed_off = set(await session.scalars(select(Handoff.customer_id).where(
            Handoff.customer_id.in_(ids), Handoff.status.in_(OPEN_STATUSES))))
        held = await allowances.load_many(session, ids, lock=True) if self.budgets else {}
        conditions, filled_watch = _needs(sends, enrolments, sequences)
        grouped = _may_need_group_message(customers, sends, held, now, self.budgets)
        return Batch(customers, enrolments, pushes, paused, handed_off, await _recent(session, ids, now),
                     await self._group_messages(session, grouped, now), *await _facts(session, conditions),
                     await _wecom_ids(session, grouped), await _groups_filled(session, filled_watch), sequences, held)

    async def _group_messages(self, session: AsyncSession, ids: list[int], now: datetime) -> dict[int, int]:
        """Group messages each customer got this month (brand time): WeCom's monthly limit."""
        if not ids:
            return {}
        month = datetime.combine(now.astimezone(self.zone).date().replace(day=1), time(), self.zone)
        return {cid: int(n) for cid, n in await session.execute(
            select(NurtureSend.customer_id, func.count())
            .where(NurtureSend.customer_id.in_(ids), NurtureSend.status == "sent", NurtureSend.via == "groupmsg",
                   NurtureSend.sent_at >= month)
            .group_by(NurtureSend.customer_id))}


def _needs(sends: list[NurtureSend], enrolments: dict[int, Enrolment],
           sequences: dict[tuple[str, int], NurtureSequence]) -> tuple[dict[int, Condition], list[int]]:
    """The step conditions to evaluate (by customer), and the customers whose sequence exits on a filled group."""
    conditions: dict[int, Condition] = {}
    filled_watch: list[int] = []
    for send in sends:
        enrolment = enrolments.get(send.enrolment_id or 0)
        if enrolment is None:
            continue
        sequence = sequences[(enrolment.sequence, enrolment.version)]
        when = sequence.steps[send.step_index].when if send.step_index < len(sequence.steps) else None
        if when is not None:
            conditions[send.customer_id] = when
        if sequence.exits_on("group_filled"):
            filled_watch.append(send.customer_id)
    return conditions, filled_watch


def _may_need_group_message(customers: dict[int, Customer], sends: list[NurtureSend],
                            held: dict[tuple[int, str], Allowance], now: datetime, budgets: bool) -> list[int]:
    """Customers no chat can carry all of this batch's sends for: outside the 48-hour window, or (with
    budgets) with fewer messages left than the batch has for them."""
    wanted = Counter(send.customer_id for send in sends)
    ids = []
    for cid, customer in customers.items():
        reach = customer.reach or {}
        if notify_call(reach, "", now=now.timestamp())[0] is None:
            ids.append(cid)
            continue
        channel = str(reach.get("channel", ""))
        allowance = held.get((cid, channel))
        left = 0 if allowance is None else allowance.left(now.timestamp())
        if budgets and channel in QUOTA_CHANNELS and left < wanted[cid]:
            ids.append(cid)
    return ids


async def _recent(session: AsyncSession, ids: list[int], now: datetime) -> dict[int, tuple[int, datetime]]:
    """Marketing each customer was sent in the daily cap's window: how many, and the oldest."""
    return {cid: (int(n), as_utc(oldest) if oldest else now) for cid, n, oldest in await session.execute(
        select(NurtureSend.customer_id, func.count(), func.min(NurtureSend.sent_at))
        .where(NurtureSend.customer_id.in_(ids), NurtureSend.status == "sent", NurtureSend.sent_at > now - CAP_WINDOW)
        .group_by(NurtureSend.customer_id))}


async def _facts(session: AsyncSession, conditions: dict[int, Condition]
                 ) -> tuple[dict[int, set[str]], dict[int, float], dict[int, dict[str, str]]]:
    """Tags, social scores and slots, for the customers whose step has a condition on them."""
    tags: dict[int, set[str]] = defaultdict(set)
    social: dict[int, float] = {}
    slots: dict[int, dict[str, str]] = {}
    need = {kind: [cid for cid, c in conditions.items() if test(c)] for kind, test in (
        ("tags", lambda c: bool(c.tags or c.not_tags)), ("social", lambda c: c.social_min is not None),
        ("slots", lambda c: bool(c.slots)))}
    if need["tags"]:
        for cid, name in await session.execute(select(CustomerTag.customer_id, Tag.name).join(Tag)
                                               .where(CustomerTag.customer_id.in_(need["tags"]))):
            tags[cid].add(name)
    if need["social"]:
        social = {cid: float(score) for cid, score in await session.execute(
            select(SocialStats.customer_id, SocialStats.score).where(SocialStats.customer_id.in_(need["social"])))}
    if need["slots"]:
        for cid, values in await session.execute(
                select(Conversation.customer_id, Conversation.slots)
                .where(Conversation.customer_id.in_(need["slots"])).order_by(Conversation.id)):
            slots[cid] = {**slots.get(cid, {}), **(values or {})}  # the latest conversation's slots win
    return dict(tags), social, slots


async def _wecom_ids(session: AsyncSession, ids: list[int]) -> dict[int, str]:
    if not ids:
        return {}
    return {cid: ext for cid, ext in await session.execute(
        select(Identity.customer_id, Identity.external_id).where(Identity.customer_id.in_(ids),
                                                                 Identity.kind == "wecom"))}


async def _groups_filled(session: AsyncSession, ids: list[int]) -> dict[int, datetime]:
    if not ids:
        return {}
    return {cid: as_utc(at) for cid, at in await session.execute(
        select(GroupMember.customer_id, func.max(GroupBuy.closed_at))
        .join(GroupBuy, GroupBuy.id == GroupMember.group_id)
        .where(GroupMember.customer_id.in_(ids), GroupBuy.status == "filled").group_by(GroupMember.customer_id))
        if at is not None}
