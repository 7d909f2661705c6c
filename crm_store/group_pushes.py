"""Group pushes (客户群群发): one message to a segment of customer groups, and what became of it.

Creating a push writes the push and one pending target per group of the segment (owner = the
group's owner then) with a single INSERT … SELECT. The dispatcher (bot/group_push_dispatch.py)
turns the targets into owner-confirmed group-message tasks when due; bot/group_push_results.py
reminds owners and reads the results back. A group SOP's occurrence is a push with a
`source_key` (`sop:<id>:<step>:<date>`): `ensure_occurrence` makes it once however many
schedulers ask at the same moment (the unique key and ON CONFLICT DO NOTHING decide, not timing).

    GroupPushError(ValueError)   a push that cannot be created, cancelled or found; nothing written

The message rules are add_msg_template's (https://developer.work.weixin.qq.com/document/path/92135):
text.content at most 4000 bytes; a link's title at most 128 bytes, desc 512, url 2048; a
mini-program's title at most 64 bytes, with appid, page and pic_media_id required; a message
is text or at least one attachment.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.dialect_insert import dialect_insert
from crm_store.group_chat_models import GroupPush, GroupPushTarget
from crm_store.group_segments import GroupSegment, GroupSegmentError, check_code, groups_in
from crm_store.models import as_utc, utcnow

TEXT_BYTES = 4000  # document 92135: text.content "最多4000个字节"
LINK_TITLE_BYTES, LINK_DESC_BYTES, LINK_URL_BYTES = 128, 512, 2048
MINIPROGRAM_TITLE_BYTES = 64
MAX_NAME = 128
GRACE = timedelta(minutes=1)  # "now" typed a moment ago is still now
OPEN = ("scheduled", "sending")


class GroupPushError(ValueError):
    """A group push that cannot be created, cancelled or found; nothing was written."""


@dataclass(frozen=True)
class Link:
    title: str
    url: str
    desc: str = ""
    picurl: str = ""


@dataclass(frozen=True)
class Miniprogram:
    title: str
    appid: str
    page: str
    pic_media_id: str


@dataclass(frozen=True)
class GroupPushSpec:
    name: str
    segment: GroupSegment
    text: str = ""
    link: Link | None = None
    miniprogram: Miniprogram | None = None
    scheduled_at: datetime | None = None  # None: now

    def message(self) -> dict[str, Any]:
        """As stored in group_pushes.message: {text, link?, miniprogram?}."""
        data: dict[str, Any] = {"text": self.text}
        if self.link is not None:
            data["link"] = {k: v for k, v in vars(self.link).items() if v}
        if self.miniprogram is not None:
            data["miniprogram"] = dict(vars(self.miniprogram))
        return data


@dataclass(frozen=True)
class GroupPushResults:
    push: GroupPush
    by_status: dict[str, int] = field(default_factory=dict)  # pending, created, sent, unsent, failed, limited…
    limited: dict[str, int] = field(default_factory=dict)  # reason -> groups
    failed: dict[str, int] = field(default_factory=dict)  # reason -> groups
    tasks: int = 0  # distinct msgids: one per owner (per 2,000 groups)
    reminders: int = 0  # reminders sent, over all tasks

    @property
    def audience(self) -> int:
        return self.push.audience


def _bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _too_long(key: str, text: str, limit: int) -> list[str]:
    return [f"{key}: {_bytes(text)} bytes; WeCom takes at most {limit}"] if _bytes(text) > limit else []


def check_spec(spec: GroupPushSpec, now: datetime, source: bool = False) -> list[str]:
    """Every problem with the push (name, groups, message, time); `source`: an SOP occurrence, due now."""
    problems = [] if spec.name.strip() else ["name: give the push a name (what the push list shows)"]
    problems += [f"name: {len(spec.name)} characters; at most {MAX_NAME}"] if len(spec.name) > MAX_NAME else []
    problems += spec.segment.validate()
    if not spec.text.strip() and spec.link is None and spec.miniprogram is None:
        problems.append("text: the message is empty; give a text, a link or a mini-program")
    problems += _too_long("text", spec.text, TEXT_BYTES)
    if spec.link is not None:
        problems += [f"link.{key}: required" for key in ("title", "url") if not getattr(spec.link, key).strip()]
        problems += _too_long("link.title", spec.link.title, LINK_TITLE_BYTES)
        problems += _too_long("link.desc", spec.link.desc, LINK_DESC_BYTES)
        problems += _too_long("link.url", spec.link.url, LINK_URL_BYTES)
        if spec.link.url and not spec.link.url.startswith(("http://", "https://")):
            problems.append(f"link.url: {spec.link.url[:40]!r} is not an http(s) address")
    if spec.miniprogram is not None:
        problems += [f"miniprogram.{key}: required" for key in ("title", "appid", "page", "pic_media_id")
                     if not getattr(spec.miniprogram, key).strip()]
        problems += _too_long("miniprogram.title", spec.miniprogram.title, MINIPROGRAM_TITLE_BYTES)
    if not source and spec.scheduled_at is not None and as_utc(spec.scheduled_at) < now - GRACE:
        problems.append(f"time: {as_utc(spec.scheduled_at):%Y-%m-%d %H:%M} UTC is in the past")
    return problems


def _raise_problems(problems: list[str]) -> None:
    if problems:
        raise GroupPushError("cannot create the group push, nothing was scheduled:\n  " + "\n  ".join(problems))


async def _add_targets(session: AsyncSession, push: GroupPush, segment: GroupSegment) -> int:
    """One pending target per group of the segment, owner = the group's owner now: one INSERT … SELECT."""
    columns = GroupPushTarget.__table__.c
    audience = groups_in(segment).order_by(None).add_columns(
        literal(push.id, columns.push_id.type), literal("pending", columns.status.type),
        literal("", columns.msgid.type), literal("", columns.reason.type), literal(0, columns.reminders.type))
    inserted = await session.execute(insert(GroupPushTarget).from_select(
        ["group_id", "owner_userid", "push_id", "status", "msgid", "reason", "reminders"], audience))
    return int(inserted.rowcount or 0)  # type: ignore[attr-defined]


