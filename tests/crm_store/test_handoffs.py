"""The handoff store: capacity holds under concurrent routing, office hours parse strictly, merges keep one.

Concurrent attempts run in their own sessions and transactions, as separate bot
instances would; on PostgreSQL they really race for the same rep rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_store import handoffs
from crm_store.customers import merge_customers, resolve_customer
from crm_store.db import create_engine, session_factory
from crm_store.handoff_models import Handoff
from crm_store.handoff_settings import HandoffSettings
from crm_store.models import Customer, utcnow
from crm_store.office_hours import HoursError, WeeklyHours, say_when
from crm_store.reps import RepError, add_rep, list_reps, update_rep
from tests.conftest import Backend

OPEN = HandoffSettings(office_hours="mon-sun 00:00-24:00")
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture
async def sessions(backend: Backend) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(backend.store_url)
    yield session_factory(engine)
    await engine.dispose()


async def new_customers(sessions: async_sessionmaker[AsyncSession], count: int) -> list[int]:
    async with sessions() as session, session.begin():
        return [(await resolve_customer(session, "wecom", f"wm{index}")).id for index in range(count)]


async def test_concurrent_handoffs_never_give_a_rep_more_than_their_capacity(
    backend: Backend, sessions: async_sessionmaker[AsyncSession]
) -> None:
    if backend.name == "sqlite":
        pytest.skip("one writer at a time on SQLite: nothing to race")
    async with sessions() as session, session.begin():
        await add_rep(session, "solo", capacity=3)
    ids = await new_customers(sessions, 20)

    async def hand_off(customer_id: int) -> str:
        async with sessions() as session, session.begin():
            customer = await session.get_one(Customer, customer_id)
            handoff = await handoffs.start(session, customer, "want_human", utcnow())
            assert handoff is not None
            return (await handoffs.route(session, handoff, customer, OPEN, utcnow())).why

    outcomes = await asyncio.gather(*(hand_off(customer_id) for customer_id in ids))
    assert sorted(outcomes).count("least_loaded") == 3 and outcomes.count("busy") == 17
    async with sessions() as session:
        offered = await session.scalar(select(func.count()).select_from(Handoff).where(Handoff.status == "offered"))
        [view] = await list_reps(session, OPEN.hours, SHANGHAI)
    assert offered == 3 and view.load == 3


async def test_a_merge_keeps_one_open_handoff_and_all_the_history(sessions: async_sessionmaker[AsyncSession]) -> None:
    keep_id, absorb_id = await new_customers(sessions, 2)
    async with sessions() as session, session.begin():
        for customer_id in (keep_id, absorb_id):
            assert await handoffs.start(session, await session.get_one(Customer, customer_id), "x", utcnow())
        await merge_customers(session, await session.get_one(Customer, keep_id),
                              await session.get_one(Customer, absorb_id))
    async with sessions() as session:
        rows = (await session.scalars(select(Handoff).order_by(Handoff.id))).all()
    assert [(row.customer_id, row.status, row.closed_by) for row in rows] == [
        (keep_id, "queued", ""), (keep_id, "closed", "merged")]


def test_office_hours_parse_strictly_and_find_the_next_opening() -> None:
    hours = WeeklyHours.parse("mon-fri 09:00-18:00; sat 10:00-16:00")
    friday_night = datetime(2026, 11, 27, 20, 0, tzinfo=SHANGHAI)  # a Friday
    assert not hours.is_open(friday_night, SHANGHAI)
    opening = hours.next_open(friday_night.astimezone(UTC), SHANGHAI)
    assert opening.astimezone(SHANGHAI) == datetime(2026, 11, 28, 10, 0, tzinfo=SHANGHAI)
    assert say_when(opening, friday_night, SHANGHAI) == "明天 10:00"
    assert hours.is_open(datetime(2026, 11, 23, 9, 0, tzinfo=SHANGHAI), SHANGHAI)  # Monday, at opening
    assert WeeklyHours.parse("fri-mon 22:00-24:00").is_open(datetime(2026, 11, 29, 23, 0, tzinfo=SHANGHAI),
                                                           SHANGHAI)  # a range over the weekend, to midnight
    for bad, why in (("mon-fri 18:00-09:00", "after the start"), ("monday 09:00-18:00", "days are"),
                     ("mon 9-18", "HH:MM"), ("mon 09:00-25:00", "not a time"), ("", "no hours")):
        with pytest.raises(HoursError, match=why):
            WeeklyHours.parse(bad)


async def test_rep_settings_are_checked(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session, session.begin():
        await add_rep(session, "amy")
        with pytest.raises(RepError, match="already exists"):
            await add_rep(session, "amy")
        with pytest.raises(RepError, match="capacity 0"):
            await update_rep(session, "amy", capacity=0)
        with pytest.raises(RepError, match="the end must be after the start"):
            await update_rep(session, "amy", hours="mon 18:00-09:00")
        with pytest.raises(RepError, match="no rep bob"):
            await update_rep(session, "bob", on_duty=False)
