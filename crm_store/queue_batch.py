"""Finishing and noting many claimed queue items in one statement: the sender's outcomes, written together.

Each item is still checked against its own claim token (an item another worker took over is not
touched) and the caller learns which were still its own. On PostgreSQL the items go as one array
per column, `UPDATE … FROM unnest(…)` with RETURNING: one round trip for a batch however large.
SQLite, in process, takes them one statement each in the same transaction. Core statements on the
table, built once: the rows are plain values, and the ORM's bulk-update machinery cost more than the
statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import BigInteger, Table, Text, bindparam, func, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.models import QueueItem, utcnow


@dataclass(frozen=True)
class Outcome:
    """How a claimed item ended: done, or failed with the reason."""

    item_id: int
    claim_token: str
    status: str
    error: str | None = None


@dataclass(frozen=True)
class Note:
    """Progress recorded on a claimed item (`last_error`), read back if it is claimed again."""

    item_id: int
    claim_token: str
    text: str


async def finish_many(session: AsyncSession, model: type[QueueItem], outcomes: Sequence[Outcome]) -> set[int]:
    """Mark claimed items done or failed; returns the ids that were still this claim's (the others were taken
    over after their claim expired: their outcome is not written)."""
    if not outcomes:
        return set()
    now = utcnow()
    if session.get_bind().dialect.name != "postgresql":
        finished = set()
        for outcome in outcomes:
            result = await session.execute(_statements(model).finish_one, {
                "item_id": outcome.item_id, "token": outcome.claim_token, "status": outcome.status,
                "error": outcome.error, "now": now})
            if cast(CursorResult[Any], result).rowcount == 1:
                finished.add(outcome.item_id)
        return finished
    result = await session.execute(_statements(model).finish_many, {
        "ids": [o.item_id for o in outcomes], "tokens": [o.claim_token for o in outcomes],
        "statuses": [o.status for o in outcomes], "errors": [o.error for o in outcomes], "now": now})
    return set(result.scalars().all())


async def note_many(session: AsyncSession, model: type[QueueItem], notes: Sequence[Note]) -> set[int]:
    """Record progress on claimed items; returns the ids that were still this claim's."""
    if not notes:
        return set()
    if session.get_bind().dialect.name != "postgresql":
        noted = set()
        for note in notes:
            result = await session.execute(_statements(model).note_one, {
                "item_id": note.item_id, "token": note.claim_token, "text": note.text})
            if cast(CursorResult[Any], result).rowcount == 1:
                noted.add(note.item_id)
        return noted
    result = await session.execute(_statements(model).note_many, {
        "ids": [n.item_id for n in notes], "tokens": [n.claim_token for n in notes],
        "texts": [n.text for n in notes]})
    return set(result.scalars().all())


@dataclass(frozen=True)
class _Statements:
    """Built once per table (constructing them cost more than running them): Core statements on the table,
    the ORM has nothing to do here."""

    finish_one: Any
    finish_many: Any
    note_one: Any
    note_many: Any


_BUILT: dict[type[QueueItem], _Statements] = {}


def _statements(model: type[QueueItem]) -> _Statements:
    built = _BUILT.get(model)
    if built is None:
        built = _BUILT[model] = _build(model.__table__)  # type: ignore[attr-defined]
    return built


def _build(table: Table) -> _Statements:
    c = table.c
    outcomes = _unnest(("id", "ids", BigInteger), ("token", "tokens", Text), ("status", "statuses", Text),
                       ("error", "errors", Text))
    notes = _unnest(("id", "ids", BigInteger), ("token", "tokens", Text), ("text", "texts", Text))
    finished: dict[str, Any] = {"finished_at": bindparam("now"), "claimed_until": None}
    return _Statements(
        finish_one=update(table)
        .where(c.id == bindparam("item_id"), c.claim_token == bindparam("token"), c.status == "claimed")
        .values(status=bindparam("status"), last_error=bindparam("error"), **finished),
        finish_many=update(table)
        .where(c.id == outcomes.c.id, c.claim_token == outcomes.c.token, c.status == "claimed")
        .values(status=outcomes.c.status, last_error=outcomes.c.error, **finished)
        .returning(c.id),
        note_one=update(table)
        .where(c.id == bindparam("item_id"), c.claim_token == bindparam("token"))
        .values(last_error=bindparam("text")),
        note_many=update(table)
        .where(c.id == notes.c.id, c.claim_token == notes.c.token)
        .values(last_error=notes.c.text).returning(c.id),
    )


def _unnest(*columns: tuple[str, str, Any]) -> Any:
    """`unnest(:array, :array, …) AS rows(name, …)`: one array parameter per column."""
    arrays = [sql_cast(bindparam(parameter, type_=ARRAY(kind)), ARRAY(kind)) for _, parameter, kind in columns]
    return func.unnest(*arrays).table_valued(*(name for name, _, _ in columns)).render_derived(name="rows")
