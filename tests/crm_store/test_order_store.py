"""The order path's store: the locked customer with the order as it came before, and the stage moved in Core."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from crm_store.customers import Profile, resolve_customer, timeline
from crm_store.lifecycle import Lifecycle, StageNotAllowed, move_locked_stage
from crm_store.lifecycle_settings import LifecycleSettings
from crm_store.models import Customer, StageChange
from crm_store.orders import OrderExists, insert_order, lock_order_customer, save_result
from tests.conftest import Sessions

LIFECYCLE = Lifecycle(LifecycleSettings())


async def test_a_locked_stage_move_writes_what_set_stage_writes_and_leaves_nothing_to_flush(sessions: Sessions
                                                                                           ) -> None:
    async with sessions() as session, session.begin():
        customer = await resolve_customer(session, "wecom", "wm_move", Profile("move"))
    async with sessions() as session, session.begin():
        customer = await session.get_one(Customer, customer.id)
        with pytest.raises(StageNotAllowed):
            await move_locked_stage(session, customer, "loyal", "order:shop:1", LIFECYCLE)
        assert await move_locked_stage(session, customer, "成交", "order:shop:1", LIFECYCLE)
        assert not await move_locked_stage(session, customer, "customer", "order:shop:1", LIFECYCLE)
        assert customer.stage == "customer" and not session.dirty
    async with sessions() as session:
        stored = await session.get_one(Customer, customer.id)
        moves = (await session.execute(select(StageChange.from_stage, StageChange.to_stage, StageChange.reason)
                                       .where(StageChange.customer_id == customer.id))).tuples().all()
        events = [event.kind for event in await timeline(session, customer.id)]
    assert (stored.stage, stored.stages_reached, stored.stage_changed_at is not None) == (
        "customer", "customer,lead", True)
    assert moves == [("lead", "customer", "order:shop:1")] and "stage.changed" in events


async def test_an_order_is_read_with_its_customer_and_inserted_once(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        customer_id = (await resolve_customer(session, "oa", "o_buyer", Profile("buyer"))).id
    async with sessions() as session, session.begin():
        found = await lock_order_customer(session, "shop", "SO-1", identity=("oa", "o_buyer"))
        assert found is not None and found.customer.id == customer_id and found.stored is None
        first = await insert_order(session, "shop", "SO-1", customer_id, amount_cents=100, currency="CNY", items=[],
                                   request_sha256="a" * 64, paid_at=None)
        await save_result(session, first.id, {"answer": 1})
        second = await insert_order(session, "erp", "SO-1", customer_id, amount_cents=100, currency="CNY",
                                    items=[], request_sha256="b" * 64, paid_at=None)
        assert not first.bought_before and second.bought_before
    async with sessions() as session, session.begin():
        found = await lock_order_customer(session, "shop", "SO-1", customer_id=customer_id)
        assert found is not None and found.stored is not None
        assert (found.stored.request_sha256, found.stored.result) == ("a" * 64, {"answer": 1})
        with pytest.raises(OrderExists) as exists:
            await insert_order(session, "shop", "SO-1", customer_id, amount_cents=1, currency="CNY", items=[],
                               request_sha256="c" * 64, paid_at=None)
        assert exists.value.stored.request_sha256 == "a" * 64
        assert await lock_order_customer(session, "shop", "SO-1", customer_id=customer_id + 1000) is None
