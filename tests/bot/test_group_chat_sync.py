"""The full sync of customer groups against the fake WeCom: paged, paced, interrupted and resumed, every group once."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.group_chat_sync import Pacer, SyncAlreadyRunning, SyncOutcome, SyncTakenOver, full_sync
from crm_store.group_chat_models import GroupChat, GroupChatChange, GroupChatMember, GroupChatSync
from crm_store.group_chats import group_by_chat_id
from crm_store.models import Customer
from tests.bot.conftest import Bot

LIST, GET = "externalcontact/groupchat/list", "externalcontact/groupchat/get"
GROUPS, PAGE = 2000, 100


async def count(bot: Bot, model: Any, *where: Any) -> int:
    async with bot.runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def sync(bot: Bot, restart: bool = False, progress: Any = None) -> SyncOutcome:
    return await full_sync(bot.runtime.sessions, bot.runtime.apis["wecom.contacts"], bot.settings.groupchats,
                           restart, progress, retry_delays_s=())


def group_calls(bot: Bot) -> int:
    return sum(1 for path in bot.fake.calls if path in (LIST, GET))


async def test_two_thousand_groups_interrupted_twice_and_resumed_are_each_stored_once(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot(groupchats={"sync_page_size": PAGE, "sync_concurrency": 8})
    bot.fake.populate_group_chats(GROUPS, 2, ["zhang", "li"])  # the owner and one customer each
    interruptions = iter([(500, LIST), (1050, GET)])  # between two pages; in the middle of one
    next_at, path = next(interruptions)

    def interrupt(done: int) -> None:
        nonlocal next_at, path
        if done >= next_at:
            bot.fake.fail_next(path, http_status=503)  # the API is down for a moment
            next_at, path = next(interruptions, (GROUPS * 10, ""))

    first = await sync(bot, progress=interrupt)
    assert first.status == "failed" and "503" in first.error and first.groups == 500 and not first.resumed
    second = await sync(bot, progress=interrupt)
    assert second.status == "failed" and second.resumed and second.sync_id == first.sync_id
    assert 1000 <= second.groups < 1100  # pages done; the interrupted page is read again
    third = await sync(bot)
    assert third.status == "done" and third.resumed and third.groups == GROUPS and third.sync_id == first.sync_id
    # Every call counted, the failed ones too. WeChatApi itself sends a call again once when WeCom refuses the
    # access token (one another process left in the shared state): the fake sees that one, the sync does not.
    assert 0 <= group_calls(bot) - third.calls <= 2
    assert group_calls(bot) <= GROUPS + GROUPS // PAGE + 2 + 100  # one read per group, plus the page read twice
    assert await count(bot, GroupChat) == GROUPS
    assert await count(bot, GroupChatMember) == 2 * GROUPS
    assert await count(bot, GroupChatChange) == 2 * GROUPS  # each join once, though a page was applied twice
    assert await count(bot, Customer) == GROUPS
    async with bot.runtime.sessions() as session:
        row = await session.get_one(GroupChatSync, first.sync_id)
        assert (row.status, row.groups, row.cursor, row.calls) == ("done", GROUPS, "", third.calls)


async def test_a_finished_sync_starts_over_and_changes_nothing_and_deletes_nothing(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot(groupchats={"sync_page_size": 3})
    chat_ids = bot.fake.populate_group_chats(7, 3, ["zhang"])
    done = await sync(bot)
    assert (done.status, done.groups, done.calls) == ("done", 7, 3 + 7)
    bot.fake.group_chats[chat_ids[0]].dismissed = True  # WeCom stops listing it (its callback did not come)
    again = await sync(bot)
    assert again.status == "done" and not again.resumed and again.sync_id != done.sync_id and again.groups == 6
    assert await count(bot, GroupChat) == 7 and await count(bot, GroupChatChange) == 7 * 3
    async with bot.runtime.sessions() as session:
        kept = await group_by_chat_id(session, chat_ids[0])
        assert kept is not None and kept.status == "active"


async def test_restart_begins_at_the_first_page_and_closes_the_unfinished_sync(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot(groupchats={"sync_page_size": 2})
    bot.fake.populate_group_chats(5, 2, ["zhang"])

    def busy_after_the_first_page(done: int) -> None:
        bot.fake.fail_next(LIST, errcode=45009)  # slow down: the sync stops (no pauses in this test)

    failed = await sync(bot, progress=busy_after_the_first_page)
    assert failed.status == "failed" and failed.groups == 2 and "45009" in failed.error
    fresh = await sync(bot, restart=True)
    assert fresh.status == "done" and not fresh.resumed and fresh.groups == 5 and fresh.sync_id != failed.sync_id
    async with bot.runtime.sessions() as session:
        old = await session.get_one(GroupChatSync, failed.sync_id)
        assert old.status == "failed" and "restarted" in old.error


async def test_the_pacer_keeps_any_minute_under_its_limit() -> None:
    now = [0.0]
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)
        now[0] += seconds

    pacer = Pacer(3, clock=lambda: now[0], sleep=sleep)
    for _ in range(7):
        await pacer.wait()
        now[0] += 1.0
    assert waited == [57.0, 57.0]  # the 4th waits for the 1st to be a minute old, the 7th for the 4th


async def test_a_second_sync_while_one_runs_is_refused_and_the_first_goes_on(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot(groupchats={"sync_page_size": 5})
    bot.fake.populate_group_chats(30, 2, ["zhang"])
    second: list[asyncio.Task[SyncOutcome]] = []

    def start_another(done: int) -> None:
        if not second:  # the first batch is stored: the first sync holds its lease
            bot.fake.slow_for(5.0, 0.2, LIST)  # its next page comes late: the second starts meanwhile
            second.append(asyncio.create_task(sync(bot)))

    first = await sync(bot, progress=start_another)
    with pytest.raises(SyncAlreadyRunning, match=r"already running since .* UTC, started by .*:\d+:"):
        await second[0]
    assert first.status == "done" and first.groups == 30
    assert await count(bot, GroupChatSync) == 1 and await count(bot, GroupChatChange) == 30 * 2


async def test_a_sync_whose_process_died_is_refused_until_its_lease_is_stale_then_taken_over(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot(groupchats={"sync_page_size": 5})
    bot.fake.populate_group_chats(20, 2, ["zhang"])
    dying: list[asyncio.Task[SyncOutcome]] = []

    def die(done: int) -> None:
        if done >= 10:
            dying[0].cancel()  # as a process killed between two batches

    dying.append(asyncio.create_task(sync(bot, progress=die)))
    with pytest.raises(asyncio.CancelledError):
        await dying[0]  # its row still says running
    async with bot.runtime.sessions() as session:
        dead = (await session.scalars(select(GroupChatSync))).one()
        assert dead.status == "running" and dead.groups == 10 and dead.claimed_by
    with pytest.raises(SyncAlreadyRunning, match=f"started by {dead.claimed_by}"):
        await sync(bot)
    taken = await full_sync(bot.runtime.sessions, bot.runtime.apis["wecom.contacts"], bot.settings.groupchats,
                            retry_delays_s=(), lease=timedelta(0))  # as when the lease has gone stale
    assert taken.status == "done" and taken.resumed and taken.sync_id == dead.id and taken.groups == 20
    assert await count(bot, GroupChatChange) == 20 * 2 and await count(bot, GroupChat) == 20


async def test_two_syncs_started_at_once_run_one(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot(groupchats={"sync_page_size": 5})
    bot.fake.populate_group_chats(20, 2, ["zhang"])
    outcomes = await asyncio.gather(sync(bot), sync(bot), return_exceptions=True)
    assert sorted(type(outcome).__name__ for outcome in outcomes) == ["SyncAlreadyRunning", "SyncOutcome"]
    assert await count(bot, GroupChatSync) == 1 and await count(bot, GroupChatChange) == 20 * 2


async def test_a_run_whose_lease_was_taken_over_stops_without_applying(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot(groupchats={"sync_page_size": 5})
    bot.fake.populate_group_chats(15, 2, ["zhang"])
    taker: list[SyncOutcome] = []

    async def take_over() -> None:
        taker.append(await full_sync(bot.runtime.sessions, bot.runtime.apis["wecom.contacts"],
                                     bot.settings.groupchats, retry_delays_s=(), lease=timedelta(0)))

    tasks: list[asyncio.Task[None]] = []

    def stalled(done: int) -> None:
        if not tasks:  # this process stalls (its next page comes late) and another takes the sync over
            bot.fake.slow_for(5.0, 0.3, LIST)
            tasks.append(asyncio.create_task(take_over()))

    with pytest.raises(SyncTakenOver):
        await sync(bot, progress=stalled)
    await tasks[0]
    assert taker[0].status == "done" and taker[0].resumed and taker[0].groups == 15
    assert await count(bot, GroupChatChange) == 15 * 2 and await count(bot, GroupChatSync) == 1
