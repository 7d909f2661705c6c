"""How far behind the inbox and outbox are: backlog, lag, drain rate and failures, read cheaply.

The queues keep every finished row (millions), so nothing here reads the whole table:
- unfinished rows are counted, and their oldest found, through the partial indexes on
  status pending/claimed: the cost grows with the backlog, not with the history;
- failed rows are counted through `ix_<queue>_status`: the cost grows with the failures;
- the drain (rows finished in the last minute) has no index to use: one on `finished_at`
  would cost every finish a write. Ids grow with time, and a row finished in the window was
  waiting when the window began, so it lies among the newest ids or among or near the rows
  still waiting. The primary key is read downwards in blocks of ids from the newest: on past
  every block with a row finished in the window or a row waiting, jumping over the quiet
  history between to the next block with rows waiting (found by the count of unfinished
  rows above). The cost is about a minute of traffic plus the blocks of the backlog, whatever
  the history and however old the oldest waiting row (docs/operations/monitoring.md has the
  figures on PostgreSQL with 1,000,000 done rows).
  What it misses: rows finished in the window below a quiet block with nothing left waiting
  near them (a backlog sent to its end within the minute, or a failed item queued again long
  after); after `MAX_BLOCKS` blocks it stops and says the count is a lower bound (`complete`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.models import InboxItem, Lane, OutboxItem, QueueItem, utcnow
from crm_store.work_queue import UNFINISHED

DRAIN_WINDOW_S = 60.0
BLOCK_IDS = 16_384  # ids read per step of the drain's walk down the primary key
MAX_BLOCKS = 64  # at most ~1,000,000 ids per look (tens of milliseconds); past it the count is a floor
QUEUES: dict[str, type[InboxItem] | type[OutboxItem]] = {"inbox": InboxItem, "outbox": OutboxItem}


@dataclass(frozen=True)
class Drain:
    """Rows finished (done or failed) in the last `window_s` seconds, across every process."""

    finished: int
    window_s: float = DRAIN_WINDOW_S
    complete: bool = True  # False: the walk stopped at MAX_BLOCKS, `finished` is a lower bound

    @property
    def per_s(self) -> float:
        return self.finished / self.window_s


@dataclass(frozen=True)
class LaneStats:
    """One outbox lane (crm_store/models.py `Lane`): what waits in it and what failed."""

    lane: str
    pending: int = 0
    claimed: int = 0
    failed: int = 0
    lag_s: float = 0.0

    @property
    def backlog(self) -> int:
        return self.pending + self.claimed


@dataclass(frozen=True)
class QueueStats:
    """One queue at one moment; `lag_s` is the age of its oldest unfinished item (0 when none)."""

    queue: str
    pending: int
    claimed: int
    failed: int
    lag_s: float
    drain: Drain
    lanes: tuple[LaneStats, ...] = ()  # the outbox's, every lane listed; none for the inbox

    @property
    def backlog(self) -> int:
        return self.pending + self.claimed

    def as_json(self) -> dict[str, Any]:
        """The JSON shape of /healthz and `scrm inbox|outbox stats --json`."""
        shown: dict[str, Any] = {
            "queue": self.queue, "backlog": self.backlog, "pending": self.pending, "claimed": self.claimed,
            "failed": self.failed, "lag_s": round(self.lag_s, 3), "drain_per_s": round(self.drain.per_s, 3),
            "finished_last_minute": self.drain.finished, "drain_complete": self.drain.complete}
        if self.lanes:
            shown["lanes"] = {lane.lane: {"backlog": lane.backlog, "pending": lane.pending, "claimed": lane.claimed,
                                          "failed": lane.failed, "lag_s": round(lane.lag_s, 3)}
                              for lane in self.lanes}
        return shown


async def queue_stats(
    session: AsyncSession, model: type[QueueItem], now: datetime | None = None, block_ids: int = BLOCK_IDS
) -> QueueStats:
    """Backlog, lag, failures and drain of the inbox or the outbox (per lane for the outbox)."""
    now = now or utcnow()
    lanes, open_blocks = await _lane_stats(session, model, now, block_ids)
    drain = await finished_since(session, model, now - timedelta(seconds=DRAIN_WINDOW_S), open_blocks, block_ids)
    name = next(name for name, queue in QUEUES.items() if queue is model)
    return QueueStats(
        queue=name, pending=sum(lane.pending for lane in lanes), claimed=sum(lane.claimed for lane in lanes),
        failed=sum(lane.failed for lane in lanes), lag_s=max((lane.lag_s for lane in lanes), default=0.0),
        drain=drain, lanes=tuple(lanes) if model is OutboxItem else ())


async def _lane_stats(
    session: AsyncSession, model: type[QueueItem], now: datetime, block_ids: int
) -> tuple[list[LaneStats], frozenset[int]]:
    """Per lane (one lane, "all", for the inbox): unfinished rows through the partial indexes, failed
    ones through the status index; and the id blocks that hold unfinished rows, for the drain's walk."""
    group = (OutboxItem.lane,) if model is OutboxItem else ()
    block = model.id // literal_column(str(int(block_ids)))  # a literal: GROUP BY must repeat it exactly
    found: dict[str, dict[str, Any]] = {name: {} for name in _lane_names(model)}
    unfinished = await session.execute(
        select(*group, model.status, block, func.count(), func.min(model.created_at))
        .where(model.status.in_(UNFINISHED)).group_by(*group, model.status, block))
    open_blocks: set[int] = set()
    for *lane, status, in_block, count, oldest in unfinished.tuples():
        open_blocks.add(int(in_block))
        counts = found.setdefault(_lane_name(lane), {})
        counts[status] = counts.get(status, 0) + count
        counts["lag_s"] = max(counts.get("lag_s", 0.0), _age_s(oldest, now))
    failed = await session.execute(select(*group, func.count()).where(model.status == "failed").group_by(*group))
    for *lane, count in failed.tuples():
        found.setdefault(_lane_name(lane), {})["failed"] = count
    return [LaneStats(name, **counts) for name, counts in found.items()], frozenset(open_blocks)


