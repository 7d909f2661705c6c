"""Claiming work from the inbox and outbox so any number of workers share it without double work.

A worker claims only the head of each queue key (the oldest unfinished item of one
customer), so one customer's items run in order while different customers run in
parallel; the outbox offers its heads lane by lane (crm_store/models.py `Lane`), so
replies pass a push. On PostgreSQL candidates are locked with `FOR UPDATE SKIP LOCKED`;
on every backend the claim itself is a conditional UPDATE, and finishing checks the
claim token, so a worker whose claim expired (it crashed or stalled) can never commit
its result after another worker took the item over.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import (
    ColumnClause,
    DateTime,
    String,
    and_,
    bindparam,
    exists,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from crm_store.dialect_insert import dialect_insert
from crm_store.models import InboxItem, Lane, OutboxItem, QueueItem, utcnow

Item = TypeVar("Item", InboxItem, OutboxItem)


class ClaimLost(Exception):
    """The item was taken over by another worker; this worker's result must be rolled back."""


async def insert_ignoring_duplicates(
    session: AsyncSession, model: type[QueueItem], rows: Sequence[dict[str, Any]]
) -> set[str]:
    """INSERT … ON CONFLICT (dedup_key) DO NOTHING for many rows; returns the dedup keys inserted.

    A Core statement on the table, not the ORM entity: the rows are plain values, and the ORM's bulk
    insert machinery cost more than the statement itself on the callback path."""
    if not rows:
        return set()
    dialect = session.get_bind().dialect.name
    statement = _INSERTS.get((dialect, model))
    if statement is None:  # built once per store and table (see _Statements)
        table = model.__table__  # type: ignore[attr-defined]
        statement = _INSERTS[dialect, model] = (
            dialect_insert(session, table).on_conflict_do_nothing(index_elements=["dedup_key"])
            .returning(table.c.dedup_key)
        )
    result = await session.execute(statement, list(rows))
    return set(result.scalars().all())


_INSERTS: dict[tuple[str, type[QueueItem]], Any] = {}


CANDIDATE_WINDOW = 8  # look at this many times `limit` ready items to find `limit` queue heads
UNFINISHED = ("pending", "claimed")
# The claim's statuses are written into its SQL, not bound: PostgreSQL uses a partial index only when
# the query's WHERE proves the index's, which a parameter cannot, and the generic plan it moves a
# prepared statement to after five runs has parameters: it then read and sorted the whole backlog,
# 60 ms a claim behind a push of 100,000, rather than the first few rows of the partial index.
PENDING: ColumnClause[str] = literal_column("'pending'", String)
CLAIMED: ColumnClause[str] = literal_column("'claimed'", String)


@dataclass(frozen=True)
class _Statements:
    """A queue's hot statements, built once per table: executing the same statement object skips its
    construction and its cache key (memoized), which otherwise cost more than the round trip."""

    ready: Any
    abandoned: Any
    heads: Any
    claim: Any
    claim_stored: Any
    finish: Any
    note: Any
    ready_heads: Any = None  # lanes only: which of these queue heads are ready (see claim_heads)


_BUILT: dict[type[QueueItem], _Statements] = {}


def _statements(model: type[QueueItem]) -> _Statements:
    built = _BUILT.get(model)
    if built is None:
        built = _BUILT[model] = _build(model)
    return built


def _build(model: type[QueueItem]) -> _Statements:
    now, earlier = bindparam("now", type_=DateTime(timezone=True)), aliased(model)
    table = model.__table__  # type: ignore[attr-defined]
    claimed = {"status": "claimed", "claim_token": bindparam("token"), "claimed_until": bindparam("until"),
               "attempts": model.attempts + 1}
    return _Statements(
        ready=select(model.id, model.queue_key)
        .where(model.status == PENDING, model.available_at <= now, *_lanes_below(model))
        .order_by(*_ready_order(model)).limit(bindparam("limit")).with_for_update(skip_locked=True),
        abandoned=select(model.id, model.queue_key)
        .where(model.status == CLAIMED, model.claimed_until < now)
        .order_by(model.id).limit(bindparam("limit")).with_for_update(skip_locked=True),
        heads=select(model.queue_key, func.min(model.id))
        .where(model.queue_key.in_(bindparam("keys", expanding=True)), model.status.in_([PENDING, CLAIMED]))
        .group_by(model.queue_key),
        claim=update(model)
        .where(model.id.in_(bindparam("ids", expanding=True)),
               or_(and_(model.status == "pending", model.available_at <= now),
                   and_(model.status == "claimed", model.claimed_until < now)))
        .values(**claimed).returning(model).execution_options(synchronize_session=False),
        claim_stored=update(model)
        .where(model.id.in_(
            select(model.id)
            .where(model.dedup_key.in_(bindparam("keys", expanding=True)), model.status == "pending",
                   ~exists().where(earlier.queue_key == model.queue_key, earlier.id < model.id,
                                   earlier.status.in_([PENDING, CLAIMED])))
            .order_by(model.id).limit(bindparam("limit"))))
        .values(**claimed).returning(model).execution_options(synchronize_session=False),
        finish=update(table)  # Core on the table: nothing for the ORM to do, and its bulk update cost more
        .where(table.c.id == bindparam("item_id"), table.c.claim_token == bindparam("item_token"),
               table.c.status == "claimed")
        .values(status=bindparam("status"), finished_at=bindparam("finished_at"), last_error=bindparam("error"),
                claimed_until=None),
        note=update(table)
        .where(table.c.id == bindparam("item_id"), table.c.claim_token == bindparam("item_token"))
        .values(last_error=bindparam("text")),
        ready_heads=None if model is not OutboxItem else select(model.id)
        .where(model.id.in_(bindparam("ids", expanding=True)), model.status == "pending", model.available_at <= now)
        .with_for_update(skip_locked=True),
    )


