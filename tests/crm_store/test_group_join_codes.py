"""Group live codes in the store: every problem named at once, one personal code per customer under a race,
groups a code learns once, and the figures per code (joins, leaves, members now, new customers, conversions)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from crm_store.customers import Profile, resolve_customer
from crm_store.group_chat_models import GroupChat, GroupChatChange, GroupChatMember, GroupJoinCode
from crm_store.group_code_reports import code_report, list_codes
from crm_store.group_join_codes import (
    GroupCodeError,
    GroupCodeSpec,
    WelcomeLink,
    WelcomeMiniprogram,
    add_code,
    add_personal,
    check_groups,
    check_names,
    code_by_code,
    codes,
    learn_group,
    new_group_code,
    spec_of,
    validate,
)
from crm_store.models import Customer, Tag
from tests.conftest import Backend, Sessions

PURCHASE = ["customer", "repeat", "loyal"]
SPEC = GroupCodeSpec("新品群活码", ("wr1", "wr2"), room_base_name="新品群", welcome_text="欢迎 %NICKNAME%",
                     welcome_link=WelcomeLink("新品", "https://shop.example.com/new"), tags=("新品群",), fission=True)


async def groups(sessions: Sessions, *chat_ids: str, dismissed: tuple[str, ...] = ()) -> None:
    async with sessions() as session, session.begin():
        for chat_id in chat_ids:
            session.add(GroupChat(chat_id=chat_id, name=chat_id, owner_userid="zhang",
                                  status="dismissed" if chat_id in dismissed else "active"))


async def stored_code(sessions: Sessions, spec: GroupCodeSpec = SPEC, code: str = "gc_AAAA2222") -> GroupJoinCode:
    async with sessions() as session, session.begin():
        return await add_code(session, spec, code, f"cfg_{code}", f"https://qr/{code}", "tpl1")


async def customer(sessions: Sessions, external_id: str, created: datetime | None = None, stage: str = "lead",
                   changed: datetime | None = None) -> int:
    async with sessions() as session, session.begin():
        row = await resolve_customer(session, "wecom", external_id, Profile(external_id))
        row.stage, row.stage_changed_at = stage, changed
        if created:
            row.created_at = created
        await session.flush()
        return row.id


async def change(sessions: Sessions, chat_id: str, customer_id: int, kind: str, at: datetime, code_id: int | None,
                 inviter_id: int | None = None) -> None:
    """A join or leave as the group callbacks record them, and the member row as it is after it."""
    async with sessions() as session, session.begin():
        group = await session.scalar(select(GroupChat).where(GroupChat.chat_id == chat_id))
        assert group is not None
        userid = f"wm_{customer_id}"
        session.add(GroupChatChange(group_id=group.id, userid=userid, kind="customer", customer_id=customer_id,
                                    change=kind, scene=3, code_id=code_id if kind == "join" else None,
                                    inviter_id=inviter_id if kind == "join" else None, at=at))
        member = await session.get(GroupChatMember, (group.id, userid))
        if member is None:
            member = GroupChatMember(group_id=group.id, userid=userid, kind="customer", customer_id=customer_id)
            session.add(member)
        if kind == "join":
            member.code_id, member.inviter_id = code_id, inviter_id
        member.joined_at, member.left_at = (at, None) if kind == "join" else (member.joined_at, at)


def test_validate_names_every_problem_at_once() -> None:
    bad = GroupCodeSpec(
        " ", tuple(f"wr{n}" for n in range(6)), room_base_name="群" * 41, room_base_id=0,
        welcome_text="欢" * 1001, welcome_link=WelcomeLink("", "ftp://x"),
        welcome_miniprogram=WelcomeMiniprogram("t", "", "/p", ""), tags=(" ",))
    with pytest.raises(GroupCodeError) as caught:
        validate(bad)
    problems = caught.value.problems
    expected = ["name is empty", "at most 5 groups", "room base name is longer than 40", "room base number",
                "tag ' '", "welcome text is longer than 3000 bytes", "welcome link needs a title",
                "link's url is not an http(s) URL", "not both", "needs its appid", "needs its cover"]
    for words in expected:
        assert any(words in problem for problem in problems), (words, problems)
    assert len(problems) == len(expected), problems
    with pytest.raises(GroupCodeError, match="groups named twice: wr1"):
        validate(GroupCodeSpec("群", ("wr1", "wr1")))
    with pytest.raises(GroupCodeError, match="at least one group"):
        validate(GroupCodeSpec("群", ()))
    validate(SPEC)
    validate(GroupCodeSpec("群", ("wr1",), auto_create_room=False, welcome_text="欢" * 1000))  # 3000 bytes exactly


async def test_check_names_lists_unknown_and_dismissed_groups_and_unknown_tags(sessions: Sessions) -> None:
    await groups(sessions, "wr1", "wr2", "wr_old", dismissed=("wr_old",))
    async with sessions() as session, session.begin():
        session.add(Tag(name="新品群", group_name="群"))
    async with sessions() as session:
        with pytest.raises(GroupCodeError) as caught:
            await check_names(session, GroupCodeSpec("群", ("wr1", "wr_nope", "wr_old"), tags=("新品群", "没有")))
        problems = caught.value.problems
        assert len(problems) == 3, problems
        assert "unknown group(s) wr_nope: run scrm groupchats sync first" in problems[0]
        assert "dismissed group(s) wr_old" in problems[1] and "unknown tag(s) 没有" in problems[2]
        with pytest.raises(GroupCodeError, match="wr9"):
            await check_groups(session, ["wr1", "wr9"])
        await check_names(session, SPEC)


async def test_a_stored_code_is_found_as_typed_and_claims_its_groups(sessions: Sessions) -> None:
    await groups(sessions, "wr1", "wr2")
    code = new_group_code()
    assert code.startswith("gc_") and len(code) == 11
    row = await stored_code(sessions, code=code)
    async with sessions() as session:
        for typed in (code, code.lower(), code[3:].lower(), f" {code} "):
            found = await code_by_code(session, typed)
            assert found is not None and found.id == row.id, typed
        assert await code_by_code(session, "gc_NOPE2345") is None
        assert [group.code_id for group in await session.scalars(select(GroupChat))] == [row.id, row.id]
        assert spec_of(row) == SPEC
        assert row.welcome == {"text": "欢迎 %NICKNAME%", "link": {"title": "新品", "url": "https://shop.example.com/new"}}


async def test_one_personal_code_per_customer_when_two_ask_at_once(sessions: Sessions, backend: Backend) -> None:
    await groups(sessions, "wr1", "wr2")
    parent = await stored_code(sessions)
    inviter = await customer(sessions, "wm_inviter")

    async def ask(n: int) -> tuple[str, bool]:
        async with sessions() as session, session.begin():
            row, won = await add_personal(session, parent, inviter, f"gc_PERS{n}222", f"cfg_p{n}", f"https://qr/p{n}")
            return row.code, won

    outcomes = await asyncio.gather(*(ask(n) for n in range(4 if backend.name == "postgres" else 1)))
    assert [won for _, won in outcomes].count(True) == 1
    assert len({code for code, _ in outcomes}) == 1  # the losers see the winner's code
    again = await ask(9)
    assert again == (outcomes[0][0], False)
    async with sessions() as session:
        assert len(await codes(session)) == 1 and len(await codes(session, personal=True)) == 2


async def test_a_code_learns_a_group_it_created_once(sessions: Sessions) -> None:
    await groups(sessions, "wr1", "wr2", "wr3")
    row = await stored_code(sessions)
    for expected in (True, False):
        async with sessions() as session, session.begin():
            group = await session.scalar(select(GroupChat).where(GroupChat.chat_id == "wr3"))
            assert group is not None
            assert await learn_group(session, row.id, group) is expected
    async with sessions() as session:
        stored = await code_by_code(session, row.code)
        assert stored is not None and stored.chat_ids == ["wr1", "wr2", "wr3"]
        assert await session.scalar(select(GroupChat.code_id).where(GroupChat.chat_id == "wr3")) == row.id


async def test_figures_per_code_count_joins_leaves_members_new_customers_and_conversions(sessions: Sessions) -> None:
    await groups(sessions, "wr1", "wr2")
    row = await stored_code(sessions)
    t0 = datetime(2026, 12, 1, 10, tzinfo=UTC)
    old = await customer(sessions, "wm_old", created=t0 - timedelta(days=30), stage="customer",
                         changed=t0 - timedelta(days=5))  # bought before joining: not this code's conversion
    new = await customer(sessions, "wm_new", created=t0 + timedelta(seconds=2), stage="customer",
                         changed=t0 + timedelta(days=1))
    later = await customer(sessions, "wm_later", created=t0 - timedelta(days=30), stage="repeat",
                           changed=t0 + timedelta(days=2))  # an old customer who bought after joining
    inviter = await customer(sessions, "wm_inviter", created=t0 - timedelta(days=9))
    async with sessions() as session, session.begin():
        personal, _ = await add_personal(session, row, inviter, "gc_PERS2222", "cfg_p", "https://qr/p")
    friend = await customer(sessions, "wm_friend", created=t0 + timedelta(hours=1))
    await change(sessions, "wr1", old, "join", t0, row.id)
    await change(sessions, "wr1", new, "join", t0, row.id)
    await change(sessions, "wr2", later, "join", t0, row.id)
    await change(sessions, "wr2", later, "leave", t0 + timedelta(hours=3), row.id)
    await change(sessions, "wr2", later, "join", t0 + timedelta(hours=4), row.id)  # came back: a second join
    await change(sessions, "wr1", inviter, "join", t0, row.id)
    await change(sessions, "wr2", friend, "join", t0 + timedelta(hours=1), personal.id, inviter)
    async with sessions() as session:
        report = await code_report(session, row, PURCHASE)
        figures = report.figures
        assert (figures.joins, figures.leaves, figures.members_now) == (6, 1, 5)
        assert (figures.joiners, figures.new_customers, figures.conversions) == (5, 2, 2)  # new, friend / new, later
        assert report.conversion_rate == 0.4 and report.personal_codes == 1
        assert [(i.customer_id, i.friends, i.code) for i in report.top_inviters] == [(inviter, 1, "gc_PERS2222")]
        listed = await list_codes(session, PURCHASE)
        assert [(r.code, r.figures) for r in listed] == [(row.code, figures)]
        both = await list_codes(session, PURCHASE, personal=True)
        assert [(r.code, r.figures.joins, r.inviter_id) for r in both] == [(row.code, 5, None),
                                                                          ("gc_PERS2222", 1, inviter)]
        assert await session.get(Customer, friend) is not None
