"""What the data commands share: one transaction on the store, tables, local times, `--json`."""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.settings import Settings
from crm_store.db import create_engine, session_factory
from crm_store.migrate import SchemaChange, SchemaNotCurrent, ensure_schema

T = TypeVar("T")


def in_store(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one transaction on the configured store; store failures become a clear message.

    The embedded SQLite store is first brought up to date (said in one line on stderr when that
    did something); PostgreSQL must already be: `scrm migrate` is a deliberate step there.
    """
    url = settings.store.url

    async def run() -> T:
        engine = create_engine(url)
        try:
            _report_schema_change(url, await ensure_schema(url, engine))
            async with session_factory(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    shown = make_url(url).render_as_string(hide_password=True)
    try:
        return asyncio.run(run())
    except SchemaNotCurrent as exc:
        hint = "run: scrm migrate" if exc.known else "use the scrm version that migrated it"
        raise click.ClickException(f"store {shown} {exc}; {hint}") from None
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise click.ClickException(f"store {shown}: {cause} (is its schema up to date? run: scrm migrate)") from None


def _report_schema_change(url: str, change: SchemaChange | None) -> None:
    """The one line that says the embedded store was created or upgraded (nothing when it was current)."""
    if change is None:
        return
    where = make_url(url).database
    if change.before is None:
        click.echo(f"store: created the embedded SQLite store at {where} (migration {change.after})", err=True)
    else:
        click.echo(f"store: upgraded the embedded SQLite store at {where} from migration {change.before} "
                   f"to {change.after}", err=True)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Columns padded to their widest cell, Chinese characters counted as two."""

    def width(text: str) -> int:
        return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)

    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(width(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell + " " * (widths[i] - width(cell)) for i, cell in enumerate(row)).rstrip() for row in cells
    )


def when(at: datetime | None) -> str:
    """A stored time in the admin's local time zone (SQLite gives it back without a zone: UTC)."""
    if at is None:
        return ""
    return f"{(at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone():%Y-%m-%d %H:%M}"


def fields(data: dict[str, Any]) -> str:
    """An event's data as `key=value …` in key order: the same on every store (PostgreSQL's JSONB keeps none)."""
    return " ".join(f"{key}={value}" for key, value in sorted(data.items()))


def json_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(function)
