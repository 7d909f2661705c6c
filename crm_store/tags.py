"""Tags on customers: the brand's catalog, who carries what and why, and the mirror in WeCom.

Adding and removing are idempotent and safe when two workers tag the same customer at
once: the primary key of `customer_tags` decides, through INSERT .. ON CONFLICT DO NOTHING
(PostgreSQL and SQLite alike), and only the transaction that really changed something
reports it, writes the timeline and asks WeCom to mirror it. The mirror is an outbox
row (`contacts.mark_tag`, by tag names): the sender resolves names to corp tag ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import and_, delete, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.customers import record
from crm_store.dialect_insert import dialect_insert
from crm_store.models import Customer, CustomerTag, Identity, Lane, OutboxItem, Tag, utcnow

MARK_TAG = "contacts.mark_tag"


def _clean(names: Iterable[str]) -> list[str]:
    """Stripped, without blanks and repeats, in the caller's order."""
    seen: dict[str, None] = {}
    for name in names:
        name = name.strip()
        if not name:
            continue
        if len(name) > 64:
            raise ValueError(f"tag name longer than 64 characters: {name!r}")
        seen.setdefault(name, None)
    return list(seen)


async def sync_catalog(session: AsyncSession, groups: dict[str, tuple[str, ...]]) -> None:
    """Make the tag table match the published catalog (group -> tag names).

    Tags are upserted by name (a tag that moved group moves); a tag gone from the catalog
    is deleted only when no customer carries it, so history and counts stay intact.
    """
    group_of = {name: group for group, names in groups.items() for name in _clean(names)}  # names are unique
    rows = [{"name": name, "group_name": group_of[name]} for name in sorted(group_of)]
    if rows:
        statement = dialect_insert(session, Tag).values(rows)
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=["name"], set_={"group_name": statement.excluded.group_name}
            )
        )
    in_use = exists().where(CustomerTag.tag_id == Tag.id)
    await session.execute(
        delete(Tag)
        .where(Tag.name.not_in(list(group_of)), ~in_use)
        .execution_options(synchronize_session=False)
    )


async def _tag_ids(session: AsyncSession, names: list[str], create: bool) -> dict[str, int]:
    """name -> tag id; with `create`, unknown names become tags without a group (admin tags)."""
    if create and names:
        await session.execute(
            dialect_insert(session, Tag)
            .values([{"name": name, "group_name": ""} for name in sorted(names)])
            .on_conflict_do_nothing(index_elements=["name"])
        )
    rows = await session.execute(select(Tag.name, Tag.id).where(Tag.name.in_(names)))
    return dict(rows.all())


async def add_tags(session: AsyncSession, customer: Customer, names: Iterable[str], cause: str) -> list[str]:
    """Tag the customer; returns the names it did not carry yet (in the given order)."""
    wanted = _clean(names)
    if not wanted:
        return []
    ids = await _tag_ids(session, wanted, create=True)
    now = utcnow()
    values = [
        {"customer_id": customer.id, "tag_id": tag_id, "cause": cause[:128], "added_at": now}
        for tag_id in sorted(ids.values())  # one lock order for every writer: no deadlock
    ]
    inserted = await session.execute(
        dialect_insert(session, CustomerTag)
        .values(values)
        .on_conflict_do_nothing(index_elements=["customer_id", "tag_id"])
        .returning(CustomerTag.tag_id)
    )
    new_ids = set(inserted.scalars())
    added = [name for name in wanted if ids[name] in new_ids]
    await _changed(session, customer, added, "tag.added", cause)
    return added


async def remove_tags(
    session: AsyncSession, customer: Customer, names: Iterable[str], cause: str
) -> list[str]:
    """Untag the customer; returns the names it did carry (the tags themselves stay in the catalog)."""
    wanted = _clean(names)
    ids = await _tag_ids(session, wanted, create=False)
    if not ids:
        return []
    deleted = await session.execute(
        delete(CustomerTag)
        .where(CustomerTag.customer_id == customer.id, CustomerTag.tag_id.in_(ids.values()))
        .returning(CustomerTag.tag_id)
        .execution_options(synchronize_session=False)
    )
    gone = set(deleted.scalars())
    removed = [name for name in wanted if ids.get(name) in gone]
    await _changed(session, customer, removed, "tag.removed", cause)
    return removed


async def _changed(
    session: AsyncSession, customer: Customer, names: list[str], kind: str, cause: str
) -> None:
    """The timeline entries for what really changed, and the WeCom mirror for a rep's contact."""
    if not names:
        return
    for name in names:
        await record(session, customer.id, kind, {"tag": name, "cause": cause})
    if not customer.owner_userid:
        return
    external_userid = await session.scalar(
        select(Identity.external_id)
        .where(Identity.customer_id == customer.id, Identity.kind == "wecom")
        .order_by(Identity.id)
        .limit(1)
    )
    if external_userid is None:
        return
    adding = kind == "tag.added"
    payload = {
        "userid": customer.owner_userid,
        "external_userid": external_userid,
        "add_tag_names": names if adding else [],
        "remove_tag_names": [] if adding else names,
    }
    session.add(
        OutboxItem(
            dedup_key=f"mark_tag:{customer.id}:{uuid.uuid4().hex}",
            queue_key=f"customer:{customer.id}",
            kind=MARK_TAG,
            payload=payload,
            customer_id=customer.id,
            lane=Lane.TRANSACTIONAL,
        )
    )


async def tags_of(session: AsyncSession, customer_id: int) -> list[str]:
    """The customer's tags, oldest first."""
    rows = await session.scalars(
        select(Tag.name)
        .join(CustomerTag, CustomerTag.tag_id == Tag.id)
        .where(CustomerTag.customer_id == customer_id)
        .order_by(CustomerTag.added_at, Tag.name)
    )
    return list(rows)


async def has_tag(session: AsyncSession, customer_id: int, name: str) -> bool:
    carried = (
        exists()
        .where(CustomerTag.customer_id == customer_id, CustomerTag.tag_id == Tag.id, Tag.name == name.strip())
        .select()
    )
    return bool(await session.scalar(carried))


@dataclass(frozen=True)
class TagCount:
    group: str
    tag: str
    customers: int
    wecom_tag_id: str | None


async def tag_counts(session: AsyncSession) -> list[TagCount]:
    """Every catalog tag with how many (unmerged) customers carry it, unused ones included."""
    carriers = (
        select(CustomerTag.tag_id, CustomerTag.customer_id)
        .join(Customer, and_(Customer.id == CustomerTag.customer_id, Customer.merged_into_id.is_(None)))
        .subquery()
    )
    rows = await session.execute(
        select(Tag.group_name, Tag.name, func.count(carriers.c.customer_id), Tag.wecom_tag_id)
        .outerjoin(carriers, carriers.c.tag_id == Tag.id)
        .group_by(Tag.id, Tag.group_name, Tag.name, Tag.wecom_tag_id)
        .order_by(Tag.group_name, Tag.name)
    )
    return [TagCount(group, name, count, wecom_id) for group, name, count, wecom_id in rows.tuples()]
