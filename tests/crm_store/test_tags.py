"""Tags on customers: idempotent and race-free adds, causes on the timeline, the WeCom mirror in the outbox."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from crm_store.customers import Profile, resolve_customer, timeline
from crm_store.models import Customer, CustomerTag, OutboxItem, Tag
from crm_store.tags import add_tags, has_tag, remove_tags, sync_catalog, tag_counts, tags_of
from tests.conftest import Backend, Sessions


async def new_customer(
    sessions: Sessions, external_id: str, kind: str = "wecom", owner: str | None = None
) -> Customer:
    async with sessions() as session, session.begin():
        customer = await resolve_customer(session, kind, external_id, Profile(external_id))
        customer.owner_userid = owner
    return customer


async def count(sessions: Sessions, model: type) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_add_tags_is_idempotent_and_records_the_cause(sessions: Sessions) -> None:
    customer = await new_customer(sessions, "wmA")
    async with sessions() as session, session.begin():
        assert await add_tags(
            session, customer, ["高意向", "问过价格", "高意向"], "flow:welcome/ask_budget"
        ) == [
            "高意向",
            "问过价格",
        ]
    async with sessions() as session, session.begin():
        assert await add_tags(session, customer, [" 高意向 ", "VIP"], "admin:li") == ["VIP"]
    async with sessions() as session:
        carried = await tags_of(session, customer.id)
        assert sorted(carried[:2]) == sorted(["高意向", "问过价格"]) and carried[2] == "VIP"  # oldest first
        assert await has_tag(session, customer.id, "VIP") and not await has_tag(session, customer.id, "流失")
        added = [event.data for event in await timeline(session, customer.id) if event.kind == "tag.added"]
        vip_group = await session.scalar(select(Tag.group_name).where(Tag.name == "VIP"))
    assert sorted((data["tag"], data["cause"]) for data in added) == [
        ("VIP", "admin:li"),
        ("问过价格", "flow:welcome/ask_budget"),
        ("高意向", "flow:welcome/ask_budget"),
    ]
    assert vip_group == ""  # a tag outside the catalog is an admin tag
    assert await count(sessions, CustomerTag) == 3
    assert await count(sessions, OutboxItem) == 0  # no rep owns this customer: nothing to mirror


async def test_concurrent_add_of_the_same_tag_gives_one_row_and_no_error(
    sessions: Sessions, backend: Backend
) -> None:
    customer = await new_customer(sessions, "wmRace")
    both_started = asyncio.Barrier(2)

    async def tag_it() -> list[str]:
        async with sessions() as session, session.begin():
            await session.execute(select(1))  # the transaction is open before either writes
            if backend.name == "postgres":
                await both_started.wait()
            return await add_tags(session, customer, ["抢购", "新标签"], "race")

    if backend.name == "sqlite":  # one writer at a time: no race to lose, the second still sees the first
        results = [await tag_it(), await tag_it()]
    else:
        results = list(await asyncio.gather(tag_it(), tag_it()))
    assert sorted(results) == [[], ["抢购", "新标签"]]
    assert await count(sessions, CustomerTag) == 2
    assert await count(sessions, Tag) == 2
    async with sessions() as session:
        assert len([e for e in await timeline(session, customer.id) if e.kind == "tag.added"]) == 2


async def test_mark_tag_is_queued_only_for_a_reps_wecom_contact(sessions: Sessions) -> None:
    contact = await new_customer(sessions, "wmOwned", owner="rep_li")
    no_owner = await new_customer(sessions, "wmNobody")
    oa_only = await new_customer(sessions, "oOA", kind="oa", owner="rep_li")
    async with sessions() as session, session.begin():
        for customer in (contact, no_owner, oa_only):
            await add_tags(session, customer, ["高意向", "VIP"], "test")
        await add_tags(session, contact, ["VIP"], "again")  # nothing new: nothing to mirror
    async with sessions() as session, session.begin():
        assert await remove_tags(session, contact, ["VIP", "从未有过"], "test") == ["VIP"]
        assert await remove_tags(session, contact, ["VIP"], "test") == []
    async with sessions() as session:
        items = list(await session.scalars(select(OutboxItem).order_by(OutboxItem.id)))
        removed = [e.data for e in await timeline(session, contact.id) if e.kind == "tag.removed"]
    assert [(item.kind, item.customer_id, item.queue_key) for item in items] == [
        ("contacts.mark_tag", contact.id, f"customer:{contact.id}")
    ] * 2
    assert items[0].payload == {
        "userid": "rep_li",
        "external_userid": "wmOwned",
        "add_tag_names": ["高意向", "VIP"],
        "remove_tag_names": [],
    }
    assert items[1].payload["add_tag_names"] == [] and items[1].payload["remove_tag_names"] == ["VIP"]
    assert items[0].dedup_key != items[1].dedup_key
    assert removed == [{"tag": "VIP", "cause": "test"}]


async def test_sync_catalog_moves_groups_and_never_deletes_a_tag_in_use(sessions: Sessions) -> None:
    customer = await new_customer(sessions, "wmCat")
    async with sessions() as session, session.begin():
        await sync_catalog(session, {"兴趣": ("护肤", "彩妆", "香水")})
        await add_tags(session, customer, ["护肤"], "test")
    async with sessions() as session, session.begin():
        await sync_catalog(session, {"价值": ("彩妆",)})
    async with sessions() as session:
        counts = await tag_counts(session)
    assert [(c.group, c.tag, c.customers, c.wecom_tag_id) for c in counts] == [
        ("价值", "彩妆", 0, None),
        ("兴趣", "护肤", 1, None),  # gone from the catalog, still carried: kept
    ]


async def test_tag_counts_leave_out_merged_customers(sessions: Sessions) -> None:
    kept = await new_customer(sessions, "wmKeep")
    absorbed = await new_customer(sessions, "wmGone")
    async with sessions() as session, session.begin():
        await add_tags(session, kept, ["VIP"], "test")
        await add_tags(session, absorbed, ["VIP"], "test")
        (await session.get_one(Customer, absorbed.id)).merged_into_id = kept.id
    async with sessions() as session:
        assert [(c.tag, c.customers) for c in await tag_counts(session)] == [("VIP", 1)]
