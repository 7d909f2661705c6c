"""`scrm push ...`: one message to a segment of customers, now or at a set time, and its results.

Each command is one transaction over crm_store.pushes and crm_store.segments. The segment
options here are shared with `scrm sequences enroll`. Times are the brand's
(nurture.timezone): what an admin types and what customers live by.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import click
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.common import in_store, json_option, table
from admin_cli.main import cli, echo_json, settings_of
from bot.api_budget import ApiBudgets
from bot.settings import Settings
from core.api_budget import Platform
from core.shared_state import open_shared_state
from core.templates import parse_template, render
from crm_store.lifecycle import Lifecycle
from crm_store.models import as_utc, utcnow
from crm_store.nurture_models import Push
from crm_store.pushes import (
    PushError,
    PushResults,
    cancel_push,
    check_push,
    create_push,
    list_pushes,
    pending_by_channel,
    push_results,
)
from crm_store.segments import SampleCustomer, Segment, SegmentError, checked_segment, count_and_sample

# The API a push's send spends, by the channel its customer last chatted on (bot/delivery.py: notify_call).
PUSH_APIS: dict[str, tuple[Platform, str]] = {"kf": ("wecom", "kf/send_msg"), "oa": ("oa", "message/custom/send")}
SEGMENT_KEYS = ("tags", "any_tags", "not_tags", "stages", "social_min", "active_within_days", "inactive_for_days",
                "channel", "reachable")
_SEGMENT_OPTIONS = (
    click.option("--tag", "tags", multiple=True, metavar="TAG", help="Has this tag (repeat: all of them)."),
    click.option("--any-tag", "any_tags", multiple=True, metavar="TAG", help="Has at least one of these (repeat)."),
    click.option("--not-tag", "not_tags", multiple=True, metavar="TAG", help="Has none of these (repeat)."),
    click.option("--stage", "stages", multiple=True, metavar="STAGE", help="In this stage, id or label (repeat: "
                 "any of them)."),
    click.option("--min-social", "social_min", type=float, help="A social score of at least this."),
    click.option("--active-within", "active_within_days", type=int, metavar="DAYS", help="Wrote within DAYS days."),
    click.option("--inactive-for", "inactive_for_days", type=int, metavar="DAYS", help="Silent for DAYS days."),
    click.option("--channel", metavar="CODE", help="First came through this entry channel (ch_…)."),
    click.option("--reachable", is_flag=True, help="Only customers the bot may write to now (a kf or OA chat "
                 "within 48 h)."),
)


def segment_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The segment options, passed to the command as keyword arguments (see `segment_of`)."""
    for option in reversed(_SEGMENT_OPTIONS):
        function = option(function)
    return function


def segment_of(options: dict[str, Any]) -> Segment | None:
    """The segment the options describe (removed from `options`), or None when none was given."""
    given = {key: options.pop(key) for key in SEGMENT_KEYS if key in options}
    values = {key: value for key, value in given.items() if value not in (None, (), False)}
    return Segment.from_data(values) if values else None


def admin_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "admin"


