"""Applying many group snapshots at once, in a handful of Core statements: what makes a full sync fast.

A full sync stores 10,000 groups × 200 members; one ORM object per member cost ~0.8 ms each on
PostgreSQL (half an hour), so a batch of groups is applied as: the groups locked (SELECT … FOR
UPDATE, in chat id order so two appliers cannot deadlock) or inserted (ON CONFLICT DO NOTHING:
a concurrent insert of the same group is waited for and then locked), their fields in one
executemany UPDATE, the members held read in one SELECT, the customers behind new members
resolved in bulk (crm_store/group_chat_members.py), joiners in one INSERT … ON CONFLICT
(group_id, userid) DO UPDATE, leavers in one UPDATE, change rows in one INSERT … ON CONFLICT DO
NOTHING and the timeline in one INSERT. The rules are crm_store/group_chats.py's: a snapshot
read before the one applied is ignored, a dismissed group stays dismissed, applying a snapshot
twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.bulk_rows import insert_rows
from crm_store.customers import HELD_TIMELINE, HeldEvent, hold_timeline, record
from crm_store.dialect_insert import dialect_insert
from crm_store.group_chat_info import GroupInfo, MemberInfo, moment, scene_name
from crm_store.group_chat_members import customer_ids_for
from crm_store.group_chat_models import GroupChat, GroupChatChange, GroupChatMember, GroupJoinCode
from crm_store.models import TimelineEvent, as_utc, utcnow

GROUPS = cast(Table, GroupChat.__table__)  # Core: rows in bulk, no objects wanted back
MEMBERS = cast(Table, GroupChatMember.__table__)
CHANGES = cast(Table, GroupChatChange.__table__)
CODES = cast(Table, GroupJoinCode.__table__)
TIMELINE = cast(Table, TimelineEvent.__table__)
JOIN_COLUMNS = ("kind", "customer_id", "name", "joined_at", "join_scene", "invitor_userid", "state", "code_id",
                "inviter_id", "left_at", "quit_scene")

Read = tuple[GroupInfo, datetime]  # a snapshot and when it was read


@dataclass(frozen=True)
class AppliedGroup:
    """What applying one snapshot did: the group's id, and the userids who joined (again) and left."""

    group_id: int
    chat_id: str
    created: bool
    applied: bool  # False: an older read than the one applied, or a dismissed group
    joined: tuple[str, ...] = ()
    left: tuple[str, ...] = ()


@dataclass(frozen=True)
class Change:
    """A join or a leave, for its `group_chat_changes` row and the customer's timeline."""

    group_id: int
    chat_id: str
    group_name: str
    userid: str
    kind: str
    customer_id: int | None
    change: str  # join | leave
    scene: int | None
    at: datetime
    code_id: int | None = None
    code: str | None = None
    inviter_id: int | None = None


@dataclass(frozen=True)
class _Locked:
    group_id: int
    created: bool
    synced_at: datetime | None
    status: str


@dataclass(frozen=True)
class _Held:
    kind: str
    customer_id: int | None
    name: str
    left: bool
    code_id: int | None = None  # the live code they came through: their leave counts against it too
    inviter_id: int | None = None


@dataclass(frozen=True)
class _Code:
    code_id: int
    code: str
    inviter_id: int | None


async def apply_groups(session: AsyncSession, reads: Sequence[Read], quit_scene: int | None = None) -> list[AppliedGroup]:
    """Make each group what its snapshot says (a chat read twice: the newer read); one result per chat.

    `quit_scene` goes to every member found gone (the callback's QuitScene). Timeline rows are written
    in one statement at the end, unless the caller holds them already."""
    own = HELD_TIMELINE not in session.info
    if own:
        hold_timeline(session)
    try:
        applied = await _apply(session, _newest(reads), quit_scene)
        if own:
            await _write_timeline(session)
        return applied
    finally:
        if own:
            session.info.pop(HELD_TIMELINE, None)


async def _write_timeline(session: AsyncSession) -> None:
    """The held timeline rows, in the order recorded, in one statement (as `write_timeline`, in bulk)."""
    held: list[HeldEvent] = session.info.pop(HELD_TIMELINE, None) or []
    now = utcnow()
    await insert_rows(session, TIMELINE, [{"customer_id": event.customer_id, "kind": event.kind, "data": event.data,
                                           "created_at": now} for event in held])


