"""Nurture sequences end to end: enrolled by the conversation, sent by the dispatcher through the fake API.

Steps go out on time and once, through the channel that may deliver them (kf or OA inside the
48-hour window, else the owning rep's group message), wait through quiet hours, the daily cap
and a handoff, skip with a reason when a condition fails or no channel may deliver, and stop
when the customer replies. Two dispatchers on PostgreSQL never send the same step twice.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.allowance import Allowance
from core.sequences import SeqStep
from crm_store import allowances
from crm_store.enrolments import SequenceCatalog, due_at, enrol, publish
from crm_store.handoffs import start
from crm_store.lifecycle import Lifecycle
from crm_store.models import Customer, OutboxItem, as_utc, utcnow
from crm_store.nurture_models import Enrolment, NurtureSend
from flows.sequences import load_sequences
from tests.bot.conftest import Bot
from tests.flows.test_engine import customer_of, say

SHANGHAI = ZoneInfo("Asia/Shanghai")
TAGS = ["高意向", "连衣裙", "已购买"]
NEW_LEAD = """\
sequence: new_lead
enroll: [{tag: 高意向}]
exit: [replied, {tag: 已购买}, handed_off]
steps:
  - {id: welcome, say: "{{ customer.name }}，欢迎～"}
  - {id: tips, after: 1h, say: 连衣裙搭配小贴士, when: {tag: 连衣裙}}
  - {id: coupon, after: 2h, say: 送您一张优惠券}
  - {id: check_in, after_previous: 30h, say: 最近还好吗？}
"""


def noon_after(moment: datetime, days: int = 0) -> datetime:
    """Local noon on the day after `moment` (plus `days`): outside quiet hours, after anything due now."""
    local = moment.astimezone(SHANGHAI).date() + timedelta(days=1 + days)
    return datetime.combine(local, datetime.min.time(), SHANGHAI).replace(hour=12)


async def published(bot: Bot, tmp_path: Path, **files: str) -> None:
    directory = tmp_path / "sequences"
    directory.mkdir(exist_ok=True)
    for name, text in {"new_lead": NEW_LEAD, **files}.items():
        (directory / f"{name}.yaml").write_text(text, encoding="utf-8")
    lifecycle = Lifecycle(bot.settings.lifecycle)
    stages = {**{s: s for s in lifecycle.stage_ids}, **{lifecycle.label(s): s for s in lifecycle.stage_ids}}
    sequences, sources = load_sequences(directory, TAGS, stages)
    async with bot.runtime.sessions() as session, session.begin():
        await publish(session, sequences, sources)


async def enrolled(bot: Bot, user: str, name: str = "new_lead") -> Customer:
    customer = await customer_of(bot, user)
    async with bot.runtime.sessions() as session, session.begin():
        sequence, state = await SequenceCatalog().current(session, name)
        await enrol(session, customer.id, sequence, state.current_version, "admin", SHANGHAI)
    return customer


async def wrote_at(session: AsyncSession, customer_id: int, at: datetime) -> None:
    """What a kf message at `at` leaves in the store: the chat window's time and the 5 messages it earns."""
    customer = await session.get_one(Customer, customer_id)
    customer.reach = {**customer.reach, "at": int(at.timestamp())}
    earned = (await allowances.load(session, customer_id, "kf")).earned("message", at.timestamp())
    await allowances.save_many(session, {customer_id: earned})


async def dispatch(bot: Bot, at: datetime) -> None:
    assert bot.runtime.nurture is not None
    await bot.runtime.nurture.run_due(at)
    await bot.drain()


def texts(bot: Bot, user: str) -> list[str]:
    return [sent.text for sent in bot.replies_to(user)]


async def sends(bot: Bot, customer_id: int) -> list[tuple[str, str, str]]:
    async with bot.runtime.sessions() as session:
        rows = await session.scalars(select(NurtureSend).where(NurtureSend.customer_id == customer_id)
                                     .order_by(NurtureSend.id))
        return [(row.step, row.status, row.reason) for row in rows]


