"""Finishing and noting many claimed queue items in one statement: the sender's outcomes, written together.

Each item is still checked against its own claim token (an item another worker took over is not
touched) and the caller learns which were still its own. On PostgreSQL the items go as one array
per column, `UPDATE … FROM unnest(…)` with RETURNING: one round trip for a batch however large.
SQLite, in process, takes them one statement each in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import BigInteger, Text, bindparam, func, update
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
            result = await session.execute(
                update(model)
                .where(model.id == outcome.item_id, model.claim_token == outcome.claim_token,
                       model.status == "claimed")
                .values(status=outcome.status, finished_at=now, last_error=outcome.error, claimed_until=None)
                .execution_options(synchronize_session=False))
            if cast(CursorResult[Any], result).rowcount == 1:
                finished.add(outcome.item_id)
        return finished
    rows = _unnest(("id", BigInteger, [o.item_id for o in outcomes]), ("token", Text, [o.claim_token for o in outcomes]),
                   ("status", Text, [o.status for o in outcomes]), ("error", Text, [o.error for o in outcomes]))
    result = await session.execute(
        update(model)
        .where(model.id == rows.c.id, model.claim_token == rows.c.token, model.status == "claimed")
        .values(status=rows.c.status, finished_at=now, last_error=rows.c.error, claimed_until=None)
        .returning(model.id)
        .execution_options(synchronize_session=False))
    return set(result.scalars().all())


async def note_many(session: AsyncSession, model: type[QueueItem], notes: Sequence[Note]) -> set[int]:
    """Record progress on claimed items; returns the ids that were still this claim's."""
    if not notes:
        return set()
    if session.get_bind().dialect.name != "postgresql":
        noted = set()
        for note in notes:
            result = await session.execute(
                update(model).where(model.id == note.item_id, model.claim_token == note.claim_token)
                .values(last_error=note.text).execution_options(synchronize_session=False))
            if cast(CursorResult[Any], result).rowcount == 1:
                noted.add(note.item_id)
        return noted
    rows = _unnest(("id", BigInteger, [n.item_id for n in notes]), ("token", Text, [n.claim_token for n in notes]),
                   ("text", Text, [n.text for n in notes]))
    result = await session.execute(
        update(model).where(model.id == rows.c.id, model.claim_token == rows.c.token)
        .values(last_error=rows.c.text).returning(model.id).execution_options(synchronize_session=False))
    return set(result.scalars().all())


def _unnest(*columns: tuple[str, Any, list[Any]]) -> Any:
    """`unnest(array, array, …) AS rows(name, …)`: one array parameter per column."""
    arrays = [sql_cast(bindparam(None, values, type_=ARRAY(kind)), ARRAY(kind)) for _, kind, values in columns]
    return func.unnest(*arrays).table_valued(*(name for name, _, _ in columns)).render_derived(name="rows")