def _ready_order(model: type[QueueItem]) -> tuple[Any, ...]:
    """The outbox hands out its lanes in order (crm_store/models.py `Lane`: replies, then transactional
    messages, then marketing), oldest first in each, read in that order from its pending index; the inbox
    is one lane, oldest first."""
    return (OutboxItem.lane, OutboxItem.id) if model is OutboxItem else (model.id,)


def _lanes_below(model: type[QueueItem]) -> tuple[Any, ...]:
    """The outbox claims the lanes below `below_lane` (all of them unless some are paused); the inbox has none."""
    return (OutboxItem.lane < bindparam("below_lane"),) if model is OutboxItem else ()


def _claim_values(claim_ttl_s: float, now: datetime) -> dict[str, Any]:
    return {"token": uuid.uuid4().hex, "until": now + timedelta(seconds=claim_ttl_s)}


@dataclass(frozen=True)
class Claimed(Generic[Item]):
    """What a claim took, and what it left: the queues whose ready items wait behind an unfinished head
    (finishing that head frees them), and whether queue heads were left only for want of room (a backlog)."""

    items: list[Item]
    blocked: frozenset[str] = frozenset()
    heads_left: bool = False


async def claim(session: AsyncSession, model: type[Item], limit: int, claim_ttl_s: float) -> list[Item]:
    """Claim up to `limit` queue heads; commits, so the claim is visible to other workers."""
    return (await claim_heads(session, model, limit, claim_ttl_s)).items


async def claim_heads(session: AsyncSession, model: type[Item], limit: int, claim_ttl_s: float,
                      below_lane: int | None = None) -> Claimed[Item]:
    """Claim up to `limit` queue heads and commit; with what was left. On the outbox, with `below_lane`, only
    rows of the lanes below it (the later ones are paused: marketing spent its share of a budget).

    Three short, index-only steps rather than one anti-join, so the plan stays cheap
    whatever the table's statistics say: ready candidates in the queue's order (the
    outbox's lanes, then ids; skipping rows other workers have locked), the oldest
    unfinished id of each candidate's queue, and a conditional UPDATE of the candidates
    that are their queue's head. On the outbox a candidate behind a head of a later lane
    (a reply behind that customer's push) brings that head forward when it is ready: a
    fourth step, by primary key. Heads are taken in the order their queues came up.
    """
    now, statements = utcnow(), _statements(model)
    candidates: dict[str, int] = {}  # queue -> its oldest candidate, in the order queues came up
    followed: set[str] = set()  # queues with more than one ready item: the later ones wait for the first
    lanes = {"below_lane": len(Lane) if below_lane is None else below_lane} if model is OutboxItem else {}
    for statement, rows in ((statements.abandoned, limit), (statements.ready, limit * CANDIDATE_WINDOW)):
        for item_id, queue_key in (await session.execute(statement, {"now": now, "limit": rows, **lanes})).all():
            if queue_key in candidates:
                followed.add(queue_key)
            candidates[queue_key] = min(item_id, candidates.get(queue_key, item_id))
    if not candidates:
        await session.commit()
        return Claimed([])
    heads = dict((await session.execute(statements.heads, {"keys": list(candidates)})).tuples().all())
    behind = {key: head for key, head in heads.items() if head != candidates[key]}
    blocked = frozenset(followed | set(behind))
    if behind and statements.ready_heads is not None:
        await _head_first(session, statements.ready_heads, candidates, behind, now)
    ready_heads = [item_id for key, item_id in candidates.items() if heads.get(key) == item_id]
    items: list[Item] = []
    if ready_heads:
        claimed = await session.execute(statements.claim, {"ids": ready_heads[:limit], "now": now,
                                                           **_claim_values(claim_ttl_s, now)})
        items = sorted(claimed.scalars().all(), key=lambda item: item.id)
    await session.commit()
    return Claimed(items, blocked, len(ready_heads) > limit)


