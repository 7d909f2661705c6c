"""A known customer read with the facts a turn asks about them, in one statement, as fresh as the turn; and the
turn's timeline held and written in one statement, in the order recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_store.customer_facts import CustomerFacts, known_customer
from crm_store.customers import (
    Profile,
    held_events,
    hold_timeline,
    merge_customers,
    record,
    resolve_customer,
    write_timeline,
)
from crm_store.db import create_engine, session_factory
from crm_store.enrolments import REPLY_WINDOW
from crm_store.handoff_models import Handoff
from crm_store.handoffs import last_customer_texts, previous_not_understood
from crm_store.models import FlowRelease, TimelineEvent, utcnow
from crm_store.nurture_models import Enrolment, NurtureSend
from tests.conftest import Backend


@pytest.fixture
async def sessions(backend: Backend) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(backend.store_url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def facts_of(sessions: async_sessionmaker[AsyncSession], external_id: str) -> CustomerFacts:
    async with sessions() as session:
        found = await known_customer(session, "wecom", external_id, utcnow())
    assert found is not None
    return found[1]


async def test_facts_say_what_the_store_holds(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session, session.begin():
        customer = await resolve_customer(session, "wecom", "wmFacts")
    assert await facts_of(sessions, "wmFacts") == CustomerFacts(None, False, False, False)
    now = utcnow()
    async with sessions() as session, session.begin():
        release = FlowRelease(sources={}, versions={})
        session.add_all([
            release,
            Handoff(customer_id=customer.id, status="taken", reason="want_human", tried=[]),
            Enrolment(customer_id=customer.id, sequence="new_lead", version=1, status="paused"),
            NurtureSend(customer_id=customer.id, due_at=now, status="sent", sent_at=now - timedelta(hours=1)),
        ])
    assert await facts_of(sessions, "wmFacts") == CustomerFacts(release.id, True, True, True)
    async with sessions() as session, session.begin():
        await session.execute(Handoff.__table__.update().values(status="closed"))
        await session.execute(Enrolment.__table__.update().values(status="exited"))
        await session.execute(NurtureSend.__table__.update().values(sent_at=now - REPLY_WINDOW - timedelta(hours=1)))
    assert await facts_of(sessions, "wmFacts") == CustomerFacts(release.id, False, False, False)


async def test_an_unknown_identity_has_no_facts_and_a_merged_one_reads_its_holder(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session, session.begin():
        await resolve_customer(session, "oa", "oHolder", Profile("王", "uWANG"))
        await resolve_customer(session, "wecom", "wmAbsorbed")
    async with sessions() as session, session.begin():
        await resolve_customer(session, "wecom", "wmAbsorbed", Profile("王", "uWANG"))  # merged into oHolder's
    async with sessions() as session:
        assert await known_customer(session, "wecom", "wmNobody", utcnow()) is None
        found = await known_customer(session, "wecom", "wmAbsorbed", utcnow())
    assert found is not None  # the identity moved to the customer that holds the unionid
    async with sessions() as session:
        holder = await known_customer(session, "oa", "oHolder", utcnow())
    assert holder is not None and found[0].id == holder[0].id


async def test_a_held_timeline_is_written_in_order_and_read_before_it_is(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session, session.begin():
        customer = await resolve_customer(session, "wecom", "wmHeld")
        await record(session, customer.id, "inbound.message", {"text": "第一句"})
        await record(session, customer.id, "nlu.not_understood", {})
    async with sessions() as session, session.begin():
        hold_timeline(session)
        await record(session, customer.id, "inbound.message", {"text": "第二句"})
        assert await previous_not_understood(session, customer.id)  # the held message counts as the current one
        assert await last_customer_texts(session, customer.id, 5) == ["第一句", "第二句"]
        await record(session, customer.id, "tag.added", {"tag": "询价"})
        await record(session, customer.id, "outbound.reply", {"text": "好的"})
        assert [event.kind for event in held_events(session, customer.id, ("tag.added", "inbound.message"))] == [
            "tag.added", "inbound.message"]
        await write_timeline(session)
        await record(session, customer.id, "after.the.turn", {})  # no longer held
    async with sessions() as session:
        kinds = (await session.scalars(select(TimelineEvent.kind).where(TimelineEvent.customer_id == customer.id)
                                       .order_by(TimelineEvent.id))).all()
    assert kinds == ["customer.created", "inbound.message", "nlu.not_understood", "inbound.message", "tag.added",
                     "outbound.reply", "after.the.turn"]


async def test_a_merge_in_a_turn_moves_its_held_rows_too(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session, session.begin():
        keep = await resolve_customer(session, "oa", "oKeep")
        absorb = await resolve_customer(session, "wecom", "wmAbsorb")
    async with sessions() as session, session.begin():
        keep, absorb = await session.get_one(type(keep), keep.id), await session.get_one(type(absorb), absorb.id)
        hold_timeline(session)
        await record(session, absorb.id, "inbound.message", {"text": "你好"})
        await merge_customers(session, keep=keep, absorb=absorb)
        await write_timeline(session)
    async with sessions() as session:
        owners = (await session.scalars(select(TimelineEvent.customer_id)
                                        .where(TimelineEvent.kind.in_(("inbound.message", "customer.merged"))))).all()
    assert set(owners) == {keep.id}