async def finished_since(
    session: AsyncSession, model: type[QueueItem], since: datetime, open_blocks: Collection[int] = (),
    block_ids: int = BLOCK_IDS, max_blocks: int = MAX_BLOCKS,
) -> Drain:
    """Rows finished at or after `since`, read down the primary key in blocks of `block_ids` ids (block n:
    ids n*block_ids … (n+1)*block_ids - 1) from the newest.

    Past a block with none finished in the window the walk goes on from the next block below that holds
    unfinished rows (`open_blocks`): rows finished in the window were waiting when it began, so they lie
    among or near the ones still waiting, or among the newest. It stops when none is left below.
    """
    top = await session.scalar(select(func.max(model.id)))
    if top is None:
        return Drain(0)
    waiting = sorted(open_blocks, reverse=True)
    block, finished = int(top) // block_ids, 0
    for _ in range(max_blocks):
        in_block = int(await session.scalar(
            select(func.count()).select_from(model)
            .where(model.id >= block * block_ids, model.id < (block + 1) * block_ids, model.finished_at >= since))
            or 0)
        finished += in_block
        if in_block == 0 and block not in open_blocks:
            block = next((lower for lower in waiting if lower < block), -1)
        else:
            block -= 1
        if block < 0:
            return Drain(finished)
    return Drain(finished, complete=False)


def _lane_names(model: type[QueueItem]) -> list[str]:
    return [lane.name.lower() for lane in Lane] if model is OutboxItem else ["all"]


def _lane_name(lane: list[Any]) -> str:
    if not lane:
        return "all"
    try:
        return Lane(lane[0]).name.lower()
    except ValueError:  # a lane this version does not know: shown by its number
        return str(lane[0])


def _age_s(moment: datetime | None, now: datetime) -> float:
    if moment is None:
        return 0.0
    if moment.tzinfo is None:  # SQLite returns naive datetimes (stored as UTC)
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (now - moment).total_seconds())
