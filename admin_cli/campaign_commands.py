"""`scrm campaigns ...`: group-buy (拼团) campaigns, their groups and results.

Each command is one transaction over crm_store.campaigns and group_buys: the functions the
bot uses. A definition, from options or a YAML file, is checked whole before anything is
stored, and every problem is named. Campaign and group times are shown in the brand's time
zone (growth.timezone): the times customers are told.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.common import in_store, json_option, table
from admin_cli.main import cli, echo_json, settings_of
from crm_store.campaigns import (
    CAMPAIGN_FIELDS,
    CampaignError,
    CampaignStats,
    campaign_by_code,
    campaign_stats,
    close_campaign,
    create_campaign,
    list_campaigns,
    spec_from_mapping,
    yuan,
)
from crm_store.customer_queries import names_of
from crm_store.group_buys import open_groups
from crm_store.growth_models import Campaign, GroupBuy
from crm_store.lifecycle import Lifecycle
from crm_store.models import as_utc, utcnow
from crm_store.tags import tag_counts
from flows.errors import Reporter
from flows.yaml_source import Node, parse_yaml

# ---------------------------------------------------------------- campaigns: reading a definition


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The campaign mapping in a YAML file and the line of each key; every YAML problem with its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: cannot read it ({exc})") from None
    report = Reporter(str(path))
    root = parse_yaml(text, report)
    if root is None:
        raise click.ClickException("not a campaign, nothing was stored:\n  "
                                   + "\n  ".join(str(error) for error in report.errors))
    return _plain(root), root.key_lines


def _plain(node: Node) -> Any:
    if node.kind == "map":
        return {key: _plain(value) for key, value in node.mapping.items()}
    if node.kind == "seq":
        return [_plain(item) for item in node.items]
    return node.value


def _rejected(exc: CampaignError, source: str, lines: dict[str, int]) -> click.ClickException:
    """Every problem on a line of its own, with the file and line of its key when it came from a file."""
    text = str(exc)
    _, _, listed = text.partition(":\n")
    located = []
    for problem in [line.strip() for line in listed.splitlines()] if listed else [text]:
        key = problem.split(":", 1)[0]
        if key.startswith("unknown field"):
            key = next((name for name in lines if name not in CAMPAIGN_FIELDS), "")
        located.append((f"{source}:{lines[key]}: " if key in lines else f"{source}: " if source else "") + problem)
    return click.ClickException("cannot create the campaign, nothing was stored:\n  " + "\n  ".join(located))


def _normalised(data: dict[str, Any], lifecycle: Lifecycle) -> dict[str, Any]:
    """fill_stage may be a label (成交), as everywhere else (an unknown one is left for the spec to name);
    fill_tags may be one tag written without brackets."""
    data = dict(data)
    if isinstance(data.get("fill_tags"), str):
        data["fill_tags"] = [data["fill_tags"]]
    stage = data.get("fill_stage")
    if isinstance(stage, str) and stage.strip():
        try:
            data["fill_stage"] = lifecycle.resolve(stage)
        except ValueError:
            pass
    return data


# ---------------------------------------------------------------- campaigns: showing one


def _state(campaign: Campaign, now: datetime) -> str:
    if campaign.status == "closed":
        return "closed"
    if as_utc(campaign.ends_at) <= now:
        return "ended"
    if as_utc(campaign.starts_at) > now:
        return "upcoming"
    return "sold out" if campaign.sold >= campaign.stock else "running"


def _view(stats: CampaignStats, now: datetime) -> dict[str, Any]:
    c = stats.campaign
    return {
        "code": c.code, "name": c.name, "product": c.product, "price": yuan(c.price_cents),
        "price_cents": c.price_cents, "group_size": c.group_size, "group_hours": c.group_ttl_s / 3600,
        "starts_at": as_utc(c.starts_at), "ends_at": as_utc(c.ends_at), "stock": c.stock, "sold": c.sold,
        "limit_per_customer": c.limit_per_customer, "new_customers_only": c.new_customers_only,
        "fill_stage": c.fill_stage, "fill_tags": list(c.fill_tags), "status": c.status, "state": _state(c, now),
        "created_at": as_utc(c.created_at), "closed_at": c.closed_at and as_utc(c.closed_at),
        "groups_opened": stats.opened, "groups_open": stats.open, "groups_filled": stats.filled,
        "groups_expired": stats.expired, "members": stats.members, "fill_rate": stats.fill_rate,
    }


def _local(at: datetime | None, zone: ZoneInfo) -> str:
    return "" if at is None else f"{as_utc(at).astimezone(zone):%Y-%m-%d %H:%M}"


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def _print_campaign(view: dict[str, Any], zone: ZoneInfo, lifecycle: Lifecycle) -> None:
    click.echo(f"campaign {view['code']}: {view['name']} ({view['state']})")
    click.echo(f"product: {view['product']}   price: ¥{view['price']}   group: {view['group_size']} people "
               f"within {view['group_hours']:g}h")
    click.echo(f"window: {_local(view['starts_at'], zone)} → {_local(view['ends_at'], zone)} ({zone.key})")
    click.echo(f"stock: {view['sold']}/{view['stock']} sold   limit: {view['limit_per_customer']} group(s) per "
               f"customer   new customers only: {'yes' if view['new_customers_only'] else 'no'}")
    stage = f"{view['fill_stage']} ({lifecycle.label(view['fill_stage'])})" if view["fill_stage"] else "-"
    click.echo(f"when a group fills: stage {stage}, tags {', '.join(view['fill_tags']) or '-'}")
    click.echo(f"groups: {view['groups_opened']} opened, {view['groups_open']} open, {view['groups_filled']} "
               f"filled, {view['groups_expired']} expired   members: {view['members']}   "
               f"fill rate: {_rate(view['fill_rate'])}")


# ---------------------------------------------------------------- campaigns: commands


@cli.group("campaigns")
def campaigns_group() -> None:
    """Group-buy campaigns (拼团): create, list, show, close."""


@campaigns_group.command("create")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A YAML mapping with the fields below (code, name, price, group_size…), instead of options.")
@click.option("--code", help="The campaign's short name: letters, digits, - or _.")
@click.option("--name", help="What customers see, e.g. 春茶三人团.")
@click.option("--product", help="The product (default: the name).")
@click.option("--price", metavar="YUAN", help="The group price in yuan, e.g. 59.90.")
@click.option("--group-size", type=int, help="People per group (at least 2).")
@click.option("--group-hours", type=float, help="How long a group may take to fill, in hours.")
@click.option("--starts", metavar="TIME", help="2026-12-01 or 2026-12-01T20:00, the brand's time (default: now).")
@click.option("--ends", metavar="TIME", help="When the campaign ends, the brand's time.")
@click.option("--stock", type=int, help="Seats for sale in all groups together.")
@click.option("--limit-per-customer", type=int, help="Groups one customer may be in (default 1).")
@click.option("--new-customers-only", is_flag=True, help="Only customers who never bought may join.")
@click.option("--fill-stage", metavar="STAGE", help="Move members to this stage (id or label) when a group fills.")
@click.option("--fill-tag", "fill_tags", multiple=True, metavar="TAG", help="Tag members when a group fills "
              "(repeat; catalog tags only).")
@json_option
@click.pass_context
def create(ctx: click.Context, path: Path | None, as_json: bool, **options: Any) -> None:
    """Define a group-buy campaign, from options or a YAML file; every problem is listed, nothing half-stored.

    Example: scrm campaigns create --code spring-tea --name 春茶三人团 --price 59.90 --group-size 3 --group-hours 24 --ends 2099-12-31 --stock 300 --fill-tag 拼团成功
    """
    settings = settings_of(ctx)
    given = {key: list(value) if isinstance(value, tuple) else value
             for key, value in options.items() if value is not None and value is not False and value != ()}
    if path and given:
        raise click.UsageError("give --file or the options, not both")
    data, lines = _read_file(path) if path else (given, {})
    lifecycle = Lifecycle(settings.lifecycle)
    data = _normalised(data, lifecycle)

    async def work(session: AsyncSession) -> dict[str, Any]:
        tags = [count.tag for count in await tag_counts(session)]
        spec = spec_from_mapping(data, lifecycle.stage_ids, tags, settings.growth.timezone)
        return _view(await campaign_stats(session, await create_campaign(session, spec)), utcnow())

    try:
        view = in_store(settings, work)
    except CampaignError as exc:
        raise _rejected(exc, str(path or ""), lines) from None
    if as_json:
        echo_json(view)
        return
    _print_campaign(view, ZoneInfo(settings.growth.timezone), lifecycle)


@campaigns_group.command("list")
@json_option
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """Every campaign: price, group size, window, stock sold, groups opened/open/filled/expired, fill rate, status.

    Example: scrm campaigns list --json
    """
    settings = settings_of(ctx)
    now, zone = utcnow(), ZoneInfo(settings.growth.timezone)
    views = [_view(stats, now) for stats in in_store(settings, list_campaigns)]
    if as_json:
        echo_json(views)
        return
    if not views:
        click.echo("no campaigns yet (scrm campaigns create --file campaign.yaml)")
        return
    click.echo(table([[v["code"], v["name"], f"¥{v['price']}", v["group_size"],
                       f"{_local(v['starts_at'], zone)} → {_local(v['ends_at'], zone)}", f"{v['sold']}/{v['stock']}",
                       v["groups_opened"], v["groups_open"], v["groups_filled"], v["groups_expired"],
                       _rate(v["fill_rate"]), v["state"]] for v in views],
                     ["code", "name", "price", "size", f"window ({zone.key})", "sold/stock", "opened", "open",
                      "filled", "expired", "fill rate", "status"]))


@campaigns_group.command("show")
@click.argument("code")
@click.option("--groups", "group_limit", type=click.IntRange(0, 1000), default=20, show_default=True,
              help="How many open groups to list (fullest first).")
@json_option
@click.pass_context
def show(ctx: click.Context, code: str, group_limit: int, as_json: bool) -> None:
    """One campaign: every field, its numbers, and its open groups (code, leader, members/size, deadline).

    Example: scrm campaigns show spring-tea --groups 50
    """
    settings = settings_of(ctx)
    now, zone = utcnow(), ZoneInfo(settings.growth.timezone)

    async def work(session: AsyncSession) -> tuple[dict[str, Any], list[GroupBuy], dict[int, str]] | None:
        campaign = await campaign_by_code(session, code.strip())
        if campaign is None:
            return None
        groups = await open_groups(session, campaign.id, now, exclude=0, limit=group_limit) if group_limit else []
        names = await names_of(session, [group.leader_id for group in groups])
        return _view(await campaign_stats(session, campaign), now), groups, names

    found = in_store(settings, work)
    if found is None:
        raise click.ClickException(f"no campaign {code!r} (list them with: scrm campaigns list)")
    view, groups, names = found
    rows: list[dict[str, Any]] = [{"code": g.code, "leader_id": g.leader_id, "leader": names.get(g.leader_id, ""), "members": g.members,
             "size": g.size, "deadline": as_utc(g.deadline)} for g in groups]
    if as_json:
        echo_json(view | {"open_groups": rows})
        return
    _print_campaign(view, ZoneInfo(settings.growth.timezone), Lifecycle(settings.lifecycle))
    if rows:
        click.echo("open groups (fullest first):")
        click.echo(table([[r["code"], f"{r['leader']} #{r['leader_id']}", f"{r['members']}/{r['size']}",
                           _local(r["deadline"], zone)] for r in rows], ["code", "leader", "members", "deadline"]))
    if view["groups_open"] > len(rows):
        click.echo(f"… {view['groups_open'] - len(rows)} more open (or past their deadline): --groups N shows more")


@campaigns_group.command("close")
@click.argument("code")
@json_option
@click.pass_context
def close(ctx: click.Context, code: str, as_json: bool) -> None:
    """Close a campaign: no new groups or joins; its open groups expire at the scheduler's next run, members told.

    Example: scrm campaigns close spring-tea
    """
    settings = settings_of(ctx)

    async def work(session: AsyncSession) -> dict[str, Any]:
        campaign = await close_campaign(session, code.strip())
        return _view(await campaign_stats(session, campaign), utcnow())

    try:
        view = in_store(settings, work)
    except CampaignError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(view)
        return
    click.echo(f"campaign {view['code']} closed: no new groups or joins; {view['groups_open']} open group(s) "
               "expire at the scheduler's next run and their members are told")
