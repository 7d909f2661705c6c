"""Group segments and group pushes in the store: who a push reaches, every problem at once, one push per SOP
occurrence under concurrency, cancelling and counting."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.group_chat_models import GroupChat, GroupChatTag, GroupJoinCode, GroupPush, GroupPushTarget
from crm_store.group_pushes import (
    GroupPushError,
    GroupPushSpec,
    Link,
    cancel_group_push,
    create_group_push,
    ensure_occurrence,
    group_push_results,
    list_group_pushes,
)
from crm_store.group_segments import GroupSegment, GroupSegmentError, count_groups, groups_in
from tests.conftest import Sessions

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


async def add_groups(sessions: Sessions, rows: list[tuple[str, str, str, tuple[str, ...]]],
                     code: str = "") -> dict[str, int]:
    """Groups (chat_id, owner, name, tags) as the sync stores them; chat_id -> id."""
    async with sessions() as session, session.begin():
        code_id = None
        if code:
            join = GroupJoinCode(code=code, name=code)
            session.add(join)
            await session.flush()
            code_id = join.id
        ids = {}
        for chat_id, owner, name, tags in rows:
            group = GroupChat(chat_id=chat_id, owner_userid=owner, name=name, code_id=code_id if "live" in name else None,
                              status="dismissed" if "gone" in name else "active")
            session.add(group)
            await session.flush()
            session.add_all(GroupChatTag(group_id=group.id, tag=tag) for tag in tags)
            ids[chat_id] = group.id
    return ids


GROUPS = [("c1", "rep_a", "新品群1", ("新品群",)), ("c2", "rep_a", "新品群2 live", ("新品群", "VIP")),
          ("c3", "rep_b", "VIP群", ("VIP",)), ("c4", "rep_b", "50%_off", ()), ("c5", "rep_a", "新品群 gone", ("新品群",))]


async def chat_ids(session: AsyncSession, segment: GroupSegment) -> set[str]:
    rows = await session.execute(groups_in(segment))
    ids = {group_id for group_id, _owner in rows.tuples()}
    return set(await session.scalars(select(GroupChat.chat_id).where(GroupChat.id.in_(ids)))) if ids else set()


async def test_segments_choose_active_groups_by_tags_owner_name_and_code(sessions: Sessions) -> None:
    await add_groups(sessions, GROUPS, code="gc_LIVE1")
    async with sessions() as session:
        assert await chat_ids(session, GroupSegment(tags_all=("新品群",))) == {"c1", "c2"}  # c5 is dismissed
        assert await chat_ids(session, GroupSegment(tags_all=("新品群", "VIP"))) == {"c2"}
        assert await chat_ids(session, GroupSegment(tags_any=("新品群", "VIP"))) == {"c1", "c2", "c3"}
        assert await chat_ids(session, GroupSegment(owner="rep_b")) == {"c3", "c4"}
        assert await chat_ids(session, GroupSegment(name_contains="%_")) == {"c4"}  # LIKE wildcards are text
        assert await chat_ids(session, GroupSegment(code="gc_LIVE1")) == {"c2"}
        assert await count_groups(session, GroupSegment(tags_any=("VIP",), owner="rep_a")) == 1


def test_an_empty_or_bad_segment_names_every_problem() -> None:
    with pytest.raises(GroupSegmentError) as caught:
        GroupSegment().checked()
    assert "at least one of tags" in str(caught.value)
    problems = GroupSegment(tags_all=("", "x" * 65), code="ch_X").validate()
    assert len(problems) == 3 and any("gc_" in p for p in problems)


async def test_a_push_has_one_target_per_group_with_its_owner(sessions: Sessions) -> None:
    ids = await add_groups(sessions, GROUPS)
    async with sessions() as session, session.begin():
        push = await create_group_push(session, GroupPushSpec("上新", GroupSegment(tags_any=("新品群", "VIP")), "今日上新",
                                                              Link("新品", "https://shop.example.com/new")), now=NOW)
    async with sessions() as session:
        targets = (await session.execute(select(GroupPushTarget.group_id, GroupPushTarget.owner_userid,
                                                GroupPushTarget.status).where(GroupPushTarget.push_id == push.id)))
        assert sorted(targets.tuples()) == sorted([(ids["c1"], "rep_a", "pending"), (ids["c2"], "rep_a", "pending"),
                                                   (ids["c3"], "rep_b", "pending")])
        stored = await session.get(GroupPush, push.id)
        assert stored is not None and stored.audience == 3
        assert stored.message == {"text": "今日上新", "link": {"title": "新品", "url": "https://shop.example.com/new"}}


async def test_a_bad_push_lists_every_problem_and_writes_nothing(sessions: Sessions) -> None:
    await add_groups(sessions, GROUPS)
    spec = GroupPushSpec("", GroupSegment(), "字" * 1400, Link("", "ftp://x"), scheduled_at=NOW - timedelta(hours=1))
    async with sessions() as session, session.begin():
        with pytest.raises(GroupPushError) as caught:
            await create_group_push(session, spec, now=NOW)
    message = str(caught.value)
    for expected in ("name:", "groups:", "text: 4200 bytes; WeCom takes at most 4000", "link.title: required",
                     "link.url:", "time:"):
        assert expected in message
    async with sessions() as session, session.begin():
        with pytest.raises(GroupPushError, match="no group matches"):
            await create_group_push(session, GroupPushSpec("x", GroupSegment(tags_all=("无此标签",)), "hi"), now=NOW)
        with pytest.raises(GroupPushError, match="no group live code gc_NOPE"):
            await create_group_push(session, GroupPushSpec("x", GroupSegment(code="gc_NOPE"), "hi"), now=NOW)
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(GroupPush)) == 0
        assert await session.scalar(select(func.count()).select_from(GroupPushTarget)) == 0


async def test_an_occurrence_is_one_push_however_many_schedulers_ask_at_once(sessions: Sessions) -> None:
    await add_groups(sessions, GROUPS)
    spec = GroupPushSpec("新品 morning", GroupSegment(tags_all=("新品群",)), "早上好", scheduled_at=NOW)

    async def ask() -> tuple[int, bool]:
        async with sessions() as session, session.begin():
            push, created = await ensure_occurrence(session, "sop:new:morning:2026-12-03", spec, NOW)
            return push.id, created

    answers = await asyncio.gather(*(ask() for _ in range(6)))
    assert len({push_id for push_id, _ in answers}) == 1
    assert sum(created for _, created in answers) == 1
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(GroupPush)) == 1
        assert await session.scalar(select(func.count()).select_from(GroupPushTarget)) == 2


async def test_cancel_stops_pending_groups_and_results_count_them(sessions: Sessions) -> None:
    await add_groups(sessions, GROUPS)
    async with sessions() as session, session.begin():
        push = await create_group_push(session, GroupPushSpec("x", GroupSegment(owner="rep_b"), "hi"), now=NOW)
    async with sessions() as session, session.begin():
        assert await cancel_group_push(session, push.id) == 2
    async with sessions() as session, session.begin():
        with pytest.raises(GroupPushError, match="already cancelled"):
            await cancel_group_push(session, push.id)
        results = await group_push_results(session, push.id)
        assert results.by_status == {"cancelled": 2} and results.tasks == 0
        [(listed, counts)] = await list_group_pushes(session)
        assert listed.id == push.id and counts == {"cancelled": 2}
        with pytest.raises(GroupPushError, match="no group push 999"):
            await group_push_results(session, 999)
