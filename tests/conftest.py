"""Fixtures shared by every test: real PostgreSQL and Redis on this machine, and the embedded defaults.

`backend` runs a test twice: once on SQLite with in-process state (the first-run
default), once on PostgreSQL with Redis (production). Each PostgreSQL test gets a
database of its own, migrated with Alembic, and dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as redis_asyncio

from crm_store.migrate import upgrade_async

PG_ADMIN_DSN = os.environ.get("SCRM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("SCRM_TEST_REDIS", "redis://127.0.0.1:6379/15")


@dataclass(frozen=True)
class Backend:
    name: str
    store_url: str
    redis_url: str


async def create_pg_database() -> tuple[str, str]:
    name = f"scrm_test_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    host_part = PG_ADMIN_DSN.split("://", 1)[1].rsplit("/", 1)[0]
    return name, f"postgresql+asyncpg://{host_part}/{name}"


async def drop_pg_database(name: str) -> None:
    connection = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def flush_test_redis() -> None:
    client = redis_asyncio.Redis.from_url(REDIS_TEST_URL)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'scrm.db'}"
        await upgrade_async(url)
        yield Backend("sqlite", url, "")
        return
    name, url = await create_pg_database()
    await flush_test_redis()
    try:
        await upgrade_async(url)
        yield Backend("postgres", url, REDIS_TEST_URL)
    finally:
        await flush_test_redis()
        await drop_pg_database(name)


@pytest.fixture
def clean_env() -> Iterator[None]:
    """Tests that read settings must not see a developer's SCRM__ variables."""
    saved = {key: value for key, value in os.environ.items() if key.startswith("SCRM")}
    for key in saved:
        del os.environ[key]
    yield
    for key in [key for key in os.environ if key.startswith("SCRM")]:
        del os.environ[key]
    os.environ.update(saved)
