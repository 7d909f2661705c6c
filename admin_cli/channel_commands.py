"""`scrm channels ...`: entry channels (渠道活码), a few lines over crm_store.channels and bot.channel_api.

Creating one checks everything it names before asking WeChat for anything (the spec,
the welcome flow in the published release, the tags in the catalog), then creates the
entry point and stores the row. If storing fails after WeCom made a contact way, the
contact way is deleted again, so no QR is left in circulation that the store does not know.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TypeVar

import aiohttp
import click
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.common import in_store, json_option, table
from admin_cli.flow_commands import published
from admin_cli.main import cli, echo_json, settings_of
from bot.channel_api import EntryPoint, create_entry_point, delete_entry_point
from bot.runtime import build_apis
from bot.settings import Settings
from bot.wechat_api import ApiError, WeChatApi
from core.shared_state import open_shared_state
from crm_store.channels import (
    KINDS,
    ChannelError,
    ChannelReport,
    ChannelSpec,
    add_channel,
    brand_day,
    channel_by_code,
    channel_report,
    list_channels,
    validate_spec,
)
from crm_store.codes import CHANNEL_PREFIX, new_code, normalise_code
from crm_store.tags import tag_counts

T = TypeVar("T")
CODE_LENGTH = 8


def with_apis(settings: Settings, work: Callable[[dict[str, WeChatApi]], Awaitable[T]]) -> T:
    """Run `work` with the WeCom/OA API clients (token shared as the bot shares it); refusals become messages."""

    async def run() -> T:
        state = open_shared_state(settings.redis.url or None)
        try:
            async with aiohttp.ClientSession() as http:
                return await work(build_apis(settings, http, state))
        finally:
            await state.close()

    try:
        return asyncio.run(run())
    except ApiError as exc:
        if exc.refused:
            raise click.ClickException(f"WeChat refused: {exc}") from None
        raise click.ClickException(f"WeChat did not answer usably ({exc}): whether it acted is unknown, "
                                   "check the WeCom / OA console before trying again") from None


def _check_names(settings: Settings, spec: ChannelSpec) -> None:
    """The welcome flow is published and every tag is in the catalog, or a message that lists what is."""
    if spec.welcome_flow:
        release, flows = published(settings)
        if spec.welcome_flow not in flows.flows:
            raise click.ClickException(f"no flow {spec.welcome_flow!r} in release {release.id}; "
                                       f"flows: {', '.join(sorted(flows.flows))}")
    if spec.tags:
        known = sorted({count.tag for count in in_store(settings, tag_counts)})
        unknown = [tag for tag in spec.tags if tag not in known]
        if unknown:
            raise click.ClickException(
                f"unknown tag(s) {', '.join(unknown)}; the catalog has: {', '.join(known) or 'nothing'} "
                "(add them to tags.yaml and run: scrm flows publish)")


def _store(settings: Settings, spec: ChannelSpec, code: str, point: EntryPoint) -> ChannelReport:
    """Store the channel; on failure, take back the contact way WeCom already made."""
    rota = list(spec.reps)
    day = brand_day(settings.growth.timezone)

    async def work(session: AsyncSession) -> ChannelReport:
        channel = await add_channel(session, spec, code, point.config_id, point.url, rota)
        return await channel_report(session, channel, settings.growth.purchase_stages, day)

    try:
        return in_store(settings, work)
    except Exception:
        if point.config_id:
            try:
                with_apis(settings, lambda apis: delete_entry_point(apis["wecom.contacts"], point.config_id))
            except click.ClickException as exc:
                click.echo(f"warning: contact way {point.config_id} is left on WeCom ({exc.message}): "
                           "delete it in the WeCom admin console", err=True)
        raise


def _money(yuan: float | None) -> str:
    return "-" if yuan is None else f"¥{yuan:.2f}"


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


@cli.group("channels")
def channels_group() -> None:
    """Entry channels (渠道活码): contact-way QRs, kf links, OA QRs, and what each brought."""


@channels_group.command("create")
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS), required=True, help="What the entry point is.")
@click.option("--rep", "reps", multiple=True, metavar="USERID", help="A rep the contact way offers (repeat).")
@click.option("--daily-cap", type=int, default=0, show_default=True, help="Adds per rep per day; 0: no cap.")
@click.option("--welcome-flow", default="", metavar="FLOW", help="The published flow that welcomes arrivals.")
@click.option("--tag", "tags", multiple=True, help="A catalog tag given to arrivals (repeat).")
@click.option("--cost", type=float, default=0.0, metavar="YUAN", help="What the channel cost, in yuan.")
@click.option("--kf-account", default="", metavar="OPEN_KFID", help="The kf account a kf_link opens.")
@json_option
@click.pass_context
def create(ctx: click.Context, name: str, kind: str, reps: tuple[str, ...], daily_cap: int, welcome_flow: str,
           tags: tuple[str, ...], cost: float, kf_account: str, as_json: bool) -> None:
    """Create an entry channel on WeCom or the OA and store it; prints its code, URL and reps.

    Example: scrm channels create 门店海报 --kind contact_way --rep zhangsan --rep lisi --daily-cap 50 --welcome-flow welcome_contact --tag 来自企微 --cost 300
    """
    settings = settings_of(ctx)
    spec = ChannelSpec(name, kind, welcome_flow, tags, reps, daily_cap, round(cost * 100), kf_account)
    try:
        validate_spec(spec)
    except ChannelError as exc:
        raise click.ClickException("cannot create the channel: " + "; ".join(exc.problems)) from None
    _check_names(settings, spec)
    code = CHANNEL_PREFIX + new_code(CODE_LENGTH)
    point = with_apis(settings, lambda apis: create_entry_point(apis, kind, code, reps, kf_account))
    report = _store(settings, spec, code, point)
    if as_json:
        echo_json(asdict(report))
        return
    click.echo(f"channel {report.code}: {report.name} ({report.kind})")
    click.echo(f"url: {report.url}")
    if report.reps:
        cap = f" (cap {report.daily_cap} adds a day each)" if report.daily_cap else ""
        click.echo(f"reps: {', '.join(report.reps)}{cap}")


@channels_group.command("list")
@json_option
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """Every channel with its adds, conversions, conversion rate and cost per add and per conversion.

    Example: scrm channels list --json
    """
    settings = settings_of(ctx)
    reports = in_store(settings, lambda session: list_channels(session, settings.growth.purchase_stages))
    if as_json:
        echo_json([asdict(report) for report in reports])
        return
    if not reports:
        click.echo("no channels yet (scrm channels create NAME --kind contact_way --rep USERID)")
        return
    click.echo(table([[r.code, r.name + ("" if r.active else " (inactive)"), r.kind, r.adds, r.conversions,
                       _rate(r.conversion_rate), _money(r.cost_per_add), _money(r.cost_per_conversion)]
                      for r in reports],
                     ["code", "name", "kind", "adds", "conversions", "rate", "cost/add", "cost/conversion"]))


@channels_group.command("show")
@click.argument("code")
@json_option
@click.pass_context
def show(ctx: click.Context, code: str, as_json: bool) -> None:
    """One channel: its entry point, welcome flow, tags, numbers, and each rep's adds today against the cap.

    Example: scrm channels show ch_K7P3QX9M
    """
    settings = settings_of(ctx)
    day = brand_day(settings.growth.timezone)

    async def work(session: AsyncSession) -> ChannelReport | None:
        channel = await channel_by_code(session, code.strip())
        channel = channel or await channel_by_code(session, CHANNEL_PREFIX + normalise_code(code))
        return None if channel is None else await channel_report(
            session, channel, settings.growth.purchase_stages, day)

    report = in_store(settings, work)
    if report is None:
        raise click.ClickException(f"no channel {code!r} (list them with: scrm channels list)")
    if as_json:
        echo_json(asdict(report))
        return
    _print_report(report)


def _print_report(r: ChannelReport) -> None:
    click.echo(f"channel {r.code}: {r.name} ({r.kind}{'' if r.active else ', inactive'})")
    click.echo(f"url: {r.url}" + (f"   config_id: {r.config_id}" if r.config_id else ""))
    click.echo(f"welcome flow: {r.welcome_flow or '-'}   tags: {', '.join(r.tags) or '-'}")
    click.echo(f"adds: {r.adds}   conversions: {r.conversions} ({_rate(r.conversion_rate)})   "
               f"cost: {_money(r.cost_yuan)}   per add: {_money(r.cost_per_add)}   "
               f"per conversion: {_money(r.cost_per_conversion)}")
    if not r.rep_adds:
        return
    click.echo(f"reps on {r.day} (cap: {r.daily_cap or 'none'}):")
    click.echo(table([[rep.userid, rep.adds if not rep.cap else f"{rep.adds}/{rep.cap}",
                       "offered" if rep.in_rota else "not offered"] for rep in r.rep_adds],
                     ["rep", "adds today", "rota"]))
