"""Migrations over data already in the store: what 0008 and 0009 fill in and convert, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.customers import record
from crm_store.db import create_engine, session_factory
from crm_store.lifecycle import Lifecycle, funnel
from crm_store.lifecycle_settings import LifecycleSettings
from crm_store.migrate import upgrade_async
from crm_store.models import TimelineEvent
from crm_store.reports import funnel_report
from crm_store.reports_bot import nlu_report
from tests.conftest import store_at_revision

LIFECYCLE = Lifecycle(LifecycleSettings())
BEFORE = """
INSERT INTO customers (id, display_name, created_at, stage) VALUES
  (1, 'never moved', '2026-11-02 10:00:00', 'lead'),
  (2, 'bought', '2026-11-02 10:00:00', 'customer'),
  (3, 'back and forth', '2026-11-10 10:00:00', 'interested');
INSERT INTO stage_changes (customer_id, from_stage, to_stage, reason, created_at) VALUES
  (2, 'lead', 'interested', 'asked', '2026-11-03 10:00:00'),
  (2, 'interested', 'customer', 'paid', '2026-11-04 10:00:00'),
  (3, 'lead', 'interested', 'asked', '2026-11-11 10:00:00'),
  (3, 'interested', 'lead', 'cooled', '2026-11-12 10:00:00'),
  (3, 'lead', 'interested', 'asked again', '2026-11-13 10:00:00');
INSERT INTO timeline_events (customer_id, kind, data, created_at) VALUES
  (1, 'inbound.message', '{"text": "asdf", "intent": "nlu_fallback", "confidence": 0.2, "intent_source": "rasa"}',
   '2026-11-02 10:00:00'),
  (2, 'inbound.message', '{"text": "多少钱", "intent": "ask_price", "confidence": 0.9, "intent_source": "rasa"}',
   '2026-11-02 10:00:00'),
  (3, 'inbound.message', '{"text": "a\\u0000b \\\\u0000 typed"}', '2026-11-10 10:00:00');
"""


async def _texts(session: AsyncSession, customer_id: int) -> list[dict[str, object]]:
    return list(await session.scalars(select(TimelineEvent.data).where(TimelineEvent.customer_id == customer_id)
                                      .order_by(TimelineEvent.id)))


@pytest.fixture(params=["sqlite", "postgres"])
async def store_at_0007(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A store migrated to 0007 (before stages reached and the JSONB timeline) holding BEFORE's rows."""
    async with store_at_revision(request.param, tmp_path, "0007") as url:
        engine = create_engine(url)
        async with engine.begin() as connection:
            if request.param == "postgres":  # the times below are UTC, as the store keeps them
                await connection.execute(text("SET LOCAL TIME ZONE 'UTC'"))
            for statement in BEFORE.split(";"):
                if statement.strip():
                    await connection.execute(text(statement))
        await engine.dispose()
        yield url


async def test_0008_fills_in_stages_reached_from_the_history_and_keeps_the_timeline_readable(
        store_at_0007: str) -> None:
    await upgrade_async(store_at_0007)
    engine = create_engine(store_at_0007)
    try:
        async with session_factory(engine)() as session:
            reached = dict((await session.execute(text("SELECT id, stages_reached FROM customers"))).tuples().all())
            report = await funnel_report(session, None, None, lifecycle=LIFECYCLE)
            history = {row.stage: row.reached for row in await funnel(session, LIFECYCLE)}
            nlu = await nlu_report(session, None, None)
            texts = await _texts(session, customer_id=3)
            await record(session, 3, "inbound.message", {"text": "c\x00d", "from\x00": ["e\x00"]})
            await session.commit()
            texts += await _texts(session, customer_id=3)
            xacts = list(await session.scalars(select(TimelineEvent.xact).order_by(TimelineEvent.id)))
            if engine.dialect.name == "postgresql":
                kind = await session.scalar(text("SELECT pg_typeof(data)::text FROM timeline_events LIMIT 1"))
                assert kind == "jsonb"
    finally:
        await engine.dispose()
    assert reached == {1: "", 2: "customer,interested,lead", 3: "interested,lead"}
    assert {row.stage: row.reached for row in report.stages} == history
    assert history["lead"] == 3 and history["interested"] == 2 and history["customer"] == 1
    assert [(week.week, week.new_customers) for week in report.weeks] == [("2026-11-02", 2), ("2026-11-09", 1)]
    assert (nlu.messages, nlu.parsed, nlu.fallback, nlu.low_confidence, nlu.by_source) == (3, 2, 1, 1, {"rasa": 2})
    nul = "" if store_at_0007.startswith("postgresql") else "\x00"  # JSONB cannot hold it; json and SQLite can
    assert texts[0] == {"text": f"a{nul}b \\u0000 typed"}  # a typed backslash-u0000 is text, kept
    assert texts[-1] == {"text": "cd", "from": ["e"]}
    assert xacts[:-1] == [0, 0, 0]  # 0009: old events first, in id order; new ones carry their transaction (PG)
    assert (xacts[-1] > 0) == store_at_0007.startswith("postgresql")  # written: dropped everywhere, so one store behaves as the other
    assert [(said.text, said.count) for said in nlu.top_unknown] == [("asdf", 1)]