async def test_a_tag_enrols_and_steps_go_out_on_time_with_conditions_then_a_reply_ends_it(
    start_bot, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    bot = await start_bot(nurture={"quiet_from": "00:00", "quiet_until": "00:00"})  # never quiet: any hour works
    await published(bot, tmp_path)
    for _ in range(3):
        await say(bot, "wmAva", "多少钱")  # the third price question tags 高意向: enrolled
    ava = await customer_of(bot, "wmAva")
    start_at = utcnow()
    await dispatch(bot, start_at + timedelta(minutes=1))
    assert texts(bot, "wmAva")[-1].endswith("，欢迎～")
    assert bot.replies_to("wmAva")[-1].path == "kf/send_msg"  # inside the kf window

    await dispatch(bot, start_at + timedelta(minutes=30))
    assert len(await sends(bot, ava.id)) == 2  # the tips are not due yet
    await dispatch(bot, start_at + timedelta(hours=1, minutes=1))  # no 连衣裙 tag: the tips are skipped
    assert (await sends(bot, ava.id))[1] == ("tips", "skipped", "condition not met")
    await dispatch(bot, start_at + timedelta(hours=2, minutes=1))
    assert texts(bot, "wmAva")[-1] == "送您一张优惠券"

    await say(bot, "wmAva", "谢谢")  # a reply: the sequence exits, the pending check-in is skipped
    assert (await sends(bot, ava.id))[-1] == ("check_in", "skipped", "exited: replied")
    async with bot.runtime.sessions() as session:
        enrolment = await session.scalar(select(Enrolment).where(Enrolment.customer_id == ava.id))
        coupon = await session.scalar(select(NurtureSend).where(NurtureSend.step == "coupon"))
    assert enrolment is not None and (enrolment.status, enrolment.exit_reason) == ("exited", "replied")
    assert coupon is not None and coupon.replied_at is not None
    await dispatch(bot, start_at + timedelta(hours=40))
    assert texts(bot, "wmAva")[-1] != "最近还好吗？"


def test_fixed_times_are_the_brands_and_delays_count_from_enrolment_or_the_previous_step() -> None:
    enrolled_at = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai
    previous = enrolled_at + timedelta(hours=5)
    at = SeqStep("coupon", "券", at_day=3, at_time="10:00")
    assert due_at(at, enrolled_at, previous, SHANGHAI) == datetime(2026, 11, 26, 10, 0, tzinfo=SHANGHAI)
    assert due_at(SeqStep("a", "x", after_s=86400), enrolled_at, previous, SHANGHAI) == enrolled_at + timedelta(days=1)
    assert due_at(SeqStep("b", "x", after_previous_s=60), enrolled_at, previous, SHANGHAI) == previous + timedelta(
        minutes=1)


async def test_quiet_hours_and_the_daily_cap_make_sends_wait_not_vanish(bot: Bot, tmp_path: Path) -> None:
    second = "sequence: second\nsteps:\n  - {id: hello, say: 第二个序列}\n"
    third = "sequence: third\nsteps:\n  - {id: hello, say: 第三个序列}\n"
    await published(bot, tmp_path, second=second, third=third)
    await say(bot, "wmBen", "你好")
    ben = await enrolled(bot, "wmBen")
    for name in ("second", "third"):
        await enrolled(bot, "wmBen", name)
    before = len(texts(bot, "wmBen"))
    night = noon_after(utcnow()).replace(hour=23)  # 23:00 brand time: quiet
    await dispatch(bot, night)
    assert len(texts(bot, "wmBen")) == before
    async with bot.runtime.sessions() as session:
        waiting = list(await session.scalars(select(NurtureSend).where(NurtureSend.customer_id == ben.id)))
    assert {row.reason for row in waiting} == {"waiting: quiet hours"}
    morning = night.replace(hour=8, minute=30) + timedelta(days=1)
    async with bot.runtime.sessions() as session, session.begin():  # Ben wrote again at 07:30: the kf window is open
        await wrote_at(session, ben.id, morning - timedelta(hours=1))
    assert {as_utc(row.due_at).astimezone(SHANGHAI) for row in waiting} == {morning}

    await dispatch(bot, morning + timedelta(minutes=1))
    assert len(texts(bot, "wmBen")) == before + 2  # the cap: two marketing messages a day
    assert [status for _, status, _ in await sends(bot, ben.id)].count("sent") == 2
    capped = [reason for _, status, reason in await sends(bot, ben.id) if status == "pending" and "cap" in reason]
    assert capped == ["waiting: daily cap"]
    async with bot.runtime.sessions() as session, session.begin():  # and again the next morning
        await wrote_at(session, ben.id, morning + timedelta(days=1))
    await dispatch(bot, morning + timedelta(days=1, minutes=2))
    assert len(texts(bot, "wmBen")) == before + 3


async def test_without_a_chat_window_the_owner_gets_a_group_message_task_until_the_monthly_limit(
    start_bot, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    bot = await start_bot(nurture={"cap_per_day": 10})
    many = "sequence: many\nsteps:\n" + "".join(f"  - {{id: s{i}, after: {i}h, say: 第{i}条}}\n" for i in range(6))
    await published(bot, tmp_path, many=many)
    bot.fake.add_follow_user("wmCat", "rep_li")
    assert await bot.simulator.contact_adds(bot.url, "wmCat", "rep_li") == 200
    await bot.drain()
    cat = await enrolled(bot, "wmCat", "many")
    noon = noon_after(utcnow())
    for hour in range(6):  # one day, so one month
        await dispatch(bot, noon + timedelta(hours=hour))
    tasks = [task for task in bot.fake.group_tasks if task["external_userid"] == ["wmCat"]]
    assert [task["text"]["content"] for task in tasks] == ["第0条", "第1条", "第2条", "第3条"]
    assert {task["sender"] for task in tasks} == {"rep_li"} and len(bot.fake.reminders) == 4
    skipped = [reason for _, status, reason in await sends(bot, cat.id) if status == "skipped"]
    assert len(skipped) == 2 and all("4 group messages this month used" in reason for reason in skipped)


async def test_a_handoff_pauses_sends_and_unsubscribed_customers_get_no_marketing(bot: Bot, tmp_path: Path) -> None:
    plain = "sequence: plain\nsteps:\n  - {id: hello, say: 你好呀}\n"
    await published(bot, tmp_path, plain=plain)
    await say(bot, "wmDan", "你好")
    await say(bot, "wmEli", "你好")
    dan, eli = await enrolled(bot, "wmDan", "plain"), await enrolled(bot, "wmEli", "plain")
    async with bot.runtime.sessions() as session, session.begin():
        await start(session, await session.get_one(Customer, dan.id), "want_human", utcnow())
        (await session.get_one(Customer, eli.id)).marketing_opt_out = True
    noon = noon_after(utcnow())
    await dispatch(bot, noon)
    assert await sends(bot, dan.id) == [("hello", "pending", "waiting: handed off")]
    assert await sends(bot, eli.id) == [("hello", "skipped", "unsubscribed")]
    assert "你好呀" not in texts(bot, "wmDan") + texts(bot, "wmEli")


async def test_two_dispatchers_at_once_send_each_step_exactly_once(bot: Bot, tmp_path: Path) -> None:
    if bot.settings.store.url.startswith("sqlite"):
        return  # one writer at a time on SQLite: nothing races
    plain = "sequence: plain\nsteps:\n  - {id: hello, say: 你好呀}\n  - {id: again, after_previous: 1d, say: 又见面了}\n"
    await published(bot, tmp_path, plain=plain)  # the second step a day after the first: never due at `noon`
    async with bot.runtime.sessions() as session, session.begin():
        sequence, state = await SequenceCatalog().current(session, "plain")
        reach = {"channel": "kf", "sender": "x", "account": "wk", "at": int(utcnow().timestamp())}
        wrote: dict[int, Allowance] = {}  # each wrote just now: 5 messages may go
        for index in range(300):
            customer = Customer(display_name=f"c{index}", reach={**reach, "sender": f"wm{index}"})
            session.add(customer)
            await session.flush()
            await enrol(session, customer.id, sequence, state.current_version, "admin", SHANGHAI)
            wrote[customer.id] = Allowance("kf").earned("message", reach["at"])
        await allowances.save_many(session, wrote)
    assert bot.runtime.nurture is not None
    other = type(bot.runtime.nurture)(bot.runtime.sessions, bot.settings.nurture.model_copy(update={"batch": 40}),
                                      Lifecycle(bot.settings.lifecycle))
    noon = noon_after(utcnow())
    await asyncio.gather(bot.runtime.nurture.run_due(noon), other.run_due(noon))
    async with bot.runtime.sessions() as session:
        outbox = await session.scalar(select(func.count()).select_from(OutboxItem)
                                      .where(OutboxItem.dedup_key.like("nurture:%")))
        sent = await session.scalar(select(func.count()).select_from(NurtureSend).where(NurtureSend.status == "sent"))
        pending = await session.scalar(select(func.count()).select_from(NurtureSend)
                                       .where(NurtureSend.status == "pending"))
    assert (outbox, sent, pending) == (300, 300, 300)  # each first step once; each second step scheduled once
