"""Migration 0013 over an outbox already in use: sequence steps and pushes become marketing, the rest
transactional, and the claim reads ready rows lane by lane from the new index; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_store import work_queue
from crm_store.db import create_engine, session_factory
from crm_store.migrate import alembic_config, upgrade_async
from crm_store.models import Lane, OutboxItem
from tests.conftest import store_at_revision

ROWS = {  # dedup_key -> status, as the writers of each kind key their rows
    "nurture:17": "pending",  # a sequence step or a push (bot/nurture_dispatch.py)
    "nurture:18": "done",
    "inbox-42#0": "pending",  # a turn's reply
    "group-expired:3#0": "pending",  # a notice
    "mark_tag:5:ab12": "done",  # a tag mark (crm_store/tags.py)
    "webhook:1:99": "failed",  # a webhook delivery
}


@pytest.fixture(params=["sqlite", "postgres"])
async def outbox_at_0012(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A store migrated to 0012 (before lanes) whose outbox holds ROWS, oldest first."""
    async with store_at_revision(request.param, tmp_path, "0012") as url:
        engine = create_engine(url)
        async with engine.begin() as connection:
            for key, status in ROWS.items():
                await connection.execute(text(
                    "INSERT INTO outbox (dedup_key, queue_key, kind, payload, status, attempts, available_at, "
                    "created_at) VALUES (:key, :queue, 'kf.send_msg', '{}', :status, 0, '2026-12-01 10:00:00', "
                    "'2026-12-01 10:00:00')"), {"key": key, "queue": f"q:{key}", "status": status})
        await engine.dispose()
        yield url


async def test_0013_puts_nurture_rows_in_the_marketing_lane_and_the_rest_in_the_transactional(
        outbox_at_0012: str) -> None:
    await upgrade_async(outbox_at_0012)
    engine = create_engine(outbox_at_0012)
    try:
        async with engine.connect() as connection:
            lanes: dict[str, int] = dict((await connection.execute(text("SELECT dedup_key, lane FROM outbox")))
                                         .tuples().all())
            indexes = await connection.run_sync(lambda sync: {index["name"]: index["column_names"]
                                                              for index in inspect(sync).get_indexes("outbox")})
            status_index = await index_sql(connection, "ix_outbox_status")
        async with session_factory(engine)() as session, session.begin():  # a row written after the upgrade
            session.add(OutboxItem(dedup_key="later", queue_key="q:later", kind="kf.send_msg", payload={}))
        async with session_factory(engine)() as session:
            claimed = [item.dedup_key for item in (await work_queue.claim_heads(session, OutboxItem, 10, 60)).items]
    finally:
        await engine.dispose()
    assert lanes == {"nurture:17": Lane.MARKETING, "nurture:18": Lane.MARKETING, "inbox-42#0": Lane.TRANSACTIONAL,
                     "group-expired:3#0": Lane.TRANSACTIONAL, "mark_tag:5:ab12": Lane.TRANSACTIONAL,
                     "webhook:1:99": Lane.TRANSACTIONAL}
    assert indexes["ix_outbox_pending_lane"] == ["lane", "id"] and "ix_outbox_pending" not in indexes
    assert "'failed'" in status_index  # partial: it no longer competes with the claim's indexes
    assert sorted(claimed) == ["group-expired:3#0", "inbox-42#0", "later", "nurture:17"]


async def index_sql(connection: AsyncConnection, name: str) -> str:
    """The CREATE INDEX statement of `name`, as the store keeps it."""
    if connection.dialect.name == "postgresql":
        found = await connection.scalar(text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"), {"name": name})
    else:
        found = await connection.scalar(text("SELECT sql FROM sqlite_master WHERE name = :name"), {"name": name})
    return str(found)


async def test_0013_downgrades_to_the_id_order(outbox_at_0012: str) -> None:
    await upgrade_async(outbox_at_0012)
    await asyncio.to_thread(command.downgrade, alembic_config(outbox_at_0012), "0012")
    engine = create_engine(outbox_at_0012)
    try:
        async with engine.connect() as connection:
            columns = await connection.run_sync(lambda sync: [c["name"] for c in inspect(sync).get_columns("outbox")])
            indexes = await connection.run_sync(lambda sync: [i["name"] for i in inspect(sync).get_indexes("outbox")])
            status_index = await index_sql(connection, "ix_outbox_status")
    finally:
        await engine.dispose()
    assert "lane" not in columns and "ix_outbox_pending" in indexes and "ix_outbox_pending_lane" not in indexes
    assert "failed" not in status_index
