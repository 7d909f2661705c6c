"""Lifecycle stages: allowed, refused and forced moves, churn and return, the funnel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from crm_store.customers import Profile, merge_customers, resolve_customer, timeline
from crm_store.lifecycle import (
    FunnelRow,
    Lifecycle,
    StageNotAllowed,
    churn,
    funnel,
    return_from_churn,
    set_stage,
    transitions,
)
from crm_store.lifecycle_settings import LifecycleSettings
from crm_store.models import Customer, StageChange
from crm_store.reports import funnel_report
from tests.conftest import Sessions

LIFECYCLE = Lifecycle(LifecycleSettings())


async def customer_through(sessions: Sessions, name: str, *stages: str) -> int:
    """A customer moved through `stages` (forced: the population, not the rules, is under test)."""
    async with sessions() as session, session.begin():
        customer = await resolve_customer(session, "wecom", f"wm{name}", Profile(name))
        for stage in stages:
            await set_stage(session, customer, stage, f"test:{name}", LIFECYCLE, force=True)
    return customer.id


def test_stages_resolve_by_id_or_label_and_unknown_names_list_the_stages() -> None:
    assert LIFECYCLE.resolve("意向") == "interested" and LIFECYCLE.resolve(" Customer ") == "customer"
    assert LIFECYCLE.label("loyal") == "忠诚" and LIFECYCLE.label("retired_stage") == "retired_stage"
    with pytest.raises(ValueError, match=r"unknown stage 'vip'.*lead \(潜在\).*churned \(流失\)"):
        LIFECYCLE.resolve("vip")


def test_leaving_churned_is_always_allowed_and_other_moves_follow_the_settings() -> None:
    assert LIFECYCLE.allowed("lead", "interested") and not LIFECYCLE.allowed("lead", "loyal")
    assert LIFECYCLE.allowed("churned", "loyal") and LIFECYCLE.allowed("churned", "lead")
    assert not LIFECYCLE.allowed("repeat", "lead")


async def test_set_stage_allowed_refused_and_forced(sessions: Sessions) -> None:
    customer_id = await customer_through(sessions, "A")
    async with sessions() as session, session.begin():
        customer = await session.get_one(Customer, customer_id)
        assert await set_stage(session, customer, "意向", "flow:welcome/budget", LIFECYCLE)
        assert not await set_stage(session, customer, "interested", "again", LIFECYCLE)
        with pytest.raises(StageNotAllowed, match=r"'interested' -> 'repeat'.*lead, customer, churned"):
            await set_stage(session, customer, "repeat", "flow:oops", LIFECYCLE)
        assert customer.stage == "interested"
        assert await set_stage(session, customer, "repeat", "admin:li fixed it", LIFECYCLE, force=True)
    async with sessions() as session:
        customer = await session.get_one(Customer, customer_id)
        moves = (
            await session.execute(
                select(StageChange.from_stage, StageChange.to_stage, StageChange.reason)
                .where(StageChange.customer_id == customer_id)
                .order_by(StageChange.id)
            )
        ).all()
        events = [e.data for e in reversed(await timeline(session, customer_id)) if e.kind == "stage.changed"]
    assert customer.stage == "repeat" and customer.stage_changed_at is not None
    assert [tuple(move) for move in moves] == [
        ("lead", "interested", "flow:welcome/budget"),
        ("interested", "repeat", "admin:li fixed it"),
    ]
    assert events == [
        {"from": "lead", "to": "interested", "reason": "flow:welcome/budget"},
        {"from": "interested", "to": "repeat", "reason": "admin:li fixed it"},
    ]


async def test_churn_and_return_to_the_stage_before_it(sessions: Sessions) -> None:
    buyer = await customer_through(sessions, "Buyer", "interested", "customer")
    lead = await customer_through(sessions, "Lead")
    async with sessions() as session, session.begin():
        customer = await session.get_one(Customer, buyer)
        assert not await return_from_churn(session, customer, "not churned", LIFECYCLE)
        assert await churn(session, customer, "contact deleted", LIFECYCLE)
        assert not await churn(session, customer, "deleted twice", LIFECYCLE)
        assert await return_from_churn(session, customer, "added the rep again", LIFECYCLE)
        assert customer.stage == "customer"
        unmoved = await session.get_one(Customer, lead)
        unmoved.stage = "churned"  # churned before stage history was kept: back to the start
        assert await return_from_churn(session, unmoved, "came back", LIFECYCLE)
        assert unmoved.stage == "lead"


async def make_population(sessions: Sessions) -> dict[str, int]:
    ids = {
        "only_lead": await customer_through(sessions, "c1"),
        "interested": await customer_through(sessions, "c2", "interested"),
        "bought": await customer_through(sessions, "c3", "interested", "customer"),
        "repeat": await customer_through(sessions, "c4", "customer", "repeat"),
        "churned": await customer_through(sessions, "c5", "interested", "churned"),
    }
    merged = await customer_through(sessions, "c6", "interested", "customer", "loyal")
    async with sessions() as session, session.begin():
        (await session.get_one(Customer, merged)).merged_into_id = ids[
            "only_lead"
        ]  # a duplicate: not counted
    return ids


async def test_funnel_counts_current_and_reached_with_conversions(sessions: Sessions) -> None:
    await make_population(sessions)
    async with sessions() as session:
        rows = await funnel(session, LIFECYCLE)
    assert rows == [
        FunnelRow("lead", "潜在", current=1, reached=5, conversion_from_previous=None),
        FunnelRow("interested", "意向", current=1, reached=3, conversion_from_previous=3 / 5),
        FunnelRow("customer", "成交", current=1, reached=2, conversion_from_previous=2 / 3),
        FunnelRow("repeat", "复购", current=1, reached=1, conversion_from_previous=1 / 2),
        FunnelRow("loyal", "忠诚", current=0, reached=0, conversion_from_previous=0.0),
        FunnelRow("churned", "流失", current=1, reached=1, conversion_from_previous=None),
    ]


async def test_stages_reached_follow_moves_and_merges_and_agree_with_the_stage_history(sessions: Sessions) -> None:
    ids = await make_population(sessions)
    async with sessions() as session:
        history = {row.stage: row.reached for row in await funnel(session, LIFECYCLE)}
        report = await funnel_report(session, None, None, lifecycle=LIFECYCLE)
        churned = await session.get_one(Customer, ids["churned"])
    assert {row.stage: row.reached for row in report.stages} == history  # counted without the history
    assert churned.stages_reached == "churned,interested,lead"
    async with sessions() as session, session.begin():
        keep, absorb = await session.get_one(Customer, ids["only_lead"]), await session.get_one(Customer, ids["bought"])
        assert keep.stages_reached == ""  # never moved: its current stage is all it has reached
        await merge_customers(session, keep, absorb)
        assert keep.stages_reached == "customer,interested,lead" and keep.stage == "lead"
    async with sessions() as session:
        merged = await funnel_report(session, None, None, lifecycle=LIFECYCLE)
        history = {row.stage: row.reached for row in await funnel(session, LIFECYCLE)}
    assert {row.stage: row.reached for row in merged.stages} == history
    assert merged.new_customers == 4


async def test_funnel_since_counts_only_entries_in_the_window(sessions: Sessions) -> None:
    ids = await make_population(sessions)
    month_ago = datetime.now(UTC) - timedelta(days=30)
    async with sessions() as session, session.begin():
        await session.execute(
            update(StageChange).where(StageChange.customer_id == ids["repeat"]).values(created_at=month_ago)
        )
        await session.execute(
            update(Customer).where(Customer.id == ids["repeat"]).values(created_at=month_ago)
        )
    async with sessions() as session:
        recent = {
            row.stage: (row.current, row.reached)
            for row in await funnel(session, LIFECYCLE, since=month_ago + timedelta(days=23))
        }
        nothing = await funnel(session, LIFECYCLE, since=datetime.now(UTC) + timedelta(hours=1))
    assert recent["lead"] == (1, 4) and recent["customer"] == (1, 1) and recent["repeat"] == (1, 0)
    assert [row.reached for row in nothing] == [0] * 6 and nothing[0].current == 1


async def test_transitions_count_customers_per_move(sessions: Sessions) -> None:
    await make_population(sessions)
    async with sessions() as session:
        moves = await transitions(session)
    assert moves == [
        ("lead", "interested", 3),  # the most frequent first, then by from and to
        ("customer", "repeat", 1),
        ("interested", "churned", 1),
        ("interested", "customer", 1),
        ("lead", "customer", 1),
    ]
