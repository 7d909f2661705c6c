"""A throwaway PostgreSQL database for a benchmark: created, migrated, dropped (or kept to look at)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator

import asyncpg

from crm_store.migrate import upgrade_async


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str, keep: bool, name: str, setup_sql: str = "") -> AsyncIterator[tuple[str, str]]:
    """A new database `scrm_bench_<name>_<random>`, migrated (then `setup_sql`); yields (SQLAlchemy URL, DSN)."""
    database = f"scrm_bench_{name}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{database}"')
    host = admin_dsn.split("://", 1)[1].rsplit("/", 1)[0]
    url, dsn = f"postgresql+asyncpg://{host}/{database}", f"postgresql://{host}/{database}"
    try:
        await upgrade_async(url)
        if setup_sql:
            connection = await asyncpg.connect(dsn)
            await connection.execute(setup_sql)
            await connection.close()
        yield url, dsn
    finally:
        if keep:
            print(f"database kept: {dsn}")
        else:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
