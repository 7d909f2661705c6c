"""`scrm demo`: a store ready for a tour of the sandbox in one command, and the tour it makes possible.

The seeding is bot/sandbox/demo.py: the parts are made with the functions their own commands
use, and the customers' history is chatted through the real app. The sequences are read and
checked here as `scrm sequences publish` reads them. A store that already holds customers is
left alone unless --force; parts that exist are reported, never made twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import TypeVar

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from admin_cli import sequence_commands  # the module, not its names: it imports admin_cli.main too
from admin_cli.common import in_store, json_option
from admin_cli.main import cli, echo_json, settings_of
from bot.sandbox.demo import REPS, DemoError, has_customers, seed
from bot.settings import Settings
from bot.wechat_api import ApiError
from crm_store.campaigns import CampaignError
from crm_store.channels import ChannelError
from crm_store.reps import RepError

T = TypeVar("T")


def tour(settings: Settings) -> list[str]:
    """What to try next, step by step, with this configuration's URLs."""
    base = f"http://{settings.server.host}:{settings.server.port}"
    (first, first_name), (second, second_name) = REPS
    return [
        f"start the bot (scrm serve, or make run) and open {base}/sandbox, then:",
        "1. as customer wmSandboxCustomer1 (the page's default) say 开团: a group of 2 opens, "
        "the bot gives its code",
        "2. change the customer to wmSandboxCustomer2 and say 参团 <code>: the group fills, both are told 拼团成功",
        "3. as wmSandboxCustomer1 say 邀请好友; as wmSandboxCustomer3 say 邀请码 <that code>: "
        "customer 1 earns 积分10",
        f"4. as wmSandboxCustomer3 say 投诉 (or 人工): handed to {first_name} at any hour "
        f"(the next handoff goes to {second_name}, {second})",
        f"5. open {base}/sandbox/rep (rep {first}): type 接 <id> from the card, pick the customer, answer, "
        "end the session",
        "6. scrm report html -o report.html: funnel, channel, groups, referrals, nurture and handoffs",
        "the demo's own customers: scrm customers find --text 老王 (or 小美, 阿杰), then scrm customers show <id>",
    ]


QUIET = ("scrm.app", "scrm.nlu.client")  # "the sandbox is on", "keyword rules only": the demo's own choices


def _quietly(run: Callable[[], T]) -> T:
    """Run without the warnings about what the demo chose itself; any other is shown."""
    loggers = [logging.getLogger(name) for name in QUIET]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        return run()
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@cli.command("demo")
@click.option("--force", is_flag=True,
              help="Seed even when the store holds customers already (what exists is kept).")
@json_option
@click.pass_context
def demo(ctx: click.Context, force: bool, as_json: bool) -> None:
    """Seed the store for a tour of the sandbox, then print what to try there.

    It makes a group-buy campaign (2 people, running for 30 days), an entry channel, two reps on
    duty around the clock (so a handoff is taken at any hour), the nurture sequences published,
    and three customers with a history chatted through the real bot: a filled group, a referral
    with its rewards, a price question that enrols a lead, a complaint a rep answered. Parts that
    exist already are reported, not made twice. Needs the sandbox on (sandbox.enabled).

    Example: scrm demo, then scrm serve and open http://127.0.0.1:8080/sandbox
    """
    settings = settings_of(ctx)
    store = make_url(settings.store.url).render_as_string(hide_password=True)
    if not settings.sandbox.enabled:
        raise click.ClickException("the demo's customers chat through the sandbox, which is off here "
                                   "(sandbox.enabled: false): no demo in a store that talks to real WeChat")
    sequences, sources = sequence_commands.loaded(settings)
    if in_store(settings, has_customers) and not force:  # asked even with --force: the store is then ready
        raise click.ClickException(f"the store {store} holds customers already: scrm demo seeds a new store "
                                   "(--force seeds beside them; parts that exist are kept)")
    try:
        parts = _quietly(lambda: asyncio.run(seed(settings, sequences, sources)))
    except (DemoError, CampaignError, ChannelError, RepError, ApiError) as exc:
        raise click.ClickException(f"the demo stopped: {exc} (what it made is kept: scrm demo --force goes "
                                   "on once that is fixed)") from None
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise click.ClickException(f"the demo stopped: store {store}: {cause}") from None
    if as_json:
        echo_json({"store": store, "parts": [asdict(part) for part in parts], "next": tour(settings)})
        return
    click.echo(f"demo on {store}:")
    width = max(len(part.kind) for part in parts)
    for part in parts:
        click.echo(f"  {part.kind:<{width}}  {'made ' if part.made else 'kept '} {part.text}")
    click.echo("\nnext, " + "\n  ".join(tour(settings)))
