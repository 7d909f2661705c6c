"""Customer groups in the store: a snapshot applied as a whole, joins and leaves once, codes and inviters."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.customers import Profile, find_identity, resolve_customer
from crm_store.group_chat_members import customer_ids_for
from crm_store.group_chat_models import GroupChat, GroupChatChange, GroupChatMember, GroupJoinCode
from crm_store.group_chats import (
    DISMISSED,
    GroupApplied,
    GroupChatDataError,
    GroupInfo,
    MemberInfo,
    apply_group,
    apply_groups,
    dismiss_group,
    group_by_chat_id,
    groups_of_customer,
    scene_name,
)
from crm_store.models import Customer, Identity, TimelineEvent
from tests.conftest import Backend, Sessions

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
JOINED = 1_764_579_600  # 2025-12-01 09:00 UTC


def member(userid: str, type_: int = 2, scene: int = 3, state: str = "", joined: int = JOINED,
           invitor: str = "", name: str = "") -> dict[str, Any]:
    """One member as groupchat/get lists them."""
    answer: dict[str, Any] = {"userid": userid, "type": type_, "join_time": joined, "join_scene": scene,
                              "name": name or userid, "group_nickname": ""}
    if state:
        answer["state"] = state
    if invitor:
        answer["invitor"] = {"userid": invitor}
    return answer


def group(members: list[dict[str, Any]], chat_id: str = "wrChat1", name: str = "新品群", owner: str = "zhang",
          notice: str = "", version: str = "1") -> GroupInfo:
    return GroupInfo.from_api({"chat_id": chat_id, "name": name, "owner": owner, "create_time": JOINED,
                               "notice": notice, "member_list": members, "admin_list": [],
                               "member_version": version})


async def apply(sessions: Sessions, info: GroupInfo, now: datetime = T0, quit_scene: int | None = None) -> GroupApplied:
    async with sessions() as session, session.begin():
        return await apply_group(session, info, now, quit_scene)


async def count(sessions: Sessions, model: Any, *where: Any) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def timeline_kinds(sessions: Sessions, kind_prefix: str = "group.") -> list[tuple[str, dict[str, Any]]]:
    async with sessions() as session:
        rows = await session.execute(select(TimelineEvent.kind, TimelineEvent.data)
                                     .where(TimelineEvent.kind.startswith(kind_prefix)).order_by(TimelineEvent.id))
        return [(kind, data) for kind, data in rows]


async def test_a_new_group_is_stored_with_its_members_linked_to_customers_and_reps(sessions: Sessions) -> None:
    applied = await apply(sessions, group([member("zhang", 1, 1), member("wmAlice"), member("wmBob", scene=1,
                                                                                       invitor="zhang")]))
    assert applied.created and len(applied.joined) == 3 and not applied.left
    async with sessions() as session:
        stored = await group_by_chat_id(session, "wrChat1")
        assert stored is not None and stored.members == 3 and stored.owner_userid == "zhang"
        assert stored.name == "新品群" and stored.synced_at is not None and stored.member_version == "1"
        rows = {row.userid: row for row in await session.scalars(select(GroupChatMember))}
        assert rows["zhang"].kind == "rep" and rows["zhang"].customer_id is None
        alice = await find_identity(session, "wecom", "wmAlice")
        assert alice is not None and rows["wmAlice"].customer_id == alice.customer_id  # a customer we now know
        assert rows["wmBob"].invitor_userid == "zhang" and rows["wmBob"].join_scene == 1
        assert [g.chat_id for g in await groups_of_customer(session, alice.customer_id)] == ["wrChat1"]
    assert await count(sessions, GroupChatChange, GroupChatChange.change == "join") == 3
    entries = await timeline_kinds(sessions)
    assert [kind for kind, _ in entries] == ["group.joined", "group.joined"]  # customers only, not the rep
    assert entries[0][1] == {"chat_id": "wrChat1", "group": "新品群", "scene": "扫码"}


async def test_the_same_snapshot_applied_twice_changes_nothing(sessions: Sessions) -> None:
    info = group([member("zhang", 1, 1), member("wmAlice")])
    await apply(sessions, info)
    again = await apply(sessions, info, T0 + timedelta(seconds=5))
    assert not again.created and not again.joined and not again.left
    assert await count(sessions, GroupChatChange) == 2
    assert len(await timeline_kinds(sessions)) == 1


async def test_an_older_read_does_not_undo_a_newer_one(sessions: Sessions) -> None:
    await apply(sessions, group([member("wmAlice"), member("wmBob")], version="2"), T0 + timedelta(seconds=10))
    stale = await apply(sessions, group([member("wmAlice")], version="1"), T0)
    assert not stale.left and not stale.joined
    async with sessions() as session:
        stored = await group_by_chat_id(session, "wrChat1")
        assert stored is not None and stored.members == 2 and stored.member_version == "2"


async def test_a_member_who_leaves_and_comes_back_is_two_joins_and_a_leave(sessions: Sessions) -> None:
    await apply(sessions, group([member("zhang", 1, 1), member("wmAlice")]))
    gone = await apply(sessions, group([member("zhang", 1, 1)]), T0 + timedelta(minutes=1), quit_scene=0)
    assert [row.userid for row in gone.left] == ["wmAlice"] and gone.left[0].quit_scene == 0
    back = await apply(sessions, group([member("zhang", 1, 1), member("wmAlice", joined=JOINED + 3600, scene=2)]),
                       T0 + timedelta(minutes=2))
    assert [row.userid for row in back.joined] == ["wmAlice"]
    async with sessions() as session:
        alice = await session.get_one(GroupChatMember, (back.group.id, "wmAlice"))
        assert alice.left_at is None and alice.quit_scene is None and alice.join_scene == 2
    changes = await count(sessions, GroupChatChange, GroupChatChange.userid == "wmAlice")
    assert changes == 3
    kinds = [(kind, data["scene"]) for kind, data in await timeline_kinds(sessions)]
    assert kinds == [("group.joined", "扫码"), ("group.left", "退群"), ("group.joined", "邀请链接")]


async def test_removed_members_are_told_apart_from_those_who_left(sessions: Sessions) -> None:
    await apply(sessions, group([member("wmAlice"), member("wmBob")]))
    await apply(sessions, group([member("wmAlice")]), T0 + timedelta(minutes=1), quit_scene=1)
    async with sessions() as session:
        change = await session.scalar(select(GroupChatChange).where(GroupChatChange.change == "leave"))
        assert change is not None and change.userid == "wmBob" and change.scene == 1
    assert (await timeline_kinds(sessions))[-1][1]["scene"] == "被移出"


async def test_a_members_state_names_the_live_code_and_a_personal_codes_inviter(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        inviter = await resolve_customer(session, "wecom", "wmInviter", Profile("邀请人"))
        root = GroupJoinCode(code="gc_root", name="新品群码", chat_ids=["wrChat1"])
        session.add(root)
        await session.flush()
        session.add(GroupJoinCode(code="gc_personal", name="个人码", parent_id=root.id, inviter_id=inviter.id,
                                  chat_ids=["wrChat1"]))
    applied = await apply(sessions, group([member("wmAlice", state="gc_root"), member("wmBob", state="gc_personal"),
                                           member("wmCarol", state="gc_unknown")]))
    by_user = {row.userid: row for row in applied.joined}
    assert applied.group.code_id == root.id
    assert by_user["wmAlice"].code_id == root.id and by_user["wmAlice"].inviter_id is None
    assert by_user["wmBob"].code_id is not None and by_user["wmBob"].inviter_id == inviter.id
    assert by_user["wmCarol"].code_id is None and by_user["wmCarol"].state == "gc_unknown"
    async with sessions() as session:
        bob = await session.scalar(select(GroupChatChange).where(GroupChatChange.userid == "wmBob"))
        assert bob is not None and bob.inviter_id == inviter.id and bob.code_id == by_user["wmBob"].code_id
    data = {entry["chat_id"] + str(entry.get("code")): entry for _, entry in await timeline_kinds(sessions)}
    assert data["wrChat1gc_personal"]["inviter"] == inviter.id
    await apply(sessions, group([member("wmAlice", state="gc_root")]), T0 + timedelta(minutes=1), quit_scene=0)
    async with sessions() as session, session.begin():
        await dismiss_group(session, "wrChat1", T0 + timedelta(minutes=2))
    async with sessions() as session:  # a leave counts against the code its member came through
        leaves = dict((await session.execute(select(GroupChatChange.userid, GroupChatChange.code_id).where(
            GroupChatChange.change == "leave"))).tuples().all())
    assert leaves == {"wmBob": by_user["wmBob"].code_id, "wmCarol": None, "wmAlice": root.id}


async def test_rename_notice_and_owner_changes_are_kept(sessions: Sessions) -> None:
    await apply(sessions, group([member("zhang", 1, 1)]))
    changed = await apply(sessions, group([member("li", 1, 1), member("zhang", 1, 1)], name="老客群", owner="li",
                                          notice="每周三上新"), T0 + timedelta(minutes=1))
    assert changed.group.name == "老客群" and changed.group.owner_userid == "li"
    assert changed.group.notice == "每周三上新" and changed.group.members == 2


async def test_dismissing_a_group_lets_everyone_leave_once(sessions: Sessions) -> None:
    await apply(sessions, group([member("zhang", 1, 1), member("wmAlice")]))
    async with sessions() as session, session.begin():
        dismissed = await dismiss_group(session, "wrChat1", T0 + timedelta(hours=1))
        assert dismissed is not None and len(dismissed.left) == 2
    async with sessions() as session, session.begin():
        again = await dismiss_group(session, "wrChat1", T0 + timedelta(hours=2))
        assert again is not None and not again.left
        assert await dismiss_group(session, "wrNever", T0) is None
    async with sessions() as session:
        stored = await group_by_chat_id(session, "wrChat1")
        assert stored is not None and stored.status == "dismissed" and stored.members == 0
    assert await count(sessions, GroupChatChange, GroupChatChange.change == "leave",
                       GroupChatChange.scene == DISMISSED) == 2
    assert (await timeline_kinds(sessions))[-1] == ("group.left", {"chat_id": "wrChat1", "group": "新品群",
                                                                   "scene": "群解散"})
    late = await apply(sessions, group([member("wmAlice")]), T0 + timedelta(hours=3))
    assert not late.joined  # a dismissed group stays dismissed


async def test_concurrent_applies_of_one_group_record_each_join_once(sessions: Sessions) -> None:
    info = group([member(f"wm{index}") for index in range(20)])
    results = await asyncio.gather(*(apply(sessions, info, T0 + timedelta(seconds=index)) for index in range(4)),
                                   return_exceptions=True)
    applied = [result for result in results if isinstance(result, GroupApplied)]
    assert applied and sum(len(result.joined) for result in applied) == 20
    assert sum(result.created for result in applied) == 1
    assert await count(sessions, GroupChatChange) == 20
    assert await count(sessions, GroupChat) == 1
    assert len(await timeline_kinds(sessions)) == 20


def test_bad_snapshots_are_refused_with_the_reason() -> None:
    with pytest.raises(GroupChatDataError, match="chat_id"):
        GroupInfo.from_api({"name": "x"})
    with pytest.raises(GroupChatDataError, match="userid"):
        GroupInfo.from_api({"chat_id": "wr1", "member_list": [{"type": 2}]})
    assert scene_name("join", 3) == "扫码" and scene_name("leave", 1) == "被移出" and scene_name("join", None) == ""


async def test_a_batch_applies_each_group_as_one_apply_would(sessions: Sessions) -> None:
    await apply(sessions, group([member("zhang", 1, 1), member("wmAlice"), member("wmBob")], chat_id="wrOld"))
    await apply(sessions, group([member("wmCarol")], chat_id="wrNewer"), T0 + timedelta(hours=1))
    reads = [(group([member("zhang", 1, 1), member("wmAlice", name="阿丽"), member("wmDan")], chat_id="wrOld"),
              T0 + timedelta(minutes=1)),
             (group([member("wmAlice"), member("wmEve"), member("wmEve")], chat_id="wrNew"), T0),  # Eve listed twice
             (group([], chat_id="wrNewer"), T0),  # read before the one applied: ignored
             (group([member("wmFay")], chat_id="wrNew"), T0 - timedelta(seconds=1))]  # an older read of wrNew
    async with sessions() as session, session.begin():
        results = {result.chat_id: result for result in await apply_groups(session, reads)}
    assert (results["wrOld"].joined, results["wrOld"].left, results["wrOld"].created) == (("wmDan",), ("wmBob",), False)
    assert results["wrNew"].created and sorted(results["wrNew"].joined) == ["wmAlice", "wmEve"]
    assert not results["wrNewer"].applied and not results["wrNewer"].left
    async with sessions() as session:
        alice = await find_identity(session, "wecom", "wmAlice")
        assert alice is not None and sorted(g.chat_id for g in await groups_of_customer(session, alice.customer_id)) == [
            "wrNew", "wrOld"]
        renamed = await session.get_one(GroupChatMember, (results["wrOld"].group_id, "wmAlice"))
        assert renamed.name == "阿丽" and renamed.left_at is None
    assert await count(sessions, GroupChatMember, GroupChatMember.left_at.is_(None)) == 3 + 2 + 1
    assert await count(sessions, GroupChatChange) == 3 + 1 + 2 + 2  # 3 joins and 1, then Dan in, Bob out; 2 joins
    assert await count(sessions, Customer) == 5  # Alice, Bob, Carol, Dan, Eve: each once
    async with sessions() as session, session.begin():
        again = await apply_groups(session, reads)
    assert not any(result.joined or result.left for result in again)  # the same reads again: nothing


async def test_a_customer_created_meanwhile_by_another_transaction_is_used_not_duplicated(
        sessions: Sessions, backend: Backend) -> None:
    async with sessions() as other, other.begin():
        theirs = await resolve_customer(other, "wecom", "wmY", Profile("Y"))  # a callback's turn, not yet committed
        if backend.name == "postgres":  # our insert of wmY's identity waits for theirs, then gives way to it
            ours = asyncio.create_task(resolve_members(sessions, ["wmX", "wmY", "wmZ"]))
            await wait_for_lock(other)
        else:  # SQLite writes one transaction at a time: theirs first
            ours = None
    found = await ours if ours is not None else await resolve_members(sessions, ["wmX", "wmY", "wmZ"])
    assert found["wmY"] == theirs.id and len(set(found.values())) == 3
    assert await count(sessions, Customer) == 3 and await count(sessions, Identity) == 3
    assert await count(sessions, TimelineEvent, TimelineEvent.kind == "customer.created") == 3


async def resolve_members(sessions: Sessions, userids: list[str]) -> dict[str, int]:
    async with sessions() as session, session.begin():
        return await customer_ids_for(session, [MemberInfo(userid, 2, name=userid) for userid in userids])


async def wait_for_lock(session: AsyncSession) -> None:
    """Until another connection waits for a lock this transaction holds (PostgreSQL's view of it), polled."""
    for _ in range(1000):
        await asyncio.sleep(0.01)  # the other task's turn first: it connects and runs up to the wait
        waiting = await session.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid() "
            "AND datname = current_database()"))
        if waiting:
            return
    raise AssertionError("the other transaction never waited for the identity")