def _newest(reads: Sequence[Read]) -> list[Read]:
    newest: dict[str, Read] = {}
    for info, at in reads:
        if info.chat_id not in newest or newest[info.chat_id][1] <= at:
            newest[info.chat_id] = (info, at)
    return sorted(newest.values(), key=lambda read: read[0].chat_id)


async def _apply(session: AsyncSession, reads: list[Read], quit_scene: int | None) -> list[AppliedGroup]:
    if not reads:
        return []
    locked = await _lock_groups(session, [info.chat_id for info, _ in reads], reads[0][1])
    live = [(info, at) for info, at in reads if _applies(locked[info.chat_id], at)]
    codes = await _codes_named(session, live)
    await _update_groups(session, live, locked, await _offering_codes(session))
    held = await _members_held(session, [locked[info.chat_id].group_id for info, _ in live
                                         if not locked[info.chat_id].created])
    joining = {info.chat_id: [member for member in _listed(info)
                              if _joins(held.get(locked[info.chat_id].group_id, {}).get(member.userid))]
               for info, _ in live}
    customers = await customer_ids_for(session, [
        member for info, _ in live for member in joining[info.chat_id]
        if member.kind == "customer" and _held_customer(held, locked[info.chat_id].group_id, member.userid) is None])
    plans = {info.chat_id: _plan(info, at, locked[info.chat_id].group_id, held.get(locked[info.chat_id].group_id, {}),
                                 joining[info.chat_id], customers, codes, quit_scene) for info, at in live}
    await _write_joins(session, [pair for plan in plans.values() for pair in plan.joined])
    await _rename(session, live, locked, held)
    await _write_leaves(session, [change for plan in plans.values() for change in plan.left])
    await write_changes(session, [change for plan in plans.values() for change in plan.changes])
    return [_result(info.chat_id, locked[info.chat_id], plans.get(info.chat_id)) for info, _ in reads]


@dataclass(frozen=True)
class _Plan:
    """One group's joins (each with its member as listed) and leaves."""

    joined: list[tuple[MemberInfo, Change]]
    left: list[Change]

    @property
    def changes(self) -> list[Change]:
        return [change for _, change in self.joined] + self.left


def _plan(info: GroupInfo, at: datetime, group_id: int, held: Mapping[str, _Held], joining: Sequence[MemberInfo],
          customers: Mapping[str, int], codes: Mapping[str, _Code], quit_scene: int | None) -> _Plan:
    joined = [(member, _join_change(info, at, group_id, member, customers.get(member.userid)
                                    or _customer_of(held.get(member.userid)), codes)) for member in joining]
    listed = _listed_ids(info)
    left = [Change(group_id, info.chat_id, info.name, userid, row.kind, row.customer_id, "leave", quit_scene, at,
                   code_id=row.code_id, inviter_id=row.inviter_id)
            for userid, row in held.items() if not row.left and userid not in listed]
    return _Plan(joined, left)


def _result(chat_id: str, group: _Locked, plan: _Plan | None) -> AppliedGroup:
    if plan is None:
        return AppliedGroup(group.group_id, chat_id, group.created, False)
    return AppliedGroup(group.group_id, chat_id, group.created, True,
                        tuple(change.userid for _, change in plan.joined), tuple(change.userid for change in plan.left))


def _customer_of(row: _Held | None) -> int | None:
    return row.customer_id if row is not None else None


def _applies(group: _Locked, at: datetime) -> bool:
    """Not an older read than the one applied, nor a group that is gone for good."""
    stale = group.synced_at is not None and as_utc(group.synced_at) > at
    return not stale and group.status != "dismissed"


def _listed(info: GroupInfo) -> list[MemberInfo]:
    """The snapshot's members, each once (a userid listed twice: the last listing)."""
    return list({member.userid: member for member in info.members}.values())


def _listed_ids(info: GroupInfo) -> set[str]:
    return {member.userid for member in info.members}


def _joins(row: _Held | None) -> bool:
    return row is None or row.left


