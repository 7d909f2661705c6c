"""`scrm groupchats push …` and `scrm groupchats sops …`: group pushes (客户群群发) and group SOPs.

A push is owner-confirmed group-message tasks, one per owner, made by the running bot when due
(bot/group_push_dispatch.py); these commands create, list, show, cancel and remind. SOPs are the
YAML files in `<flows.directory>/group_sops/` (flows/group_sops.py); the bot reads them itself,
these commands check and show them. Times are the brand's (nurture.timezone).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.channel_commands import with_apis
from admin_cli.common import in_store, json_option, table
from admin_cli.main import echo_json, settings_of
from admin_cli.push_commands import admin_name, brand_time
from bot.api_budget import ApiBudgets
from bot.group_push_results import GroupPushFollowUp
from bot.settings import Settings
from bot.wechat_api import WeChatApi
from crm_store.db import create_engine, session_factory
from crm_store.group_chat_models import GroupPush
from crm_store.group_pushes import (
    GroupPushError,
    GroupPushResults,
    GroupPushSpec,
    Link,
    cancel_group_push,
    create_group_push,
    get_group_push,
    group_push_results,
    list_group_pushes,
)
from crm_store.group_segments import GroupSegment, count_groups
from crm_store.models import as_utc, utcnow
from flows.errors import FlowLoadError
from flows.group_sops import GroupSop, group_sop_dir, load_group_sops, next_occurrences


def _local(at: datetime | None, zone: ZoneInfo) -> str:
    return "" if at is None else f"{as_utc(at).astimezone(zone):%Y-%m-%d %H:%M}"


def _push_data(push: GroupPush, counts: dict[str, int] | None = None) -> dict[str, Any]:
    data = {"id": push.id, "name": push.name, "status": push.status, "scheduled_at": as_utc(push.scheduled_at),
            "audience": push.audience, "segment": push.segment, "message": push.message,
            "source_key": push.source_key, "created_by": push.created_by,
            "results_at": as_utc(push.results_at) if push.results_at else None}
    return data | ({"groups": counts} if counts is not None else {})


@click.group("push")
def push() -> None:
    """Group pushes (客户群群发): one message to a segment of customer groups, as tasks their owners confirm."""


@push.command("create")
@click.argument("name")
@click.option("--text", default="", help="The message (at most 4000 bytes).")
@click.option("--link-title", default="", help="A link card's title (with --link-url).")
@click.option("--link-url", default="", help="A link card's address, https://…")
@click.option("--link-desc", default="", help="A link card's description.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Groups with this tag (repeat: all of them).")
@click.option("--any-tag", "any_tags", multiple=True, metavar="TAG", help="Groups with at least one of these.")
@click.option("--owner", default="", metavar="USERID", help="Groups this rep owns.")
@click.option("--name-contains", default="", metavar="TEXT", help="Groups whose name contains this.")
@click.option("--code", default="", metavar="gc_…", help="The groups of this group live code.")
@click.option("--at", "at_text", metavar="TIME", help='When, the brand\'s time, e.g. "2026-12-24 09:00" (default: now).')
@json_option
@click.pass_context
def create(ctx: click.Context, name: str, text: str, link_title: str, link_url: str, link_desc: str,
           tags: tuple[str, ...], any_tags: tuple[str, ...], owner: str, name_contains: str, code: str,
           at_text: str | None, as_json: bool) -> None:
    """Schedule a message for every group of a segment: each owner gets one task with their groups.

    Example: scrm groupchats push create 圣诞上新 --text "圣诞新品到了" --tag 新品群 --at "2026-12-24 09:00"
    """
    settings = settings_of(ctx)
    zone = ZoneInfo(settings.nurture.timezone)
    link = Link(link_title, link_url, link_desc) if link_title or link_url else None
    spec = GroupPushSpec(name, GroupSegment(tags, any_tags, owner, name_contains, code), text, link,
                         scheduled_at=brand_time(at_text, zone))
    try:
        created = in_store(settings, lambda session: create_group_push(session, spec, by=admin_name()))
    except GroupPushError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(_push_data(created))
        return
    click.echo(f"group push {created.id} {created.name!r} scheduled for {_local(created.scheduled_at, zone)} "
               f"({zone.key}): {created.audience} group(s) ({spec.segment.describe()})")
    click.echo(f"results: scrm groupchats push show {created.id}   cancel: scrm groupchats push cancel {created.id}")


@push.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@click.pass_context
def list_command(ctx: click.Context, limit: int, as_json: bool) -> None:
    """The newest group pushes (SOP occurrences too): when, status, groups by what became of them.

    Example: scrm groupchats push list --limit 10
    """
    settings = settings_of(ctx)
    zone = ZoneInfo(settings.nurture.timezone)
    pushes = in_store(settings, lambda session: list_group_pushes(session, limit))
    if as_json:
        echo_json([_push_data(p, counts) for p, counts in pushes])
        return
    if not pushes:
        click.echo("no group pushes yet (scrm groupchats push create NAME --text … --tag …)")
        return
    click.echo(table([[p.id, p.name, p.status, _local(p.scheduled_at, zone), p.audience, c.get("sent", 0),
                       c.get("created", 0) + c.get("unsent", 0), c.get("limited", 0), c.get("failed", 0),
                       c.get("pending", 0)] for p, c in pushes],
                     ["id", "name", "status", f"at ({zone.key})", "groups", "sent", "awaiting owner", "limited",
                      "failed", "pending"]))


@push.command("show")
@click.argument("push_id", type=int, metavar="ID")
@json_option
@click.pass_context
def show(ctx: click.Context, push_id: int, as_json: bool) -> None:
    """One group push: its groups by status, why any were limited or failed, tasks, reminders, results.

    Example: scrm groupchats push show 3
    """
    settings = settings_of(ctx)
    zone = ZoneInfo(settings.nurture.timezone)
    try:
        results = in_store(settings, lambda session: group_push_results(session, push_id))
    except GroupPushError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(_push_data(results.push) | {"groups": results.by_status, "limited": results.limited,
                                              "failed": results.failed, "tasks": results.tasks,
                                              "reminders": results.reminders})
        return
    _print_results(results, zone)


def _print_results(results: GroupPushResults, zone: ZoneInfo) -> None:
    p = results.push
    click.echo(f"group push {p.id} {p.name!r} ({p.status}) at {_local(p.scheduled_at, zone)} ({zone.key}), "
               f"by {p.created_by or '-'}{f', from {p.source_key}' if p.source_key else ''}")
    click.echo(f"groups: {GroupSegment.from_data(p.segment).describe()}; message: {p.message.get('text', '')}"
               + (f" + link {p.message['link'].get('url')}" if p.message.get("link") else ""))
    counts = ", ".join(f"{status} {count}" for status, count in sorted(results.by_status.items())) or "none"
    click.echo(f"{results.audience} group(s): {counts}")
    for title, reasons in (("limited", results.limited), ("failed", results.failed)):
        for reason, count in reasons.items():
            click.echo(f"  {title} {count}: {reason}")
    click.echo(f"tasks {results.tasks}, reminders {results.reminders}, results read "
               f"{_local(p.results_at, zone) or 'not yet'}")


@push.command("cancel")
@click.argument("push_id", type=int, metavar="ID")
@click.pass_context
def cancel(ctx: click.Context, push_id: int) -> None:
    """Cancel a group push: groups not yet in a task are not sent; tasks already made stay with their owners.

    Example: scrm groupchats push cancel 3
    """
    try:
        cancelled = in_store(settings_of(ctx), lambda session: cancel_group_push(session, push_id))
    except GroupPushError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"group push {push_id} cancelled: {cancelled} group(s) will not be sent")


@push.command("remind")
@click.argument("push_id", type=int, metavar="ID")
@click.pass_context
def remind(ctx: click.Context, push_id: int) -> None:
    """Remind now every owner of the push who has not sent their task (WeCom: 3 reminders a task in 24 h).

    Example: scrm groupchats push remind 3
    """
    settings = settings_of(ctx)
    try:
        in_store(settings, lambda session: get_group_push(session, push_id))
    except GroupPushError as exc:
        raise click.ClickException(str(exc)) from None
    reminded = with_apis(settings, lambda apis: _remind(settings, apis["wecom.contacts"], push_id))
    click.echo(f"group push {push_id}: {reminded} owner task(s) reminded"
               + ("" if reminded else " (every task sent, or reminded the most it may be)"))


async def _remind(settings: Settings, api: WeChatApi, push_id: int) -> int:
    engine = create_engine(settings.store.url)
    try:
        follow_up = GroupPushFollowUp(session_factory(engine), api, settings.groupchats,
                                      ApiBudgets(api.state, settings.sender.budget_share))
        return await follow_up.remind_due(push_id=push_id)
    finally:
        await engine.dispose()


# ---------------------------------------------------------------- SOPs


@click.group("sops")
def sops() -> None:
    """Group SOPs (群SOP): pushes to groups on a calendar, from <flows.directory>/group_sops/*.yaml."""


def _load(settings: Settings) -> dict[str, GroupSop]:
    try:
        return load_group_sops(group_sop_dir(Path(settings.flows.directory)), settings.nurture.timezone)[0]
    except FlowLoadError as exc:
        raise click.ClickException(f"the group SOPs have errors, none is used until they are fixed:\n{exc}") from None


def _sop_data(sop: GroupSop, reach: int | None = None) -> dict[str, Any]:
    return {"id": sop.id, "name": sop.name, "enabled": sop.enabled, "groups": sop.segment.to_data(),
            "timezone": sop.timezone,
            "steps": [{"id": s.id, "at": f"{s.at:%H:%M}", "every": s.every.describe(), "text": s.text,
                       "link": dict(vars(s.link)) if s.link else None} for s in sop.steps]} \
        | ({"groups_now": reach} if reach is not None else {})


@sops.command("list")
@json_option
@click.pass_context
def sops_list(ctx: click.Context, as_json: bool) -> None:
    """Every group SOP: its groups and its steps.

    Example: scrm groupchats sops list --json
    """
    found = _load(settings_of(ctx))
    if as_json:
        echo_json([_sop_data(sop) for sop in found.values()])
        return
    if not found:
        click.echo("no group SOPs (add one: <flows.directory>/group_sops/NAME.yaml)")
        return
    click.echo(table([[s.id, s.name, "yes" if s.enabled else "no", s.segment.describe(),
                       "; ".join(f"{step.id} {step.at:%H:%M} {step.every.describe()}" for step in s.steps)]
                      for s in found.values()], ["id", "name", "enabled", "groups", "steps"]))


@sops.command("validate")
@click.pass_context
def sops_validate(ctx: click.Context) -> None:
    """Check every group SOP file; every problem with its file and line.

    Example: scrm groupchats sops validate
    """
    found = _load(settings_of(ctx))
    click.echo(f"{len(found)} group SOP(s) OK: {', '.join(found) or '-'}")


@sops.command("show")
@click.argument("sop_id", metavar="ID")
@click.option("--next", "count", type=click.IntRange(1, 50), default=5, show_default=True,
              help="How many coming occurrences to list.")
@json_option
@click.pass_context
def sops_show(ctx: click.Context, sop_id: str, count: int, as_json: bool) -> None:
    """One group SOP: its steps, its next occurrences and how many groups it reaches now.

    Example: scrm groupchats sops show new_arrivals --next 10
    """
    settings = settings_of(ctx)
    found = _load(settings)
    if sop_id not in found:
        raise click.ClickException(f"no group SOP {sop_id!r}; SOPs: {', '.join(found) or 'none'}")
    sop = found[sop_id]

    async def reach(session: AsyncSession) -> int:
        return await count_groups(session, sop.segment)

    groups_now = in_store(settings, reach)
    coming = next_occurrences(sop, utcnow(), count)
    zone = ZoneInfo(sop.timezone)
    if as_json:
        echo_json(_sop_data(sop, groups_now) | {"next": [{"step": o.step.id, "at": o.due_at, "key": o.source_key}
                                                         for o in coming]})
        return
    click.echo(f"group SOP {sop.id} {sop.name!r} ({'enabled' if sop.enabled else 'disabled: never sent'}), "
               f"{sop.timezone}: {groups_now} group(s) now ({sop.segment.describe()})")
    for step in sop.steps:
        click.echo(f"  {step.id}: {step.at:%H:%M} every {step.every.describe()}: {step.text}")
    click.echo("next: " + (", ".join(f"{_local(o.due_at, zone)} {o.step.id}" for o in coming) or "none"))


__all__ = ["push", "sops"]
