"""Group SOPs: the YAML format's checks (file and line, every problem, nothing published), and the job on a fake
clock: one push a day per step even with two schedulers at once, none for days long past."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from bot.group_push_dispatch import GroupPushDispatcher
from bot.group_push_results import GroupPushFollowUp
from bot.group_sop_jobs import GroupPushJobs
from crm_store.group_chat_models import GroupChat, GroupChatTag, GroupPush
from flows.errors import FlowLoadError
from flows.group_sops import GROUP_SOP_DIR, Every, load_group_sops, next_occurrences, occurrences
from tests.bot.conftest import Bot

ZONE = ZoneInfo("Asia/Shanghai")
DAILY = """\
id: new_arrivals
name: 新品群每日上新
groups: {tags: [新品群]}
steps:
  - id: morning
    at: "09:00"
    every: day
    text: 早上好，今日上新
    link: {title: 今日新品, url: "https://shop.example.com/new"}
"""
BAD = """\
id: broken
name: 坏的
groups: {}
steps:
  - id: morning
    at: "25:00"
    every: funday
    text: 早上好
  - id: evening
    at: 20:00
    every: [mon, thurs]
"""


def sop_dir(tmp_path: Path, **files: str) -> Path:
    directory = tmp_path / GROUP_SOP_DIR
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / f"{name}.yaml").write_text(text, encoding="utf-8")
    return directory


def local(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=ZONE).astimezone(UTC)


def test_a_bad_sop_names_every_problem_with_file_and_line(tmp_path: Path) -> None:
    directory = sop_dir(tmp_path, good=DAILY, broken=BAD)
    with pytest.raises(FlowLoadError) as caught:
        load_group_sops(directory, "Asia/Shanghai")
    text = str(caught.value)
    assert "group_sops/broken.yaml:3: flow group SOP broken: groups: give at least one of tags" in text
    assert "group_sops/broken.yaml:6: flow group SOP broken, step morning: at: a time of day" in text
    assert "'25:00'" in text
    assert "every: day, weekday" in text and "'funday'" in text
    assert "'thurs' is not a day" in text and "did you mean" in text.lower()
    assert "broken.yaml:9: flow group SOP broken, step evening: text: the message is empty" in text
    assert "good.yaml" not in text


def test_occurrences_follow_the_calendar_in_the_sops_zone(tmp_path: Path) -> None:
    found, _ = load_group_sops(sop_dir(tmp_path, good=DAILY), "Asia/Shanghai")
    sop = found["new_arrivals"]
    assert sop.steps[0].at == time(9, 0) and sop.enabled
    days = occurrences(sop, local(1, 9, 30), local(4, 9, 0))
    assert [o.source_key for o in days] == ["sop:new_arrivals:morning:2026-12-02", "sop:new_arrivals:morning:2026-12-03",
                                            "sop:new_arrivals:morning:2026-12-04"]
    assert days[0].due_at == datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
    assert [o.day.isoformat() for o in next_occurrences(sop, local(31, 10), 2)] == ["2027-01-01", "2027-01-02"]
    assert Every(frozenset({4, 5})).matches(date(2026, 12, 4)) and not Every(frozenset({4})).matches(date(2026, 12, 5))
    assert Every(on=date(2026, 12, 24)).matches(date(2026, 12, 24))


async def add_tagged_groups(bot: Bot, count: int, tag: str = "新品群") -> None:
    async with bot.runtime.sessions() as session, session.begin():
        for n in range(count):
            owner = f"rep_{n % 2}"
            chat_id = bot.fake.add_group_chat(owner, f"新品群{n}")
            group = GroupChat(chat_id=chat_id, owner_userid=owner, name=f"新品群{n}")
            session.add(group)
            await session.flush()
            session.add(GroupChatTag(group_id=group.id, tag=tag))


def scheduler(bot: Bot, directory: Path) -> GroupPushJobs:
    """Another scheduler process's job (its own dispatcher and follow-up), with the SOPs of `directory`."""
    api, settings = bot.runtime.apis["wecom.contacts"], bot.settings.groupchats
    return GroupPushJobs(bot.runtime.sessions, GroupPushDispatcher(bot.runtime.sessions, api, settings),
                         GroupPushFollowUp(bot.runtime.sessions, api, settings), directory, "Asia/Shanghai")


