"""One customer per person: identities, unionid merges, concurrent first contact."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from crm_store.customers import Profile, resolve_customer, timeline
from crm_store.db import create_engine, session_factory
from crm_store.models import Customer, Identity
from tests.conftest import Backend


async def test_same_identity_resolves_to_one_customer(backend: Backend) -> None:
    engine = create_engine(backend.store_url)
    sessions = session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            first = await resolve_customer(session, "wecom", "wm1", Profile("阿May"))
        async with sessions() as session, session.begin():
            again = await resolve_customer(session, "wecom", "wm1")
        assert again.id == first.id and again.display_name == "阿May"
    finally:
        await engine.dispose()


async def test_concurrent_first_contact_creates_one_customer(backend: Backend) -> None:
    engine = create_engine(backend.store_url)
    sessions = session_factory(engine)

    async def first_contact(kind: str, external_id: str) -> int:
        async with sessions() as session, session.begin():
            return (await resolve_customer(session, kind, external_id, Profile("小李", "uLI"))).id

    try:
        if backend.name == "sqlite":  # one writer at a time: the race cannot happen, order still matters
            ids = [await first_contact("wecom", "wmLi"), await first_contact("oa", "oLi")]
        else:
            ids = await asyncio.gather(first_contact("wecom", "wmLi"), first_contact("oa", "oLi"))
        assert ids[0] == ids[1]
        async with sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Customer)) == 1
            assert await session.scalar(select(func.count()).select_from(Identity)) == 2
    finally:
        await engine.dispose()


async def test_unionid_learnt_later_merges_two_customers(backend: Backend) -> None:
    engine = create_engine(backend.store_url)
    sessions = session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            on_oa = await resolve_customer(session, "oa", "oZhang", Profile("张", "uZHANG"))
            on_kf = await resolve_customer(session, "wecom", "wmZhang")  # not a contact yet: no unionid
        assert on_oa.id != on_kf.id
        async with sessions() as session, session.begin():
            merged = await resolve_customer(session, "wecom", "wmZhang", Profile("张", "uZHANG"))
        assert merged.id == on_oa.id
        async with sessions() as session:
            absorbed = await session.get_one(Customer, on_kf.id)
            owners = set((await session.scalars(select(Identity.customer_id))).all())
            events = [event.kind for event in await timeline(session, on_oa.id)]
        assert absorbed.merged_into_id == on_oa.id
        assert owners == {on_oa.id}
        assert "customer.merged" in events
    finally:
        await engine.dispose()
