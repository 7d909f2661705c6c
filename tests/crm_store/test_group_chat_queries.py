"""Customer groups read back: the list and its filters, one group's detail, group tags, `--in-group`, the report.

The data set (`known_groups`) is made with the store's own functions (apply_group, as the
callbacks and the full sync do), and crosses a day boundary of Asia/Shanghai inside one UTC day.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.customer_queries import find_customers
from crm_store.customers import Profile, resolve_customer
from crm_store.db import create_engine, session_factory
from crm_store.group_chat_models import GroupChatTag, GroupJoinCode
from crm_store.group_chat_queries import GroupFilter, GroupNotFound, group_detail, list_groups, resolve_groups
from crm_store.group_chat_reports import group_chats_report
from crm_store.group_chat_tags import GroupTagError, tag_groups, tags_of
from crm_store.group_chats import GroupInfo, apply_group
from crm_store.tags import sync_catalog
from tests.conftest import Backend, Sessions

CATALOG: dict[str, tuple[str, ...]] = {"群": ("新品群", "老客群")}
SHANGHAI = "Asia/Shanghai"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def member(userid: str, joined: str, type_: int = 2, scene: int = 3, state: str = "", invitor: str = ""
           ) -> dict[str, Any]:
    """One member as groupchat/get lists them; `joined` in UTC."""
    answer: dict[str, Any] = {"userid": userid, "type": type_, "join_time": int(at(joined).timestamp()),
                              "join_scene": scene, "name": userid}
    if state:
        answer["state"] = state
    if invitor:
        answer["invitor"] = {"userid": invitor}
    return answer


def snapshot(chat_id: str, name: str, owner: str, members: list[dict[str, Any]]) -> GroupInfo:
    return GroupInfo.from_api({"chat_id": chat_id, "name": name, "owner": owner, "member_list": members,
                               "create_time": int(at("2026-11-30 00:00").timestamp())})


@dataclass(frozen=True)
class Known:
    jia: int  # the customer wmA, whose personal code gc_P1 brought wmB and wmC
    yi: int  # wmB: joined through gc_P1, left
    bing: int  # wmC: joined through gc_P1, still in


async def known_groups(session: AsyncSession) -> Known:
    """Two groups. 新品首发1群 (wrA, owner zhang, offered by live code gc_SPRING):
    wmA joins 2026-12-01 15:30 UTC (23:30 in Shanghai, Dec 1), wmB 16:30 UTC (00:30, Dec 2) through
    wmA's personal code gc_P1, wmB leaves at 2026-12-02 03:00 UTC, wmC joins 02:00 UTC through gc_P1.
    老客群 (wrB, owner li): wmA joins 2026-12-03 01:00 UTC, invited. Reps zhang and li are members."""
    await sync_catalog(session, CATALOG)
    jia, yi, bing = [await resolve_customer(session, "wecom", userid, Profile(display_name=name))
                     for userid, name in (("wmA", "甲"), ("wmB", "乙"), ("wmC", "丙"))]
    spring = GroupJoinCode(code="gc_SPRING", name="春季新品", chat_ids=["wrA"], fission=True)
    session.add(spring)
    await session.flush()
    session.add(GroupJoinCode(code="gc_P1", name="甲的邀请码", parent_id=spring.id, inviter_id=jia.id))
    await session.flush()
    zhang = member("zhang", "2026-12-01 08:00", type_=1, scene=0)
    wm_a = member("wmA", "2026-12-01 15:30", state="gc_SPRING")
    wm_b = member("wmB", "2026-12-01 16:30", state="gc_P1")
    wm_c = member("wmC", "2026-12-02 02:00", state="gc_P1")
    await apply_group(session, snapshot("wrA", "新品首发1群", "zhang", [zhang, wm_a, wm_b]), at("2026-12-01 17:00"))
    await apply_group(session, snapshot("wrA", "新品首发1群", "zhang", [zhang, wm_a, wm_c]), at("2026-12-02 03:00"),
                      quit_scene=0)
    await apply_group(session, snapshot("wrB", "老客群", "li", [
        member("li", "2026-11-30 00:00", type_=1, scene=0),
        member("wmA", "2026-12-03 01:00", scene=1, invitor="li")]), at("2026-12-03 02:00"))
    return Known(jia.id, yi.id, bing.id)


@pytest.fixture
async def known(sessions: Sessions) -> Known:
    async with sessions() as session, session.begin():
        return await known_groups(session)


# ---------------------------------------------------------------- list and show


async def test_list_counts_members_and_customers_now_and_filters(sessions: Sessions, known: Known) -> None:
    async with sessions() as session, session.begin():
        await tag_groups(session, ["wrA"], ["新品群"])
        every = await list_groups(session)
        assert {(r.chat_id, r.members, r.customers, r.tags, r.code) for r in every} == {
            ("wrA", 3, 2, ("新品群",), "gc_SPRING"), ("wrB", 2, 1, (), None)}
        assert [r.chat_id for r in await list_groups(session, GroupFilter(tag="新品群"))] == ["wrA"]
        assert [r.chat_id for r in await list_groups(session, GroupFilter(owner="li"))] == ["wrB"]
        assert [r.chat_id for r in await list_groups(session, GroupFilter(name_contains="首发"))] == ["wrA"]
        assert [r.chat_id for r in await list_groups(session, GroupFilter(code="gc_SPRING"))] == ["wrA"]
        assert await list_groups(session, GroupFilter(status="dismissed")) == []
        assert len(await list_groups(session, limit=1)) == 1
        with pytest.raises(ValueError, match="status 'gone'"):
            await list_groups(session, GroupFilter(status="gone"))


async def test_detail_says_how_each_member_came_and_the_latest_changes(sessions: Sessions, known: Known) -> None:
    async with sessions() as session, session.begin():
        detail = await group_detail(session, "wrA")
        assert await group_detail(session, "wrNope") is None
    assert detail is not None and (detail.row.members, detail.row.customers) == (3, 2)
    assert [(m.kind, m.userid, m.code, m.inviter_id) for m in detail.members_now] == [
        ("customer", "wmA", "gc_SPRING", None), ("customer", "wmC", "gc_P1", known.jia), ("rep", "zhang", None, None)]
    assert detail.members_now[0].customer_name == "甲" and detail.members_now[0].scene == "扫码"
    assert [(c.change, c.userid) for c in detail.recent] == [
        ("leave", "wmB"), ("join", "wmC"), ("join", "wmB"), ("join", "wmA"), ("join", "zhang")]
    assert detail.recent[0].scene == "退群" and detail.recent[0].customer_id == known.yi


async def test_groups_are_named_by_chat_id_or_unambiguous_name(sessions: Sessions, known: Known) -> None:
    async with sessions() as session, session.begin():
        found = await resolve_groups(session, ["wrA", "老客群"])
        assert {ref: group.chat_id for ref, group in found.items()} == {"wrA": "wrA", "老客群": "wrB"}
        await apply_group(session, snapshot("wrC", "老客群", "li", []), at("2026-12-03 02:00"))
        with pytest.raises(GroupNotFound) as caught:
            await resolve_groups(session, ["老客群", "wrNope"])
    assert caught.value.problems == [
        "2 groups are named '老客群' (wrB, wrC): name one by its chat id",
        "no group 'wrNope' (list them with: scrm groupchats list)"]


# ---------------------------------------------------------------- tags


async def test_tagging_is_all_or_nothing_and_names_every_problem(sessions: Sessions, known: Known) -> None:
    async with sessions() as session, session.begin():
        with pytest.raises(GroupTagError) as caught:
            await tag_groups(session, ["wrA", "wrNope"], ["新品群", "新品裙"])
        assert await session.scalar(select(func.count()).select_from(GroupChatTag)) == 0
    problems = caught.value.problems
    assert len(problems) == 2 and "no group 'wrNope'" in problems[0]
    assert "tag '新品裙' is not in the tag catalog (did you mean 新品群?)" in problems[1]


async def test_tagging_twice_changes_once_and_removal_reports_what_went(sessions: Sessions, known: Known) -> None:
    async with sessions() as session, session.begin():
        assert await tag_groups(session, ["wrA", "wrB"], ["新品群", "老客群"]) == {
            "wrA": ["新品群", "老客群"], "wrB": ["新品群", "老客群"]}
        assert await tag_groups(session, ["wrA"], ["新品群"]) == {"wrA": []}
        assert await tag_groups(session, ["wrA"], ["老客群"], remove=True) == {"wrA": ["老客群"]}
        assert await tag_groups(session, ["wrA"], ["老客群"], remove=True) == {"wrA": []}
        group = (await resolve_groups(session, ["wrA"]))["wrA"]
        assert await tags_of(session, group.id) == ["新品群"]


async def test_two_admins_tagging_at_once_write_one_row(sessions: Sessions, known: Known, backend: Backend) -> None:
    if backend.name == "sqlite":
        pytest.skip("SQLite has one writer at a time: nothing runs at once there")

    async def tag_once() -> dict[str, list[str]]:
        async with sessions() as session, session.begin():
            return await tag_groups(session, ["wrA"], ["新品群"])

    results = await asyncio.gather(*(tag_once() for _ in range(5)))
    assert sorted(len(result["wrA"]) for result in results) == [0, 0, 0, 0, 1]
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(GroupChatTag)) == 1


# ---------------------------------------------------------------- customers find --in-group


async def test_customers_in_every_group_given(sessions: Sessions, known: Known) -> None:
    async with sessions() as session, session.begin():
        groups = await resolve_groups(session, ["wrA", "wrB"])
        in_a = await find_customers(session, in_groups=[groups["wrA"].id])
        in_both = await find_customers(session, in_groups=[g.id for g in groups.values()])
    assert {row.display_name for row in in_a} == {"甲", "丙"}  # 乙 left
    assert [row.display_name for row in in_both] == ["甲"]


# ---------------------------------------------------------------- the report


async def test_the_report_counts_days_in_the_brands_time_zone(sessions: Sessions, known: Known) -> None:
    async with sessions() as session, session.begin():
        report = await group_chats_report(session, None, None, timezone=SHANGHAI)
        in_utc = await group_chats_report(session, None, None, timezone="UTC")
    assert [(d.day, d.joins, d.leaves) for d in report.days] == [
        ("2026-12-01", 1, 0), ("2026-12-02", 2, 1), ("2026-12-03", 1, 0)]
    assert [(d.day, d.joins, d.leaves) for d in in_utc.days] == [
        ("2026-12-01", 2, 0), ("2026-12-02", 1, 1), ("2026-12-03", 1, 0)]
    assert (report.groups_now, report.members_now, report.customers_now, report.joins, report.leaves) == (
        2, 5, 3, 4, 1)
    [inviter] = report.top_inviters
    assert (inviter.customer_id, inviter.name, inviter.joins, inviter.members_now) == (known.jia, "甲", 2, 1)
    [code] = report.codes  # the personal code gc_P1 counts for gc_SPRING
    assert (code.code, code.groups, code.joins, code.leaves, code.members_now) == ("gc_SPRING", 1, 3, 1, 2)


async def test_the_report_by_owner_and_window(sessions: Sessions, known: Known) -> None:
    async with sessions() as session, session.begin():
        zhang = await group_chats_report(session, None, None, timezone=SHANGHAI, owner="zhang")
        later = await group_chats_report(session, at("2026-12-01 16:00"), None, timezone=SHANGHAI)  # Dec 2, 00:00
    assert (zhang.groups_now, zhang.members_now, zhang.customers_now, zhang.joins, zhang.leaves) == (1, 3, 2, 3, 1)
    assert [d.day for d in zhang.days] == ["2026-12-01", "2026-12-02"]
    assert [(d.day, d.joins, d.leaves) for d in later.days] == [("2026-12-02", 2, 1), ("2026-12-03", 1, 0)]
    assert later.codes[0].joins == 2 and later.top_inviters[0].joins == 2


async def test_the_report_of_an_empty_store(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        report = await group_chats_report(session, None, None)
    assert (report.groups_now, report.joins, report.days, report.top_inviters, report.codes) == (0, 0, [], [], [])


async def test_a_page_of_groups_costs_two_queries_whatever_its_size(backend: Backend, known: Known) -> None:
    engine = create_engine(backend.store_url)
    statements: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    try:
        async with session_factory(engine)() as session, session.begin():
            for n in range(6):
                await apply_group(session, snapshot(f"wrMore{n}", f"群{n}", "wang", [
                    member(f"wmMore{n}", "2026-12-03 01:00")]), at("2026-12-03 02:00"))
            await tag_groups(session, [f"wrMore{n}" for n in range(6)], ["老客群"])
            statements.clear()
            rows = await list_groups(session)
    finally:
        await engine.dispose()
    assert len(rows) == 8 and all(row.tags == ("老客群",) for row in rows if row.owner == "wang")
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 2
