"""Pushes: one message to a segment, now or at a set time, and what became of it.

Creating a push writes the push and one pending NurtureSend per customer of the segment with
a single INSERT … SELECT: a segment of a million customers never passes through Python. The
dispatcher (bot/nurture_dispatch.py) sends them when due, politely (quiet hours, the daily
cap, the 48-hour window); cancelling skips whatever is still pending. Customers who opted out
of marketing are not in a push's audience.

    PushError(ValueError)   a push that cannot be created or cancelled, said plainly
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

from sqlalchemy import func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.templates import TemplateError, parse_template
from crm_store.models import Customer, as_utc, utcnow
from crm_store.nurture_models import NurtureSend, Push
from crm_store.segments import Segment, segment_query, tag_ids
from crm_store.sequence_stats import waiting_for

PUSH_FIELDS = ("customer.name", "customer.stage_label", "customer.id")
MAX_TEXT = 2000
MAX_NAME = 128
GRACE = timedelta(minutes=1)  # "now" typed a moment ago is still now


class PushError(ValueError):
    """A push that cannot be created or cancelled; nothing was written."""


@dataclass(frozen=True)
class PushResults:
    push: Push
    pending: int = 0
    sent: int = 0
    replied: int = 0  # of the sent: the customer wrote back afterwards
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    failed: dict[str, int] = field(default_factory=dict)  # reason -> count
    via: dict[str, int] = field(default_factory=dict)  # sent, by channel: kf | oa | groupmsg
    waiting: dict[str, int] = field(default_factory=dict)  # of the pending: put off, why -> count ("no quota")

    @property
    def audience(self) -> int:
        return self.push.audience


def check_text(text: str) -> list[str]:
    """What is wrong with a push's text: empty, too long, or a template that shows more than it may."""
    if not text.strip():
        return ["text: the message is empty"]
    problems = [f"text: {len(text)} characters; at most {MAX_TEXT}"] if len(text) > MAX_TEXT else []
    try:
        fields = parse_template(text).fields
    except TemplateError as exc:
        return problems + [f"text: {exc}"]
    unknown = [name for name in fields if name not in PUSH_FIELDS]
    if unknown:
        problems.append(f"text: unknown field(s) {', '.join(unknown)}; a push may show {', '.join(PUSH_FIELDS)}")
    return problems


def check_push(name: str, text: str, at: datetime, now: datetime, zone: tzinfo = UTC) -> None:
    """PushError listing every problem with the name, the text and the time (a dry run checks these too)."""
    problems = [] if name.strip() else ["name: give the push a name (what `scrm push list` shows)"]
    if len(name) > MAX_NAME:
        problems.append(f"name: {len(name)} characters; at most {MAX_NAME}")
    problems += check_text(text)
    if as_utc(at) < now - GRACE:
        problems.append(f"time: {as_utc(at).astimezone(zone):%Y-%m-%d %H:%M} ({zone}) is in the past")
    if problems:
        raise PushError("cannot create the push, nothing was scheduled:\n  " + "\n  ".join(problems))


async def create_push(session: AsyncSession, name: str, segment: Segment, text: str,
                      scheduled_at: datetime | None = None, by: str = "", now: datetime | None = None,
                      zone: tzinfo = UTC) -> Push:
    """Schedule `text` for everyone in the (checked) segment at `scheduled_at` (default: now); PushError otherwise.

    `zone` is the brand's, for messages only."""
    now = now or utcnow()
    at = as_utc(scheduled_at).astimezone(UTC) if scheduled_at is not None else now  # SQLite keeps no zone
    check_push(name, text, at, now, zone)
    async with session.begin_nested():  # an empty segment leaves no push behind, whatever the caller does next
        push = Push(name=name.strip(), segment=segment.to_data(), text=text, status="scheduled", scheduled_at=at,
                    created_at=now, audience=0, created_by=by[:64])
        session.add(push)
        await session.flush()
        columns = NurtureSend.__table__.c
        audience = segment_query(segment, now, True, await tag_ids(session, segment)).add_columns(
            literal(push.id, columns.push_id.type), literal("", columns.step.type), literal(0, columns.step_index.type),
            literal(at, columns.due_at.type), literal("pending", columns.status.type), literal("", columns.reason.type),
            literal("", columns.via.type), literal(0, columns.deferrals.type))
        inserted = await session.execute(insert(NurtureSend).from_select(
            ["customer_id", "push_id", "step", "step_index", "due_at", "status", "reason", "via", "deferrals"],
            audience))
        if not inserted.rowcount:  # type: ignore[attr-defined]
            raise PushError("nobody matches: nothing scheduled")
        push.audience = inserted.rowcount  # type: ignore[attr-defined]
        await session.flush()
    return push


