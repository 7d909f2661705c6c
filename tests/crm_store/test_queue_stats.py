"""Queue stats on SQLite and PostgreSQL: counts per status and lane, lag, and the drain of the last minute.

Rows are written with chosen statuses, lanes and times (`queue_rows`), and read at a chosen `NOW`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_store.db import create_engine, session_factory
from crm_store.models import InboxItem, Lane, OutboxItem, utcnow
from crm_store.queue_stats import Drain, LaneStats, finished_since, queue_stats
from tests.conftest import Backend

NOW = utcnow()
Queue = type[InboxItem] | type[OutboxItem]


@dataclass(frozen=True)
class Row:
    """One queue item to write: its status, its age, when it finished (seconds before NOW), its lane."""

    status: str
    age_s: float = 5.0
    finished_s_ago: float | None = None
    lane: Lane = Lane.TRANSACTIONAL


def done(s_ago: float, lane: Lane = Lane.TRANSACTIONAL, status: str = "done") -> Row:
    return Row(status, age_s=s_ago + 1, finished_s_ago=s_ago, lane=lane)


LONG_AGO = 3600.0


async def queue_rows(session: AsyncSession, model: Queue, rows: list[Row],
                     now: datetime | None = None) -> list[int]:
    """Write `rows` in order (ids ascending), their times counted back from `now` (NOW); their ids."""
    now = now or NOW
    items: list[int] = []
    for row in rows:
        extra = {"lane": int(row.lane)} if model is OutboxItem else {"channel": "kf"}
        finished = None if row.finished_s_ago is None else now - timedelta(seconds=row.finished_s_ago)
        item = model(dedup_key=f"test:{len(items)}:{id(row)}", queue_key=f"q{len(items)}", kind="test", payload={},
                     status=row.status, created_at=now - timedelta(seconds=row.age_s), available_at=now,
                     finished_at=finished, **extra)
        session.add(item)
        await session.flush()
        items.append(item.id)
    return items


@pytest.fixture
async def sessions(backend: Backend) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(backend.store_url)
    yield session_factory(engine)
    await engine.dispose()


async def write(sessions: async_sessionmaker[AsyncSession], model: Queue, rows: list[Row]) -> list[int]:
    async with sessions() as session, session.begin():
        return await queue_rows(session, model, rows)


async def test_an_empty_queue_shows_zeros(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        inbox = await queue_stats(session, InboxItem, NOW)
        outbox = await queue_stats(session, OutboxItem, NOW)
    assert (inbox.backlog, inbox.failed, inbox.lag_s, inbox.drain) == (0, 0, 0.0, Drain(0))
    assert inbox.lanes == ()
    assert [lane.lane for lane in outbox.lanes] == ["reply", "transactional", "marketing"]
    assert outbox.as_json()["lanes"]["marketing"] == {"backlog": 0, "pending": 0, "claimed": 0, "failed": 0,
                                                      "lag_s": 0.0}


async def test_counts_per_status_and_lane(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write(sessions, InboxItem, [Row("pending"), Row("pending"), Row("claimed"), done(LONG_AGO),
                                      done(LONG_AGO, status="failed")])
    await write(sessions, OutboxItem, [
        Row("pending", lane=Lane.REPLY), Row("claimed", lane=Lane.REPLY),
        *[Row("pending", lane=Lane.MARKETING)] * 3, done(LONG_AGO, Lane.MARKETING, "failed"),
        done(LONG_AGO, Lane.TRANSACTIONAL, "failed"), done(LONG_AGO, Lane.REPLY),
    ])
    async with sessions() as session:
        inbox = await queue_stats(session, InboxItem, NOW)
        outbox = await queue_stats(session, OutboxItem, NOW)
    assert (inbox.pending, inbox.claimed, inbox.backlog, inbox.failed) == (2, 1, 3, 1)
    assert (outbox.pending, outbox.claimed, outbox.backlog, outbox.failed) == (4, 1, 5, 2)
    lanes = {lane.lane: lane for lane in outbox.lanes}
    assert lanes["reply"] == LaneStats("reply", pending=1, claimed=1, lag_s=5.0)
    assert lanes["transactional"] == LaneStats("transactional", failed=1)
    assert lanes["marketing"] == LaneStats("marketing", pending=3, failed=1, lag_s=5.0)


async def test_lag_is_the_age_of_the_oldest_unfinished_item(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write(sessions, OutboxItem, [
        done(LONG_AGO * 2),  # finished: no lag, however old
        Row("pending", age_s=90, lane=Lane.MARKETING), Row("claimed", age_s=12, lane=Lane.REPLY),
        Row("pending", age_s=3, lane=Lane.REPLY),
    ])
    async with sessions() as session:
        stats = await queue_stats(session, OutboxItem, NOW)
    assert stats.lag_s == pytest.approx(90.0)
    assert {lane.lane: lane.lag_s for lane in stats.lanes} == pytest.approx(
        {"reply": 12.0, "transactional": 0.0, "marketing": 90.0})


async def test_drain_counts_items_finished_in_the_last_minute(sessions: async_sessionmaker[AsyncSession]) -> None:
    await write(sessions, InboxItem, [
        done(LONG_AGO), done(61), done(59), done(30, status="failed"), done(1), Row("pending"),
        done(0.5),
    ])
    async with sessions() as session:
        stats = await queue_stats(session, InboxItem, NOW)
    assert stats.drain == Drain(4)  # 59 s, 30 s (failed is finished too), 1 s and 0.5 s ago
    assert stats.drain.per_s == pytest.approx(4 / 60)
    assert stats.as_json()["finished_last_minute"] == 4 and stats.as_json()["drain_per_s"] == 0.067


def walk_layout() -> list[Row]:
    """In blocks of 4 ids: ids 1-8 done long ago; 9-12 sent in the window, below 13, still waiting; 14-21
    done before the window (quiet blocks above what waits); 22-24 sent in the window."""
    return [*[done(LONG_AGO)] * 8, *[done(20)] * 4, Row("pending", age_s=LONG_AGO), *[done(300)] * 8,
            *[done(10)] * 3]


async def test_drain_reads_the_newest_blocks_and_those_still_waiting(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await write(sessions, OutboxItem, walk_layout())
    async with sessions() as session:
        drain = (await queue_stats(session, OutboxItem, NOW, block_ids=4)).drain
        cut_short = await finished_since(session, OutboxItem, NOW - timedelta(seconds=60), {3}, 4, max_blocks=2)
    assert drain == Drain(7)
    assert cut_short == Drain(3, complete=False)  # a lower bound, and said to be one


async def test_drain_jumps_over_quiet_history_to_a_push_still_sending(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A push written long ago sends slowly (ids 1-3: two sent in the window, one waiting) while the replies
    written since went out at once (ids 4-16): the walk goes from the newest (17-18) to the push."""
    await write(sessions, OutboxItem, [
        done(40, Lane.MARKETING), done(30, Lane.MARKETING), Row("pending", age_s=LONG_AGO, lane=Lane.MARKETING),
        *[done(300, Lane.REPLY)] * 13, done(5, Lane.REPLY), done(4, Lane.REPLY)])
    async with sessions() as session:
        stats = await queue_stats(session, OutboxItem, NOW, block_ids=4)
    assert stats.drain == Drain(4)
    assert stats.lanes[2] == LaneStats("marketing", pending=1, lag_s=LONG_AGO)


async def test_drain_misses_only_rows_sent_behind_a_quiet_block_with_nothing_left_waiting(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Its cost: a row finished in the window below a whole block of rows finished before it, and with no
    row waiting near it (a failed item queued again long after), is not counted."""
    await write(sessions, InboxItem, [done(5), *[done(LONG_AGO)] * 8, done(5)])
    async with sessions() as session:
        drain = await finished_since(session, InboxItem, NOW - timedelta(seconds=60), block_ids=4)
        whole = await finished_since(session, InboxItem, NOW - timedelta(seconds=60), block_ids=16)
    assert drain == Drain(1)
    assert whole == Drain(2)