def brand_time(text: str | None, zone: ZoneInfo) -> datetime | None:
    """`2026-12-01T20:00` (or with a space) in the brand's time zone; a time with an offset keeps it."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.UsageError(f"--at {text!r}: a time like 2026-12-01T20:00 (the brand's, {zone.key})") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def _local(at: datetime | None, zone: ZoneInfo) -> str:
    return "" if at is None else f"{as_utc(at).astimezone(zone):%Y-%m-%d %H:%M}"


def _sample_rows(sample: list[SampleCustomer], lifecycle: Lifecycle, zone: ZoneInfo) -> str:
    return table([[c.id, c.name, lifecycle.label(c.stage), ", ".join(c.tags), _local(c.last_seen_at, zone)]
                  for c in sample], ["id", "name", "stage", "tags", "last seen"])


def sample_data(sample: list[SampleCustomer]) -> list[dict[str, Any]]:
    return [{"id": c.id, "name": c.name, "stage": c.stage, "tags": list(c.tags), "last_seen_at": c.last_seen_at}
            for c in sample]


def preview_text(text: str, customer: SampleCustomer, lifecycle: Lifecycle) -> str:
    """What this customer would read: the fields filled as the dispatcher fills them."""
    return render(parse_template(text), {"customer.name": customer.name or "您", "customer.id": customer.id,
                                         "customer.stage_label": lifecycle.label(customer.stage)})


def segment_required(segment: Segment | None) -> Segment:
    if segment is None:
        raise click.UsageError("say who: at least one of --tag, --any-tag, --not-tag, --stage, --min-social, "
                               "--active-within, --inactive-for, --channel, --reachable")
    return segment


# ---------------------------------------------------------------- commands


@cli.group("push")
def push_group() -> None:
    """One-off messages to a segment of customers: preview, create, list, show, cancel."""


@push_group.command("preview")
@segment_options
@json_option
@click.pass_context
def preview(ctx: click.Context, as_json: bool, **options: Any) -> None:
    """How many customers a segment has, and ten of them (customers who opted out of marketing are left out).

    Example: scrm push preview --tag 高意向 --stage 意向 --active-within 30
    """
    settings = settings_of(ctx)
    segment, lifecycle = segment_required(segment_of(options)), Lifecycle(settings.lifecycle)

    async def work(session: AsyncSession) -> tuple[Segment, int, list[SampleCustomer]]:
        checked = await checked_segment(session, segment, lifecycle)
        return checked, *await count_and_sample(session, checked, 10, exclude_opted_out=True)

    try:
        checked, count, sample = in_store(settings, work)
    except SegmentError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json({"segment": checked.to_data(), "count": count, "sample": sample_data(sample)})
        return
    click.echo(f"{count} customer(s): {checked.describe()}")
    if sample:
        click.echo(_sample_rows(sample, lifecycle, ZoneInfo(settings.nurture.timezone)))


@push_group.command("create")
@click.option("--name", required=True, help="What `scrm push list` calls it, e.g. 双十二预热.")
@click.option("--text", required=True, help="The message; may show {{ customer.name }}, {{ customer.stage_label }} "
              "and {{ customer.id }}.")
@click.option("--at", "at_text", metavar="TIME", help="When, the brand's time (nurture.timezone), e.g. "
              "2026-12-01T20:00 (default: now).")
@click.option("--dry-run", is_flag=True, help="Show the audience and the message; write nothing.")
@segment_options
@json_option
@click.pass_context
def create(ctx: click.Context, name: str, text: str, at_text: str | None, dry_run: bool, as_json: bool,
           **options: Any) -> None:
    """Schedule a message for everyone in a segment: one pending send each, sent politely when due.

    Example: scrm push create --name 双十二预热 --text "{{ customer.name }}，双十二全场 8 折" --tag 高意向 --at 2099-12-11T20:00
    """
    settings = settings_of(ctx)
    segment, lifecycle = segment_required(segment_of(options)), Lifecycle(settings.lifecycle)
    zone = ZoneInfo(settings.nurture.timezone)
    at = brand_time(at_text, zone)
    try:
        if dry_run:
            _dry_run(settings, name, text, at, segment, lifecycle, as_json)
            return
        push, checked = in_store(settings, lambda session: _create(session, name, segment, text, at, lifecycle,
                                                                   zone))
    except (SegmentError, PushError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(_push_data(push))
        return
    click.echo(f"push {push.id} {push.name!r} scheduled for {_local(push.scheduled_at, zone)} ({zone.key}): "
               f"{push.audience} customer(s) ({checked.describe()})")
    click.echo(f"results: scrm push show {push.id}   cancel: scrm push cancel {push.id}")


async def _create(session: AsyncSession, name: str, segment: Segment, text: str, at: datetime | None,
                  lifecycle: Lifecycle, zone: ZoneInfo) -> tuple[Push, Segment]:
    checked = await checked_segment(session, segment, lifecycle)
    return await create_push(session, name, checked, text, at, by=admin_name(), zone=zone), checked


def _dry_run(settings: Settings, name: str, text: str, at: datetime | None, segment: Segment, lifecycle: Lifecycle,
             as_json: bool) -> None:
    zone, now = ZoneInfo(settings.nurture.timezone), utcnow()
    check_push(name, text, at or now, now, zone)

    async def work(session: AsyncSession) -> tuple[Segment, int, list[SampleCustomer]]:
        checked = await checked_segment(session, segment, lifecycle)
        return checked, *await count_and_sample(session, checked, 10, exclude_opted_out=True)

    checked, count, sample = in_store(settings, work)
    if not sample:
        raise PushError(f"nobody matches: nothing scheduled (a dry run; segment: {checked.describe()})")
    first = preview_text(text, sample[0], lifecycle)
    if as_json:
        echo_json({"dry_run": True, "name": name, "segment": checked.to_data(), "count": count,
                   "scheduled_at": as_utc(at or now), "sample": sample_data(sample), "first_message": first})
        return
    click.echo(f"dry run, nothing written: {count} customer(s) at {_local(at or now, zone)} ({zone.key}): "
               f"{checked.describe()}")
    click.echo(_sample_rows(sample, lifecycle, zone))
    click.echo(f"customer {sample[0].id} would read:\n  {first}")


def _push_data(push: Push, counts: dict[str, int] | None = None) -> dict[str, Any]:
    data = {"id": push.id, "name": push.name, "status": push.status, "scheduled_at": as_utc(push.scheduled_at),
            "audience": push.audience, "segment": push.segment, "text": push.text, "created_by": push.created_by,
            "created_at": as_utc(push.created_at)}
    return data | ({"sends": counts} if counts is not None else {})


@push_group.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@click.pass_context
def list_command(ctx: click.Context, limit: int, as_json: bool) -> None:
    """The newest pushes: when, status, audience, and how many were sent, answered, skipped or are waiting.

    Example: scrm push list --limit 10
    """
    settings = settings_of(ctx)
    zone = ZoneInfo(settings.nurture.timezone)
    pushes = in_store(settings, lambda session: list_pushes(session, limit))
    if as_json:
        echo_json([_push_data(push, counts) for push, counts in pushes])
        return
    if not pushes:
        click.echo('no pushes yet (scrm push create --name … --text … --tag …)')
        return
    click.echo(table([[p.id, p.name, p.status, _local(p.scheduled_at, zone), p.audience, c.get("sent", 0),
                       c.get("replied", 0), c.get("pending", 0), c.get("skipped", 0), c.get("failed", 0), p.created_by]
                      for p, c in pushes],
                     ["id", "name", "status", f"at ({zone.key})", "audience", "sent", "replied", "pending", "skipped",
                      "failed", "by"]))


@push_group.command("show")
@click.argument("push_id", type=int, metavar="ID")
@json_option
@click.pass_context
def show(ctx: click.Context, push_id: int, as_json: bool) -> None:
    """One push and its results: sent (by channel), replied, pending (what waits, and for what), skipped and
    failed with their reasons; and, when WeChat's API budget cannot send the pending at once, about when it will.

    Example: scrm push show 3
    """
    settings = settings_of(ctx)
    zone = ZoneInfo(settings.nurture.timezone)

    async def work(session: AsyncSession) -> tuple[PushResults, dict[str, int]]:
        return await push_results(session, push_id), await pending_by_channel(session, push_id)

    try:
        results, pending_via = in_store(settings, work)
    except PushError as exc:
        raise click.ClickException(str(exc)) from None
    push = results.push
    finish = budget_finish(settings, pending_via, max(utcnow(), as_utc(push.scheduled_at)))
    if as_json:
        echo_json(_push_data(push) | {"pending": results.pending, "sent": results.sent, "replied": results.replied,
                                      "waiting": results.waiting, "skipped": results.skipped,
                                      "failed": results.failed, "via": results.via,
                                      "budget_finish_at": finish.at if finish else None})
        return
    click.echo(f"push {push.id} {push.name!r} ({push.status}) at {_local(push.scheduled_at, zone)} ({zone.key}), "
               f"by {push.created_by or '-'}")
    click.echo(f"segment: {Segment.from_data(push.segment).describe()}")
    click.echo(f"text: {push.text}")
    _print_results(results)
    if finish is not None:
        click.echo(f"finishes about {_local(finish.at, zone)} ({zone.key}): {finish.pending:,} pending through "
                   f"{finish.api}, which allows pushes {finish.pace} (WeChat's limit × sender.budget_share "
                   f"{settings.sender.budget_share:g} × sender.marketing_share {settings.sender.marketing_share:g})")


@dataclass(frozen=True)
class BudgetFinish:
    """When a push's pending sends are through, at the pace of the slowest API budget they spend."""

    at: datetime
    pending: int
    api: str
    pace: str  # "475,000 a day"


