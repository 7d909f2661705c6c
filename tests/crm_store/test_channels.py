"""Entry channels in the store: first touch wins, exact add counts under concurrency, caps, report numbers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import IntegrityError

from crm_store.channels import (
    ChannelError,
    ChannelSpec,
    add_channel,
    brand_day,
    channel_by_code,
    channel_report,
    list_channels,
    record_arrival,
    rep_adds,
    reps_under_cap,
    validate_spec,
)
from crm_store.customers import Profile, resolve_customer
from crm_store.growth_models import EntryChannel
from crm_store.models import Customer
from tests.conftest import Backend, Sessions

DAY = "2024-06-01"
PURCHASE = ["customer", "repeat", "loyal"]
POSTER = ChannelSpec("门店海报", "contact_way", reps=("zhang", "li", "wang"), daily_cap=2, cost_cents=30_000)


async def new_channel(sessions: Sessions, code: str, spec: ChannelSpec = POSTER) -> EntryChannel:
    async with sessions() as session, session.begin():
        return await add_channel(session, spec, code, f"cfg_{code}", f"https://qr/{code}", spec.reps)


async def new_customer(sessions: Sessions, external_id: str, stage: str = "lead") -> Customer:
    async with sessions() as session, session.begin():
        customer = await resolve_customer(session, "wecom", external_id, Profile(external_id))
        customer.stage = stage
    return customer


async def arrive(sessions: Sessions, channel: EntryChannel, customer: Customer, rep: str = "") -> bool:
    async with sessions() as session, session.begin():
        live = await session.get_one(Customer, customer.id)
        return await record_arrival(session, channel, live, rep, DAY)


def test_validate_spec_names_every_problem_at_once() -> None:
    with pytest.raises(ChannelError) as caught:
        validate_spec(ChannelSpec(" ", "contact_way", daily_cap=-1, cost_cents=-5, kf_account="wk1"))
    problems = caught.value.problems
    assert len(problems) == 5, problems
    assert any("name is empty" in p for p in problems) and any("at least one rep" in p for p in problems)
    assert any("daily cap is negative" in p for p in problems) and any("cost is negative" in p for p in problems)
    assert any("kf account is for kf_link" in p for p in problems)
    with pytest.raises(ChannelError) as caught:
        validate_spec(ChannelSpec("链接", "kf_link", reps=("zhang",), daily_cap=3))
    assert len(caught.value.problems) == 3  # reps, a cap, and no kf account
    with pytest.raises(ChannelError, match="unknown kind 'poster'"):
        validate_spec(ChannelSpec("海报", "poster"))
    with pytest.raises(ChannelError, match="reps named twice: zhang"):
        validate_spec(ChannelSpec("海报", "contact_way", reps=("zhang", "zhang")))
    validate_spec(ChannelSpec("链接", "kf_link", kf_account="wkAbc"))
    validate_spec(POSTER)


def test_brand_day_is_the_date_in_the_brands_time_zone() -> None:
    evening_utc = datetime(2024, 6, 1, 17, 0, tzinfo=UTC)
    assert brand_day("Asia/Shanghai", evening_utc) == "2024-06-02"
    assert brand_day("UTC", evening_utc) == "2024-06-01"
    assert brand_day("Asia/Shanghai", datetime(2024, 6, 1, 15, 59)) == "2024-06-01"  # naive: UTC


async def test_codes_are_unique_and_short(sessions: Sessions) -> None:
    await new_channel(sessions, "ch_AAAA2222")
    with pytest.raises(IntegrityError):
        await new_channel(sessions, "ch_AAAA2222")
    with pytest.raises(ChannelError, match="1–30 characters"):
        await new_channel(sessions, "ch_" + "A" * 28)
    async with sessions() as session:
        found = await channel_by_code(session, "ch_AAAA2222")
        assert found is not None and found.reps == ["zhang", "li", "wang"] and found.rota == found.reps
        assert await channel_by_code(session, "ch_NOPE") is None


async def test_first_touch_wins_and_every_add_is_counted(sessions: Sessions) -> None:
    poster, flyer = await new_channel(sessions, "ch_POSTER22"), await new_channel(sessions, "ch_FLYER222")
    customer = await new_customer(sessions, "wmFirst")
    assert await arrive(sessions, poster, customer, "zhang") is True
    assert await arrive(sessions, flyer, customer, "li") is False
    assert await arrive(sessions, poster, customer, "zhang") is False
    async with sessions() as session:
        assert (await session.get_one(Customer, customer.id)).entry_channel_id == poster.id
        assert await rep_adds(session, poster, DAY) == {"zhang": 2}
        assert await rep_adds(session, flyer, DAY) == {"li": 1}
        assert await rep_adds(session, poster, "2024-06-02") == {}


async def test_concurrent_arrivals_count_exactly_and_attribute_once(sessions: Sessions, backend: Backend) -> None:
    poster, flyer = await new_channel(sessions, "ch_RACE2222"), await new_channel(sessions, "ch_RACE3333")
    customers = [await new_customer(sessions, f"wmRace{n}") for n in range(12)]
    everyone_in = asyncio.Barrier(len(customers) + 2)

    async def arrive_together(channel: EntryChannel, customer: Customer) -> bool:
        async with sessions() as session, session.begin():
            live = await session.get_one(Customer, customer.id)  # read before anyone writes
            if backend.name == "postgres":  # SQLite takes the write lock at BEGIN: no overlap to wait for
                await everyone_in.wait()
            return await record_arrival(session, channel, live, "zhang", DAY)

    twice = customers[0]
    results = await asyncio.gather(
        *(arrive_together(poster, customer) for customer in customers),
        arrive_together(flyer, twice), arrive_together(poster, twice),
    )
    assert results[1:12] == [True] * 11
    assert sorted(results[0::12] + results[13:]) == [False, False, True]  # one of three arrivals of `twice` won
    async with sessions() as session:
        assert await rep_adds(session, poster, DAY) == {"zhang": 13}
        assert await rep_adds(session, flyer, DAY) == {"zhang": 1}
        reports = {report.code: report for report in await list_channels(session, PURCHASE)}
    assert reports["ch_RACE2222"].adds + reports["ch_RACE3333"].adds == 12


async def test_reps_under_cap_keep_rota_order(sessions: Sessions) -> None:
    capped = await new_channel(sessions, "ch_CAPPED22")
    uncapped = await new_channel(sessions, "ch_FREE2222", ChannelSpec("免费", "contact_way", reps=("li", "zhang")))
    for n, rep in enumerate(["li", "li", "zhang", "wang", "wang", "wang"]):
        await arrive(sessions, capped, await new_customer(sessions, f"wmCap{n}"), rep)
        await arrive(sessions, uncapped, await new_customer(sessions, f"wmFree{n}"), rep)
    async with sessions() as session:
        assert await reps_under_cap(session, capped, DAY) == ["zhang"]  # li 2 and wang 3 reached the cap of 2
        assert await reps_under_cap(session, capped, "2024-06-02") == ["zhang", "li", "wang"]
        assert await reps_under_cap(session, uncapped, DAY) == ["li", "zhang"]


async def test_report_counts_adds_conversions_and_costs(sessions: Sessions) -> None:
    poster = await new_channel(sessions, "ch_REPORT22")
    empty = await new_channel(sessions, "ch_EMPTY222", ChannelSpec("空", "oa_qr"))
    lead, buyer, loyal = [await new_customer(sessions, f"wm{name}", stage)
                          for name, stage in [("Lead", "lead"), ("Buyer", "customer"), ("Loyal", "loyal")]]
    for customer, rep in [(lead, "zhang"), (buyer, "zhang"), (loyal, "li")]:
        await arrive(sessions, poster, customer, rep)
    duplicate = await new_customer(sessions, "wmDuplicate", "customer")
    await arrive(sessions, poster, duplicate)
    async with sessions() as session, session.begin():
        (await session.get_one(Customer, duplicate.id)).merged_into_id = lead.id  # merged away: not a second add
    async with sessions() as session:
        fresh = await channel_by_code(session, "ch_REPORT22")
        assert fresh is not None
        report = await channel_report(session, fresh, PURCHASE, DAY)
        listed = await list_channels(session, PURCHASE)
    assert (report.adds, report.conversions, report.conversion_rate) == (3, 2, 0.6667)
    assert (report.cost_yuan, report.cost_per_add, report.cost_per_conversion) == (300.0, 100.0, 150.0)
    assert [(rep.userid, rep.adds, rep.cap, rep.in_rota) for rep in report.rep_adds] == [
        ("zhang", 2, 2, True), ("li", 1, 2, True), ("wang", 0, 2, True)]
    assert [(r.code, r.adds, r.conversions) for r in listed] == [("ch_REPORT22", 3, 2), ("ch_EMPTY222", 0, 0)]
    assert listed[0].cost_per_conversion == 150.0 and listed[0].rep_adds == ()
    assert (listed[1].conversion_rate, listed[1].cost_per_add, listed[1].cost_per_conversion) == (None, None, None)
    assert empty.kind == "oa_qr" and empty.rota == []