def _held_customer(held: Mapping[int, Mapping[str, _Held]], group_id: int, userid: str) -> int | None:
    row = held.get(group_id, {}).get(userid)
    return row.customer_id if row is not None else None


async def _lock_groups(session: AsyncSession, chat_ids: list[str], now: datetime) -> dict[str, _Locked]:
    """Each group's row, locked; inserted first when new (ON CONFLICT: a concurrent insert is waited for)."""
    found = await _select_locked(session, chat_ids, set())
    missing = [chat_id for chat_id in chat_ids if chat_id not in found]
    if missing:
        inserted = await session.execute(
            dialect_insert(session, GROUPS).on_conflict_do_nothing(index_elements=["chat_id"])
            .returning(GROUPS.c.chat_id),
            [{"chat_id": chat_id, "created_at": now, "updated_at": now} for chat_id in missing])
        found |= await _select_locked(session, missing, set(inserted.scalars()))
    return found


async def _select_locked(session: AsyncSession, chat_ids: Sequence[str], created: set[str]) -> dict[str, _Locked]:
    rows = await session.execute(
        select(GROUPS.c.chat_id, GROUPS.c.id, GROUPS.c.synced_at, GROUPS.c.status)
        .where(GROUPS.c.chat_id.in_(chat_ids)).order_by(GROUPS.c.chat_id).with_for_update())
    return {chat_id: _Locked(group_id, chat_id in created, synced_at, status)
            for chat_id, group_id, synced_at, status in rows}


async def _codes_named(session: AsyncSession, live: Sequence[Read]) -> dict[str, _Code]:
    """The live codes named by the members' states (one statement for the batch)."""
    states = {member.state for info, _ in live for member in info.members if member.state}
    if not states:
        return {}
    rows = await session.execute(select(CODES.c.code, CODES.c.id, CODES.c.inviter_id).where(CODES.c.code.in_(states)))
    return {code: _Code(code_id, code, inviter_id) for code, code_id, inviter_id in rows}


async def _offering_codes(session: AsyncSession) -> list[tuple[int, list[Any]]]:
    """The live codes (not personal fission codes) and the groups each offers, the active and newest first.

    `chat_ids` is a JSON list, compared here rather than in SQL: the root codes are few."""
    rows = await session.execute(
        select(CODES.c.id, CODES.c.chat_ids).where(CODES.c.parent_id.is_(None))
        .order_by(CODES.c.active.desc(), CODES.c.id.desc()))
    return [(code_id, chat_ids or []) for code_id, chat_ids in rows]


async def _update_groups(session: AsyncSession, live: Sequence[Read], locked: Mapping[str, _Locked],
                         offering: Sequence[tuple[int, list[Any]]]) -> None:
    """The groups' fields as read, in one executemany UPDATE (a code offering the group becomes its code)."""
    if not live:
        return
    statement = update(GROUPS).where(GROUPS.c.id == bindparam("b_id")).values(
        name=bindparam("b_name"), owner_userid=bindparam("b_owner"), notice=bindparam("b_notice"),
        platform_created_at=bindparam("b_created"), members=bindparam("b_members"),
        member_version=bindparam("b_version"), synced_at=bindparam("b_at"), updated_at=bindparam("b_at"),
        code_id=func.coalesce(bindparam("b_code", type_=GROUPS.c.code_id.type), GROUPS.c.code_id))
    await session.execute(statement, [
        {"b_id": locked[info.chat_id].group_id, "b_name": info.name, "b_owner": info.owner, "b_notice": info.notice,
         "b_created": moment(info.create_time, at) if info.create_time else None, "b_members": len(info.members),
         "b_version": info.member_version, "b_at": at,
         "b_code": next((code_id for code_id, chat_ids in offering if info.chat_id in chat_ids), None)}
        for info, at in live])


async def _members_held(session: AsyncSession, group_ids: Sequence[int]) -> dict[int, dict[str, _Held]]:
    """The members the store holds for these groups (those gone too), by group and userid."""
    held: dict[int, dict[str, _Held]] = {}
    if not group_ids:
        return held
    rows = await session.execute(
        select(MEMBERS.c.group_id, MEMBERS.c.userid, MEMBERS.c.kind, MEMBERS.c.customer_id, MEMBERS.c.name,
               MEMBERS.c.left_at, MEMBERS.c.code_id, MEMBERS.c.inviter_id).where(MEMBERS.c.group_id.in_(group_ids)))
    for group_id, userid, kind, customer_id, name, left_at, code_id, inviter_id in rows:
        held.setdefault(group_id, {})[userid] = _Held(kind, customer_id, name, left_at is not None, code_id,
                                                      inviter_id)
    return held


