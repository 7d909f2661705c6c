"""Operations commands: migrate, config show, and what the inbox and outbox hold."""

from __future__ import annotations

from typing import Any, cast

import click
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.common import in_store
from admin_cli.main import cli, echo_json, settings_of
from admin_cli.progress import progress
from crm_store import work_queue
from crm_store.migrate import upgrade
from crm_store.models import InboxItem, OutboxItem, QueueItem

QUEUES: dict[str, type[InboxItem] | type[OutboxItem]] = {"inbox": InboxItem, "outbox": OutboxItem}


@cli.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Bring the database (store.url) to the newest schema; safe to run again. Shows each revision applied.

    Example: SCRM__STORE__URL=postgresql+asyncpg://postgres@127.0.0.1/scrm scrm migrate
    """
    settings = settings_of(ctx)
    with progress("migrate", unit="revisions") as shown:
        upgrade(settings.store.url, on_step=lambda applied, total, now: shown.update(
            applied, total, phase=f"applying {now}" if now else ""))
    click.echo("database is up to date")


@cli.group()
def config() -> None:
    """Look at the effective configuration."""


@config.command("show")
@click.pass_context
def config_show(ctx: click.Context) -> None:
    """Print the settings after config.yaml and SCRM__ overrides, secrets masked.

    Example: SCRM__SERVER__PORT=9000 scrm config show
    """
    echo_json(settings_of(ctx).masked())


def _queue_command(name: str) -> None:
    model = QUEUES[name]

    @cli.group(name=name, help=f"Look at the {name}.")
    def group() -> None:
        pass

    @group.command("list")
    @click.option("--status", type=click.Choice(["pending", "claimed", "done", "failed"]), default="failed",
                  show_default=True)
    @click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Output JSON.")
    @click.pass_context
    def list_items(ctx: click.Context, status: str, limit: int, as_json: bool) -> None:
        rows = in_store(settings_of(ctx), lambda session: _items(session, model, status, limit))
        if as_json:
            echo_json(rows)
            return
        if not rows:
            click.echo(f"no {status} items")
        for row in rows:
            click.echo(f"#{row['id']} {row['kind']} attempts={row['attempts']} {row['last_error'] or ''}")

    list_items.help = f"""List {name} items by status, newest first, with the last error.

    Example: scrm {name} list --status failed --json
    """

    @group.command("retry")
    @click.argument("item_ids", nargs=-1, type=int, required=True)
    @click.pass_context
    def retry(ctx: click.Context, item_ids: tuple[int, ...]) -> None:
        requeued = in_store(settings_of(ctx), lambda session: work_queue.requeue_failed(session, model, list(item_ids)))
        missing = sorted(set(item_ids) - set(requeued))
        for item_id in requeued:
            click.echo(f"#{item_id} queued again")
        if missing:
            raise click.ClickException(f"not failed (or not found), left as they are: {missing}")

    retry.help = f"""Queue failed {name} items again, after the cause was fixed.

    Only failed items are touched; the worker picks them up at once.

    Example: scrm {name} retry 17 18
    """


async def _items(
    session: AsyncSession, model: type[InboxItem] | type[OutboxItem], status: str, limit: int
) -> list[dict[str, Any]]:
    rows = await session.scalars(select(model).where(model.status == status).order_by(model.id.desc()).limit(limit))
    items = cast(list[QueueItem], list(rows.all()))
    return [
        {"id": row.id, "kind": row.kind, "status": row.status, "attempts": row.attempts,
         "last_error": row.last_error, "created_at": row.created_at, "payload": row.payload}
        for row in items
    ]


for _name in QUEUES:
    _queue_command(_name)