def budget_finish(settings: Settings, pending_via: dict[str, int], start: datetime) -> BudgetFinish | None:
    """The pending sends ÷ what each API's budget allows (what is left in its windows now, then its daily or
    hourly pace), from `start`; None when every budget covers them at once."""

    async def estimate() -> BudgetFinish | None:
        state = open_shared_state(settings.redis.url or None)  # the senders' counts, when they share Redis
        try:
            # a push's sends are marketing: they stop at sender.marketing_share of each budget
            budgets, slowest = ApiBudgets(state, settings.sender.budget_share * settings.sender.marketing_share), None
            for channel, pending in pending_via.items():
                if channel not in PUSH_APIS:
                    continue
                platform, path = PUSH_APIS[channel]
                account = settings.wecom.corp_id if platform == "wecom" else settings.oa.app_id
                seconds, budget = await budgets.seconds_to_send(platform, account, path, pending), \
                    budgets.budget_of(platform, account, path)
                if seconds > 0 and budget is not None and (slowest is None or seconds > slowest[0]):
                    slowest = (seconds, pending, path, budget.pace())
        finally:
            await state.close()
        if slowest is None:
            return None
        seconds, pending, path, pace = slowest
        return BudgetFinish(start + timedelta(seconds=seconds), pending, path, pace)

    return asyncio.run(estimate())


