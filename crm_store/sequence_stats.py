"""How sequences do: enrolments by version and outcome, and per step what was sent, skipped, put off and answered.

Three grouped queries whatever the number of customers: enrolments, sends per step, and
conversions per step. A conversion (Enrolment.converted_at) counts for the last step sent
before it, or for no step ("") when it came before the first message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from core.sequences import NurtureSequence
from crm_store.nurture_models import Enrolment, NurtureSend, SequenceState, SequenceVersion

WAITING = "waiting: "  # how bot/nurture_dispatch.py marks a pending send it put off: "waiting: no quota"


@dataclass
class StepStats:
    step: str
    index: int
    pending: int = 0
    sent: int = 0
    failed: int = 0
    replied: int = 0  # sent, and the customer wrote back afterwards
    converted: int = 0  # the last step sent before the customer converted
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count
    waiting: Counter[str] = field(default_factory=Counter)  # of the pending: deferred, why (waiting_for) -> count


@dataclass
class SequenceStats:
    name: str
    enrolled: Counter[int] = field(default_factory=Counter)  # version -> enrolments
    statuses: Counter[str] = field(default_factory=Counter)  # active | paused | completed | exited
    exited: Counter[str] = field(default_factory=Counter)  # exit reason -> count
    converted: int = 0
    steps: dict[str, StepStats] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.enrolled.values())

    def ordered_steps(self) -> list[StepStats]:
        return sorted(self.steps.values(), key=lambda step: (step.index, step.step))

    def to_data(self) -> dict[str, object]:
        return {
            "sequence": self.name, "enrolled": self.total, "by_version": dict(sorted(self.enrolled.items())),
            "active": self.statuses["active"], "paused": self.statuses["paused"],
            "completed": self.statuses["completed"], "exited": self.statuses["exited"],
            "exited_by": dict(self.exited.most_common()), "converted": self.converted,
            "steps": [{"step": s.step, "index": s.index, "pending": s.pending, "sent": s.sent, "failed": s.failed,
                       "replied": s.replied, "converted": s.converted, "skipped": dict(s.skipped.most_common()),
                       "waiting": dict(s.waiting.most_common())}
                      for s in self.ordered_steps()],
        }


async def sequence_stats(session: AsyncSession, names: Sequence[str] | None = None) -> list[SequenceStats]:
    """Stats of every published sequence (or of `names`), by name."""
    known = select(SequenceState.name) if names is None else select(SequenceState.name).where(
        SequenceState.name.in_(list(names)))
    stats = {name: SequenceStats(name) for name in await session.scalars(known.order_by(SequenceState.name))}
    for name in names or ():
        stats.setdefault(name, SequenceStats(name))

    def wanted(column: InstrumentedAttribute[str]) -> list[ColumnElement[bool]]:
        return [] if names is None else [column.in_(list(names))]

    enrolments = await session.execute(
        select(Enrolment.sequence, Enrolment.version, Enrolment.status, Enrolment.exit_reason, func.count(),
               func.count(Enrolment.converted_at))
        .where(*wanted(Enrolment.sequence))
        .group_by(Enrolment.sequence, Enrolment.version, Enrolment.status, Enrolment.exit_reason))
    for name, version, status, reason, count, converted in enrolments.tuples():
        one = stats.setdefault(name, SequenceStats(name))
        one.enrolled[version] += count
        one.statuses[status] += count
        one.converted += converted
        if status == "exited":
            one.exited[reason or "-"] += count
    sends = await session.execute(
        select(Enrolment.sequence, NurtureSend.step, func.min(NurtureSend.step_index), NurtureSend.status,
               NurtureSend.reason, func.count(), func.count(NurtureSend.replied_at))
        .join(Enrolment, Enrolment.id == NurtureSend.enrolment_id)
        .where(*wanted(Enrolment.sequence))
        .group_by(Enrolment.sequence, NurtureSend.step, NurtureSend.status, NurtureSend.reason))
    for name, step_id, index, status, reason, count, replied in sends.tuples():
        step = _step(stats.setdefault(name, SequenceStats(name)), step_id, index)
        step.replied += replied
        if status == "skipped":
            step.skipped[reason or "-"] += count
        elif status in ("pending", "sent", "failed"):
            setattr(step, status, getattr(step, status) + count)
        why = waiting_for(status, reason)
        if why:
            step.waiting[why] += count
    for name, last_step, count in (await session.execute(_conversions_by_step(names))).tuples():
        _step(stats.setdefault(name, SequenceStats(name)), last_step or "", -1).converted += count
    return [stats[name] for name in sorted(stats)]


def waiting_for(status: str, reason: str | None) -> str:
    """Why a pending send was put off ("no quota", "quiet hours", "daily cap", …): what follows the
    dispatcher's "waiting: "; "" for a send not put off (not yet due) or no longer pending."""
    return reason.removeprefix(WAITING) if status == "pending" and reason and reason.startswith(WAITING) else ""


def _step(stats: SequenceStats, step_id: str, index: int) -> StepStats:
    step = stats.steps.get(step_id)
    if step is None:
        step = stats.steps[step_id] = StepStats(step_id, index)
    elif index >= 0:
        step.index = min(step.index, index) if step.index >= 0 else index
    return step


def _conversions_by_step(names: Sequence[str] | None) -> Select[str, str | None, int]:
    """(sequence, the last step sent before the conversion, count) over converted enrolments."""
    last_sent = (
        select(NurtureSend.step)
        .where(NurtureSend.enrolment_id == Enrolment.id, NurtureSend.status == "sent",
               NurtureSend.sent_at <= Enrolment.converted_at)
        .order_by(NurtureSend.sent_at.desc(), NurtureSend.step_index.desc())
        .limit(1)
        .correlate(Enrolment)
        .scalar_subquery()
    )
    converted = (
        select(Enrolment.sequence.label("sequence"), last_sent.label("step"))
        .where(Enrolment.converted_at.is_not(None),
               *([] if names is None else [Enrolment.sequence.in_(list(names))]))
        .subquery()
    )
    return select(converted.c.sequence, converted.c.step, func.count()).group_by(converted.c.sequence,
                                                                                  converted.c.step)


async def sequence_overview(session: AsyncSession) -> list[dict[str, Any]]:
    """Each published sequence: current version, paused, retired, enrolments (all and active), steps."""
    counts: dict[str, Counter[str]] = {}
    rows = await session.execute(select(Enrolment.sequence, Enrolment.status, func.count())
                                 .group_by(Enrolment.sequence, Enrolment.status))
    for name, status, count in rows.tuples():
        counts.setdefault(name, Counter())[status] += count
    overview = []
    for state in await session.scalars(select(SequenceState).order_by(SequenceState.name)):
        version = await session.get(SequenceVersion, (state.name, state.current_version))
        sequence = NurtureSequence.from_data(version.definition) if version else None
        mine = counts.get(state.name, Counter())
        overview.append({"sequence": state.name, "version": state.current_version, "paused": state.paused,
                         "retired": state.retired, "enrolled": sum(mine.values()), "active": mine["active"],
                         "steps": len(sequence.steps) if sequence else 0,
                         "description": sequence.description if sequence else ""})
    return overview
