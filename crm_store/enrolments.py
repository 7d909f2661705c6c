"""Sequences in the store: publishing versions, enrolling customers, their next step, and exits.

An enrolment keeps the version it started on, so publishing a change never rewrites a
customer's sequence mid-way. Each active enrolment has one pending send, its next step; an
exit ends the enrolment and skips that send with the reason, in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.sequences import NurtureSequence, SeqStep
from crm_store.models import utcnow
from crm_store.nurture_models import ENROLLED, Enrolment, NurtureSend, SequenceState, SequenceVersion

REPLY_WINDOW = timedelta(days=3)  # a message within this long after a send counts as a reply to it


class EnrolError(ValueError):
    """An enrolment that cannot be made, said plainly."""


@dataclass(frozen=True)
class Published:
    name: str
    version: int
    changed: bool


async def publish(session: AsyncSession, sequences: Mapping[str, NurtureSequence], sources: Mapping[str, str],
                  by: str = "") -> list[Published]:
    """A new version of each sequence whose definition changed; sequences no longer in the files retire."""
    states = {state.name: state for state in await session.scalars(select(SequenceState))}
    results: list[Published] = []
    for name, sequence in sorted(sequences.items()):
        state = states.get(name)
        data = json.loads(json.dumps(sequence.to_data()))  # as the JSON column gives it back: lists, not tuples
        if state is not None:
            current = await session.get(SequenceVersion, (name, state.current_version))
            if current is not None and current.definition == data and not state.retired:
                results.append(Published(name, state.current_version, False))
                continue
        version = 1 if state is None else state.current_version + 1
        session.add(SequenceVersion(name=name, version=version, definition=data, source=sources.get(name, ""),
                                    published_by=by))
        if state is None:
            session.add(SequenceState(name=name, current_version=version))
        else:
            state.current_version, state.retired = version, False
        results.append(Published(name, version, True))
    for name, state in states.items():
        if name not in sequences and not state.retired:
            state.retired = True
    await session.flush()
    return results


class SequenceCatalog:
    """Published versions by (name, version): immutable, so cached for the life of the process."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, int], NurtureSequence] = {}

    async def get(self, session: AsyncSession, name: str, version: int) -> NurtureSequence:
        key = (name, version)
        if key not in self._versions:
            row = await session.get(SequenceVersion, key)
            if row is None:
                raise EnrolError(f"sequence {name} v{version} is not published")
            self._versions[key] = NurtureSequence.from_data(row.definition)
        return self._versions[key]

    async def current(self, session: AsyncSession, name: str) -> tuple[NurtureSequence, SequenceState]:
        state = await session.get(SequenceState, name)
        if state is None or state.retired:
            raise EnrolError(f"no published sequence {name} (see: scrm sequences list)")
        return await self.get(session, name, state.current_version), state

    async def live(self, session: AsyncSession) -> list[tuple[NurtureSequence, int]]:
        """Every sequence that may enrol customers now, with its current version."""
        states = await session.scalars(select(SequenceState).where(SequenceState.retired.is_(False)))
        return [(await self.get(session, state.name, state.current_version), state.current_version)
                for state in states]


async def enrol(session: AsyncSession, customer_id: int, sequence: NurtureSequence, version: int, source: str,
                zone: ZoneInfo, now: datetime | None = None) -> Enrolment | None:
    """Enrol the customer and schedule the first step; None when they are already in this sequence."""
    now = now or utcnow()
    running = await session.scalar(select(Enrolment.id).where(
        Enrolment.customer_id == customer_id, Enrolment.sequence == sequence.name, Enrolment.status.in_(ENROLLED)))
    if running is not None:
        return None
    enrolment = Enrolment(customer_id=customer_id, sequence=sequence.name, version=version, source=source[:64],
                          enrolled_at=now, status="active")
    try:
        async with session.begin_nested():
            session.add(enrolment)
            await session.flush()
    except IntegrityError:  # enrolled a moment ago by another transaction
        return None
    schedule_step(session, enrolment, sequence, 0, now, zone)
    return enrolment


def schedule_step(session: AsyncSession, enrolment: Enrolment, sequence: NurtureSequence, index: int,
                  previous_at: datetime, zone: ZoneInfo) -> NurtureSend | None:
    """The pending send of step `index`, or, past the last step, the enrolment completed."""
    if index >= len(sequence.steps):
        enrolment.status, enrolment.ended_at, enrolment.exit_reason = "completed", previous_at, ""
        return None
    step = sequence.steps[index]
    send = NurtureSend(customer_id=enrolment.customer_id, enrolment_id=enrolment.id, step=step.id,
                       step_index=index, due_at=due_at(step, enrolment.enrolled_at, previous_at, zone))
    session.add(send)
    return send


def due_at(step: SeqStep, enrolled_at: datetime, previous_at: datetime, zone: ZoneInfo) -> datetime:
    if step.after_s is not None:
        return enrolled_at + timedelta(seconds=step.after_s)
    if step.after_previous_s is not None:
        return previous_at + timedelta(seconds=step.after_previous_s)
    assert step.at_day is not None
    day = enrolled_at.astimezone(zone).date() + timedelta(days=step.at_day)
    hour, minute = (int(part) for part in step.at_time.split(":"))
    return datetime.combine(day, time(hour, minute), zone).astimezone(UTC)


async def end_enrolments(session: AsyncSession, customer_ids: Iterable[int], reason: str,
                         sequences: Iterable[str] | None = None, now: datetime | None = None) -> int:
    """Exit the customers' running enrolments (all, or of `sequences`); their pending sends are skipped."""
    ids = list(customer_ids)
    query = select(Enrolment.id).where(Enrolment.customer_id.in_(ids), Enrolment.status.in_(ENROLLED))
    if sequences is not None:
        query = query.where(Enrolment.sequence.in_(list(sequences)))
    enrolment_ids = list(await session.scalars(query))
    if not enrolment_ids:
        return 0
    now = now or utcnow()
    await session.execute(update(Enrolment).where(Enrolment.id.in_(enrolment_ids))
                          .values(status="exited", ended_at=now, exit_reason=reason[:64])
                          .execution_options(synchronize_session=False))
    await session.execute(update(NurtureSend).where(NurtureSend.enrolment_id.in_(enrolment_ids),
                                                    NurtureSend.status == "pending")
                          .values(status="skipped", reason=f"exited: {reason}"[:200])
                          .execution_options(synchronize_session=False))
    return len(enrolment_ids)


async def running_enrolments(session: AsyncSession, customer_id: int) -> list[Enrolment]:
    return list(await session.scalars(select(Enrolment).where(
        Enrolment.customer_id == customer_id, Enrolment.status.in_(ENROLLED))))


async def mark_replied(session: AsyncSession, customer_id: int, now: datetime) -> None:
    """The customer wrote: their sends of the last REPLY_WINDOW count as replied (once)."""
    await session.execute(update(NurtureSend).where(
        NurtureSend.customer_id == customer_id, NurtureSend.status == "sent", NurtureSend.replied_at.is_(None),
        NurtureSend.sent_at >= now - REPLY_WINDOW).values(replied_at=now).execution_options(synchronize_session=False))
