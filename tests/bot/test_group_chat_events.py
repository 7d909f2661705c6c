"""Customer groups' change events end to end: signed, encrypted callbacks, the fake WeCom's groups, a real store.

Every change type and scene goes through /wecom/contacts/callback; the worker reads the group
with groupchat/get and applies it. A repeated callback, a retried item and an unknown group
change nothing twice and crash nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.channels.wecom import WecomCallback
from bot.sandbox import wechat_side
from bot.sandbox.fake_groupchat_state import FakeJoinWay
from bot.sandbox.wechat_side import external_chat_xml
from core.events import Effect, Note, ToRep
from crm_store.customers import find_identity
from crm_store.group_chat_models import GroupChat, GroupChatChange, GroupChatMember, GroupJoinCode
from crm_store.group_chats import group_by_chat_id
from crm_store.models import InboxItem, OutboxItem, TimelineEvent
from tests.bot.conftest import Bot
from tests.bot.group_code_helpers import post_chat, settle

FAST_RETRIES = {"worker": {"poll_interval_s": 0.05, "max_attempts": 4, "retry_base_s": 0.05}}


async def deliver(bot: Bot, xmls: Sequence[str]) -> None:
    for xml in xmls:
        assert await post_chat(bot, xml) == 200
    await bot.drain()


async def members(bot: Bot, chat_id: str) -> dict[str, GroupChatMember]:
    async with bot.runtime.sessions() as session:
        group = await group_by_chat_id(session, chat_id)
        assert group is not None
        rows = await session.scalars(select(GroupChatMember).where(GroupChatMember.group_id == group.id))
        return {row.userid: row for row in rows}


async def stored_group(bot: Bot, chat_id: str) -> GroupChat:
    async with bot.runtime.sessions() as session:
        group = await group_by_chat_id(session, chat_id)
        assert group is not None
        return group


async def changes(bot: Bot, userid: str) -> list[tuple[str, int]]:
    async with bot.runtime.sessions() as session:
        rows = await session.execute(select(GroupChatChange.change, GroupChatChange.scene)
                                     .where(GroupChatChange.userid == userid).order_by(GroupChatChange.id))
        return [(change, scene) for change, scene in rows]


async def group_timeline(bot: Bot, userid: str) -> list[tuple[str, dict[str, Any]]]:
    async with bot.runtime.sessions() as session:
        identity = await find_identity(session, "wecom", userid)
        assert identity is not None
        rows = await session.execute(select(TimelineEvent.kind, TimelineEvent.data)
                                     .where(TimelineEvent.customer_id == identity.customer_id,
                                            TimelineEvent.kind.startswith("group."))
                                     .order_by(TimelineEvent.id))
        return [(kind, data) for kind, data in rows]


async def inbox_statuses(bot: Bot) -> list[str]:
    async with bot.runtime.sessions() as session:
        return list(await session.scalars(select(InboxItem.status).where(InboxItem.kind == "group_changed")))


def test_the_event_is_parsed_into_one_group_change_with_a_retry_stable_key() -> None:
    xml = external_chat_xml("corp", "wrChat1", "update", "del_member", quit_scene=1, members=["wmA"],
                            last_mem_ver="v1", cur_mem_ver="v2", created=1_700_000_000)
    callback = WecomCallback("contacts", "token", "a" * 43, "corp", 0)
    message = wechat_side.sign_wecom("token", "a" * 43, "corp", xml)
    first = callback.parse(callback.open(message.query, message.body))
    again = callback.parse(callback.open(message.query, message.body))
    assert len(first) == 1 and first == again
    event = first[0]
    assert event.kind == "group_changed" and event.sender == "wrChat1" and event.queue_key == "groupchat:wrChat1"
    assert event.extra == {"change_type": "update", "update_detail": "del_member", "join_scene": 0, "quit_scene": 1,
                           "mem_change_cnt": 1, "last_mem_ver": "v1", "cur_mem_ver": "v2"}
    assert event.dedup_key == "groupchat:wrChat1:update:del_member:1700000000:v2"


async def test_a_callback_without_a_chat_id_is_refused_as_malformed(bot: Bot) -> None:
    xml = external_chat_xml(bot.settings.wecom.corp_id, "", "create")
    assert await post_chat(bot, xml) == 400
    assert await inbox_statuses(bot) == []


async def test_a_created_group_is_stored_with_its_members(bot: Bot) -> None:
    chat_id, xml = bot.fake.create_group_chat("zhang", "新品群", ["wmAlice", "wmBob", "li"], notice="欢迎")
    await deliver(bot, [xml])
    group = await stored_group(bot, chat_id)
    assert (group.name, group.owner_userid, group.notice, group.members) == ("新品群", "zhang", "欢迎", 4)
    rows = await members(bot, chat_id)
    assert {userid: row.kind for userid, row in rows.items()} == {"zhang": "rep", "wmAlice": "customer",
                                                                   "wmBob": "customer", "li": "rep"}
    assert rows["wmAlice"].customer_id is not None and rows["wmAlice"].invitor_userid == "zhang"
    assert await group_timeline(bot, "wmAlice") == [("group.joined", {"chat_id": chat_id, "group": "新品群",
                                                                      "scene": "邀请"})]
    assert await inbox_statuses(bot) == ["done"]


async def test_a_qr_join_through_a_live_code_links_the_member_to_the_code(bot: Bot) -> None:
    chat_id, created = bot.fake.create_group_chat("zhang", "门店群")
    bot.fake.join_ways["cfg1"] = FakeJoinWay("cfg1", 2, [chat_id], state="gc_store")
    async with bot.runtime.sessions() as session, session.begin():
        session.add(GroupJoinCode(code="gc_store", name="门店群码", config_id="cfg1", chat_ids=[chat_id]))
    await deliver(bot, [created, *bot.fake.join_group("wmScan", config_id="cfg1", scene=3)])
    rows = await members(bot, chat_id)
    async with bot.runtime.sessions() as session:
        code = await session.scalar(select(GroupJoinCode).where(GroupJoinCode.code == "gc_store"))
    assert code is not None
    assert rows["wmScan"].code_id == code.id and rows["wmScan"].state == "gc_store" and rows["wmScan"].join_scene == 3
    assert (await stored_group(bot, chat_id)).code_id == code.id
    assert await changes(bot, "wmScan") == [("join", 3)]
    assert await group_timeline(bot, "wmScan") == [("group.joined", {"chat_id": chat_id, "group": "门店群",
                                                                     "scene": "扫码", "code": "gc_store"})]


async def test_leaving_and_being_removed_are_recorded_with_their_scene(bot: Bot) -> None:
    chat_id, created = bot.fake.create_group_chat("zhang", "老客群", ["wmLeaver", "wmRemoved"])
    await deliver(bot, [created])
    await deliver(bot, [bot.fake.leave_group(chat_id, "wmLeaver", 0)])
    await deliver(bot, [bot.fake.leave_group(chat_id, "wmRemoved", 1)])
    rows = await members(bot, chat_id)
    assert rows["wmLeaver"].left_at is not None and rows["wmLeaver"].quit_scene == 0
    assert rows["wmRemoved"].left_at is not None and rows["wmRemoved"].quit_scene == 1
    assert await changes(bot, "wmLeaver") == [("join", 1), ("leave", 0)]
    assert await changes(bot, "wmRemoved") == [("join", 1), ("leave", 1)]
    assert [(kind, data["scene"]) for kind, data in await group_timeline(bot, "wmRemoved")] == [
        ("group.joined", "邀请"), ("group.left", "被移出")]
    assert (await stored_group(bot, chat_id)).members == 1


async def test_a_repeated_callback_and_a_retried_read_change_nothing_twice(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot(**FAST_RETRIES)
    chat_id, created = bot.fake.create_group_chat("zhang", "复购群")
    await deliver(bot, [created])
    joins = bot.fake.join_group("wmTwice", chat_id=chat_id, scene=2)
    bot.fake.fail_next("externalcontact/groupchat/get", errcode=45009)  # slow down: the item is tried again
    for _ in range(3):  # WeChat retries the same callback
        assert await post_chat(bot, joins[0]) == 200
    await settle(bot)
    assert await changes(bot, "wmTwice") == [("join", 2)]
    assert len(await group_timeline(bot, "wmTwice")) == 1
    assert await inbox_statuses(bot) == ["done", "done"]


async def test_rename_notice_and_owner_changes_are_applied(bot: Bot) -> None:
    chat_id, created = bot.fake.create_group_chat("zhang", "一群", ["wmA"])
    await deliver(bot, [created, bot.fake.rename_group(chat_id, "二群"), bot.fake.change_notice(chat_id, "周三上新")])
    bot.fake.join_group("li", chat_id=chat_id, scene=1)
    bot.fake.group_chats[chat_id].owner = "li"
    await deliver(bot, [external_chat_xml(bot.settings.wecom.corp_id, chat_id, "update", "change_owner")])
    group = await stored_group(bot, chat_id)
    assert (group.name, group.notice, group.owner_userid) == ("二群", "周三上新", "li")
    assert set(await members(bot, chat_id)) == {"zhang", "wmA", "li"}


async def test_a_dismissed_group_lets_everyone_leave_without_reading_it(bot: Bot) -> None:
    chat_id, created = bot.fake.create_group_chat("zhang", "散群", ["wmA", "wmB"])
    await deliver(bot, [created])
    reads = bot.fake.calls.count("externalcontact/groupchat/get")
    dismissed = bot.fake.dismiss_group(chat_id)
    await deliver(bot, [dismissed, dismissed])
    assert bot.fake.calls.count("externalcontact/groupchat/get") == reads
    group = await stored_group(bot, chat_id)
    assert group.status == "dismissed" and group.members == 0
    assert all(row.left_at is not None for row in (await members(bot, chat_id)).values())
    assert await changes(bot, "wmA") == [("join", 1), ("leave", 2)]
    assert (await group_timeline(bot, "wmA"))[-1][1]["scene"] == "群解散"


async def test_an_unknown_chat_id_is_answered_and_finished_without_a_crash(bot: Bot) -> None:
    xml = external_chat_xml(bot.settings.wecom.corp_id, "wrNoSuchGroup", "update", "add_member", join_scene=3,
                            members=["wmX"], cur_mem_ver="v9")
    assert await post_chat(bot, xml) == 200
    await bot.drain()
    assert await inbox_statuses(bot) == ["done"]
    assert bot.fake.calls.count("externalcontact/groupchat/get") == 1  # once: no retry storm
    async with bot.runtime.sessions() as session:
        assert await group_by_chat_id(session, "wrNoSuchGroup") is None


async def test_the_join_hook_sees_each_customer_who_joined_once_and_its_effects_are_sent(bot: Bot) -> None:
    seen: list[str] = []

    async def hook(session: AsyncSession, group: GroupChat, member: GroupChatMember) -> Sequence[Effect]:
        seen.append(member.userid)
        return [Note("group.welcomed", {"chat_id": group.chat_id}),
                ToRep(group.owner_userid, f"{member.userid} 进群了")]

    assert bot.runtime.worker.group_chats is not None
    bot.runtime.worker.group_chats.on_join = hook
    chat_id, created = bot.fake.create_group_chat("zhang", "钩子群")
    joins = bot.fake.join_group("wmHooked", chat_id=chat_id, scene=3)
    await deliver(bot, [created, *joins, *joins])
    assert seen == ["wmHooked"]  # the owner (a rep) is no customer; the repeat changes nothing
    assert [kind for kind, _ in await group_timeline(bot, "wmHooked")] == ["group.joined", "group.welcomed"]
    async with bot.runtime.sessions() as session:
        rows = await session.scalar(select(func.count()).select_from(OutboxItem))
    assert rows == 1
    assert [sent.text for sent in bot.fake.messages_to("zhang")] == ["wmHooked 进群了"]


async def test_a_read_older_than_the_event_is_tried_again_then_applied(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot(**FAST_RETRIES)
    chat_id, created = bot.fake.create_group_chat("zhang", "慢群")
    await deliver(bot, [created])
    bot.fake.join_group("wmLate", chat_id=chat_id, scene=3)
    shown = bot.fake.group_chats[chat_id].mem_ver()  # what groupchat/get shows: the version before this change
    early = external_chat_xml(bot.settings.wecom.corp_id, chat_id, "update", "add_member", join_scene=3,
                              members=["wmLate"], last_mem_ver=shown, cur_mem_ver="not-yet-visible")
    reads = bot.fake.calls.count("externalcontact/groupchat/get")
    assert await post_chat(bot, early) == 200
    await settle(bot)
    assert bot.fake.calls.count("externalcontact/groupchat/get") - reads == 3  # two early reads, then applied
    assert await changes(bot, "wmLate") == [("join", 3)]
    assert await inbox_statuses(bot) == ["done", "done"]
