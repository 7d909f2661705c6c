"""One customer behind all of a person's identities, and the customer's timeline.

A WeCom external_userid (kf and contacts share it within a corp) and an OA openid are
identities; a known unionid ties them to one customer, merging two customers that were
created before the unionid was known.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.allowances import HeldMessage
from crm_store.growth_merge import merge_growth
from crm_store.handoff_merge import merge_handoffs
from crm_store.models import (
    Conversation,
    Customer,
    CustomerTag,
    Identity,
    IntentCount,
    OutboxItem,
    StageChange,
    TimelineEvent,
    as_utc,
    utcnow,
)

SEEN_EVERY = timedelta(minutes=1)  # last_seen_at is written at most this often: not a row update per message


@dataclass(frozen=True)
class Profile:
    """What the channel's API told us about a new identity."""

    display_name: str = ""
    unionid: str = ""


async def find_identity(session: AsyncSession, kind: str, external_id: str) -> Identity | None:
    return await session.scalar(select(Identity).where(Identity.kind == kind, Identity.external_id == external_id))


async def resolve_customer(
    session: AsyncSession, kind: str, external_id: str, profile: Profile | None = None
) -> Customer:
    """The customer behind an identity, created on first contact and merged by unionid."""
    profile = profile or Profile()
    owner = await session.scalar(
        select(Customer).join(Identity).where(Identity.kind == kind, Identity.external_id == external_id)
    )
    if owner is None:
        customer = await _customer_for_new_identity(session, kind, external_id, profile)
    else:
        customer = await _follow_merges(session, owner)
        if profile.unionid and customer.unionid != profile.unionid:
            customer = await _attach_unionid(session, customer, profile.unionid)
    touch(customer)
    return customer


def touch(customer: Customer) -> None:
    """The customer was seen now: written at most once every SEEN_EVERY."""
    now = utcnow()
    if customer.last_seen_at is None or as_utc(customer.last_seen_at) <= now - SEEN_EVERY:
        customer.last_seen_at = now


async def _customer_for_new_identity(
    session: AsyncSession, kind: str, external_id: str, profile: Profile, retry: bool = True
) -> Customer:
    """Attach the identity to the customer holding its unionid, or to a new customer.

    Runs in a savepoint: when another worker concurrently added the same identity or a
    customer with the same unionid, the unique constraints refuse ours and we use theirs.
    """
    try:
        async with session.begin_nested():
            customer = None
            if profile.unionid:
                customer = await session.scalar(select(Customer).where(Customer.unionid == profile.unionid))
            if customer is None:
                customer = Customer(display_name=profile.display_name, unionid=profile.unionid or None)
                session.add(customer)
                await session.flush()
                await record(session, customer.id, "customer.created", {"via": kind})
            session.add(Identity(customer_id=customer.id, kind=kind, external_id=external_id))
            await session.flush()
        return customer
    except IntegrityError:
        if not retry:
            raise
    identity = await find_identity(session, kind, external_id)
    if identity is not None:
        return await live_customer(session, identity.customer_id)
    return await _customer_for_new_identity(session, kind, external_id, profile, retry=False)


async def live_customer(session: AsyncSession, customer_id: int) -> Customer:
    return await _follow_merges(session, await session.get_one(Customer, customer_id))


async def _follow_merges(session: AsyncSession, customer: Customer) -> Customer:
    while customer.merged_into_id is not None:
        customer = await session.get_one(Customer, customer.merged_into_id)
    return customer


async def _attach_unionid(session: AsyncSession, customer: Customer, unionid: str) -> Customer:
    """Give the customer its unionid, merging into the customer that already holds it."""
    holder = await session.scalar(select(Customer).where(Customer.unionid == unionid))
    if holder is None:
        customer.unionid = unionid
        return customer
    await merge_customers(session, keep=holder, absorb=customer)
    return holder