async def _head_first(session: AsyncSession, ready_heads: Any, candidates: dict[str, int], behind: dict[str, int],
                      now: datetime) -> None:
    """Candidates that wait behind their queue's head in a later lane (a customer's reply behind the push
    sent to them) make that head the candidate when it is ready: it goes now, at the reply's rank, rather
    than when the push's backlog reaches it, and the reply follows it."""
    ready = set((await session.execute(ready_heads, {"ids": list(behind.values()), "now": now})).scalars())
    for key, head in behind.items():
        if head in ready:
            candidates[key] = head


async def claim_stored(
    session: AsyncSession, model: type[Item], dedup_keys: Collection[str], limit: int, claim_ttl_s: float
) -> list[Item]:
    """Claim, in the transaction that stored them, up to `limit` of the items with these keys that are their
    queue's head, so the worker that stored them handles them without claiming them again.

    They commit claimed, with the store: a crash before they are handled leaves claims that expire and are
    taken over like any other. An item whose queue has an earlier unfinished one stays pending.
    """
    if not dedup_keys or limit <= 0:
        return []
    params = {"keys": list(dedup_keys), "limit": limit, **_claim_values(claim_ttl_s, utcnow())}
    claimed = await session.execute(_statements(model).claim_stored, params)
    return sorted(claimed.scalars().all(), key=lambda item: item.id)


async def finish(session: AsyncSession, item: QueueItem, status: str = "done", error: str | None = None) -> None:
    """Mark a claimed item done or failed in the caller's transaction; ClaimLost if it is no longer ours."""
    result = await session.execute(_statements(type(item)).finish, {
        "item_id": item.id, "item_token": item.claim_token, "status": status, "finished_at": utcnow(), "error": error})
    if cast(CursorResult[Any], result).rowcount != 1:
        raise ClaimLost(f"{type(item).__name__} {item.id}")


async def finish_covered(session: AsyncSession, item: QueueItem, up_to_id: int, reason: str) -> int:
    """Mark done the pending items of `item`'s queue up to id `up_to_id` (their work is done)."""
    model = type(item)
    result = await session.execute(
        update(model)
        .where(
            model.queue_key == item.queue_key,
            model.status == "pending",
            model.id <= up_to_id,
            model.id != item.id,
        )
        .values(status="done", finished_at=utcnow(), last_error=reason)
        .execution_options(synchronize_session=False)
    )
    return int(cast(CursorResult[Any], result).rowcount or 0)


async def retry_later(session: AsyncSession, item: QueueItem, delay_s: float, error: str,
                      refund: bool = False) -> None:
    """Put a claimed item back, to be tried again after `delay_s`; with `refund` the attempt does not
    count (our own infrastructure stopped it, not the item)."""
    model = type(item)
    await session.execute(
        update(model)
        .where(model.id == item.id, model.claim_token == item.claim_token, model.status == "claimed")
        .values(
            status="pending",
            available_at=utcnow() + timedelta(seconds=delay_s),
            last_error=error,
            claimed_until=None,
            **({"attempts": model.attempts - 1} if refund else {}),
        )
        .execution_options(synchronize_session=False)
    )


async def note(session: AsyncSession, item: QueueItem, text: str) -> None:
    """Record progress on a claimed item (read back if the item is claimed again)."""
    await session.execute(_statements(type(item)).note,
                          {"item_id": item.id, "item_token": item.claim_token, "text": text})


async def requeue_failed(session: AsyncSession, model: type[QueueItem], item_ids: list[int]) -> list[int]:
    """Give failed items a fresh start (an admin fixed the cause); returns the ids requeued."""
    result = await session.execute(
        update(model)
        .where(model.id.in_(item_ids), model.status == "failed")
        .values(status="pending", attempts=0, available_at=utcnow(), finished_at=None,
                last_error="queued again by an admin")
        .returning(model.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(result.scalars().all())


def backoff_s(attempt: int, base_s: float, cap_s: float = 300.0) -> float:
    """Exponential back-off: 1 s, 2 s, 4 s … capped."""
    return min(cap_s, base_s * 2 ** max(0, attempt - 1))


async def due_count(session: AsyncSession, model: type[QueueItem]) -> int:
    """Items that a worker could claim now or is working on."""
    now = utcnow()
    ready = or_(and_(model.status == "pending", model.available_at <= now), model.status == "claimed")
    return int(await session.scalar(select(func.count()).select_from(model).where(ready)) or 0)