def _print_results(results: PushResults) -> None:
    def listed(counts: dict[str, int]) -> str:
        return f" ({', '.join(f'{reason} {count}' for reason, count in counts.items())})" if counts else ""

    rate = f" ({results.replied / results.sent:.0%})" if results.sent else ""
    click.echo(f"audience {results.audience}: sent {results.sent}{listed(results.via)}, replied "
               f"{results.replied}{rate}, pending {results.pending}{listed(results.waiting)}")
    click.echo(f"skipped {sum(results.skipped.values())}{listed(results.skipped)}, "
               f"failed {sum(results.failed.values())}{listed(results.failed)}")


@push_group.command("cancel")
@click.argument("push_id", type=int, metavar="ID")
@click.pass_context
def cancel(ctx: click.Context, push_id: int) -> None:
    """Cancel a push: whatever is still pending is skipped ("cancelled"); what was sent stays sent.

    Example: scrm push cancel 3
    """
    try:
        skipped = in_store(settings_of(ctx), lambda session: cancel_push(session, push_id))
    except PushError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"push {push_id} cancelled: {skipped} pending message(s) will not be sent")


__all__ = ["admin_name", "budget_finish", "brand_time", "preview_text", "push_group", "sample_data", "segment_of", "segment_options",
           "segment_required"]