async def merge_customers(session: AsyncSession, keep: Customer, absorb: Customer) -> None:
    """Move identities, timeline, tags, stage history, conversations, pending and held messages and the growth
    history (referrals, groups, rewards, social value: crm_store/growth_merge.py) and the handoffs
    to `keep`.

    `absorb` points at `keep` from now on. Tags both carry stay once; absorb's running
    conversation ends (keep's, if any, is the one that goes on).
    """
    for keyed in (CustomerTag, IntentCount):
        await session.execute(
            delete(keyed).where(
                keyed.customer_id == absorb.id,
                _duplicate_key(keyed).in_(select(_duplicate_key(keyed)).where(keyed.customer_id == keep.id)),
            )
        )
    await session.execute(
        update(Conversation)
        .where(Conversation.customer_id == absorb.id, Conversation.status == "active")
        .values(status="ended", end_reason="merged", wake_at=None)
        .execution_options(synchronize_session=False)
    )
    for model in (Identity, TimelineEvent, OutboxItem, CustomerTag, IntentCount, StageChange, Conversation,
                  HeldMessage):
        await session.execute(
            update(model)
            .where(model.customer_id == absorb.id)
            .values(customer_id=keep.id)
            .execution_options(synchronize_session=False)
        )
    await merge_growth(session, keep.id, absorb.id)
    await merge_handoffs(session, keep.id, absorb.id)
    keep.stages_reached = add_stages(keep.stages_reached, *stages_of(absorb.stages_reached, absorb.stage))
    absorb.merged_into_id = keep.id
    if keep.entry_channel_id is None:
        keep.entry_channel_id = absorb.entry_channel_id
    if not keep.display_name:
        keep.display_name = absorb.display_name
    for held in session.info.get(HELD_TIMELINE) or []:
        if held.customer_id == absorb.id:
            held.customer_id = keep.id
    await record(session, keep.id, "customer.merged", {"absorbed_customer_id": absorb.id})


def add_stages(stages_reached: str | None, *stages: str) -> str:
    """`Customer.stages_reached` with `stages` added: sorted, comma-separated, each once."""
    return ",".join(sorted({*stages_of(stages_reached), *stages} - {""}))


def stages_of(stages_reached: str | None, current: str = "") -> set[str]:
    """Every stage a customer has reached: its `stages_reached` and its current stage."""
    return {stage for stage in (stages_reached or "").split(",") if stage} | ({current} if current else set())


def _duplicate_key(model: type[CustomerTag] | type[IntentCount]) -> Any:
    return CustomerTag.tag_id if model is CustomerTag else IntentCount.intent


# A turn records several timeline rows (the message, tags, a stage, notes, replies): held in the session
# and written in one INSERT at its end, in the order recorded, instead of one flush each.
HELD_TIMELINE = "scrm.held_timeline"


@dataclass
class HeldEvent:
    customer_id: int
    kind: str
    data: dict[str, Any]


async def record(session: AsyncSession, customer_id: int, kind: str, data: dict[str, Any] | None = None) -> None:
    """Add an event to the customer's timeline (in the caller's transaction). In a turn (`hold_timeline`)
    the row waits with the turn's others, to be written with them by `write_timeline`."""
    held = session.info.get(HELD_TIMELINE)
    if held is not None:
        held.append(HeldEvent(customer_id, kind, data if data is not None else {}))
    else:
        session.add(TimelineEvent(customer_id=customer_id, kind=kind, data=data or {}))


def hold_timeline(session: AsyncSession) -> None:
    """From now until `write_timeline`, `record` holds rows instead of adding them to the session."""
    session.info[HELD_TIMELINE] = []


async def write_timeline(session: AsyncSession) -> None:
    """Write the held rows, in the order recorded, in one statement; `record` adds to the session again."""
    held: list[HeldEvent] = session.info.pop(HELD_TIMELINE, None) or []
    if held:
        now = utcnow()
        await session.execute(insert(cast(Table, TimelineEvent.__table__)), [  # Core: no objects wanted back
            {"customer_id": event.customer_id, "kind": event.kind, "data": event.data, "created_at": now}
            for event in held
        ])


def held_events(session: AsyncSession, customer_id: int, kinds: tuple[str, ...]) -> list[HeldEvent]:
    """The customer's rows of these kinds held in this turn, newest first: readers of the timeline see
    what the turn recorded so far as well as what is written."""
    held: list[HeldEvent] = session.info.get(HELD_TIMELINE) or []
    return [event for event in reversed(held) if event.customer_id == customer_id and event.kind in kinds]


async def timeline(session: AsyncSession, customer_id: int, limit: int = 50) -> list[TimelineEvent]:
    rows = await session.scalars(
        select(TimelineEvent)
        .where(TimelineEvent.customer_id == customer_id)
        .order_by(TimelineEvent.id.desc())
        .limit(limit)
    )
    return list(rows)
