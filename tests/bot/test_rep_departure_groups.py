"""A departing rep's customer groups move with their customers: `groupchat/transfer` in calls of at most 100,
WeCom's refusals reported group by group, the store's owner changed and each customer member told on their
timeline, once, however often the departure is run or stopped half-way."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select

from bot.group_chat_sync import full_sync
from bot.rep_departure import DepartureError, depart_with
from bot.rep_departure_groups import move_groups
from crm_store.group_chat_models import GroupChat
from crm_store.handoff_models import Rep
from crm_store.lifecycle import Lifecycle
from crm_store.models import TimelineEvent
from crm_store.reps import add_rep
from flows.handoff_desk import HandoffDesk
from tests.bot.conftest import Bot

TRANSFER = "externalcontact/groupchat/transfer"


async def reps(bot: Bot, *userids: str) -> None:
    async with bot.runtime.sessions() as session, session.begin():
        for userid in userids:
            await add_rep(session, userid, name=userid.title())


async def groups_of_leaver(bot: Bot, count: int) -> list[str]:
    """`count` groups owned by "leaver", two customers each, synced into the store as a full sync does."""
    chat_ids = [bot.fake.add_group_chat("leaver", f"群{n}", [f"wm{n}a", f"wm{n}b"]) for n in range(count)]
    synced = await full_sync(bot.runtime.sessions, bot.runtime.apis["wecom.contacts"], bot.settings.groupchats)
    assert (synced.status, synced.groups) == ("done", count)
    return chat_ids


async def depart(bot: Bot, takeover: str | None = None) -> Any:
    desk = HandoffDesk(bot.settings.handoff, Lifecycle(bot.settings.lifecycle))
    return await depart_with(bot.runtime.sessions, bot.runtime.apis["wecom.contacts"], desk, "leaver", takeover)


async def owners(bot: Bot) -> dict[str, str]:
    async with bot.runtime.sessions() as session:
        return dict((await session.execute(select(GroupChat.chat_id, GroupChat.owner_userid))).tuples().all())


async def owner_changes(bot: Bot) -> list[dict[str, Any]]:
    async with bot.runtime.sessions() as session:
        rows = await session.scalars(select(TimelineEvent).where(TimelineEvent.kind == "group.owner_changed"))
        return [{"customer_id": row.customer_id, **row.data} for row in rows]


async def test_a_leavers_150_groups_go_in_two_calls_refusals_named_timeline_written_once(bot: Bot) -> None:
    await reps(bot, "leaver", "amy", "bob")
    chat_ids = await groups_of_leaver(bot, 150)
    bot.fake.dismiss_group(chat_ids[7])  # gone on WeCom, the store not told yet
    bot.fake.resign_owner("leaver")
    late = bot.fake.add_group_chat("leaver", "离职后新建", ["wmLate"])  # WeCom still has its owner serving

    gone = await depart(bot)

    assert bot.fake.calls.count(TRANSFER) == 2  # 150 groups listed for the rep, shared by amy and bob: 75 + 75
    moved = {group.chat_id: group.to for group in gone.groups_moved}
    assert len(moved) == 149 and Counter(moved.values()) == {"amy": 75, "bob": 74}
    failed = {group.chat_id: (group.errcode, group.reason) for group in gone.groups_failed}
    assert failed == {late: (90500, failed[late][1]), chat_ids[7]: (40050, failed[chat_ids[7]][1])}
    assert "has not left the company" in failed[late][1] and "does not know this chat id" in failed[chat_ids[7]][1]
    assert sorted(t["chat_id"] for t in bot.fake.group_transfers) == sorted(moved)  # each moved once
    stored = await owners(bot)
    assert {chat_id: stored[chat_id] for chat_id in moved} == moved
    assert stored[chat_ids[7]] == "leaver" and late not in stored
    changes = await owner_changes(bot)
    assert len(changes) == 149 * 2  # each customer member of each moved group
    first = [change for change in changes if change["chat_id"] == chat_ids[0]]
    assert len(first) == 2 and all((c["from"], c["to"], c["group"], c["why"]) == ("leaver", moved[chat_ids[0]],
                                                                                  "群0", "rep_left") for c in first)
    async with bot.runtime.sessions() as session:
        assert not (await session.get_one(Rep, "leaver")).active

    with pytest.raises(DepartureError, match="no active rep leaver"):  # the departure itself is done
        await depart(bot)
    again = await move_groups(bot.runtime.sessions, bot.runtime.apis["wecom.contacts"], "leaver", ["amy"])
    assert again.moved == () and {group.chat_id for group in again.failed} == {late, chat_ids[7]}
    assert len(bot.fake.group_transfers) == 149 and len(await owner_changes(bot)) == 149 * 2


async def test_a_departure_stopped_by_wecom_half_way_finishes_when_run_again_moving_nothing_twice(bot: Bot) -> None:
    await reps(bot, "leaver", "heir")
    chat_ids = await groups_of_leaver(bot, 150)
    bot.fake.resign_owner("leaver")
    bot.fake.now = lambda: time.time() + 120  # a minute after the sync's calls…
    bot.fake.api_per_minute = 1  # …with one call a minute per API: the second transfer call is refused (45009)

    with pytest.raises(DepartureError, match="45009.*100 group.*run the same departure again"):
        await depart(bot, "heir")

    assert len(bot.fake.group_transfers) == 100
    assert list((await owners(bot)).values()).count("heir") == 100
    assert len(await owner_changes(bot)) == 200
    async with bot.runtime.sessions() as session:
        assert (await session.get_one(Rep, "leaver")).active  # the rep and their customers wait for the rerun

    bot.fake.api_per_minute = None
    gone = await depart(bot, "heir")

    assert len(gone.groups_moved) == 50 and gone.groups_failed == ()
    assert sorted(t["chat_id"] for t in bot.fake.group_transfers) == sorted(chat_ids)  # 150, none twice
    assert set((await owners(bot)).values()) == {"heir"}
    changes = await owner_changes(bot)
    assert len(changes) == 300 and len({(c["customer_id"], c["chat_id"]) for c in changes}) == 300


async def test_a_group_already_moved_on_wecom_is_recorded_not_transferred_again(bot: Bot) -> None:
    await reps(bot, "leaver", "heir")
    chat_ids = await groups_of_leaver(bot, 3)
    bot.fake.resign_owner("leaver")
    api = bot.runtime.apis["wecom.contacts"]
    await api.post(TRANSFER, {"chat_id_list": [chat_ids[0]], "new_owner": "heir"})  # an admin, in WeCom's console

    gone = await depart(bot, "heir")

    assert {group.chat_id for group in gone.groups_moved} == set(chat_ids)
    assert bot.fake.calls.count(TRANSFER) == 2 and len(bot.fake.group_transfers) == 3  # the console's, then ours
    assert set((await owners(bot)).values()) == {"heir"}
    assert len(await owner_changes(bot)) == 6


async def test_two_departures_at_once_move_each_group_once_and_the_store_agrees_with_wecom(bot: Bot) -> None:
    await reps(bot, "leaver", "amy", "bob")
    chat_ids = await groups_of_leaver(bot, 120)
    bot.fake.resign_owner("leaver")
    api = bot.runtime.apis["wecom.contacts"]

    first, second = await asyncio.gather(move_groups(bot.runtime.sessions, api, "leaver", ["amy"]),
                                         move_groups(bot.runtime.sessions, api, "leaver", ["bob"]))

    assert len(first.moved) + len(second.moved) == 120  # what one moved, WeCom refused the other (90500)
    assert sorted(t["chat_id"] for t in bot.fake.group_transfers) == sorted(chat_ids)
    assert await owners(bot) == {chat_id: bot.fake.group_chats[chat_id].owner for chat_id in chat_ids}
    changes = await owner_changes(bot)
    assert len(changes) == 240 and len({(c["customer_id"], c["chat_id"]) for c in changes}) == 240


@pytest.mark.parametrize(("userid", "takeover", "error"), [
    ("nobody", None, "no active rep nobody"),
    ("leaver", "leaver", "--to leaver: not an active rep other than leaver"),
    ("leaver", "ghost", "--to ghost: not an active rep"),
])
async def test_bad_input_is_refused_before_anything_moves(bot: Bot, userid: str, takeover: str | None,
                                                          error: str) -> None:
    await reps(bot, "leaver", "heir")
    await groups_of_leaver(bot, 2)
    bot.fake.resign_owner("leaver")
    desk = HandoffDesk(bot.settings.handoff, Lifecycle(bot.settings.lifecycle))

    with pytest.raises(DepartureError, match=error):
        await depart_with(bot.runtime.sessions, bot.runtime.apis["wecom.contacts"], desk, userid, takeover)

    assert bot.fake.calls.count(TRANSFER) == 0 and bot.fake.group_transfers == []
    assert set((await owners(bot)).values()) == {"leaver"} and await owner_changes(bot) == []
