"""Orders at speed, still exact: a delivery arriving twice at once, a merged customer, a key revoked elsewhere."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import func, select, update

from bot.api import API_LIMITS
from core.events import InboundEvent
from crm_store.api_models import ApiKey, Order
from crm_store.customer_facts import CustomerFacts
from crm_store.customers import merge_customers, timeline
from crm_store.models import Customer, StageChange, utcnow
from crm_store.nurture_models import Enrolment
from flows.turn import Turn
from tests.bot.conftest import Bot
from tests.bot.test_api import API, call, customer, key_for, order
from tests.bot.test_nurture import published

BOUGHT_EXITS = """\
sequence: until_bought
enroll: [{tag: 连衣裙}]
exit: [{stage: customer}]
steps:
  - {id: nudge, after: 1d, say: 还在犹豫吗？}
"""


async def test_an_order_delivered_twice_at_once_is_stored_once_and_both_deliveries_get_its_answer(start_bot
                                                                                                 ) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot()
    headers = await key_for(bot)
    buyer = await customer(bot, "wm_twice")
    body = order("SO-T1", "wm_twice")
    answers = await asyncio.gather(*(call(bot, "POST", "/orders", headers, body) for _ in range(3)))
    assert sorted(status for status, _ in answers) == [200, 200, 201]
    assert all(answer == answers[0][1] for _, answer in answers) and answers[0][1]["stage"] == "customer"
    status, clash = await call(bot, "POST", "/orders", headers, order("SO-T1", "wm_twice", amount="1.00"))
    assert status == 409 and clash["error"]["code"] == "order_conflict"
    status, clash = await call(bot, "POST", "/orders", headers, {**body, "customer": {"id": 999_999}})
    assert status == 409 and clash["error"]["code"] == "order_conflict"  # the id is taken, whoever it names
    async with bot.runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Order)) == 1
        moves = (await session.scalars(select(StageChange.to_stage).where(StageChange.customer_id == buyer.id))).all()
        paid = [event for event in await timeline(session, buyer.id) if event.kind == "order.paid"]
    assert list(moves) == ["customer"] and len(paid) == 1


async def test_an_order_for_a_merged_customer_moves_the_customer_it_became(start_bot
                                                                           ) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot()
    headers = await key_for(bot)
    keep, absorbed = await customer(bot, "wm_keep"), await customer(bot, "wm_absorbed")
    async with bot.runtime.sessions.begin() as session:
        await merge_customers(session, await session.get_one(Customer, keep.id),
                              await session.get_one(Customer, absorbed.id))
    body = {**order("SO-M1", "wm_absorbed"), "customer": {"id": absorbed.id}}
    status, first = await call(bot, "POST", "/orders", headers, body)
    assert status == 201 and first["customer_id"] == keep.id and first["stage"] == "customer"
    status, second = await call(bot, "POST", "/orders", headers, {**body, "order_id": "SO-M2"})
    assert status == 201 and second["purchase"] == "repeat" and second["stage"] == "repeat"
    async with bot.runtime.sessions() as session:
        stages = dict((await session.execute(select(Customer.id, Customer.stage))).tuples().all())
    assert stages == {keep.id: "repeat", absorbed.id: "lead"}


async def test_a_repeat_purchase_is_known_by_an_earlier_order_when_the_stage_does_not_say_so(start_bot
                                                                                              ) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot(growth={"purchase_stages": ["loyal"]})  # "customer" is not a purchase stage here
    shop, erp = await key_for(bot), await key_for(bot, "write", "erp")
    await customer(bot, "wm_two_shops")
    status, first = await call(bot, "POST", "/orders", shop, order("SO-A", "wm_two_shops"))
    assert status == 201 and first["purchase"] == "first" and first["stage"] == "customer"
    status, second = await call(bot, "POST", "/orders", erp, order("ERP-B", "wm_two_shops"))
    assert status == 201 and second["purchase"] == "repeat" and second["stage"] == "repeat"


async def test_a_key_revoked_by_another_process_is_refused_once_it_is_no_longer_trusted(start_bot
                                                                                       ) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot()
    headers = await key_for(bot, "read", "bi")
    assert (await bot.client.get(f"{API}/campaigns", headers=headers)).status == 200
    await _revoke_as_another_process_would(bot)
    assert (await bot.client.get(f"{API}/campaigns", headers=headers)).status == 200  # trusted for a while
    bot.client.app[API_LIMITS].key_trusted_s = 0  # the while is over
    refused = await bot.client.get(f"{API}/campaigns", headers=headers)
    assert refused.status == 401 and (await refused.json())["error"]["message"] == "unknown or revoked API key"


async def _revoke_as_another_process_would(bot: Bot) -> None:
    """`scrm apikeys revoke` in its own process: the row changes, this process is not told."""
    async with bot.runtime.sessions.begin() as session:
        await session.execute(update(ApiKey).values(revoked_at=utcnow()))


async def test_an_enrolment_made_in_a_turn_is_in_its_facts_and_an_order_ends_what_its_stage_ends(
        start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot()
    headers = await key_for(bot)
    await published(bot, tmp_path, until_bought=BOUGHT_EXITS)
    enrolled, other = await customer(bot, "wm_enrolled"), await customer(bot, "wm_not_enrolled")
    async with bot.runtime.sessions.begin() as session:
        turn = Turn(session, InboundEvent("kf", "message", "m1", "wm_enrolled"),
                    await session.get_one(Customer, enrolled.id), facts=CustomerFacts(None, False, False, False))
        await bot.runtime.domain.nurture.signal(turn, "tag", "连衣裙")  # enrols: the turn's facts now say so
        assert turn.facts is not None and turn.facts.running_enrolments
    for buyer in ("wm_enrolled", "wm_not_enrolled"):
        assert (await call(bot, "POST", "/orders", headers, order(f"SO-{buyer}", buyer)))[0] == 201
    async with bot.runtime.sessions() as session:
        rows = (await session.execute(select(Enrolment.customer_id, Enrolment.status, Enrolment.exit_reason))).all()
    assert [tuple(row) for row in rows] == [(enrolled.id, "exited", "stage:customer")] and other.id != enrolled.id
