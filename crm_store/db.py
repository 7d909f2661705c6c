"""The database engine and sessions: one session per unit of work, the documented async way."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from core import metrics


def create_engine(url: str, echo: bool = False, pool_size: int = 10) -> AsyncEngine:
    """An async engine. SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE; PostgreSQL a pool of
    `pool_size` connections (and as many again at a peak).

    SQLite's default deferred transactions fail at once with "database is locked" when two
    readers both try to become writers; taking the write lock at BEGIN makes them wait
    their turn instead (and lets SAVEPOINT work as documented).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_async_engine(url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)


def _sqlite_begin_immediate(connection) -> None:  # type: ignore[no-untyped-def]
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def count_store_work(engine: AsyncEngine) -> None:
    """Count statements and transactions in /metrics (scrm_store_*): what a turn costs the store, live."""
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *_: metrics.STORE_STATEMENTS.inc())
    event.listen(engine.sync_engine, "begin", lambda *_: metrics.STORE_TRANSACTIONS.inc())


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
