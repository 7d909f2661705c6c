"""The customer lifecycle: configured stages, the moves between them, and the funnel.

Stages and allowed moves come from `LifecycleSettings` so a brand can rename or add
stages without code. Every move writes a `StageChange` row in the caller's transaction
(the funnel and the transitions report are counted from these) and a timeline event
that says why. A move the configuration does not allow is refused loudly
(`StageNotAllowed`) unless forced: an admin correcting a mistake, or a churn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import (
    ColumnElement,
    Select,
    SQLColumnExpression,
    Table,
    bindparam,
    distinct,
    exists,
    func,
    insert,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from crm_store.customers import add_stages, record
from crm_store.lifecycle_settings import LifecycleSettings
from crm_store.models import Customer, StageChange, utcnow


class StageNotAllowed(ValueError):
    """The configuration has no move from `from_stage` to `to_stage`."""

    def __init__(self, from_stage: str, to_stage: str, allowed: Sequence[str]) -> None:
        targets = ", ".join(allowed) or "none"
        super().__init__(
            f"stage change {from_stage!r} -> {to_stage!r} is not allowed; from {from_stage!r} the allowed "
            f"targets are: {targets} (force the move, or add it to lifecycle.transitions)"
        )
        self.from_stage = from_stage
        self.to_stage = to_stage
        self.allowed = tuple(allowed)


class Lifecycle:
    """The stage rules, read once from settings: pure, no I/O, cheap to share."""

    def __init__(self, settings: LifecycleSettings) -> None:
        self.initial = settings.initial
        self.churned = settings.churned
        self.stage_ids: tuple[str, ...] = tuple(stage.id for stage in settings.stages)
        self._labels = {stage.id: stage.label for stage in settings.stages}
        self._by_label = {stage.label: stage.id for stage in settings.stages}
        self._targets = {stage: tuple(targets) for stage, targets in settings.transitions.items()}

    def resolve(self, name: str) -> str:
        """A stage id from an id or a label (admins type either)."""
        name = name.strip()
        if name in self._labels:
            return name
        if name in self._by_label:
            return self._by_label[name]
        if name.lower() in self._labels:
            return name.lower()
        known = ", ".join(f"{stage} ({label})" for stage, label in self._labels.items())
        raise ValueError(f"unknown stage {name!r}; stages: {known}")

    def label(self, stage_id: str) -> str:
        """The display label; a stage no longer configured shows as its id."""
        return self._labels.get(stage_id, stage_id)

    def targets(self, from_stage: str) -> tuple[str, ...]:
        if from_stage == self.churned or from_stage not in self._labels:
            return tuple(stage for stage in self.stage_ids if stage != from_stage)
        return self._targets.get(from_stage, ())

    def allowed(self, from_stage: str, to_stage: str) -> bool:
        """Leaving `churned` is always allowed (the customer came back), and so is leaving a
        stage that is no longer configured (no rule is left to apply to it)."""
        return to_stage in self.targets(from_stage)


async def set_stage(
    session: AsyncSession,
    customer: Customer,
    stage: str,
    reason: str,
    lifecycle: Lifecycle,
    *,
    force: bool = False,
) -> bool:
    """Move the customer to `stage` (id or label); False when already there."""
    target = _target(customer, stage, lifecycle, force)
    if target is None:
        return False
    current = customer.stage
    now = utcnow()
    session.add(
        StageChange(
            customer_id=customer.id, from_stage=current, to_stage=target, reason=reason[:200], created_at=now
        )
    )
    customer.stage = target
    customer.stage_changed_at = now
    customer.stages_reached = add_stages(customer.stages_reached, current, target)
    await record(session, customer.id, "stage.changed", {"from": current, "to": target, "reason": reason})
    return True


def _target(customer: Customer, stage: str, lifecycle: Lifecycle, force: bool) -> str | None:
    """The stage id to move to; None when the customer is there already."""
    target = lifecycle.resolve(stage)
    current = customer.stage
    if current == target:
        return None
    if not force and not lifecycle.allowed(current, target):
        raise StageNotAllowed(current, target, lifecycle.targets(current))
    return target


_CUSTOMERS, _STAGE_CHANGES = cast(Table, Customer.__table__), cast(Table, StageChange.__table__)
_MOVE = update(_CUSTOMERS).where(_CUSTOMERS.c.id == bindparam("customer_id")).values(
    stage=bindparam("to_stage"), stage_changed_at=bindparam("moved_at"), stages_reached=bindparam("reached"))
_HISTORY = insert(_STAGE_CHANGES)


async def move_locked_stage(
    session: AsyncSession,
    customer: Customer,
    stage: str,
    reason: str,
    lifecycle: Lifecycle,
    *,
    force: bool = False,
) -> bool:
    """`set_stage` for a customer whose row the caller has locked, in two Core statements.

    The same move, history row and timeline event, written at once rather than by the next
    flush: on a hot path (an order) the unit of work costs more than the statements. The
    customer object is updated as if loaded so, with nothing left for a flush to write.
    """
    target = _target(customer, stage, lifecycle, force)
    if target is None:
        return False
    current = customer.stage
    now = utcnow()
    reached = add_stages(customer.stages_reached, current, target)
    await session.execute(_MOVE, {"customer_id": customer.id, "to_stage": target, "moved_at": now, "reached": reached})
    await session.execute(_HISTORY, {"customer_id": customer.id, "from_stage": current, "to_stage": target,
                                     "reason": reason[:200], "created_at": now})
    for name, value in (("stage", target), ("stage_changed_at", now), ("stages_reached", reached)):
        set_committed_value(customer, name, value)
    await record(session, customer.id, "stage.changed", {"from": current, "to": target, "reason": reason})
    return True


async def churn(session: AsyncSession, customer: Customer, reason: str, lifecycle: Lifecycle) -> bool:
    """A customer can be lost from any stage, whatever the transitions say."""
    return await set_stage(session, customer, lifecycle.churned, reason, lifecycle, force=True)


async def return_from_churn(
    session: AsyncSession, customer: Customer, reason: str, lifecycle: Lifecycle
) -> bool:
    """Back to where the customer was before the last churn, so a returning buyer is not a lead again."""
    if customer.stage != lifecycle.churned:
        return False
    previous = await session.scalar(
        select(StageChange.from_stage)
        .where(StageChange.customer_id == customer.id, StageChange.to_stage == lifecycle.churned)
        .order_by(StageChange.id.desc())
        .limit(1)
    )
    if previous is None or previous == lifecycle.churned or previous not in lifecycle.stage_ids:
        previous = lifecycle.initial
    return await set_stage(session, customer, previous, reason, lifecycle, force=True)


@dataclass(frozen=True)
class FunnelRow:
    stage: str
    label: str
    current: int
    reached: int
    conversion_from_previous: float | None


LIVE = Customer.merged_into_id.is_(None)


async def funnel(
    session: AsyncSession, lifecycle: Lifecycle, since: datetime | None = None
) -> list[FunnelRow]:
    """Per stage, in configured order with `churned` last: customers in it now, and customers
    that entered it since `since` (UTC), with the share of the previous stage's that did."""
    current = dict(
        (
            await session.execute(select(Customer.stage, func.count()).where(LIVE).group_by(Customer.stage))
        ).all()
    )
    reached = await _reached(session, since)
    rows: list[FunnelRow] = []
    previous: int | None = None
    for stage in [s for s in lifecycle.stage_ids if s != lifecycle.churned]:
        count = reached.get(stage, 0)
        conversion = None if previous is None else (count / previous if previous else None)
        rows.append(FunnelRow(stage, lifecycle.label(stage), current.get(stage, 0), count, conversion))
        previous = count
    churned = lifecycle.churned
    rows.append(
        FunnelRow(churned, lifecycle.label(churned), current.get(churned, 0), reached.get(churned, 0), None)
    )
    return rows


