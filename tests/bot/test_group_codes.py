"""Group live codes end to end: created on the fake WeCom, joined through by customers (signed callbacks),
tags and figures in the store; a code that fills its groups and creates the next; bad input that leaves
nothing on WeCom nor in the store."""

from __future__ import annotations

import pytest

from bot.group_join_ways import create_code, deactivate_code, update_code
from bot.wechat_api import ApiError, WeChatApi
from crm_store.group_chat_models import GroupJoinCode
from crm_store.group_code_reports import code_report
from crm_store.group_join_codes import GroupCodeError, GroupCodeSpec, WelcomeLink, code_by_code
from crm_store.tags import tags_of
from tests.bot.conftest import Bot
from tests.bot.group_code_helpers import catalog_tag, customer_id, join, new_group, stored_codes

PURCHASE = ["customer", "repeat", "loyal"]


def contacts(bot: Bot) -> WeChatApi:
    return bot.runtime.apis["wecom.contacts"]


async def report_of(bot: Bot, code: str):  # type: ignore[no-untyped-def]
    async with bot.runtime.sessions() as session:
        row = await code_by_code(session, code)
        assert row is not None
        return await code_report(session, row, PURCHASE)


async def test_a_customer_joining_through_a_live_code_is_tagged_and_counted(bot: Bot) -> None:
    first, second = await new_group(bot, "新品群1"), await new_group(bot, "新品群2")
    await catalog_tag(bot, "新品群")
    spec = GroupCodeSpec("新品群活码", (first, second), room_base_name="新品群", room_base_id=3,
                         welcome_text="欢迎 %NICKNAME% 加入新品群！", welcome_link=WelcomeLink("新品", "https://shop.example.com/n"),
                         tags=("新品群",))
    row = await create_code(bot.runtime.sessions, contacts(bot), spec)
    way = bot.fake.join_ways[row.config_id]
    assert (way.state, way.chat_id_list, way.room_base_name, way.room_base_id) == (row.code, [first, second], "新品群", 3)
    assert row.qr_code == way.qr_code and row.qr_code.startswith("https://")
    template = bot.fake.group_welcome_templates[row.welcome_template_id]
    assert template["text"] == {"content": "欢迎 %NICKNAME% 加入新品群！"} and template["link"]["title"] == "新品"

    await join(bot, "wm_alice", row.config_id)
    await join(bot, "wm_alice", row.config_id)  # scanned again while in the group: WeCom sends nothing
    alice = await customer_id(bot, "wm_alice")
    async with bot.runtime.sessions() as session:
        assert await tags_of(session, alice) == ["新品群"]
    report = await report_of(bot, row.code)
    assert (report.figures.joins, report.figures.members_now, report.figures.new_customers) == (1, 1, 1)
    await bot.simulator.customer_leaves_group(bot.url, "wm_alice", first)
    await bot.drain()
    report = await report_of(bot, row.code)
    assert (report.figures.joins, report.figures.leaves, report.figures.members_now) == (1, 1, 0)


async def test_a_code_that_fills_its_groups_creates_the_next_and_the_store_learns_it(bot: Bot) -> None:
    only = await new_group(bot, "福利群1")
    bot.fake.qr_join_max = 2  # the owner and one customer fill a group
    row = await create_code(bot.runtime.sessions, contacts(bot), GroupCodeSpec("福利群", (only,),
                                                                              room_base_name="福利群", room_base_id=2))
    await join(bot, "wm_first", row.config_id)
    await join(bot, "wm_second", row.config_id)  # the group is full: WeCom creates 福利群2 and puts them in it
    way = bot.fake.join_ways[row.config_id]
    assert len(way.chat_id_list) == 2
    created = way.chat_id_list[1]
    assert bot.fake.group_chats[created].name == "福利群2"
    [stored] = await stored_codes(bot)
    assert stored.chat_ids == [only, created]
    report = await report_of(bot, row.code)
    assert (report.figures.joins, report.figures.members_now, report.figures.joiners) == (2, 2, 2)


async def test_bad_input_leaves_nothing_on_wecom_nor_in_the_store(bot: Bot) -> None:
    groups = tuple([await new_group(bot, f"群{n}") for n in range(6)])
    with pytest.raises(GroupCodeError, match="at most 5 groups"):
        await create_code(bot.runtime.sessions, contacts(bot), GroupCodeSpec("太多", groups))
    with pytest.raises(GroupCodeError, match="unknown group\\(s\\) wr_nope: run scrm groupchats sync first"):
        await create_code(bot.runtime.sessions, contacts(bot), GroupCodeSpec("不认识", (groups[0], "wr_nope")))
    with pytest.raises(GroupCodeError, match="unknown tag\\(s\\) 没有这个"):
        await create_code(bot.runtime.sessions, contacts(bot), GroupCodeSpec("标签", groups[:1], tags=("没有这个",)))
    bot.fake.fail_next("externalcontact/group_welcome_template/add", errcode=45002)
    with pytest.raises(ApiError):  # WeCom refused the welcome after making the join way: the join way goes too
        await create_code(bot.runtime.sessions, contacts(bot), GroupCodeSpec("欢迎", groups[:1], welcome_text="你好"))
    assert bot.fake.join_ways == {} and bot.fake.group_welcome_templates == {}
    assert await stored_codes(bot) == []


async def test_an_update_keeps_the_join_way_and_welcome_in_step_and_deactivating_deletes_it(bot: Bot) -> None:
    first, second = await new_group(bot, "A群"), await new_group(bot, "B群")
    row = await create_code(bot.runtime.sessions, contacts(bot), GroupCodeSpec("活码", (first,), welcome_text="你好"))
    template_id = row.welcome_template_id
    changed = GroupCodeSpec("活码", (first, second), auto_create_room=False, welcome_text="欢迎！",
                            welcome_link=WelcomeLink("福利", "https://shop.example.com/f"))
    stored = await update_code(bot.runtime.sessions, contacts(bot), row.code, changed)
    way = bot.fake.join_ways[row.config_id]
    assert (way.chat_id_list, way.auto_create_room, way.state) == ([first, second], 0, row.code)
    assert stored.welcome_template_id == template_id
    assert bot.fake.group_welcome_templates[template_id] == {"text": {"content": "欢迎！"},
                                                             "link": {"title": "福利", "url": "https://shop.example.com/f"}}
    plain = GroupCodeSpec("活码", (first, second), auto_create_room=False, welcome_text="只有文字")
    stored = await update_code(bot.runtime.sessions, contacts(bot), row.code, plain)  # the card dropped: made anew
    assert bot.fake.group_welcome_templates == {stored.welcome_template_id: {"text": {"content": "只有文字"}}}
    gone = await deactivate_code(bot.runtime.sessions, contacts(bot), row.code)
    assert not gone.active and bot.fake.join_ways == {}
    with pytest.raises(GroupCodeError, match="inactive"):
        await update_code(bot.runtime.sessions, contacts(bot), row.code, plain)
    assert [code.active for code in await stored_codes(bot)] == [False]
    assert isinstance(gone, GroupJoinCode)
