"""`scrm groupchats codes ...`: group live codes (群活码), a few lines over bot.group_join_ways and the store.

Creating one checks the spec, its groups (known to the store, not dismissed) and its tags before
WeCom is asked anything; a join way or welcome template made for a code that could not be stored
is deleted again. Figures per code: joins, leaves, members now, new customers, conversions, and
for a fission code its top inviters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from typing import Any, TypeVar

import aiohttp
import click
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from admin_cli.common import in_store, json_option, table, when
from admin_cli.main import echo_json, settings_of
from bot.group_join_ways import create_code, current_groups, deactivate_code, personal_code, update_code
from bot.runtime import build_apis
from bot.settings import Settings
from bot.wechat_api import ApiError, WeChatApi
from core.shared_state import open_shared_state
from crm_store.customer_queries import current_customer
from crm_store.db import create_engine, session_factory
from crm_store.group_code_reports import CodeReport, code_report, list_codes
from crm_store.group_join_codes import GroupCodeError, GroupCodeSpec, WelcomeLink, code_by_code, spec_of

T = TypeVar("T")
Sessions = async_sessionmaker[AsyncSession]


def with_store_and_api(settings: Settings, work: Callable[[Sessions, WeChatApi], Awaitable[T]]) -> T:
    """Run `work` with the store and the contacts API client; bad input and WeCom's refusals become messages."""
    in_store(settings, _nothing)  # the embedded store brought up to date first, as every data command does

    async def run() -> T:
        engine = create_engine(settings.store.url)
        state = open_shared_state(settings.redis.url or None)
        try:
            async with aiohttp.ClientSession() as http:
                return await work(session_factory(engine), build_apis(settings, http, state)["wecom.contacts"])
        finally:
            await state.close()
            await engine.dispose()

    try:
        return asyncio.run(run())
    except GroupCodeError as exc:
        raise click.ClickException("; ".join(exc.problems)) from None
    except ApiError as exc:
        if exc.refused:
            raise click.ClickException(f"WeCom refused: {exc}") from None
        raise click.ClickException(f"WeCom did not answer usably ({exc}): whether it acted is unknown, "
                                   "check the WeCom admin console before trying again") from None


async def _nothing(session: AsyncSession) -> None:
    return None


def _report_of(settings: Settings, code: str) -> CodeReport:
    async def work(session: AsyncSession) -> CodeReport | None:
        row = await code_by_code(session, code)
        return None if row is None else await code_report(session, row, settings.growth.purchase_stages)

    report = in_store(settings, work)
    if report is None:
        raise click.ClickException(f"no group live code {code!r} (list them with: scrm groupchats codes list)")
    return report