async def pushes(bot: Bot) -> list[str]:
    async with bot.runtime.sessions() as session:
        return list(await session.scalars(select(GroupPush.source_key).order_by(GroupPush.id)))


async def test_every_day_at_nine_is_one_push_a_day_even_with_two_schedulers(bot: Bot, tmp_path: Path) -> None:
    await add_tagged_groups(bot, 4)
    directory = sop_dir(tmp_path, daily=DAILY)
    first, second = scheduler(bot, directory), scheduler(bot, directory)
    for job in (first, second):
        job.last_check = local(3, 8, 59)

    made = await asyncio.gather(first.create_occurrences(local(3, 9, 0)), second.create_occurrences(local(3, 9, 0)))
    assert sorted(made) == [0, 1]
    assert await first.create_occurrences(local(3, 12)) == 0
    both = await asyncio.gather(first.run(local(4, 9, 1)), second.run(local(4, 9, 1)))
    assert sorted(outcome.occurrences for outcome in both) == [0, 1]
    assert await pushes(bot) == ["sop:new_arrivals:morning:2026-12-03", "sop:new_arrivals:morning:2026-12-04"]
    # the 3rd's push was dispatched by the run of the 4th, with the 4th's: one task per owner per push
    tasks = list(bot.fake.group_chat_tasks.values())
    assert len(tasks) == 4 and {t.sender for t in tasks} == {"rep_0", "rep_1"}
    assert all(len(t.status) == 2 for t in tasks) and bot.fake.refused == []

    restarted = scheduler(bot, directory)  # back after a week off: the missed days are not sent now
    assert await restarted.create_occurrences(local(11, 9, 5)) == 1
    assert (await pushes(bot))[-1] == "sop:new_arrivals:morning:2026-12-11"


async def test_a_bad_sop_publishes_nothing(bot: Bot, tmp_path: Path) -> None:
    await add_tagged_groups(bot, 2)
    job = scheduler(bot, sop_dir(tmp_path, daily=DAILY, broken=BAD))
    job.last_check = local(3, 8, 0)
    assert await job.create_occurrences(local(3, 10)) == 0
    async with bot.runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(GroupPush)) == 0


async def test_a_disabled_sop_and_the_shipped_example_send_nothing(bot: Bot, tmp_path: Path) -> None:
    await add_tagged_groups(bot, 2)
    shipped = bot.runtime.group_pushes
    assert shipped is not None and "new_arrivals" in shipped.reload()
    assert not shipped.sops["new_arrivals"].enabled
    assert await shipped.create_occurrences(local(3, 9, 30)) == 0
    job = scheduler(bot, sop_dir(tmp_path, daily=DAILY.replace("name:", "enabled: false\nname:")))
    assert await job.create_occurrences(local(3, 9, 30)) == 0
    assert await pushes(bot) == []


async def test_a_daily_sop_fits_wecoms_monthly_limit_of_a_group(bot: Bot, tmp_path: Path) -> None:
    """WeCom lets a group receive as many group messages a month as the month has days: a daily step fits."""
    await add_tagged_groups(bot, 2)
    job = scheduler(bot, sop_dir(tmp_path, daily=DAILY))
    bot.fake.auto_confirm_group_tasks = True
    assert job.dispatcher.month_limit(local(1, 12)) == 31
    for day in range(1, 32):
        outcome = await job.run(local(day, 9, 1))
        assert outcome.dispatch.limited == 0
    assert len(bot.fake.group_chat_tasks) == 31 * 2 and bot.fake.refused == []
    extra = await job.dispatcher.dispatch_due(local(31, 10))
    assert extra.tasks == 0
    assert job.dispatcher.month_limit(local(1, 12) + timedelta(days=70)) == 28  # February 2027
