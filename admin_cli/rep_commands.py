"""`scrm reps ...`: the sales reps customers are handed to, their teams, their departure, their figures.

Each command is one transaction over crm_store.reps (and handoff_queries for `stats`): the
functions the bot routes with, so a capacity, hours or duty change holds for the next
handoff. Hours are the brand's (handoff.timezone); an empty --hours means office hours.
A departure moves customers and customer groups on WeCom and is bot.rep_departure's work.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import click
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.common import in_store, json_option, table
from admin_cli.handoff_commands import SINCE, duration, local_since
from admin_cli.main import cli, echo_json, settings_of
from bot.rep_departure import Departure, DepartureError, depart
from bot.settings import Settings
from bot.wechat_api import ApiError
from crm_store.handoff_queries import RepFigures, rep_figures
from crm_store.lifecycle import Lifecycle
from crm_store.reps import (
    RepError,
    RepView,
    add_rep,
    delete_team,
    list_reps,
    list_teams,
    set_team,
    update_rep,
)
from crm_store.tags import tag_counts

HOURS_HELP = 'When they take customers, e.g. "mon-fri 09:00-18:00; sat 10:00-16:00"; "" = office hours.'


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _rep_work(settings: Settings, change: Callable[[AsyncSession], Awaitable[object]], userid: str) -> RepView:
    """Run `change(session)` on the store, then the rep as `scrm reps list` shows them; RepError as a message."""
    office, zone = settings.handoff.hours, ZoneInfo(settings.handoff.timezone)

    async def work(session: AsyncSession) -> RepView:
        await change(session)
        views = await list_reps(session, office, zone, include_left=True)
        return next(view for view in views if view.userid == userid.strip())

    try:
        return in_store(settings, work)
    except RepError as exc:
        raise click.ClickException(str(exc)) from None


def _print_rep(view: RepView, as_json: bool, prefix: str = "rep") -> None:
    if as_json:
        echo_json(asdict(view))
        return
    name = f" ({view.name})" if view.name else ""
    click.echo(f"{prefix} {view.userid}{name}: capacity {view.capacity}, hours {view.hours}, "
               f"on duty: {_yes(view.on_duty)}, on now: {_yes(view.on_now)}, load {view.load}")


@cli.group("reps")
def reps_group() -> None:
    """Sales reps who take customers over from the bot: hours, capacity, duty, teams, departures, figures."""


@reps_group.command("add")
@click.argument("userid")
@click.option("--name", default="", help="How admins and cards call them.")
@click.option("--capacity", type=int, default=5, show_default=True, help="Customers at once (1-500).")
@click.option("--hours", default="", help=HOURS_HELP)
@click.option("--off-duty", is_flag=True, help="Added, but not taking customers until: scrm reps on USERID.")
@json_option
@click.pass_context
def add_command(ctx: click.Context, userid: str, name: str, capacity: int, hours: str, off_duty: bool,
                as_json: bool) -> None:
    """Add a rep by their WeCom userid (a departed rep comes back with their history).

    Example: scrm reps add zhangsan --name 张三 --capacity 8 --hours "mon-fri 09:00-18:00"
    """
    view = _rep_work(settings_of(ctx), lambda session: add_rep(session, userid, name, capacity, hours, not off_duty),
                     userid)
    _print_rep(view, as_json, "added rep")


@reps_group.command("list")
@click.option("--all", "include_left", is_flag=True, help="Reps who left the company too.")
@json_option
@click.pass_context
def list_command(ctx: click.Context, include_left: bool, as_json: bool) -> None:
    """Reps: on duty, on now (on duty and inside their hours), hours, capacity, load, teams.

    Example: scrm reps list --all --json
    """
    settings = settings_of(ctx)
    office, zone = settings.handoff.hours, ZoneInfo(settings.handoff.timezone)
    views = in_store(settings, lambda session: list_reps(session, office, zone, include_left))
    if as_json:
        echo_json([asdict(view) for view in views])
        return
    if not views:
        click.echo("no reps yet (scrm reps add USERID --name NAME)")
        return
    click.echo(table([[v.userid + ("" if v.active else " (left)"), v.name, _yes(v.on_duty), _yes(v.on_now), v.hours,
                       v.capacity, v.load, ", ".join(v.teams)] for v in views],
                     ["userid", "name", "on duty", "on now", "hours", "capacity", "load", "teams"]))


@reps_group.command("set")
@click.argument("userid")
@click.option("--name", help="A new name.")
@click.option("--capacity", type=int, help="Customers at once (1-500).")
@click.option("--hours", help=HOURS_HELP)
@json_option
@click.pass_context
def set_command(ctx: click.Context, userid: str, name: str | None, capacity: int | None, hours: str | None,
                as_json: bool) -> None:
    """Change a rep's name, capacity or hours (--hours "" puts them back on office hours).

    Example: scrm reps set zhangsan --capacity 10 --hours "mon-sat 10:00-19:00"
    """
    if name is None and capacity is None and hours is None:
        raise click.UsageError("nothing to change: give --name, --capacity or --hours")
    view = _rep_work(settings_of(ctx), lambda session: update_rep(session, userid, name=name, capacity=capacity,
                                                                  hours=hours), userid)
    _print_rep(view, as_json)


def _duty(ctx: click.Context, userid: str, on: bool, as_json: bool) -> None:
    view = _rep_work(settings_of(ctx), lambda session: update_rep(session, userid, on_duty=on), userid)
    _print_rep(view, as_json)
    if on and not view.on_now and not as_json:
        click.echo(f"note: outside their hours now ({view.hours}): handoffs come to them when those start")


@reps_group.command("on")
@click.argument("userid")
@json_option
@click.pass_context
def on_command(ctx: click.Context, userid: str, as_json: bool) -> None:
    """Put a rep on duty: handoffs come to them inside their hours.

    Example: scrm reps on zhangsan
    """
    _duty(ctx, userid, True, as_json)


@reps_group.command("off")
@click.argument("userid")
@json_option
@click.pass_context
def off_command(ctx: click.Context, userid: str, as_json: bool) -> None:
    """Take a rep off duty: no new handoffs (the customers they have stay with them).

    Example: scrm reps off zhangsan
    """
    _duty(ctx, userid, False, as_json)


@reps_group.command("team")
@click.argument("name")
@click.option("--tag", "tags", multiple=True, help="Customers with this catalog tag go to the team (repeat).")
@click.option("--product", "products", multiple=True, help="Customers who mention this product (repeat).")
@click.option("--member", "members", multiple=True, metavar="USERID", help="A rep in the team (repeat).")
@json_option
@click.pass_context
def team_command(ctx: click.Context, name: str, tags: tuple[str, ...], products: tuple[str, ...],
                 members: tuple[str, ...], as_json: bool) -> None:
    """Create or replace a team: the reps who take customers with its tags or asking about its products.

    Example: scrm reps team 大客户 --tag 高意向 --product 年卡 --member zhangsan --member lisi
    """

    async def work(session: AsyncSession) -> dict[str, Any]:
        known = [count.tag for count in await tag_counts(session)]
        team = await set_team(session, name, tags, products, members, known)
        return {"name": team.name, "tags": list(team.tags), "products": list(team.products),
                "members": list(dict.fromkeys(members))}

    try:
        team = in_store(settings_of(ctx), work)
    except RepError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(team)
        return
    click.echo(f"team {team['name']}: tags {', '.join(team['tags']) or '-'}; products "
               f"{', '.join(team['products']) or '-'}; members {', '.join(team['members']) or '-'}")


@reps_group.command("teams")
@json_option
@click.pass_context
def teams_command(ctx: click.Context, as_json: bool) -> None:
    """Teams with their tags, products and members.

    Example: scrm reps teams --json
    """
    rows = in_store(settings_of(ctx), lambda session: list_teams(session))
    teams = [{"name": team.name, "tags": list(team.tags), "products": list(team.products), "members": members}
             for team, members in rows]
    if as_json:
        echo_json(teams)
        return
    if not teams:
        click.echo("no teams (every rep takes every customer); make one with: scrm reps team NAME --member USERID")
        return
    click.echo(table([[t["name"], ", ".join(t["tags"]), ", ".join(t["products"]), ", ".join(t["members"])]
                      for t in teams], ["team", "tags", "products", "members"]))


@reps_group.command("team-delete")
@click.argument("name")
@click.pass_context
def team_delete_command(ctx: click.Context, name: str) -> None:
    """Delete a team (its reps stay, and take any customer).

    Example: scrm reps team-delete 大客户
    """
    try:
        in_store(settings_of(ctx), lambda session: delete_team(session, name))
    except RepError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"deleted team {name}")


@reps_group.command("leave")
@click.argument("userid")
@click.option("--to", "takeover", metavar="USERID", help="The rep who takes their customers (default: shared out).")
@json_option
@click.pass_context
def leave_command(ctx: click.Context, userid: str, takeover: str | None, as_json: bool) -> None:
    """A rep left the company: their customers and customer groups move to other reps on WeCom, their open
    handoffs are passed on.

    Example: scrm reps leave zhangsan --to lisi
    """
    try:
        departure = asyncio.run(depart(settings_of(ctx), userid, takeover))
    except DepartureError as exc:
        raise click.ClickException(str(exc)) from None
    except ApiError as exc:  # asking WeCom for the unassigned list comes before any change to the store
        raise click.ClickException(f"WeCom did not list the rep's unassigned customers ({exc}): nothing was "
                                   "changed, try again") from None
    if as_json:
        echo_json(asdict(departure))
        return
    moved = ", ".join(f"{owner} {count}" for owner, count in sorted(departure.takeovers.items()))
    click.echo(f"{departure.userid} has left: {departure.customers_transferred} customer(s) transferred"
               + (f" ({moved})" if moved else ""))
    click.echo(f"open handoffs: {departure.handoffs_moved} passed to other reps, {departure.handoffs_queued} "
               f"back in the queue; unassigned customers seen on WeCom: {departure.unassigned_seen}")
    echo_groups_moved(departure)


def echo_groups_moved(departure: Departure) -> None:
    """The customer groups moved (per new owner) and, one a line, those WeCom would not move."""
    owners = Counter(group.to for group in departure.groups_moved)
    moved = ", ".join(f"{owner} {count}" for owner, count in sorted(owners.items()))
    click.echo(f"customer groups: {len(departure.groups_moved)} moved" + (f" ({moved})" if moved else "")
               + f", {len(departure.groups_failed)} not moved")
    for failed in departure.groups_failed:
        click.echo(f"  {failed.chat_id}: not moved, {failed.reason}")


@reps_group.command("stats")
@click.option("--since", type=SINCE, help="Handoffs opened since this local date (default: ever).")
@json_option
@click.pass_context
def stats_command(ctx: click.Context, since: datetime | None, as_json: bool) -> None:
    """Per rep: handoffs offered, taken, open now, time to first response (median, p90), who closed them, outcomes.

    Example: scrm reps stats --since 2026-11-01
    """
    settings = settings_of(ctx)
    lifecycle = Lifecycle(settings.lifecycle)
    figures: list[RepFigures] = in_store(settings, lambda session: rep_figures(session, local_since(since)))
    if as_json:
        echo_json([asdict(f) for f in figures])
        return
    if not figures:
        click.echo("no reps yet (scrm reps add USERID --name NAME)")
        return
    click.echo(table([[f.userid + ("" if f.active else " (left)"), f.name, f.offered, f.taken, f.open_now,
                       duration(f.median_first_response_s), duration(f.p90_first_response_s),
                       _counts(f.closed_by), _counts({lifecycle.label(s): n for s, n in f.outcomes.items()}),
                       f.advanced] for f in figures],
                     ["rep", "name", "offered", "taken", "open", "1st resp p50", "p90", "closed by", "outcomes",
                      "advanced"]))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {n}" for key, n in counts.items()) or "-"