async def get_push(session: AsyncSession, push_id: int) -> Push:
    push = await session.get(Push, push_id)
    if push is None:
        raise PushError(f"no push {push_id} (see: scrm push list)")
    return push


async def cancel_push(session: AsyncSession, push_id: int) -> int:
    """Cancel a scheduled push: its pending sends are skipped ("cancelled"); how many were."""
    push = await get_push(session, push_id)
    if push.status == "cancelled":
        raise PushError(f"push {push_id} is already cancelled")
    skipped = await session.execute(
        update(NurtureSend).where(NurtureSend.push_id == push_id, NurtureSend.status == "pending")
        .values(status="skipped", reason="cancelled").execution_options(synchronize_session=False))
    count = int(skipped.rowcount or 0)  # type: ignore[attr-defined]
    if push.status == "done" and not count:
        raise PushError(f"push {push_id} is done: every message was already sent or skipped")
    push.status = "cancelled"
    await session.flush()
    return count


async def push_results(session: AsyncSession, push_id: int) -> PushResults:
    """Audience, pending (put off, by reason), sent (by channel), replied, skipped and failed by reason: one
    grouped query."""
    push = await get_push(session, push_id)
    rows = await session.execute(
        select(NurtureSend.status, NurtureSend.reason, NurtureSend.via, func.count(),
               func.count(NurtureSend.replied_at))
        .where(NurtureSend.push_id == push_id)
        .group_by(NurtureSend.status, NurtureSend.reason, NurtureSend.via))
    totals: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    via: Counter[str] = Counter()
    waiting: Counter[str] = Counter()
    for status, reason, channel, count, replied in rows.tuples():
        totals[status] += count
        totals["replied"] += replied
        why = waiting_for(status, reason)
        if why:
            waiting[why] += count
        if status == "skipped":
            skipped[reason or "-"] += count
        elif status == "failed":
            failed[reason or "-"] += count
        elif status == "sent":
            via[channel or "-"] += count
    return PushResults(push, totals["pending"], totals["sent"], totals["replied"], dict(skipped.most_common()),
                       dict(failed.most_common()), dict(via.most_common()), dict(waiting.most_common()))


async def pending_by_channel(session: AsyncSession, push_id: int) -> dict[str, int]:
    """The push's pending sends by the channel their customer last chatted on (kf, oa; "" none): which API budget
    they will spend (a customer without one goes through a rep's group message, or is skipped)."""
    channel = Customer.reach["channel"].as_string()
    rows = await session.execute(
        select(channel, func.count()).select_from(NurtureSend).join(Customer, Customer.id == NurtureSend.customer_id)
        .where(NurtureSend.push_id == push_id, NurtureSend.status == "pending").group_by(channel))
    return {str(name or ""): int(count) for name, count in rows.tuples()}


async def list_pushes(session: AsyncSession, limit: int = 50) -> list[tuple[Push, dict[str, int]]]:
    """The newest pushes, each with its sends counted by status (and "replied")."""
    pushes = list(await session.scalars(select(Push).order_by(Push.id.desc()).limit(limit)))
    counts = {push.id: Counter(dict.fromkeys(("pending", "sent", "replied", "skipped", "failed"), 0))
              for push in pushes}
    if pushes:
        rows = await session.execute(
            select(NurtureSend.push_id, NurtureSend.status, func.count(), func.count(NurtureSend.replied_at))
            .where(NurtureSend.push_id.in_(list(counts)))
            .group_by(NurtureSend.push_id, NurtureSend.status))
        for push_id, status, count, replied in rows.tuples():
            counts[push_id or 0][status] += count
            counts[push_id or 0]["replied"] += replied
    return [(push, dict(counts[push.id])) for push in pushes]
