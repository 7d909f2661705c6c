"""The dialect's INSERT for the session's store: it knows ON CONFLICT (and RETURNING), the generic one does not.

PostgreSQL and SQLite spell `on_conflict_do_nothing` / `on_conflict_do_update` alike, so
callers write one statement for both stores.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def dialect_insert(session: AsyncSession, model: Any) -> Any:
    """`insert(model)` of the dialect the session is bound to."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(model)