def _join_change(info: GroupInfo, at: datetime, group_id: int, member: MemberInfo, customer_id: int | None,
                 codes: Mapping[str, _Code]) -> Change:
    code = codes.get(member.state) if member.state else None
    return Change(group_id, info.chat_id, info.name, member.userid, member.kind,
                  customer_id if member.kind == "customer" else None, "join", member.join_scene,
                  moment(member.join_time, at), code.code_id if code else None, code.code if code else None,
                  code.inviter_id if code else None)  # a personal code's owner invited them


async def _write_joins(session: AsyncSession, joined: Sequence[tuple[MemberInfo, Change]]) -> None:
    """New members and members back, as groupchat/get describes them now: one INSERT … ON CONFLICT DO UPDATE."""
    if not joined:
        return
    await insert_rows(session, MEMBERS, [_member_row(member, change) for member, change in joined],
                      conflict=("group_id", "userid"), update=JOIN_COLUMNS)


def _member_row(member: MemberInfo, change: Change) -> dict[str, Any]:
    return {"group_id": change.group_id, "userid": member.userid, "kind": member.kind,
            "customer_id": change.customer_id, "name": member.name, "joined_at": change.at,
            "join_scene": member.join_scene, "invitor_userid": member.invitor, "state": member.state,
            "code_id": change.code_id, "inviter_id": change.inviter_id, "left_at": None, "quit_scene": None}


async def _rename(session: AsyncSession, live: Sequence[Read], locked: Mapping[str, _Locked],
                  held: Mapping[int, Mapping[str, _Held]]) -> None:
    """Members still in a group whose shown name changed (few): one executemany UPDATE."""
    renamed = [{"b_group": locked[info.chat_id].group_id, "b_userid": member.userid, "b_name": member.name}
               for info, _ in live for member in _listed(info)
               if (row := held.get(locked[info.chat_id].group_id, {}).get(member.userid)) is not None
               and not row.left and member.name and member.name != row.name]
    if renamed:
        await session.execute(update(MEMBERS).where(MEMBERS.c.group_id == bindparam("b_group"),
                                                    MEMBERS.c.userid == bindparam("b_userid"))
                              .values(name=bindparam("b_name")), renamed)


async def _write_leaves(session: AsyncSession, leaves: Sequence[Change]) -> None:
    if leaves:
        await session.execute(update(MEMBERS).where(MEMBERS.c.group_id == bindparam("b_group"),
                                                    MEMBERS.c.userid == bindparam("b_userid"))
                              .values(left_at=bindparam("b_at"), quit_scene=bindparam("b_scene")),
                              [{"b_group": change.group_id, "b_userid": change.userid, "b_at": change.at,
                                "b_scene": change.scene} for change in leaves])


async def write_changes(session: AsyncSession, changes: Sequence[Change]) -> None:
    """The change rows (a repeat of one is ignored) and the customers' timeline entries."""
    if not changes:
        return
    await insert_rows(session, CHANGES, [
        {"group_id": change.group_id, "userid": change.userid, "kind": change.kind, "customer_id": change.customer_id,
         "change": change.change, "scene": change.scene or 0, "code_id": change.code_id,
         "inviter_id": change.inviter_id, "at": change.at} for change in changes],
        conflict=("group_id", "userid", "change", "at"))
    for change in changes:
        if change.customer_id is not None:
            await record(session, change.customer_id, f"group.{'joined' if change.change == 'join' else 'left'}",
                         _timeline_data(change))


def _timeline_data(change: Change) -> dict[str, Any]:
    data: dict[str, Any] = {"chat_id": change.chat_id, "group": change.group_name,
                            "scene": scene_name(change.change, change.scene)}
    if change.code:
        data["code"] = change.code
    if change.inviter_id is not None:
        data["inviter"] = change.inviter_id
    return data
