"""Social value: what each customer brought, counted as it happens, and one score made of it.

Counters move in the same transaction as the event that moves them (a friend
attributed, a friend converted, a group led or filled, a conversion further down the
tree), so the score is always current and `scrm customers find --sort social` is an
index scan, not a walk over the referral tree. The score is a weighted sum
(`growth.social_weights`); `rescore` applies new weights to everyone at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from crm_store.dialect_insert import dialect_insert
from crm_store.growth_models import SocialStats
from crm_store.growth_settings import SocialWeights
from crm_store.models import utcnow

Counter = Literal["friends", "friends_converted", "groups_led", "groups_filled", "downstream_converted"]
COUNTERS: tuple[Counter, ...] = ("friends", "friends_converted", "groups_led", "groups_filled", "downstream_converted")
RESCORE_BATCH = 5000  # scores per UPDATE when rescoring shows progress


def score_of(stats: SocialStats | None, weights: SocialWeights) -> float:
    if stats is None:
        return 0.0
    return float(sum(getattr(stats, name) * getattr(weights, name) for name in COUNTERS))


async def bump(session: AsyncSession, customer_ids: list[int], counter: Counter, weights: SocialWeights) -> None:
    """Add one to `counter` for each customer (created on first use) and update their scores."""
    for customer_id in customer_ids:
        values = {name: 1 if name == counter else 0 for name in COUNTERS}
        insert = dialect_insert(session, SocialStats).values(
            customer_id=customer_id, score=getattr(weights, counter), updated_at=utcnow(), **values
        )
        table = SocialStats.__table__.c
        await session.execute(
            insert.on_conflict_do_update(
                index_elements=["customer_id"],
                set_={
                    counter: table[counter] + 1,
                    "score": table.score + getattr(weights, counter),
                    "updated_at": utcnow(),
                },
            )
        )


async def stats_of(session: AsyncSession, customer_id: int) -> SocialStats | None:
    return await session.get(SocialStats, customer_id, populate_existing=True)


async def rescore(session: AsyncSession, weights: SocialWeights,
                  on_progress: Callable[[int, int], None] | None = None) -> int:
    """Recompute every score with `weights` (after the brand changed them); how many rows changed.

    With `on_progress(done, total)` it goes in batches of RESCORE_BATCH customers (by id, in the
    same transaction) and reports after each; without, it is one UPDATE.
    """
    parts: list[ColumnElement[float]] = [getattr(SocialStats, name) * getattr(weights, name) for name in COUNTERS]
    score = parts[0]
    for part in parts[1:]:
        score = score + part
    if on_progress is not None:
        return await _rescore_in_batches(session, score, on_progress)
    result = await session.execute(update(SocialStats).values(score=score))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def _rescore_in_batches(session: AsyncSession, score: ColumnElement[float],
                              on_progress: Callable[[int, int], None]) -> int:
    total = int(await session.scalar(select(func.count()).select_from(SocialStats)) or 0)
    done, after = 0, 0  # customer ids start at 1
    while True:
        last = await session.scalar(  # the batch's last id; None: the rest is smaller than a batch
            select(SocialStats.customer_id).where(SocialStats.customer_id > after)
            .order_by(SocialStats.customer_id).offset(RESCORE_BATCH - 1).limit(1))
        batch = update(SocialStats).values(score=score).where(SocialStats.customer_id > after)
        result = await session.execute(batch if last is None else batch.where(SocialStats.customer_id <= last))
        done += int(result.rowcount or 0)  # type: ignore[attr-defined]
        on_progress(done, total)
        if last is None:
            return done
        after = last


async def top(session: AsyncSession, limit: int) -> list[SocialStats]:
    rows = await session.scalars(
        select(SocialStats).where(SocialStats.score > 0).order_by(SocialStats.score.desc()).limit(limit)
    )
    return list(rows)
