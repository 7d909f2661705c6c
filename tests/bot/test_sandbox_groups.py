"""Customer groups through the sandbox: the simulator's callbacks reach the real contacts endpoint, signed and
encrypted, and the bot keeps the groups as WeCom describes them; the page's routes join and leave a group."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from crm_store.group_chat_models import GroupChat, GroupChatMember
from crm_store.models import InboxItem
from tests.bot.conftest import Bot
from tests.bot.test_sandbox_page import CHROMIUM, CHROMIUM_FLAGS

AMY = "amy"


async def members_of(bot: Bot, chat_id: str) -> dict[str, GroupChatMember]:
    async with bot.runtime.sessions() as session:
        group = await session.scalar(select(GroupChat).where(GroupChat.chat_id == chat_id))
        assert group is not None, f"the bot does not know group {chat_id}"
        rows = await session.scalars(select(GroupChatMember).where(GroupChatMember.group_id == group.id))
        return {row.userid: row for row in rows}


async def join_way(bot: Bot, chat_ids: list[str], state: str) -> str:
    """A group live code, as `scrm groupchats codes create` makes one through add_join_way."""
    answer = await bot.fake.add_join_way(None, {"scene": 2, "chat_id_list": chat_ids, "state": state,
                                                "remark": f"code {state}", "room_base_name": "沙盒群"})
    return str(answer["config_id"])


async def test_callbacks_of_every_kind_reach_the_bot_and_it_follows_the_group(bot: Bot) -> None:
    chat_id, status = await bot.simulator.group_created(bot.url, AMY, "新品群", ["wmFirst"])
    config_id = await join_way(bot, [chat_id], "gc_sandbox")
    statuses = [status,
                await bot.simulator.customer_joins_group(bot.url, "wmScan", config_id=config_id, name="扫码"),
                await bot.simulator.rep_invites(bot.url, AMY, "wmInvited", chat_id),
                await bot.simulator.customer_leaves_group(bot.url, "wmFirst", chat_id),
                await bot.simulator.group_renamed(bot.url, chat_id, "新品群 2 号"),
                await bot.simulator.group_notice_changed(bot.url, chat_id, "每天 9 点上新")]
    assert statuses == [200] * 6
    await bot.drain()
    members = await members_of(bot, chat_id)
    assert set(members) == {AMY, "wmScan", "wmInvited"}
    assert (members["wmScan"].state, members["wmScan"].join_scene) == ("gc_sandbox", 3)
    assert (members["wmInvited"].join_scene, members["wmInvited"].invitor_userid) == (1, AMY)
    async with bot.runtime.sessions() as session:
        group = await session.scalar(select(GroupChat).where(GroupChat.chat_id == chat_id))
        assert group is not None and (group.name, group.notice) == ("新品群 2 号", "每天 9 点上新")
        kinds = set(await session.scalars(select(InboxItem.kind).where(InboxItem.channel == "contacts")))
    assert kinds == {"group_changed"}
    assert await bot.simulator.group_dismissed(bot.url, chat_id) == 200
    await bot.drain()
    async with bot.runtime.sessions() as session:
        group = await session.scalar(select(GroupChat).where(GroupChat.chat_id == chat_id))
        assert group is not None and group.status == "dismissed"


async def test_a_full_live_code_creates_a_group_and_the_bot_learns_of_it_first(bot: Bot) -> None:
    bot.fake.qr_join_max = 2  # the owner and one customer fill a group
    first = bot.fake.add_group_chat(AMY, "老群")
    config_id = await join_way(bot, [first], "gc_full")
    assert await bot.simulator.customer_joins_group(bot.url, "wmOne", config_id=config_id) == 200
    assert await bot.simulator.customer_joins_group(bot.url, "wmTwo", config_id=config_id) == 200
    await bot.drain()
    created = bot.fake.join_ways[config_id].chat_id_list[-1]
    assert created != first and bot.fake.group_chats[created].name == "沙盒群1"
    assert set(await members_of(bot, created)) == {AMY, "wmTwo"}


async def test_queued_owner_changes_are_posted_in_order(bot: Bot) -> None:
    chat_id = bot.fake.add_group_chat("leaver", "交接群", ["wmStay"])
    bot.fake.resign_owner("leaver")
    answer = await bot.fake.groupchat_transfer(None, {"chat_id_list": [chat_id], "new_owner": AMY})
    assert answer == {"failed_chat_list": []}
    assert await bot.simulator.post_chat_callbacks(bot.url) == [200, 200]
    assert bot.fake.chat_callbacks == []
    await bot.drain()
    async with bot.runtime.sessions() as session:
        group = await session.scalar(select(GroupChat).where(GroupChat.chat_id == chat_id))
        assert group is not None and group.owner_userid == AMY


async def page(bot: Bot, **body: Any) -> tuple[int, dict[str, Any]]:
    async with bot.client.post("/sandbox/groups", json=body) as response:
        return response.status, await response.json()


async def test_the_page_joins_a_group_by_live_code_shows_it_and_leaves_it(bot: Bot) -> None:
    chat_id = bot.fake.add_group_chat(AMY, "页面群")
    config_id = await join_way(bot, [chat_id], "gc_page")
    async with bot.client.get("/sandbox/groups", params={"user": "wmPage"}) as response:
        shown = await response.json()
    assert shown == {"codes": [{"config_id": config_id, "state": "gc_page", "remark": "code gc_page", "groups": 1}],
                     "groups": []}
    status, joined = await page(bot, user="wmPage", action="join", config_id=config_id)
    assert (status, joined["callback_status"]) == (200, 200)
    assert joined["groups"] == [{"chat_id": chat_id, "name": "页面群", "owner": AMY, "members": 2}]
    status, left = await page(bot, user="wmPage", action="leave", chat_id=chat_id)
    assert (status, left["groups"]) == (200, [])
    status, refused = await page(bot, user="wmPage", action="leave", chat_id=chat_id)
    assert (status, refused["error"]) == (409, f"wmPage is not in group {chat_id}")
    for body in ({}, {"user": "wmPage", "action": "join"}, {"user": "wmPage", "action": "fly", "chat_id": chat_id},
                 {"action": "leave", "chat_id": chat_id}):
        assert (await page(bot, **body))[0] == 400
    async with bot.client.post("/sandbox/groups", data=b"not json") as response:
        assert response.status == 400
    await bot.drain()
    assert set(await members_of(bot, chat_id)) == {AMY}


@pytest.mark.browser
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_customer_joins_and_leaves_a_group_on_the_page(start_bot) -> None:  # type: ignore[no-untyped-def]
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it (scripts/install_chromium.sh)")
    from playwright.async_api import async_playwright

    bot: Bot = await start_bot()
    chat_id = bot.fake.add_group_chat(AMY, "浏览器群")
    await join_way(bot, [chat_id], "gc_browser")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            web_page = await browser.new_page()
            await web_page.goto(f"{bot.url}/sandbox")
            await web_page.fill("#user", "wmBrowser")
            await web_page.locator("#join-code option", has_text="code gc_browser").wait_for(state="attached")
            await web_page.click("#join-group")
            leave = web_page.locator("#my-groups button", has_text="leave 浏览器群 (2)")
            await leave.click()
            await leave.wait_for(state="detached")
        finally:
            await browser.close()
    assert chat_id not in [g.chat_id for g in bot.fake.groups_of("wmBrowser")]
    await bot.drain()
    assert set(await members_of(bot, chat_id)) == {AMY}
