"""`scrm customers ...` and `scrm tags ...`: look people up, tag them, move them through the lifecycle.

Each command is one transaction over crm_store (customer_queries, tags, lifecycle):
the same functions the bot uses, so an admin's tag or stage change writes the
timeline and the WeCom tag mirror exactly as a flow's would.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.common import fields, in_store, json_option, table, when
from admin_cli.flow_commands import published
from admin_cli.main import cli, echo_json, settings_of
from admin_cli.media_commands import media_data, media_table, where_kept
from crm_store.customer_queries import (
    CustomerCard,
    CustomerRow,
    GrowthCard,
    Sort,
    customer_card,
    find_customers,
)
from crm_store.group_chat_queries import GroupNotFound, resolve_groups
from crm_store.lifecycle import Lifecycle, StageNotAllowed, funnel, set_stage
from crm_store.media_items import RECENT, MediaLine, received
from crm_store.models import Conversation, Customer
from crm_store.quota_queries import ChannelQuota, QuotaCard, quota_card
from crm_store.tags import add_tags, remove_tags, sync_catalog, tag_counts

ADMIN = "admin"


class CustomerNotFound(click.ClickException):
    def __init__(self, customer_id: int) -> None:
        super().__init__(f"no customer {customer_id} (find one with: scrm customers find --text NAME)")


async def _customer(session: AsyncSession, customer_id: int) -> Customer:
    """The customer, following merges (a merged id acts on the customer it became)."""
    customer = await session.get(Customer, customer_id, with_for_update=True)
    for _ in range(10):
        if customer is None or customer.merged_into_id is None:
            break
        customer = await session.get(Customer, customer.merged_into_id, with_for_update=True)
    if customer is None:
        raise CustomerNotFound(customer_id)
    return customer


@cli.group("customers")
def customers_group() -> None:
    """Customers: find them, read their card, tag them, set their stage, see the funnel."""


@customers_group.command("find")
@click.option("--tag", "tags", multiple=True, help="Carrying this tag (repeat: all of them).")
@click.option("--stage", help="In this stage (id or label).")
@click.option("--text", help="Name, channel id or something they wrote contains this (any case).")
@click.option("--min-social", type=click.FloatRange(0), metavar="N",
              help="With a social score of at least N (what they brought: friends, conversions, groups).")
@click.option("--in-group", "in_groups", multiple=True, metavar="CHAT_ID_OR_NAME",
              help="In this customer group (客户群) now, by chat id or exact name (repeat: in all of them).")
@click.option("--sort", type=click.Choice(["seen", "social"]), default="seen", show_default=True,
              help="seen: most recently seen first; social: highest social score first.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@json_option
@click.pass_context
def find(ctx: click.Context, tags: tuple[str, ...], stage: str | None, text: str | None, min_social: float | None,
         in_groups: tuple[str, ...], sort: Sort, limit: int, offset: int, as_json: bool) -> None:
    """Customers matching every filter given, most recently seen (or highest social score) first.

    Example: scrm customers find --tag 高意向 --stage 意向 --text 连衣裙   or   scrm customers find --sort social --min-social 10
    or   scrm customers find --in-group 新品首发1群 --tag 高意向
    """
    settings = settings_of(ctx)
    lifecycle = Lifecycle(settings.lifecycle)
    try:
        stage_id = lifecycle.resolve(stage) if stage else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--stage") from None

    async def work(session: AsyncSession) -> list[CustomerRow]:
        try:
            groups = await resolve_groups(session, in_groups)
        except GroupNotFound as exc:
            raise click.BadParameter("; ".join(exc.problems), param_hint="--in-group") from None
        return await find_customers(session, tags=tags, stage=stage_id, text=text, min_social=min_social,
                                    sort=sort, limit=limit, offset=offset,
                                    in_groups=[group.id for group in groups.values()])

    rows = in_store(settings, work)
    if as_json:
        echo_json([asdict(row) for row in rows])
        return
    if not rows:
        click.echo("no customers match")
        return
    # the social column appears once it says something: asked for, or someone on the page has a score
    social = sort == "social" or min_social is not None or any(row.social for row in rows)
    click.echo(table([[r.id, r.display_name, lifecycle.label(r.stage), ", ".join(r.tags)]
                      + ([f"{r.social:g}"] if social else []) + [when(r.last_seen_at), " ".join(r.identities)]
                      for r in rows],
                     ["id", "name", "stage", "tags"] + (["social"] if social else []) + ["last seen", "identities"]))


@customers_group.command("show")
@click.argument("customer_id", metavar="ID", type=int)
@click.option("--events", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="How many timeline events (newest first).")
@json_option
@click.pass_context
def show(ctx: click.Context, customer_id: int, events: int, as_json: bool) -> None:
    """A customer's card: stage, tags, opt-out, owner, social value, inviter, groups, rewards, stage history,
    timeline, running flow, what the platform still lets the bot send them (quota per channel, held messages),
    and the media they sent (the newest 20: kind, size, when, where kept or why not; save one: scrm media get).

    Example: scrm customers show 42 --events 50
    """
    settings = settings_of(ctx)
    lifecycle = Lifecycle(settings.lifecycle)

    async def work(session: AsyncSession) -> tuple[CustomerCard, Conversation | None, QuotaCard, list[MediaLine]]:
        card = await customer_card(session, customer_id, lifecycle, events)
        if card is None:
            raise CustomerNotFound(customer_id)
        running = await session.scalar(select(Conversation).where(
            Conversation.customer_id == card.row.id, Conversation.status == "active"))
        return card, running, await quota_card(session, card.row.id), await received(session, customer_id=card.row.id)

    card, running, quota, media = in_store(settings, work)
    flow = None if running is None else {
        "flow": running.flow_id, "version": running.flow_version, "release": running.release_id,
        "step": running.step_id, "slots": running.slots, "started_at": running.started_at,
        "wake_at": running.wake_at}
    if as_json:
        echo_json(asdict(card) | {"stage_history": [move._asdict() for move in card.stage_history],
                                  "timeline": [entry._asdict() for entry in card.timeline], "conversation": flow,
                                  "quota": {q.channel: _quota_data(q) for q in quota.channels},
                                  "held_messages": quota.held_messages,
                                  "media": media_data(media, where_kept(settings))})
        return
    _print_card(card, flow, quota, media, where_kept(settings))


def _print_card(card: CustomerCard, flow: dict[str, Any] | None, quota: QuotaCard, media: list[MediaLine],
                where: str) -> None:
    row = card.row
    click.echo(f"customer {row.id} {row.display_name}  {' '.join(row.identities)}".rstrip())
    click.echo(f"stage: {row.stage} ({card.stage_label})   marketing: "
               f"{'opted out' if card.marketing_opt_out else 'allowed'}   owner: {card.owner_userid or '-'}")
    click.echo(f"tags: {', '.join(row.tags) or '-'}")
    _print_quota(quota)
    _print_growth(card.growth)
    if flow:
        click.echo(f"running: flow {flow['flow']} v{flow['version']} at step {flow['step']} since "
                   f"{when(flow['started_at'])}, slots {flow['slots'] or '{}'}")
    click.echo("stage history:" if card.stage_history else "stage history: none")
    for move in card.stage_history:
        click.echo(f"  {when(move.at)}  {move.from_stage} → {move.to_stage}  {move.reason}".rstrip())
    _print_media(row.id, media, where)
    click.echo("timeline (newest first):")
    for entry in card.timeline:
        click.echo(f"  {when(entry.at)}  {entry.kind:<18} {fields(entry.data)}".rstrip())


def _print_media(customer_id: int, media: list[MediaLine], where: str) -> None:
    if not media:
        click.echo("media: none received")
        return
    more = f", the last {RECENT}; all: scrm media list --customer {customer_id}" if len(media) == RECENT else ""
    click.echo(f"media (newest first{more}; kept in {where}; save one: scrm media get ID):")
    click.echo("\n".join(f"  {row}" for row in media_table(media).splitlines()))


def _print_growth(growth: GrowthCard) -> None:
    counts = growth.counters
    click.echo(f"social: {growth.score:g}   friends {counts['friends']}, converted {counts['friends_converted']}, "
               f"groups led {counts['groups_led']}, filled {counts['groups_filled']}, "
               f"downstream conversions {counts['downstream_converted']}")
    inviter = f"{growth.inviter_name} #{growth.inviter_id}" if growth.inviter_id is not None else "-"
    click.echo(f"invited by: {inviter}   invite code: {growth.invite_code or '-'}")
    click.echo("groups: " + ("; ".join(
        f"{g.code} {g.campaign} {g.status} {g.members}/{g.size}" + (" (leader)" if g.leader else "")
        for g in growth.groups) or "-"))
    click.echo("rewards received:" if growth.rewards else "rewards received: none")
    for r in growth.rewards:
        friend = f"  friend {r.friend_name} #{r.friend_id}" if r.friend_id is not None else ""
        undo = f" of #{r.reverses_id}" if r.reverses_id is not None else ""
        click.echo(f"  #{r.id} {when(r.at)}  {r.kind}{undo}  {r.rule_id}: {r.reward}{friend}")


def _quota_data(quota: ChannelQuota) -> dict[str, Any]:
    return {key: value for key, value in asdict(quota).items() if key != "channel"}


def _print_quota(quota: QuotaCard) -> None:
    """Each channel's allowance (the platform's limit on what the bot may send), and what is held."""
    if not quota.channels:
        click.echo("quota: none on kf or the OA yet (it starts with the customer's next action there)")
    for channel in quota.channels:
        click.echo(f"quota {channel.channel}: {_quota_text(channel)}")
    click.echo(f"held messages: {quota.held_messages} (sent after the customer's next message)"
               if quota.held_messages else "held messages: none")


def _quota_text(quota: ChannelQuota) -> str:
    earned = f" (earned by {quota.earned_by} at {when(quota.earned_at)})" if quota.earned_by else ""
    session = f"; session: {quota.session}" if quota.session else ""
    if quota.left:
        return f"{quota.left} of {quota.allowed} left until {when(quota.resets_at)}{earned}{session}"
    if quota.session_blocks:
        return f"none left while the session is {quota.session}{earned}"
    return f"none left — resets when the customer writes again{earned}{session}"


@customers_group.command("tag")
@click.argument("customer_id", metavar="ID", type=int)
@click.argument("tags", metavar="TAG...", nargs=-1, required=True)
@click.option("--remove", is_flag=True, help="Remove the tags instead of adding them.")
@json_option
@click.pass_context
def tag(ctx: click.Context, customer_id: int, tags: tuple[str, ...], remove: bool, as_json: bool) -> None:
    """Add tags to a customer (or remove them), as the admin: timeline and WeCom mirror included.

    Example: scrm customers tag 42 高意向 连衣裙   or   scrm customers tag 42 低意向 --remove
    """

    async def work(session: AsyncSession) -> tuple[int, list[str]]:
        customer = await _customer(session, customer_id)
        change = remove_tags if remove else add_tags
        try:
            return customer.id, await change(session, customer, tags, ADMIN)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="TAG") from None

    found, changed = in_store(settings_of(ctx), work)
    verb = "removed" if remove else "added"
    unchanged = [name for name in tags if name.strip() and name.strip() not in changed]
    if as_json:
        echo_json({"customer": found, verb: changed, "unchanged": unchanged})
        return
    click.echo(f"customer {found}: {verb} {', '.join(changed) or 'nothing'}"
               + (f" ({'did not carry' if remove else 'already had'}: {', '.join(unchanged)})" if unchanged else ""))


@customers_group.command("set-stage")
@click.argument("customer_id", metavar="ID", type=int)
@click.argument("stage")
@click.option("--force", is_flag=True, help="Make a move the lifecycle does not allow (correcting a mistake).")
@click.option("--reason", default="", help="Why; kept in the stage history.")
@json_option
@click.pass_context
def set_stage_command(ctx: click.Context, customer_id: int, stage: str, force: bool, reason: str,
                      as_json: bool) -> None:
    """Move a customer to a stage (id or label); a move the lifecycle does not allow is refused.

    Example: scrm customers set-stage 42 customer --reason "paid order 1001"
    """
    lifecycle = Lifecycle(settings_of(ctx).lifecycle)

    async def work(session: AsyncSession) -> tuple[int, str, str, bool]:
        customer = await _customer(session, customer_id)
        before = customer.stage
        try:
            moved = await set_stage(session, customer, stage, f"{ADMIN}: {reason}" if reason else ADMIN, lifecycle,
                                    force=force)
        except StageNotAllowed as exc:
            raise click.ClickException(f"customer {customer.id}: {exc}") from None
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="STAGE") from None
        return customer.id, before, customer.stage, moved

    found, before, after, moved = in_store(settings_of(ctx), work)
    if as_json:
        echo_json({"customer": found, "from": before, "to": after, "moved": moved})
    elif moved:
        click.echo(f"customer {found}: {before} ({lifecycle.label(before)}) → {after} ({lifecycle.label(after)})")
    else:
        click.echo(f"customer {found} is already in {after} ({lifecycle.label(after)})")


@customers_group.command("funnel")
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%d %H:%M"]),
              help="Count customers who entered each stage since this local date (default: ever).")
@json_option
@click.pass_context
def funnel_command(ctx: click.Context, since: datetime | None, as_json: bool) -> None:
    """Customers per stage now, how many reached each stage, and the conversion from the stage before.

    Example: scrm customers funnel --since 2024-06-01
    """
    lifecycle = Lifecycle(settings_of(ctx).lifecycle)
    since_at = since.astimezone() if since else None  # naive: the admin's local time
    rows = in_store(settings_of(ctx), lambda session: funnel(session, lifecycle, since_at))
    if as_json:
        echo_json([asdict(row) for row in rows])
        return
    top = max((row.reached for row in rows), default=0) or 1
    click.echo(table([[row.stage, row.label, row.current, row.reached,
                       "" if row.conversion_from_previous is None else f"{row.conversion_from_previous:.0%}",
                       "█" * round(30 * row.reached / top)] for row in rows],
                     ["stage", "label", "now", "reached", "conversion", ""]))


@cli.group("tags")
def tags_group() -> None:
    """The tag catalog: groups, tags, how many customers carry each."""


@tags_group.command("list")
@json_option
@click.pass_context
def list_tags(ctx: click.Context, as_json: bool) -> None:
    """Every tag by group, with its customer count and its WeCom tag id once mirrored.

    Example: scrm tags list --json
    """
    counts = in_store(settings_of(ctx), tag_counts)
    if as_json:
        echo_json([asdict(count) for count in counts])
        return
    if not counts:
        click.echo("no tags yet (publish flows with a tags.yaml: scrm flows publish)")
        return
    click.echo(table([[c.group or "(no group)", c.tag, c.customers, c.wecom_tag_id or ""] for c in counts],
                     ["group", "tag", "customers", "wecom id"]))


@tags_group.command("sync")
@click.pass_context
def sync(ctx: click.Context) -> None:
    """Make the tag table match the published catalog (tags.yaml); tags still carried are kept.

    Example: scrm tags sync
    """
    settings = settings_of(ctx)
    release, flows = published(settings)
    in_store(settings, lambda session: sync_catalog(session, flows.tags.groups))
    click.echo(f"tag catalog of release {release.id}: {len(flows.tags.groups)} groups, "
               f"{len(flows.tags.tags)} tags")
