"""Finding customers and reading one customer's card: what the admin CLI shows.

A page of customers costs three queries whatever its size (customers, their tags, their
identities): never one query per customer. Text search is a case-insensitive substring
match over names, channel ids and what customers wrote; it scans, which is fine for an
admin looking someone up, not for a hot path.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, SQLColumnExpression, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.customers import timeline
from crm_store.lifecycle import Lifecycle
from crm_store.models import Customer, CustomerTag, Identity, StageChange, Tag, TimelineEvent


@dataclass(frozen=True)
class CustomerRow:
    id: int
    display_name: str
    stage: str
    tags: tuple[str, ...]
    last_seen_at: datetime | None
    identities: tuple[str, ...]  # "wecom:wmXXXX", "oa:oXXXX"


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
class CustomerCard:
    row: CustomerRow
    stage_label: str
    marketing_opt_out: bool
    owner_userid: str | None
    stage_history: list[StageStep]  # oldest first
    timeline: list[TimelineEntry]  # newest first


async def find_customers(
    session: AsyncSession,
    *,
    tags: Sequence[str] = (),
    stage: str | None = None,
    text: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[CustomerRow]:
    """Unmerged customers carrying every one of `tags`, in `stage`, matching `text`; most recently seen first."""
    query = select(Customer).where(Customer.merged_into_id.is_(None))
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
    query = (
        query.order_by(Customer.last_seen_at.desc().nulls_last(), Customer.id.desc())
        .limit(limit)
        .offset(offset)
    )
    customers = list(await session.scalars(query))
    return await _rows(session, customers)


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


async def _rows(session: AsyncSession, customers: list[Customer]) -> list[CustomerRow]:
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
        )
        for customer in customers
    ]


async def customer_card(
    session: AsyncSession, customer_id: int, lifecycle: Lifecycle, timeline_limit: int = 50
) -> CustomerCard | None:
    """Everything about one customer; a merged id shows the customer it was merged into."""
    customer = await session.get(Customer, customer_id)
    seen: set[int] = set()
    while customer is not None and customer.merged_into_id is not None and customer.id not in seen:
        seen.add(customer.id)
        customer = await session.get(Customer, customer.merged_into_id)
    if customer is None:
        return None
    [row] = await _rows(session, [customer])
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
    )
