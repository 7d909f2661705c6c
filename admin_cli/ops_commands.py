"""Operations commands: migrate and config show (the queues' commands: admin_cli/queue_commands.py)."""

from __future__ import annotations

import click

from admin_cli.main import cli, echo_json, settings_of
from admin_cli.progress import progress
from crm_store.migrate import upgrade


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
