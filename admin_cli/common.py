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

T = TypeVar("T")


def in_store(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one transaction on the configured store; store failures become a clear message."""

    async def run() -> T:
        engine = create_engine(settings.store.url)
        try:
            async with session_factory(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except SQLAlchemyError as exc:
        url = make_url(settings.store.url).render_as_string(hide_password=True)
        cause = getattr(exc, "orig", None) or exc
        raise click.ClickException(f"store {url}: {cause} (is its schema up to date? run: scrm migrate)") from None


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
