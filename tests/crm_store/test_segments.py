"""Segments: each filter alone and together, merged and opted-out customers, checks that name every problem."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from crm_store.customers import Profile, resolve_customer
from crm_store.db import create_engine, session_factory
from crm_store.growth_models import EntryChannel, SocialStats
from crm_store.lifecycle import Lifecycle
from crm_store.lifecycle_settings import LifecycleSettings
from crm_store.segments import (
    Segment,
    SegmentError,
    checked_segment,
    count_and_sample,
    segment_query,
    tag_ids,
)
from crm_store.tags import add_tags, sync_catalog
from tests.conftest import Backend

Sessions = async_sessionmaker[AsyncSession]
LIFECYCLE = Lifecycle(LifecycleSettings())
CATALOG = {"意向": ("高意向", "询价"), "营销": ("已退订",)}


@dataclass(frozen=True)
class Person:
    name: str
    tags: tuple[str, ...] = ()
    stage: str = "lead"
    seen_days_ago: float = 0
    reach: tuple[str, float] | None = None  # channel, hours ago
    channel: str = ""
    social: float | None = None
    opted_out: bool = False


PEOPLE = (
    Person("a", ("高意向", "询价"), "interested", 0, ("kf", 1), "ch_A", 30),
    Person("b", ("高意向",), "lead", 10, ("oa", 72), "", 5),
    Person("c", ("询价", "已退订"), "customer", 40, None, "", None, True),
    Person("d", (), "lead", 1, ("wecom", 1), "ch_B"),
)


@pytest.fixture
async def engine(backend: Backend) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(backend.store_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def sessions(engine: AsyncEngine) -> Sessions:
    return session_factory(engine)


@pytest.fixture
async def people(sessions: Sessions) -> dict[str, int]:
    """Four customers, and one merged into `a` who carries every tag (never in any segment)."""
    now = datetime.now(UTC)
    ids: dict[str, int] = {}
    async with sessions() as session, session.begin():
        await sync_catalog(session, CATALOG)
        channels = {code: EntryChannel(code=code, name=code, kind="kf_link") for code in ("ch_A", "ch_B")}
        session.add_all(channels.values())
        await session.flush()
        for person in PEOPLE:
            customer = await resolve_customer(session, "wecom", f"wm_{person.name}", Profile(person.name))
            customer.stage, customer.marketing_opt_out = person.stage, person.opted_out
            customer.last_seen_at = now - timedelta(days=person.seen_days_ago)
            if person.reach:
                channel, hours = person.reach
                customer.reach = {"channel": channel, "sender": "x", "at": int(time.time() - hours * 3600)}
            if person.channel:
                customer.entry_channel_id = channels[person.channel].id
            await add_tags(session, customer, person.tags, "test")
            await session.flush()
            if person.social is not None:
                session.add(SocialStats(customer_id=customer.id, score=person.social))
            ids[person.name] = customer.id
        merged = await resolve_customer(session, "wecom", "wm_m", Profile("m"))
        await add_tags(session, merged, ["高意向", "询价"], "test")
        merged.merged_into_id, merged.stage = ids["a"], "lead"
    return ids


async def members(sessions: Sessions, people: dict[str, int], segment: Segment, **options: bool) -> set[str]:
    """Who the segment holds; the same with its tags named, given by id, or some of them by id only."""
    names = {customer_id: name for name, customer_id in people.items()}
    async with sessions() as session:
        ids = await tag_ids(session, segment)
        found = set(await session.scalars(segment_query(segment, **options)))
        by_id = set(await session.scalars(segment_query(segment, ids=ids, **options)))
        some = set(await session.scalars(segment_query(segment, ids=dict(list(ids.items())[:1]), **options)))
    assert found == by_id == some
    assert found <= set(names), "a merged customer is never in a segment"
    return {names[customer_id] for customer_id in found}


@pytest.mark.parametrize(("segment", "expected"), [
    (Segment(), {"a", "b", "c", "d"}),
    (Segment(tags=("高意向",)), {"a", "b"}),
    (Segment(tags=("高意向", "询价")), {"a"}),
    (Segment(any_tags=("询价", "已退订")), {"a", "c"}),
    (Segment(not_tags=("高意向",)), {"c", "d"}),
    (Segment(stages=("lead",)), {"b", "d"}),
    (Segment(stages=("lead", "customer")), {"b", "c", "d"}),
    (Segment(social_min=10), {"a"}),
    (Segment(social_min=0), {"a", "b", "c", "d"}),
    (Segment(active_within_days=7), {"a", "d"}),
    (Segment(inactive_for_days=30), {"c"}),
    (Segment(channel="ch_A"), {"a"}),
    (Segment(reachable=True), {"a"}),
    (Segment(tags=("高意向",), active_within_days=7, reachable=True), {"a"}),
    (Segment(any_tags=("询价",), not_tags=("已退订",), stages=("interested",)), {"a"}),
], ids=lambda value: value.describe().replace(" ", "_") if isinstance(value, Segment) else "")
async def test_each_filter_and_filters_together(sessions: Sessions, people: dict[str, int], segment: Segment,
                                                expected: set[str]) -> None:
    assert await members(sessions, people, segment) == expected


async def test_customers_who_opted_out_of_marketing_can_be_left_out(sessions: Sessions,
                                                                     people: dict[str, int]) -> None:
    segment = Segment(any_tags=("询价",))
    assert await members(sessions, people, segment) == {"a", "c"}
    assert await members(sessions, people, segment, exclude_opted_out=True) == {"a"}


async def test_count_and_sample_gives_the_newest_with_their_tags(sessions: Sessions, people: dict[str, int]) -> None:
    async with sessions() as session:
        count, sample = await count_and_sample(session, Segment(), sample=2)
        none, empty = await count_and_sample(session, Segment(tags=("已退订",), stages=("lead",)))
    assert count == 4 and [c.id for c in sample] == [people["d"], people["c"]]
    assert sample[1].name == "c" and sorted(sample[1].tags) == ["已退订", "询价"] and sample[1].stage == "customer"
    assert (none, empty) == (0, [])


async def test_checked_segment_turns_stage_labels_into_ids(sessions: Sessions, people: dict[str, int]) -> None:
    async with sessions() as session:
        checked = await checked_segment(session, Segment(tags=("高意向",), stages=("意向", "lead")), LIFECYCLE)
    assert checked.stages == ("interested", "lead")
    assert await members(sessions, people, checked) == {"a", "b"}


async def test_checked_segment_names_every_problem(sessions: Sessions, people: dict[str, int]) -> None:
    bad = Segment(tags=("高意象",), not_tags=("VIP",), stages=("意象",), channel="ch_nope", active_within_days=-1)
    async with sessions() as session:
        with pytest.raises(SegmentError) as caught:
            await checked_segment(session, bad, LIFECYCLE)
    text = str(caught.value)
    assert "tag '高意象' is not in the tag catalog (did you mean 高意向?)" in text
    assert "tag 'VIP' is not in the tag catalog" in text
    assert "unknown stage '意象'" in text
    assert "no entry channel 'ch_nope'" in text
    assert "active_within_days: may not be negative (-1)" in text


async def test_checked_segment_refuses_what_nobody_can_match(sessions: Sessions, people: dict[str, int]) -> None:
    async with sessions() as session:
        with pytest.raises(SegmentError, match="both active within 7 days and inactive for 30 days"):
            await checked_segment(session, Segment(active_within_days=7, inactive_for_days=30), LIFECYCLE)
        with pytest.raises(SegmentError, match="both required and excluded: 高意向"):
            await checked_segment(session, Segment(tags=("高意向",), not_tags=("高意向",)), LIFECYCLE)


def test_a_segment_is_stored_as_plain_data_and_read_back() -> None:
    segment = Segment(tags=("高意向",), stages=("interested",), social_min=2.5, reachable=True)
    data = segment.to_data()
    assert data == {"tags": ["高意向"], "stages": ["interested"], "social_min": 2.5, "reachable": True}
    assert Segment.from_data(data | {"unknown": 1}) == segment
    assert segment.describe() == "tags 高意向, stage interested, social ≥ 2.5, reachable now"
    assert Segment().describe() == "every customer"