async def _reached(session: AsyncSession, since: datetime | None) -> dict[str, int]:
    """Distinct customers per stage entered: by a move into it, or by starting there.

    A customer's first stage is the `from_stage` of its first move, or its current stage
    when it never moved; it was entered when the customer was created.
    """
    moved_at = _since(StageChange.created_at, since)
    created_at = _since(Customer.created_at, since)
    first_move = select(func.min(StageChange.id)).group_by(StageChange.customer_id)
    never_moved = ~exists().where(StageChange.customer_id == Customer.id)
    entries = union_all(
        _live_moves(StageChange.to_stage).where(moved_at),
        _live_moves(StageChange.from_stage).where(StageChange.id.in_(first_move), created_at),
        select(Customer.id.label("customer_id"), Customer.stage.label("stage")).where(
            LIVE, never_moved, created_at
        ),
    ).subquery()
    counts = await session.execute(
        select(entries.c.stage, func.count(distinct(entries.c.customer_id))).group_by(entries.c.stage)
    )
    return dict(counts.all())


def _live_moves(stage: SQLColumnExpression[str]) -> Select[int, str]:
    return (
        select(StageChange.customer_id.label("customer_id"), stage.label("stage"))
        .join(Customer, Customer.id == StageChange.customer_id)
        .where(LIVE)
    )


def _since(column: SQLColumnExpression[datetime], since: datetime | None) -> ColumnElement[bool]:
    if since is None:
        return column.is_not(None)
    if since.tzinfo is not None:  # SQLite compares stored UTC text: compare in UTC
        since = since.astimezone(UTC)
    return column >= since


async def transitions(session: AsyncSession, since: datetime | None = None) -> list[tuple[str, str, int]]:
    """(from, to, customers) for every move made since `since`, the most frequent first."""
    customers = func.count(distinct(StageChange.customer_id))
    rows = await session.execute(
        select(StageChange.from_stage, StageChange.to_stage, customers)
        .join(Customer, Customer.id == StageChange.customer_id)
        .where(LIVE, _since(StageChange.created_at, since))
        .group_by(StageChange.from_stage, StageChange.to_stage)
        .order_by(customers.desc(), StageChange.from_stage, StageChange.to_stage)
    )
    return [(from_stage, to_stage, count) for from_stage, to_stage, count in rows.tuples()]
