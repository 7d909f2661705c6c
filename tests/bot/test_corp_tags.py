"""Tags reach WeCom: mark_tag outbox rows sent by the real sender, names resolved to corp tag ids."""

from __future__ import annotations

from sqlalchemy import select

from crm_store.customers import Profile, resolve_customer
from crm_store.models import Customer, OutboxItem, Tag
from crm_store.tags import add_tags, remove_tags, sync_catalog
from tests.bot.conftest import Bot

ADD_CORP_TAG = "externalcontact/add_corp_tag"


async def rep_contact(bot: Bot, external_userid: str, owner: str = "rep_li") -> Customer:
    async with bot.runtime.sessions() as session, session.begin():
        customer = await resolve_customer(session, "wecom", external_userid, Profile(external_userid))
        customer.owner_userid = owner or None
    return customer


async def tag(bot: Bot, customer: Customer, names: list[str], remove: bool = False) -> None:
    async with bot.runtime.sessions() as session, session.begin():
        await sync_catalog(session, {"意向": ("高意向", "问过价格")})
        change = remove_tags if remove else add_tags
        await change(session, customer, names, "test")


async def outbox(bot: Bot) -> list[tuple[str, str | None]]:
    async with bot.runtime.sessions() as session:
        rows = await session.execute(select(OutboxItem.status, OutboxItem.last_error).order_by(OutboxItem.id))
        return [(status, error) for status, error in rows.all()]


async def test_a_missing_corp_tag_is_created_once_and_marked(bot: Bot) -> None:
    may, li = await rep_contact(bot, "wmMay"), await rep_contact(bot, "wmLi")
    await tag(bot, may, ["高意向", "VIP"])
    await tag(bot, li, ["高意向", "VIP"])
    await bot.drain()
    assert await outbox(bot) == [("done", None), ("done", None)]
    assert bot.fake.corp_tag_names("wmMay", "rep_li") == {"高意向", "VIP"}
    assert bot.fake.corp_tag_names("wmLi") == {"高意向", "VIP"}
    assert bot.fake.calls.count(ADD_CORP_TAG) == 2  # one per group, for the first contact only
    groups = {g["group_name"]: [t["name"] for t in g["tag"]] for g in bot.fake.corp_tag_groups}
    assert groups == {"意向": ["高意向"], "SCRM": ["VIP"]}
    async with bot.runtime.sessions() as session:
        stored = dict((await session.execute(select(Tag.name, Tag.wecom_tag_id))).all())
    wecom_ids = {t["name"]: t["id"] for g in bot.fake.corp_tag_groups for t in g["tag"]}
    assert stored == {"高意向": wecom_ids["高意向"], "VIP": wecom_ids["VIP"], "问过价格": None}


async def test_a_corp_tag_made_in_the_console_is_found_not_created(bot: Bot) -> None:
    console_id = bot.fake.create_corp_tag("意向", "问过价格")
    may = await rep_contact(bot, "wmMay")
    await tag(bot, may, ["问过价格"])
    await bot.drain()
    assert bot.fake.calls.count(ADD_CORP_TAG) == 0
    assert bot.fake.contact_tags[("rep_li", "wmMay")] == {console_id}


async def test_removal_unmarks_and_a_tag_wecom_never_had_needs_no_call(bot: Bot) -> None:
    may = await rep_contact(bot, "wmMay", owner="")
    await tag(bot, may, ["旧标签"])  # carried before the customer added a rep: never mirrored
    may = await rep_contact(bot, "wmMay")
    await tag(bot, may, ["高意向", "问过价格"])
    await bot.drain()
    await tag(bot, may, ["高意向"], remove=True)
    await tag(bot, may, ["旧标签"], remove=True)
    await bot.drain()
    assert bot.fake.corp_tag_names("wmMay") == {"问过价格"}
    assert bot.fake.calls.count("externalcontact/mark_tag") == 2  # the unmirrored removal needed no call
    assert "旧标签" not in {t["name"] for g in bot.fake.corp_tag_groups for t in g["tag"]}
    assert [status for status, _ in await outbox(bot)] == ["done"] * 3


async def test_name_taken_while_creating_reads_the_library_again(bot: Bot) -> None:
    bot.fake.fail_next(ADD_CORP_TAG, errcode=40071)  # another system created it in between
    may = await rep_contact(bot, "wmMay")
    await tag(bot, may, ["高意向"])
    await bot.drain()
    assert bot.fake.calls.count(ADD_CORP_TAG) == 2
    assert bot.fake.corp_tag_names("wmMay") == {"高意向"}
    assert await outbox(bot) == [("done", None)]


async def test_a_customer_the_rep_does_not_have_fails_visibly(bot: Bot) -> None:
    bot.fake.add_follow_user("wmMay", "rep_wang")
    may = await rep_contact(bot, "wmMay", owner="rep_li")
    await tag(bot, may, ["高意向"])
    await bot.drain()
    [(status, error)] = await outbox(bot)
    assert status == "failed" and error is not None and error.startswith("errcode 84061")
    assert bot.fake.corp_tag_names("wmMay") == set()
