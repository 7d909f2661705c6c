"""Many rows into one table in one statement, with ON CONFLICT: the store's bulk write for syncs.

On PostgreSQL the rows go as one array per column, `INSERT … SELECT * FROM unnest(…)`: a
statement of a few parameters that PostgreSQL plans once, instead of one round trip per row
(executemany) or thousands of parameters per statement (a VALUES list); for the 40,000 members of
a full sync's first 200 groups it took about a quarter less time than a VALUES list. JSON
documents travel as text and are cast back. SQLite, in process, takes the rows through executemany.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, bindparam, cast, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import JSON, Text, TypeDecorator

from crm_store.dialect_insert import dialect_insert
from crm_store.models import without_nul


def _is_json(column_type: Any) -> bool:
    impl = column_type.impl if isinstance(column_type, TypeDecorator) else column_type
    return isinstance(impl, JSON)


async def insert_rows(session: AsyncSession, table: Table, rows: Sequence[Mapping[str, Any]],
                      conflict: Sequence[str] = (), update: Sequence[str] = ()) -> None:
    """Insert `rows` (all with the same keys); on a conflict on `conflict`: update the `update` columns from
    the row offered, or (no `update`) skip the row. No conflict clause without `conflict`."""
    if not rows:
        return
    columns = list(rows[0])
    if session.get_bind().dialect.name != "postgresql":
        await session.execute(_on_conflict(dialect_insert(session, table), conflict, update), [dict(r) for r in rows])
        return
    arrays = [_array(table, column, [row[column] for row in rows]) for column in columns]
    source = func.unnest(*arrays).table_valued(*columns).render_derived()
    picked = [cast(source.c[column], table.c[column].type) if _is_json(table.c[column].type) else source.c[column]
              for column in columns]
    statement = dialect_insert(session, table).from_select(columns, select(*picked))
    await session.execute(_on_conflict(statement, conflict, update))


def _array(table: Table, column: str, values: list[Any]) -> Any:
    """One column's values as an array parameter (JSON documents as text, cast back in the SELECT)."""
    column_type = table.c[column].type
    if _is_json(column_type):
        texts = [None if value is None else json.dumps(without_nul(value), ensure_ascii=False) for value in values]
        return cast(bindparam(None, texts, type_=ARRAY(Text)), ARRAY(Text))
    return cast(bindparam(None, values, type_=ARRAY(column_type)), ARRAY(column_type))


def _on_conflict(statement: Any, conflict: Sequence[str], update: Sequence[str]) -> Any:
    if not conflict:
        return statement
    if not update:
        return statement.on_conflict_do_nothing(index_elements=list(conflict))
    return statement.on_conflict_do_update(index_elements=list(conflict),
                                           set_={column: getattr(statement.excluded, column) for column in update})

