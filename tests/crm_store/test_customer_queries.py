"""Finding customers by tag, stage and text, and one customer's card."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from crm_store.customer_queries import customer_card, find_customers, leaderboard
from crm_store.customers import Profile, record, resolve_customer
from crm_store.db import create_engine, session_factory
from crm_store.growth_settings import SocialWeights
from crm_store.lifecycle import Lifecycle, set_stage
from crm_store.lifecycle_settings import LifecycleSettings
from crm_store.models import Customer
from crm_store.social import bump
from crm_store.tags import add_tags
from tests.conftest import Backend

Sessions = async_sessionmaker[AsyncSession]
LIFECYCLE = Lifecycle(LifecycleSettings())


@pytest.fixture
async def engine(backend: Backend) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(backend.store_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> Sessions:
    return session_factory(engine)


async def make_customer(
    sessions: Sessions,
    external_id: str,
    name: str,
    *,
    tags: tuple[str, ...] = (),
    stage: str = "lead",
    said: str = "",
    seen_minutes_ago: int = 0,
) -> int:
    async with sessions() as session, session.begin():
        customer = await resolve_customer(session, "wecom", external_id, Profile(name))
        customer.last_seen_at = datetime.now(UTC) - timedelta(minutes=seen_minutes_ago)
        await add_tags(session, customer, tags, "test")
        await set_stage(session, customer, stage, "test", LIFECYCLE, force=True)
        if said:
            await record(session, customer.id, "inbound.message", {"channel": "kf", "text": said})
    return customer.id


@pytest.fixture
async def population(sessions: Sessions) -> dict[str, int]:
    return {
        "may": await make_customer(
            sessions,
            "wmMay",
            "阿May",
            tags=("VIP", "高意向"),
            stage="interested",
            said="想问一下 Price 多少",
            seen_minutes_ago=5,
        ),
        "li": await make_customer(
            sessions, "wmLi", "小李", tags=("VIP",), stage="interested", seen_minutes_ago=1
        ),
        "wang": await make_customer(
            sessions, "wmWang", "王姐", tags=("VIP", "高意向"), said="100%满意", seen_minutes_ago=10
        ),
    }


async def test_find_by_tags_stage_and_text_together(sessions: Sessions, population: dict[str, int]) -> None:
    async with sessions() as session:
        both_tags = await find_customers(session, tags=["VIP", "高意向"])
        in_stage = await find_customers(session, tags=["VIP", "高意向"], stage="interested")
        by_text = await find_customers(session, text="price")
        by_identity = await find_customers(session, text="WMLI")
        by_name = await find_customers(session, text="may", stage="interested")
        percent = await find_customers(session, text="%")
        nobody = await find_customers(session, tags=["VIP"], stage="loyal")
    assert [row.id for row in both_tags] == [
        population["may"],
        population["wang"],
    ]  # most recently seen first
    assert [row.display_name for row in in_stage] == ["阿May"]
    assert sorted(in_stage[0].tags) == sorted(("VIP", "高意向"))
    assert in_stage[0].identities == ("wecom:wmMay",) and in_stage[0].stage == "interested"
    assert [row.id for row in by_text] == [population["may"]]
    assert [row.id for row in by_identity] == [population["li"]]
    assert [row.id for row in by_name] == [population["may"]]
    assert [row.id for row in percent] == [population["wang"]]  # "%" is text, not a wildcard
    assert nobody == []


async def test_find_pages_and_leaves_out_merged_customers(
    sessions: Sessions, population: dict[str, int]
) -> None:
    async with sessions() as session, session.begin():
        (await session.get_one(Customer, population["li"])).merged_into_id = population["may"]
    async with sessions() as session:
        first = await find_customers(session, limit=1)
        second = await find_customers(session, limit=1, offset=1)
        rest = await find_customers(session, offset=2)
    assert [row.id for row in first + second] == [population["may"], population["wang"]]
    assert rest == []


async def test_a_page_costs_three_queries_whatever_its_size(
    engine: AsyncEngine, sessions: Sessions, population: dict[str, int]
) -> None:
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        async with sessions() as session:
            rows = await find_customers(session)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert len(rows) == 3
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 3


async def test_card_shows_stage_history_and_timeline_and_follows_merges(
    sessions: Sessions, population: dict[str, int]
) -> None:
    async with sessions() as session, session.begin():
        may = await session.get_one(Customer, population["may"])
        may.owner_userid = "rep_li"
        await set_stage(session, may, "customer", "flow:checkout/paid", LIFECYCLE)
        (await session.get_one(Customer, population["li"])).merged_into_id = may.id
    async with sessions() as session:
        card = await customer_card(session, population["li"], LIFECYCLE, timeline_limit=3)
        missing = await customer_card(session, 999_999, LIFECYCLE)
    assert missing is None
    assert card is not None and card.row.id == population["may"]
    assert card.stage_label == "成交" and card.owner_userid == "rep_li" and not card.marketing_opt_out
    assert [(step.from_stage, step.to_stage, step.reason) for step in card.stage_history] == [
        ("lead", "interested", "test"),
        ("interested", "customer", "flow:checkout/paid"),
    ]
    assert [entry.kind for entry in card.timeline] == ["stage.changed", "inbound.message", "stage.changed"]
    assert card.timeline[1].data["text"] == "想问一下 Price 多少"


async def give_social(sessions: Sessions, counts: dict[int, int]) -> None:
    """`counts` friends each (score = friends, with weight 1)."""
    async with sessions() as session, session.begin():
        for customer_id, friends in counts.items():
            for _ in range(friends):
                await bump(session, [customer_id], "friends", SocialWeights())


async def test_find_sorts_by_social_score_and_counts_no_row_as_zero(
    sessions: Sessions, population: dict[str, int]
) -> None:
    await give_social(sessions, {population["wang"]: 2, population["li"]: 1})
    async with sessions() as session:
        by_social = await find_customers(session, sort="social")
        at_least_one = await find_customers(session, min_social=1)
        at_least_two = await find_customers(session, min_social=2, tags=["VIP"])
        everyone = await find_customers(session, min_social=0)
        page = await find_customers(session, sort="social", limit=1, offset=1)
    assert [(row.id, row.social) for row in by_social] == [
        (population["wang"], 2.0), (population["li"], 1.0), (population["may"], 0.0)]
    assert [row.id for row in at_least_one] == [population["li"], population["wang"]]  # last seen first
    assert [row.id for row in at_least_two] == [population["wang"]]
    assert len(everyone) == 3
    assert [row.id for row in page] == [population["li"]]


async def test_a_page_sorted_by_social_value_still_costs_three_queries(
    engine: AsyncEngine, sessions: Sessions, population: dict[str, int]
) -> None:
    await give_social(sessions, {population["li"]: 3})
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        async with sessions() as session:
            rows = await find_customers(session, sort="social", min_social=0)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert [row.social for row in rows] == [3.0, 0.0, 0.0]
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 3 and "social_stats" in selects[0].lower()


async def test_card_has_growth_and_leaderboard_ranks_unmerged_customers(
    sessions: Sessions, population: dict[str, int]
) -> None:
    await give_social(sessions, {population["may"]: 2, population["li"]: 5})
    async with sessions() as session, session.begin():
        (await session.get_one(Customer, population["li"])).merged_into_id = population["wang"]
    async with sessions() as session:
        card = await customer_card(session, population["may"], LIFECYCLE)
        bare = await customer_card(session, population["wang"], LIFECYCLE)
        board = await leaderboard(session, "friends", 10)
    assert card is not None and card.row.social == 2.0 and card.growth.counters["friends"] == 2
    assert (card.growth.inviter_id, card.growth.invite_code, card.growth.groups, card.growth.rewards) == (
        None, None, [], [])
    assert bare is not None and bare.growth.score == 0.0 and set(bare.growth.counters.values()) == {0}
    assert [(row.customer_id, row.name, row.friends) for row in board] == [(population["may"], "阿May", 2)]
