"""Group members to customers: the customer behind each external member, created when unknown.

A group member who never added a rep is still a customer we know (identity kind "wecom",
the external userid). A full sync meets thousands of them at once, so known identities are
read in one statement and the new customers and their identities inserted in two, then read
back. The identities go in with ON CONFLICT DO NOTHING, in userid order: when a concurrent transaction (a
callback, a message, another apply) is creating the same identity, ours waits for it and is
then skipped, the customer we made for it is deleted unused (it has no identity and nothing
on its timeline yet), and the member is resolved to theirs. No duplicate customer, and no
statement fails. Members with a unionid, identities of merged customers and the ones lost to
such a race go through `resolve_customer`, which holds the merge rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, cast

from sqlalchemy import String, Table, and_, bindparam, delete, func, insert, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.bulk_rows import insert_rows
from crm_store.customers import Profile, record, resolve_customer
from crm_store.models import Customer, Identity, utcnow

if TYPE_CHECKING:
    from crm_store.group_chat_info import MemberInfo

KIND = "wecom"
CUSTOMERS = cast(Table, Customer.__table__)  # Core: rows in bulk, no objects wanted back
IDENTITIES = cast(Table, Identity.__table__)


async def customer_ids_for(session: AsyncSession, members: Sequence[MemberInfo]) -> dict[str, int]:
    """External userid -> the live customer's id, for every member given (a userid given twice: once)."""
    unique = {member.userid: member for member in members}
    if not unique:
        return {}
    found, slow = await _known(session, unique)
    new = [member for userid, member in sorted(unique.items()) if userid not in found and member not in slow]
    slow.extend(member for member in new if member.unionid)
    created, lost = await _created(session, [member for member in new if not member.unionid])
    found |= created
    for member in [*slow, *lost]:
        found[member.userid] = (await resolve_customer(session, KIND, member.userid,
                                                       Profile(member.name, member.unionid))).id
    return found


async def _known(session: AsyncSession, unique: dict[str, MemberInfo]) -> tuple[dict[str, int], list[MemberInfo]]:
    """The members whose identity exists: its customer's id, or (merged away) for `resolve_customer`."""
    columns = (IDENTITIES.c.external_id, CUSTOMERS.c.id, CUSTOMERS.c.merged_into_id)
    if session.get_bind().dialect.name == "postgresql":
        # joined to the userids unnested: an index lookup each, whatever the statistics say (an IN list of
        # thousands, planned while the sync fills the table, was scanned row by row: 0.7 s a batch)
        wanted = func.unnest(bindparam("wanted", list(unique), type_=ARRAY(String))).table_valued(
            "external_id").render_derived()
        statement = select(*columns).select_from(wanted).join(IDENTITIES, and_(
            IDENTITIES.c.kind == KIND, IDENTITIES.c.external_id == wanted.c.external_id))
    else:
        statement = select(*columns).where(IDENTITIES.c.kind == KIND, IDENTITIES.c.external_id.in_(list(unique)))
    rows = await session.execute(statement.join(CUSTOMERS, CUSTOMERS.c.id == IDENTITIES.c.customer_id))
    found: dict[str, int] = {}
    slow: list[MemberInfo] = []
    for userid, customer_id, merged_into in rows:
        if merged_into is None:
            found[userid] = customer_id
        else:
            slow.append(unique[userid])
    return found, slow


async def _created(session: AsyncSession,
                   members: Sequence[MemberInfo]) -> tuple[dict[str, int], list[MemberInfo]]:
    """New customers and their identities in bulk; the members whose identity another transaction made first."""
    if not members:
        return {}, []
    now = utcnow()
    ids = await _insert_customers(session, members, now)
    await insert_rows(session, IDENTITIES, [
        {"customer_id": customer_id, "kind": KIND, "external_id": member.userid, "created_at": now}
        for member, customer_id in zip(members, ids, strict=True)], conflict=("kind", "external_id"))
    owners, _ = await _known(session, {member.userid: member for member in members})
    ours = set(ids)
    mine = {userid: customer_id for userid, customer_id in owners.items() if customer_id in ours}
    unused = [customer_id for member, customer_id in zip(members, ids, strict=True) if member.userid not in mine]
    if unused:  # made meanwhile by someone else: ours never had an identity, so nothing refers to it
        await session.execute(delete(CUSTOMERS).where(CUSTOMERS.c.id.in_(unused)))
    for customer_id in sorted(mine.values()):
        await record(session, customer_id, "customer.created", {"via": KIND, "from": "group"})
    return mine, [member for member in members if member.userid not in mine]


async def _insert_customers(session: AsyncSession, members: Sequence[MemberInfo], now: datetime) -> list[int]:
    """One new customer per member, their ids in the members' order."""
    if session.get_bind().dialect.name != "postgresql":
        created = await session.execute(
            insert(CUSTOMERS).returning(CUSTOMERS.c.id, sort_by_parameter_order=True),
            [{"display_name": member.name, "created_at": now} for member in members])
        return list(created.scalars())
    # the ids drawn first, so the rows can go as arrays (the other columns take their server defaults)
    ids = list(await session.scalars(select(func.nextval(func.pg_get_serial_sequence("customers", "id")))
                                     .select_from(func.generate_series(1, len(members)))))
    await insert_rows(session, CUSTOMERS, [{"id": customer_id, "display_name": member.name, "created_at": now}
                                           for member, customer_id in zip(members, ids, strict=True)])
    return ids
