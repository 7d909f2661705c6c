"""`scrm`: the one command line of the product. Each command is a few lines over a library call.

    scrm serve                 run the bot server (callbacks, workers, sender, sandbox)
    scrm migrate               bring the database to the newest schema
    scrm config show           print the effective settings, secrets masked
    scrm outbox list           what is waiting, sending or failed, and why
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bot.settings import Settings, SettingsError, load_settings


def _settings_loader(config: Path | None) -> Callable[[], Settings]:
    cache: list[Settings] = []

    def load() -> Settings:
        if not cache:
            try:
                cache.append(load_settings(config))
            except SettingsError as exc:
                raise click.ClickException(str(exc)) from None
        return cache[0]

    return load


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SCRM_CONFIG",
    help="Configuration file (default: config.yaml at the project root; env SCRM_CONFIG).",
)
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """The SCRM bot and its admin tools.

    Every setting can be overridden from the environment as SCRM__SECTION__KEY,
    e.g. SCRM__STORE__URL=postgresql+asyncpg://postgres@127.0.0.1/scrm.
    """
    ctx.ensure_object(dict)
    ctx.obj["settings"] = _settings_loader(config)


def settings_of(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]()


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


from admin_cli import (  # noqa: E402  (each module adds its commands to `cli`)
    apikey_commands,
    campaign_commands,
    channel_commands,
    customer_commands,
    demo_command,  # noqa: F401  (adds `scrm demo`)
    doctor_command,  # noqa: F401  (adds `scrm doctor`)
    faq_commands,  # noqa: F401  (adds `scrm faq`)
    faq_nlu_commands,  # noqa: F401  (adds `scrm faq publish`, `ask` and `test`)
    faq_report_commands,  # noqa: F401  (adds `scrm faq suggest`)
    flow_commands,
    groupchat_commands,  # noqa: F401  (adds `scrm groupchats`: customer groups, 客户群)
    handoff_commands,
    media_commands,  # noqa: F401  (adds `scrm media`)
    ops_commands,
    push_commands,
    queue_commands,  # noqa: F401  (adds `scrm inbox` and `scrm outbox`)
    referral_commands,
    rep_commands,
    report_commands,
    sequence_commands,
    serve_command,
    try_command,
    webhook_commands,
)
from admin_cli.nlu_commands import nlu_group  # noqa: E402

cli.add_command(nlu_group, "nlu")

__all__ = [
    "cli", "echo_json", "settings_of", "apikey_commands", "campaign_commands", "channel_commands", "customer_commands", "flow_commands",
    "ops_commands", "referral_commands", "serve_command", "try_command", "handoff_commands", "rep_commands",
    "push_commands", "sequence_commands", "report_commands", "webhook_commands",
]