def _spec_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """What create and update share: groups, automatic groups, the welcome, tags."""
    options = [
        click.option("--group", "groups", multiple=True, metavar="CHAT_ID", help="A group it offers (repeat, 1–5)."),
        click.option("--auto-create/--no-auto-create", "auto_create", default=None,
                     help="Create a new group when the last is full (default: on)."),
        click.option("--room-base-name", help="Name of the groups it creates (≤ 40 characters), numbered on."),
        click.option("--room-base-id", type=int, help="Number of the first group it creates (default 1)."),
        click.option("--welcome", help="Welcome text sent when someone joins (%NICKNAME% is their name)."),
        click.option("--welcome-link-title", help="A link card after the welcome: its title."),
        click.option("--welcome-link-url", help="…its https URL."),
        click.option("--welcome-link-pic", default="", help="…its cover picture URL."),
        click.option("--welcome-link-desc", default="", help="…its description."),
        click.option("--tag", "tags", multiple=True, help="A catalog tag given to customers who join (repeat)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _changed(base: GroupCodeSpec, options: dict[str, Any]) -> GroupCodeSpec:
    """`base` with what the options give (what they leave out stays)."""
    spec = replace(base, chat_ids=tuple(options["groups"]) or base.chat_ids, tags=tuple(options["tags"]) or base.tags)
    for key, field in (("auto_create", "auto_create_room"), ("room_base_name", "room_base_name"),
                       ("room_base_id", "room_base_id"), ("welcome", "welcome_text")):
        if options[key] is not None:
            spec = replace(spec, **{field: options[key]})
    title, url = options["welcome_link_title"], options["welcome_link_url"]
    if title is not None or url is not None:
        spec = replace(spec, welcome_link=WelcomeLink(title or "", url or "", options["welcome_link_pic"],
                                                      options["welcome_link_desc"]))
    return spec


@click.group("codes")
def codes() -> None:
    """Group live codes (群活码): one QR over up to 5 groups, a new group when the last is full, a welcome."""


@codes.command("create")
@click.argument("name")
@_spec_options
@click.option("--fission", is_flag=True, help="Members may ask for a personal code (群裂变: invite friends).")
@json_option
@click.pass_context
def create(ctx: click.Context, name: str, fission: bool, as_json: bool, **options: Any) -> None:
    """Create a group live code on WeCom and store it; prints its code and QR.

    Example: scrm groupchats codes create 新品群活码 --group wrOgQhDgAAH2Yy --room-base-name 新品群 --welcome "欢迎 %NICKNAME%！" --tag 新品群 --fission
    """
    settings = settings_of(ctx)
    spec = _changed(GroupCodeSpec(name, (), fission=fission), options)
    row = with_store_and_api(settings, lambda sessions, api: create_code(sessions, api, spec))
    _print_or_json(_report_of(settings, row.code), as_json)


@codes.command("list")
@click.option("--personal", is_flag=True, help="List customers' personal fission codes too.")
@json_option
@click.pass_context
def list_command(ctx: click.Context, personal: bool, as_json: bool) -> None:
    """Every group live code with its joins, leaves, members now, new customers and conversions.

    Example: scrm groupchats codes list --json
    """
    settings = settings_of(ctx)
    reports = in_store(settings, lambda session: list_codes(session, settings.growth.purchase_stages, personal))
    if as_json:
        echo_json([asdict(report) for report in reports])
        return
    if not reports:
        click.echo("no group live codes yet (scrm groupchats codes create NAME --group CHAT_ID)")
        return
    click.echo(table([[r.code, r.name + ("" if r.active else " (inactive)"), len(r.chat_ids), r.figures.joins,
                       r.figures.leaves, r.figures.members_now, r.figures.new_customers, r.figures.conversions,
                       _rate(r.conversion_rate), "yes" if r.fission else ""] for r in reports],
                     ["code", "name", "groups", "joins", "leaves", "members", "new", "conversions", "rate",
                      "fission"]))


@codes.command("show")
@click.argument("code")
@json_option
@click.pass_context
def show(ctx: click.Context, code: str, as_json: bool) -> None:
    """One code: its groups, QR, welcome, figures, and for a fission code its top inviters.

    Example: scrm groupchats codes show gc_K7P3QX9M
    """
    _print_or_json(_report_of(settings_of(ctx), code), as_json)


@codes.command("update")
@click.argument("code")
@_spec_options
@click.option("--no-welcome", is_flag=True, help="Send no welcome from now on.")
@json_option
@click.pass_context
def update(ctx: click.Context, code: str, no_welcome: bool, as_json: bool, **options: Any) -> None:
    """Change a code's groups, automatic groups, welcome or tags; WeCom's join way and welcome follow.

    Groups not given stay as WeCom offers them now (with any it created). Example:
    scrm groupchats codes update gc_K7P3QX9M --group wrA --group wrB --welcome "新人请看群公告"
    """
    settings = settings_of(ctx)

    async def work(sessions: Sessions, api: WeChatApi) -> str:
        async with sessions() as session:
            row = await code_by_code(session, code)
        if row is None:
            raise GroupCodeError([f"no group live code {code!r} (list them with: scrm groupchats codes list)"])
        base = spec_of(row)
        if not options["groups"] and row.active:
            base = replace(base, chat_ids=tuple(await current_groups(api, row.config_id)))
        if no_welcome:
            base = replace(base, welcome_text="", welcome_link=None, welcome_miniprogram=None)
        return (await update_code(sessions, api, row.code, _changed(base, options))).code

    updated = with_store_and_api(settings, work)
    _print_or_json(_report_of(settings, updated), as_json)


@codes.command("deactivate")
@click.argument("code")
@click.pass_context
def deactivate(ctx: click.Context, code: str) -> None:
    """Delete the code's join way (its QR and its members' personal QRs stop working); its figures stay.

    Example: scrm groupchats codes deactivate gc_K7P3QX9M
    """
    row = with_store_and_api(settings_of(ctx), lambda sessions, api: deactivate_code(sessions, api, code))
    click.echo(f"group live code {row.code} deactivated: its QR no longer works")


@codes.command("invite")
@click.argument("code")
@click.option("--customer", "customer_id", type=int, required=True, metavar="ID", help="Whose personal code.")
@json_option
@click.pass_context
def invite(ctx: click.Context, code: str, customer_id: int, as_json: bool) -> None:
    """A customer's personal code under a fission code (made once): friends who join through it count for them.

    Example: scrm groupchats codes invite gc_K7P3QX9M --customer 42
    """

    async def work(sessions: Sessions, api: WeChatApi) -> dict[str, Any]:
        async with sessions() as session, session.begin():
            parent = await code_by_code(session, code)
            customer = await current_customer(session, customer_id)
            if parent is None or customer is None:
                raise GroupCodeError([f"no group live code {code!r}" if parent is None else f"no customer {customer_id}"])
            row = await personal_code(session, api, parent, customer.id)
            return {"code": row.code, "qr_code": row.qr_code, "customer_id": customer.id, "parent": parent.code}

    made = with_store_and_api(settings_of(ctx), work)
    if as_json:
        echo_json(made)
        return
    click.echo(f"personal code {made['code']} of customer {made['customer_id']} (under {made['parent']})")
    click.echo(f"qr: {made['qr_code']}")


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def _print_or_json(r: CodeReport, as_json: bool) -> None:
    if as_json:
        echo_json(asdict(r))
        return
    kind = ", fission" if r.fission else ""
    click.echo(f"group live code {r.code}: {r.name} ({'active' if r.active else 'inactive'}{kind}), "
               f"created {when(r.created_at)}")
    click.echo(f"qr: {r.qr_code or '-'}   config_id: {r.config_id or '-'}")
    click.echo(f"groups: {', '.join(r.chat_ids)}")
    auto = f"on, next named {r.room_base_name or '(WeCom default)'} from {r.room_base_id}" if r.auto_create_room else "off"
    click.echo(f"new group when full: {auto}   tags: {', '.join(r.tags) or '-'}")
    welcome = r.welcome.get("text", "") + (f" [link: {r.welcome['link']['title']}]" if "link" in r.welcome else "")
    click.echo(f"welcome: {welcome or '-'}")
    f = r.figures
    click.echo(f"joins: {f.joins}   leaves: {f.leaves}   members now: {f.members_now}   customers: {f.joiners}   "
               f"new: {f.new_customers}   conversions: {f.conversions} ({_rate(r.conversion_rate)})")
    if r.fission:
        click.echo(f"personal codes: {r.personal_codes}")
    if r.top_inviters:
        click.echo(table([[i.name, i.customer_id, i.code, i.friends, i.joins] for i in r.top_inviters],
                         ["top inviter", "id", "code", "friends", "joins"]))