async def create_group_push(session: AsyncSession, spec: GroupPushSpec, by: str = "",
                            now: datetime | None = None) -> GroupPush:
    """Schedule the message for every group of the segment at `spec.scheduled_at` (default now);
    GroupPushError listing every problem otherwise (nothing written, not even when no group matches)."""
    now = now or utcnow()
    _raise_problems(check_spec(spec, now))
    try:
        await check_code(session, spec.segment)
    except GroupSegmentError as exc:
        raise GroupPushError(f"cannot create the group push, nothing was scheduled: {exc}") from None
    at = as_utc(spec.scheduled_at).astimezone(UTC) if spec.scheduled_at is not None else now
    async with session.begin_nested():  # no group matches: no push left behind, whatever the caller does next
        push = GroupPush(name=spec.name.strip(), segment=spec.segment.to_data(), message=spec.message(),
                         status="scheduled", scheduled_at=at, audience=0, created_by=by[:64], created_at=now)
        session.add(push)
        await session.flush()
        push.audience = await _add_targets(session, push, spec.segment)
        if not push.audience:
            raise GroupPushError(f"no group matches ({spec.segment.describe()}): nothing scheduled")
        await session.flush()
    return push


async def ensure_occurrence(session: AsyncSession, source_key: str, spec: GroupPushSpec,
                            now: datetime | None = None) -> tuple[GroupPush, bool]:
    """The push of one SOP occurrence, created (with its targets) only by the first caller: (push, created).

    Two schedulers at once: the unique source_key lets one INSERT through; the other's does nothing
    (on PostgreSQL it waits for the first to commit), so each occurrence is one push. An occurrence
    that reaches no group is still recorded (status done), so it is not looked for again."""
    now = now or utcnow()
    _raise_problems(check_spec(spec, now, source=True))
    at = as_utc(spec.scheduled_at).astimezone(UTC) if spec.scheduled_at is not None else now
    statement = dialect_insert(session, GroupPush).values(
        name=spec.name.strip()[:MAX_NAME], segment=spec.segment.to_data(), message=spec.message(),
        status="scheduled", scheduled_at=at, source_key=source_key, audience=0, created_by="sop", created_at=now,
    ).on_conflict_do_nothing(index_elements=["source_key"]).returning(GroupPush.id)
    push_id = await session.scalar(statement)
    if push_id is None:
        existing = await session.scalar(select(GroupPush).where(GroupPush.source_key == source_key))
        assert existing is not None  # the conflicting row is committed (or ours)
        return existing, False
    push = await session.get(GroupPush, push_id)
    assert push is not None
    push.audience = await _add_targets(session, push, spec.segment)
    if not push.audience:
        push.status = "done"
    await session.flush()
    return push, True


