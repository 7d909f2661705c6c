"""Fixtures shared by every test: real PostgreSQL and Redis on this machine, and the embedded defaults.

`backend` runs a test twice: once on SQLite with in-process state (the first-run
default), once on PostgreSQL with Redis (production). Each test gets a store of its own,
dropped afterwards. Alembic migrates once per test process, into a template (a SQLite file,
a PostgreSQL template database); each test's store is a copy of it, which takes a fraction
of the time of running every migration again.

Under pytest-xdist each worker has its own templates and its own Redis database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as redis_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_store.db import create_engine, session_factory
from crm_store.migrate import upgrade_async

PG_ADMIN_DSN = os.environ.get("SCRM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_DATABASES = (15, 12, 11, 10, 9, 8, 7, 6)  # one per xdist worker; 13 and 14 are the benchmarks'
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
REDIS_TEST_URL = os.environ.get("SCRM_TEST_REDIS",
                                f"redis://127.0.0.1:6379/{REDIS_DATABASES[WORKER % len(REDIS_DATABASES)]}")


@dataclass(frozen=True)
class Backend:
    name: str
    store_url: str
    redis_url: str


async def create_pg_database(template: str = "", prefix: str = "scrm_test") -> tuple[str, str]:
    """A new empty database (or a copy of `template`): its name and SQLAlchemy URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
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


@contextlib.asynccontextmanager
async def store_at_revision(backend: str, tmp_path: Path, revision: str) -> AsyncIterator[str]:
    """A store of its own ("sqlite" or "postgres") migrated up to `revision`, for a migration's test to fill
    with the rows of before and upgrade: its URL. The PostgreSQL database is dropped afterwards."""
    name = ""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'scrm.db'}"
    else:
        name, url = await create_pg_database()
    try:
        await upgrade_async(url, revision)
        yield url
    finally:
        if name:
            await drop_pg_database(name)


async def flush_test_redis() -> None:
    client = redis_asyncio.Redis.from_url(REDIS_TEST_URL)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded store at the newest migration, made once per test process."""
    path = tmp_path_factory.mktemp("template") / "scrm.db"
    asyncio.run(upgrade_async(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A PostgreSQL database at the newest migration, the template of each test's database."""
    name, url = asyncio.run(create_pg_database(prefix="scrm_template"))
    try:
        asyncio.run(upgrade_async(url))
        yield name
    finally:
        asyncio.run(drop_pg_database(name))


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path,
                  pg_template: str) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "scrm.db"
        shutil.copyfile(sqlite_template, path)
        yield Backend("sqlite", f"sqlite+aiosqlite:///{path}", "")
        return
    name, url = await create_pg_database(template=pg_template)
    await flush_test_redis()
    try:
        yield Backend("postgres", url, REDIS_TEST_URL)
    finally:
        await flush_test_redis()
        await drop_pg_database(name)


Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def sessions(backend: Backend) -> AsyncIterator[Sessions]:
    """Sessions on the test's own store (`backend`), for tests of the store's functions."""
    engine = create_engine(backend.store_url)
    yield session_factory(engine)
    await engine.dispose()


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
