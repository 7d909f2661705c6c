"""Group pushes through the fake WeCom: one task per owner with exactly their groups, the per-group monthly limit,
results read back, reminders that stop at WeCom's 3, and no second task after a crash."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from bot.group_push_dispatch import GroupPushDispatcher
from bot.group_push_recovery import CLAIM_STALE
from bot.group_sop_jobs import GroupPushJobs
from bot.sandbox.fake_quotas import ApiRefusal
from crm_store.group_chat_models import GroupChat, GroupChatTag, GroupPushTarget
from crm_store.group_pushes import GroupPushSpec, Link, create_group_push, group_push_results
from crm_store.group_segments import GroupSegment
from crm_store.models import utcnow
from tests.bot.conftest import Bot

TASK = "externalcontact/add_msg_template"


def jobs(bot: Bot) -> GroupPushJobs:
    assert bot.runtime.group_pushes is not None
    return bot.runtime.group_pushes


async def make_groups(bot: Bot, owners: dict[str, int], tags: tuple[str, ...] = ("新品群",)) -> dict[str, str]:
    """Groups in WeCom (the fake) and in the store, as a sync leaves them: chat_id -> owner."""
    made: dict[str, str] = {}
    async with bot.runtime.sessions() as session, session.begin():
        for owner, count in owners.items():
            for n in range(count):
                chat_id = bot.fake.add_group_chat(owner, f"{owner} 群{n}", [f"wm{owner}{n}"])
                group = GroupChat(chat_id=chat_id, owner_userid=owner, name=f"{owner} 群{n}", members=2)
                session.add(group)
                await session.flush()
                session.add_all(GroupChatTag(group_id=group.id, tag=tag) for tag in tags)
                made[chat_id] = owner
    return made


async def push_to(bot: Bot, segment: GroupSegment, text: str = "今日上新", link: Link | None = None) -> int:
    async with bot.runtime.sessions() as session, session.begin():
        push = await create_group_push(session, GroupPushSpec("上新", segment, text, link))
        return push.id


async def targets(bot: Bot, push_id: int) -> dict[str, tuple[str, str, str]]:
    """chat_id -> (status, msgid, reason)."""
    async with bot.runtime.sessions() as session:
        rows = await session.execute(
            select(GroupChat.chat_id, GroupPushTarget.status, GroupPushTarget.msgid, GroupPushTarget.reason)
            .join(GroupChat, GroupChat.id == GroupPushTarget.group_id).where(GroupPushTarget.push_id == push_id))
        return {chat: (status, msgid, reason) for chat, status, msgid, reason in rows.tuples()}


async def test_one_task_per_owner_with_exactly_their_groups_and_a_full_group_limited(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot()
    jobs(bot).dispatcher.per_group_month = bot.fake.group_chat_messages_per_month = 1  # one rule, both sides
    groups = await make_groups(bot, {"rep_a": 3, "rep_b": 2})
    await make_groups(bot, {"rep_c": 1}, tags=("其他",))
    full = next(chat for chat, owner in groups.items() if owner == "rep_b")
    await push_to(bot, GroupSegment(owner="rep_b", name_contains="群0"))
    await jobs(bot).dispatcher.dispatch_due()
    bot.fake.confirm_group_task(next(iter(bot.fake.group_chat_tasks)))  # the group's one message this month

    push_id = await push_to(bot, GroupSegment(tags_all=("新品群",)), link=Link("新品", "https://shop.example.com/n"))
    outcome = await jobs(bot).dispatcher.dispatch_due()

    assert (outcome.tasks, outcome.groups, outcome.limited) == (2, 4, 1)
    tasks = [t for t in bot.fake.group_chat_tasks.values() if t.body["text"]["content"] == "今日上新"]
    assert len(tasks) == 3  # the first push's, then one for each owner
    by_owner = {t.sender: set(t.status) for t in tasks[1:]}
    assert by_owner == {"rep_a": {c for c, o in groups.items() if o == "rep_a"},
                        "rep_b": {c for c, o in groups.items() if o == "rep_b"} - {full}}
    assert tasks[1].body["attachments"] == [{"msgtype": "link", "link": {"title": "新品",
                                                                         "url": "https://shop.example.com/n"}}]
    stored = await targets(bot, push_id)
    assert stored[full][0] == "limited" and "its 1 group messages this month" in stored[full][2]
    assert {s for c, (s, m, _) in stored.items() if c != full} == {"created"}
    assert all(m for c, (_, m, _) in stored.items() if c != full)
    for task in tasks[1:]:
        bot.fake.confirm_group_task(task.msgid)
    assert bot.fake.refused == []
    assert (await jobs(bot).dispatcher.dispatch_due()).tasks == 0  # nothing left to send
    assert len(bot.fake.group_chat_tasks) == 3
    async with bot.runtime.sessions() as session:
        results = await group_push_results(session, push_id)
    assert results.by_status == {"created": 4, "limited": 1} and results.tasks == 2
    assert results.push.status == "sent"


async def test_results_are_read_back_after_confirmation(bot: Bot) -> None:
    groups = await make_groups(bot, {"rep_a": 2, "rep_b": 2})
    push_id = await push_to(bot, GroupSegment(tags_all=("新品群",)))
    await jobs(bot).dispatcher.dispatch_due()
    task_a, task_b = (t for t in bot.fake.group_chat_tasks.values())
    bot.fake.confirm_group_task(task_a.msgid)
    bot.fake.confirm_group_task(task_b.msgid, [next(iter(task_b.status))])  # rep_b sent to one of two

    follow_up = jobs(bot).follow_up
    now = utcnow()
    early = await follow_up.read_due(now)
    assert early.tasks == 0  # results_after_s has not passed
    read = await follow_up.read_due(now + timedelta(seconds=bot.settings.groupchats.results_after_s + 1))
    assert (read.tasks, read.sent, read.unsent) == (2, 3, 1)
    stored = await targets(bot, push_id)
    assert sorted(s for s, _, _ in stored.values()) == ["sent", "sent", "sent", "unsent"]
    assert set(stored) == set(groups)
    async with bot.runtime.sessions() as session:
        results = await group_push_results(session, push_id)
        assert results.push.results_at is not None and results.push.status == "sent"
    later = now + timedelta(days=bot.settings.groupchats.results_for_days + 1)
    await follow_up.read_due(later)
    async with bot.runtime.sessions() as session:
        assert (await group_push_results(session, push_id)).push.status == "done"


async def test_reminders_stop_at_three(bot: Bot) -> None:
    await make_groups(bot, {"rep_a": 2})
    push_id = await push_to(bot, GroupSegment(owner="rep_a"))
    await jobs(bot).dispatcher.dispatch_due()
    [msgid] = list(bot.fake.group_chat_tasks)
    follow_up, now, step = jobs(bot).follow_up, utcnow(), timedelta(seconds=bot.settings.groupchats.remind_after_s)
    assert await follow_up.remind_due(now) == 0  # not yet
    reminded = [await follow_up.remind_due(now + step * n) for n in range(1, 6)]
    assert reminded == [1, 1, 1, 0, 0]
    assert bot.fake.reminders == [msgid] * 3 and bot.fake.refused == []
    async with bot.runtime.sessions() as session:
        assert (await group_push_results(session, push_id)).reminders == 3
    bot.fake.confirm_group_task(msgid)


async def test_a_crash_between_the_call_and_the_commit_makes_no_second_task(bot: Bot) -> None:
    groups = await make_groups(bot, {"rep_a": 3})
    push_id = await push_to(bot, GroupSegment(owner="rep_a"))
    dispatcher: GroupPushDispatcher = jobs(bot).dispatcher

    async def killed(_claim: object, _msgid: str) -> None:
        raise RuntimeError("the process died here")

    dispatcher.on_task_created = killed
    with pytest.raises(RuntimeError):
        await dispatcher.dispatch_due()
    dispatcher.on_task_created = None
    assert len(bot.fake.group_chat_tasks) == 1
    assert {s for s, m, _ in (await targets(bot, push_id)).values()} == {"created"}

    now = utcnow()
    again = await dispatcher.dispatch_due(now + timedelta(seconds=30))  # restarted at once: the claim is fresh
    assert again.tasks == 0 and len(bot.fake.group_chat_tasks) == 1
    settled = await dispatcher.dispatch_due(now + CLAIM_STALE + timedelta(minutes=1))
    assert (settled.recovered, settled.released, settled.tasks) == (3, 0, 0)
    [msgid] = list(bot.fake.group_chat_tasks)
    assert await targets(bot, push_id) == {chat: ("created", msgid, "") for chat in groups}


async def test_a_call_that_never_reached_wecom_is_sent_once_after_the_claim_is_settled(bot: Bot) -> None:
    await make_groups(bot, {"rep_a": 2})
    push_id = await push_to(bot, GroupSegment(owner="rep_a"))
    dispatcher = jobs(bot).dispatcher
    bot.fake.fail_next(TASK, http_status=502)  # whether WeCom acted is unknown to the bot
    first = await dispatcher.dispatch_due()
    assert first.tasks == 0 and not bot.fake.group_chat_tasks
    settled = await dispatcher.dispatch_due(utcnow() + CLAIM_STALE + timedelta(minutes=1))
    assert (settled.released, settled.tasks, settled.groups) == (2, 1, 2)
    assert len(bot.fake.group_chat_tasks) == 1
    assert {m for _, m, _ in (await targets(bot, push_id)).values()} == set(bot.fake.group_chat_tasks)


async def test_dispatch_rate_figure(bot: Bot) -> None:
    """A small figure (the bench runs 10,000 groups over 50 owners): tasks and groups a second to the fake."""
    await make_groups(bot, {f"rep_{n}": 40 for n in range(5)})
    await push_to(bot, GroupSegment(tags_all=("新品群",)))
    outcome = await jobs(bot).dispatcher.dispatch_due()
    assert (outcome.tasks, outcome.groups) == (5, 200)
    assert outcome.tasks_per_s > 0 and outcome.groups_per_s > outcome.tasks_per_s


async def test_the_fake_refuses_what_wecom_refuses_and_pages_results(bot: Bot) -> None:
    mine = [bot.fake.add_group_chat("rep_a", f"群{n}") for n in range(3)]
    theirs = bot.fake.add_group_chat("rep_b", "别人的群")
    fake = bot.fake
    for body, errcode in (({"chat_id_list": mine, "text": {"content": "hi"}}, 40003),  # no sender
                          ({"sender": "rep_a", "chat_id_list": [*mine, theirs], "text": {"content": "hi"}}, 40050),
                          ({"sender": "rep_a", "chat_id_list": mine, "text": {"content": "字" * 1334}}, 45002),
                          ({"sender": "rep_a", "chat_id_list": mine}, 41041)):
        with pytest.raises(ApiRefusal) as refused:
            fake.add_group_chat_task(body, "msgX")
        assert refused.value.errcode == errcode
    msgid = fake.add_group_chat_task({"sender": "rep_a", "chat_id_list": mine, "text": {"content": "hi"}}, "m1")["msgid"]
    fake.confirm_group_task(msgid, mine[:1])
    first = await fake.get_groupmsg_send_result(None, {"msgid": msgid, "userid": "rep_a", "limit": 2})
    rest = await fake.get_groupmsg_send_result(None, {"msgid": msgid, "userid": "rep_a", "limit": 2,
                                                      "cursor": first["next_cursor"]})
    rows = first["send_list"] + rest["send_list"]
    assert [r["chat_id"] for r in rows] == mine and [r["status"] for r in rows] == [1, 0, 0]
    assert rest["next_cursor"] == "" and "send_time" in rows[0] and "send_time" not in rows[1]
    with pytest.raises(ApiRefusal):
        await fake.get_groupmsg_send_result(None, {"msgid": msgid, "userid": "rep_a", "limit": 1001})
    with pytest.raises(ApiRefusal):
        await fake.get_groupmsg_list_v2(None, {"chat_type": "group", "start_time": 0, "end_time": 40 * 86400})


async def test_a_group_that_changed_owner_goes_to_the_new_owner_and_a_dismissed_one_fails(bot: Bot) -> None:
    groups = await make_groups(bot, {"rep_a": 3})
    moved, gone, kept = list(groups)
    push_id = await push_to(bot, GroupSegment(owner="rep_a"))
    bot.fake.group_chats[moved].owner = "rep_new"  # rep_a handed it over before the push was due
    async with bot.runtime.sessions() as session, session.begin():
        await session.execute(update(GroupChat).where(GroupChat.chat_id == moved).values(owner_userid="rep_new"))
        await session.execute(update(GroupChat).where(GroupChat.chat_id == gone).values(status="dismissed"))
    outcome = await jobs(bot).dispatcher.dispatch_due()
    assert (outcome.tasks, outcome.groups, outcome.failed) == (2, 2, 1)
    assert {t.sender: list(t.status) for t in bot.fake.group_chat_tasks.values()} == {"rep_a": [kept],
                                                                                       "rep_new": [moved]}
    stored = await targets(bot, push_id)
    assert stored[gone] == ("failed", "", "the group was dismissed")


async def test_an_owner_who_sent_is_not_reminded(bot: Bot) -> None:
    await make_groups(bot, {"rep_a": 2})
    push_id = await push_to(bot, GroupSegment(owner="rep_a"))
    await jobs(bot).dispatcher.dispatch_due()
    [msgid] = list(bot.fake.group_chat_tasks)
    bot.fake.confirm_group_task(msgid)
    later = utcnow() + timedelta(seconds=bot.settings.groupchats.remind_after_s + 1)
    assert await jobs(bot).follow_up.remind_due(later) == 0
    assert bot.fake.reminders == []
    assert {s for s, _, _ in (await targets(bot, push_id)).values()} == {"sent"}