async def get_group_push(session: AsyncSession, push_id: int) -> GroupPush:
    push = await session.get(GroupPush, push_id)
    if push is None:
        raise GroupPushError(f"no group push {push_id} (see: scrm groupchats push list)")
    return push


async def cancel_group_push(session: AsyncSession, push_id: int) -> int:
    """Cancel a push: its groups not yet in a task are not sent ("cancelled"); how many. Tasks already
    created stay with their owners (WeCom has no way to withdraw one that is not confirmed yet here)."""
    push = await get_group_push(session, push_id)
    if push.status == "cancelled":
        raise GroupPushError(f"group push {push_id} is already cancelled")
    if push.status not in OPEN:
        raise GroupPushError(f"group push {push_id} is {push.status}: every group is already in a task")
    cancelled = await session.execute(
        update(GroupPushTarget).where(GroupPushTarget.push_id == push_id, GroupPushTarget.status == "pending")
        .values(status="cancelled", reason="cancelled").execution_options(synchronize_session=False))
    push.status = "cancelled"
    await session.flush()
    return int(cancelled.rowcount or 0)  # type: ignore[attr-defined]


async def group_push_results(session: AsyncSession, push_id: int) -> GroupPushResults:
    """Groups by status, limited and failed by reason, tasks and reminders: one grouped query."""
    push = await get_group_push(session, push_id)
    rows = await session.execute(
        select(GroupPushTarget.status, GroupPushTarget.reason, func.count())
        .where(GroupPushTarget.push_id == push_id).group_by(GroupPushTarget.status, GroupPushTarget.reason))
    by_status: Counter[str] = Counter()
    limited: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for status, reason, count in rows.tuples():
        by_status[status] += count
        if status == "limited":
            limited[reason or "-"] += count
        elif status == "failed":
            failed[reason or "-"] += count
    tasks = await session.execute(
        select(GroupPushTarget.msgid, func.max(GroupPushTarget.reminders))
        .where(GroupPushTarget.push_id == push_id, GroupPushTarget.msgid != "").group_by(GroupPushTarget.msgid))
    reminders = [int(count or 0) for _msgid, count in tasks.tuples()]
    return GroupPushResults(push, dict(by_status), dict(limited.most_common()), dict(failed.most_common()),
                            len(reminders), sum(reminders))


async def list_group_pushes(session: AsyncSession, limit: int = 50) -> list[tuple[GroupPush, dict[str, int]]]:
    """The newest pushes, each with its groups counted by status."""
    pushes = list(await session.scalars(select(GroupPush).order_by(GroupPush.id.desc()).limit(limit)))
    counts: dict[int, Counter[str]] = {push.id: Counter() for push in pushes}
    if pushes:
        rows = await session.execute(
            select(GroupPushTarget.push_id, GroupPushTarget.status, func.count())
            .where(GroupPushTarget.push_id.in_(list(counts))).group_by(GroupPushTarget.push_id, GroupPushTarget.status))
        for push_id, status, count in rows.tuples():
            counts[push_id][status] += count
    return [(push, dict(counts[push.id])) for push in pushes]
