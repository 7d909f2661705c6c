"""Bring a database to the newest schema with Alembic (the same call for the CLI, the server and tests).

The embedded SQLite store brings its own schema up to date (`ensure_schema`): a first run needs
no set-up step. Any other store (PostgreSQL) is migrated only when asked, so a schema that is
behind is an error that says so, and nothing is written to it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from crm_store.db import create_engine

ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"
# (applied, of how many, the revision being applied now: "0004 handoffs: reps, teams, handoffs", "" at the end)
OnStep = Callable[[int, int, str], None]


def alembic_config(url: str) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("sqlalchemy.url", url)
    return config


def upgrade(url: str, revision: str = "head", on_step: OnStep | None = None) -> None:
    """Apply every migration up to `revision`; safe to call on an up-to-date database.

    `on_step` hears of the plan before the first revision, then after each one (the env passes it to Alembic).
    """
    config = alembic_config(url)
    if on_step is not None:
        config.attributes["on_version_apply"] = _StepReport(pending(config, url, revision), on_step)
    command.upgrade(config, revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, url, revision)


def pending(config: Config, url: str, revision: str = "head") -> list[str]:
    """The revisions an upgrade to `revision` applies, oldest first, as "0004 handoffs: reps, teams, handoffs"."""
    current = asyncio.run(_current_heads(url))
    scripts = ScriptDirectory.from_config(config).iterate_revisions(revision, current)
    return [f"{script.revision} {script.doc}".strip() for script in reversed(list(scripts))]


async def _current_heads(url: str) -> tuple[str, ...]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_heads())
    finally:
        await engine.dispose()


@dataclass
class _StepReport:
    """Alembic's on_version_apply callback: counts the revisions applied and names the next one."""

    plan: list[str]
    on_step: OnStep
    applied: int = 0

    def __post_init__(self) -> None:
        self.on_step(0, len(self.plan), self.plan[0] if self.plan else "")

    def __call__(self, *, step: MigrationInfo, **_: Any) -> None:
        self.applied += 1 if step.is_upgrade else 0
        following = self.plan[self.applied] if self.applied < len(self.plan) else ""
        self.on_step(self.applied, max(len(self.plan), self.applied), following)


@dataclass(frozen=True)
class SchemaChange:
    """What bringing a store up to date did: from `before` (None: no schema at all) to `after`."""

    before: str | None
    after: str


class SchemaNotCurrent(Exception):
    """The store's schema is not the newest migration this code knows, and it is not ours to change."""

    def __init__(self, current: str | None, head: str, known: bool) -> None:
        self.current, self.head, self.known = current, head, known
        if current is None:
            state = f"has no schema yet (this version needs migration {head})"
        elif known:
            state = f"is at migration {current}, this version needs {head}"
        else:
            state = f"is at migration {current}, which this version does not know (it needs {head}; newer code?)"
        super().__init__(state)


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(""))


def head_revision() -> str:
    """The newest migration of this code."""
    head = _script().get_current_head()
    assert head is not None, "no migrations found"
    return head


def is_embedded(url: str) -> bool:
    """The embedded store: a SQLite file this process may create and migrate on its own."""
    return make_url(url).get_backend_name() == "sqlite"


async def current_revision(engine: AsyncEngine) -> str | None:
    """The store's migration (None: an empty database); reads only."""

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)


async def ensure_schema(
    url: str, engine: AsyncEngine | None = None, upgrade_any_store: bool = False
) -> SchemaChange | None:
    """Bring the embedded store (any store with `upgrade_any_store`) to the newest migration.

    Returns what changed, or None when the schema was already current. A store this call may
    not migrate, or one at a migration this code does not know, raises SchemaNotCurrent.
    `engine`, when given, is used to read the current migration (the caller's own engine).
    """
    before = await _read_revision(url, engine)
    head = head_revision()
    if before == head:
        return None
    known = before is None or _knows(before)
    if not known or not (upgrade_any_store or is_embedded(url)):
        raise SchemaNotCurrent(before, head, known)
    await upgrade_async(url)
    return SchemaChange(before, head)


async def _read_revision(url: str, engine: AsyncEngine | None) -> str | None:
    if engine is not None:
        return await current_revision(engine)
    own = create_engine(url)
    try:
        return await current_revision(own)
    finally:
        await own.dispose()


def _knows(revision: str) -> bool:
    return any(script.revision == revision for script in _script().walk_revisions())
