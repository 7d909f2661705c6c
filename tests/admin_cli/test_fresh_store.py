"""A fresh clone just works: the embedded SQLite store brings its own schema up to date and says so
once; PostgreSQL is migrated only on request (`scrm migrate`), and a command on a store that was
not migrated fails before writing anything.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from crm_store.migrate import head_revision, upgrade
from tests.admin_cli.harness import ScrmRunner
from tests.conftest import create_pg_database, drop_pg_database

CREATED = "store: created the embedded SQLite store"
TABLES = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"


def test_a_command_on_a_new_sqlite_store_creates_it_and_says_so_once(tmp_path: Path) -> None:
    path = tmp_path / "var" / "scrm.db"
    scrm = ScrmRunner(f"sqlite+aiosqlite:///{path}")
    flows = scrm("flows", "list", ok=False)  # the command of the issue: nothing is published yet, and it says so
    assert "no such table" not in flows.output and "nothing is published yet" in flows.stderr
    assert flows.stderr.splitlines()[0] == f"{CREATED} at {path} (migration {head_revision()})"
    again = scrm("apikeys", "list")
    assert "store:" not in again.stderr and again.stdout.startswith("id")
    assert scrm.json("apikeys", "list") == []


def test_an_older_sqlite_store_is_upgraded_and_says_from_what(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'scrm.db'}"
    upgrade(url, "0007")
    scrm = ScrmRunner(url)
    result = scrm("apikeys", "create", "shop", "--json")
    assert result.stderr.strip() == (
        f"store: upgraded the embedded SQLite store at {tmp_path / 'scrm.db'} from migration 0007 to {head_revision()}"
    )
    assert [key["name"] for key in scrm.json("apikeys", "list")] == ["shop"]


def test_postgres_is_never_migrated_by_a_command_and_says_how() -> None:
    name, url = asyncio.run(create_pg_database())
    scrm = ScrmRunner(url)
    try:
        empty = scrm("apikeys", "create", "shop", ok=False)
        assert empty.exit_code == 1 and CREATED not in empty.stderr
        assert f"has no schema yet (this version needs migration {head_revision()}); run: scrm migrate" in empty.stderr
        assert asyncio.run(_fetch(url, TABLES)) == 0

        upgrade(url, "0007")  # an older schema: the api_keys table is there, the command still writes nothing
        behind = scrm("apikeys", "create", "shop", ok=False)
        assert f"is at migration 0007, this version needs {head_revision()}; run: scrm migrate" in behind.stderr
        assert asyncio.run(_fetch(url, "SELECT count(*) FROM api_keys")) == 0
        assert asyncio.run(_fetch(url, "SELECT version_num FROM alembic_version")) == "0007"
    finally:
        asyncio.run(drop_pg_database(name))


async def _fetch(url: str, query: str) -> object:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return await connection.fetchval(query)
    finally:
        await connection.close()
