"""`scrm handoffs ...`: customers handed to reps: the list, one handoff's story, and an admin's release.

Reading is crm_store.handoff_queries; releasing is the desk the bot uses (flows.handoff_desk),
in one transaction with the outbox rows it causes (the customer told, the rep told, the kf
session ended). The running bot's outbox sender sends them; nothing is sent from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

import click
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.common import fields, in_store, json_option, table, when
from admin_cli.main import cli, echo_json, settings_of
from bot.effects_writer import write_side_effect
from core.events import Notify, SideEffect, ToRep
from crm_store.customer_queries import current_customer
from crm_store.handoff_models import Rep
from crm_store.handoff_queries import HandoffDetail, HandoffRow, StatusFilter, handoff_detail, list_handoffs
from crm_store.handoffs import open_handoff_of
from crm_store.lifecycle import Lifecycle
from flows.handoff_desk import DeskError, HandoffDesk

SINCE = click.DateTime(["%Y-%m-%d", "%Y-%m-%d %H:%M"])
ADMIN = "admin"


def duration(seconds: float | None) -> str:
    """45s, 3m20s, 2h05m, 3d04h: short enough for a table column."""
    if seconds is None:
        return "-"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def local_since(since: datetime | None) -> datetime | None:
    """A --since date typed by the admin (naive: their local time) as an aware time."""
    return since.astimezone() if since else None


@cli.group("handoffs")
def handoffs_group() -> None:
    """Handoffs to reps: who is waiting or being served, what happened, and giving a customer back to the bot."""


@handoffs_group.command("list")
@click.option("--open", "status", flag_value="open", default=True, help="Queued, offered or taken (default).")
@click.option("--closed", "status", flag_value="closed", help="Only finished handoffs.")
@click.option("--all", "status", flag_value="all", help="Open and finished.")
@click.option("--rep", metavar="USERID", help="Only handoffs with this rep.")
@click.option("--since", type=SINCE, help="Opened since this local date.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="Newest first.")
@json_option
@click.pass_context
def list_command(ctx: click.Context, status: StatusFilter, rep: str | None, since: datetime | None, limit: int,
                 as_json: bool) -> None:
    """Handoffs, newest first: customer, stage, reason, rep, status, how long the customer waited, the outcome.

    Example: scrm handoffs list --all --rep zhangsan --since 2026-11-01
    """
    settings = settings_of(ctx)
    lifecycle = Lifecycle(settings.lifecycle)

    async def work(session: AsyncSession) -> list[HandoffRow]:
        if rep is not None and await session.get(Rep, rep) is None:
            raise click.ClickException(f"no rep {rep} (see: scrm reps list --all)")
        return await list_handoffs(session, status, rep, local_since(since), limit)

    rows = in_store(settings, work)
    if as_json:
        echo_json([asdict(row) for row in rows])
        return
    if not rows:
        click.echo(f"no {'' if status == 'all' else status + ' '}handoffs")
        return
    click.echo(table([[r.id, f"{r.customer} #{r.customer_id}", lifecycle.label(r.stage), _reason(r), r.rep or "-",
                       r.status, when(r.created_at), duration(r.waiting_s), _outcome(r, lifecycle)] for r in rows],
                     ["id", "customer", "stage", "reason", "rep", "status", "opened", "waited", "closed"]))


def _reason(row: HandoffRow) -> str:
    return row.reason + (f" ({row.detail})" if row.detail and row.detail != "flow" else "")


def _outcome(row: HandoffRow, lifecycle: Lifecycle) -> str:
    if row.status != "closed":
        return ""
    return f"by {row.closed_by or '-'} → {lifecycle.label(row.outcome_stage)}"


@handoffs_group.command("show")
@click.argument("handoff_id", metavar="ID", type=int)
@json_option
@click.pass_context
def show_command(ctx: click.Context, handoff_id: int, as_json: bool) -> None:
    """One handoff: its customer, reason, reps tried, times, outcome, and its events on the customer's timeline.

    Example: scrm handoffs show 7
    """
    settings = settings_of(ctx)
    detail = in_store(settings, lambda session: handoff_detail(session, handoff_id))
    if detail is None:
        raise click.ClickException(f"no handoff {handoff_id} (see: scrm handoffs list --all)")
    if as_json:
        echo_json(asdict(detail))
        return
    _print_detail(detail, Lifecycle(settings.lifecycle))


def _print_detail(detail: HandoffDetail, lifecycle: Lifecycle) -> None:
    r = detail.row
    click.echo(f"handoff {r.id}: {r.customer} #{r.customer_id} ({lifecycle.label(r.stage)}), {r.status}")
    click.echo(f"reason: {_reason(r)}" + (f"   intent: {detail.intent}" if detail.intent else "")
               + f"   channel: {detail.channel or '-'}" + (f"   team: {detail.team}" if detail.team else ""))
    click.echo(f"rep: {r.rep or '-'}   tried: {', '.join(detail.tried) or '-'}   waited: {duration(r.waiting_s)}")
    times = [("opened", r.created_at), ("offered", r.offered_at), ("taken", r.taken_at),
             ("first response", r.first_response_at), ("closed", r.closed_at)]
    click.echo("   ".join(f"{name}: {when(at)}" for name, at in times if at is not None))
    if r.status == "closed":
        click.echo(f"closed by: {r.closed_by or '-'}   stage: {lifecycle.label(r.stage)} → "
                   f"{lifecycle.label(r.outcome_stage)}")
    click.echo("events:" if detail.events else "events: none")
    for event in detail.events:
        click.echo(f"  {when(event.at)}  {event.kind:<24} {fields(event.data)}".rstrip())


@dataclass(frozen=True)
class Released:
    handoff_id: int
    customer_id: int
    customer: str
    rep: str
    was: str  # the handoff's status before
    queued: int  # outbox rows written
    done: list[str]  # what each effect does, or why it could not


def _done(effect: SideEffect, written: int) -> str:
    if isinstance(effect, Notify):
        return "the customer is told" if written else "the customer cannot be reached now (noted on their timeline)"
    if isinstance(effect, ToRep):
        return f"{effect.userid} is told"
    return "the kf session is ended and the customer told" if effect.farewell else "the kf session is ended"


@handoffs_group.command("release")
@click.argument("customer_id", metavar="CUSTOMER_ID", type=int)
@json_option
@click.pass_context
def release_command(ctx: click.Context, customer_id: int, as_json: bool) -> None:
    """Give a handed-off customer back to the bot now; the customer and the rep are told by the running bot.

    Example: scrm handoffs release 42
    """
    settings = settings_of(ctx)
    desk = HandoffDesk(settings.handoff, Lifecycle(settings.lifecycle))
    agent_id = settings.wecom.app.agent_id

    async def work(session: AsyncSession) -> Released:
        customer = await current_customer(session, customer_id)
        handoff = None if customer is None else await open_handoff_of(session, customer.id)
        rep, was = (handoff.rep_userid or "", handoff.status) if handoff else ("", "")
        effects = await desk.release(session, ADMIN, customer_id, admin=True)  # DeskError when not handed off
        assert customer is not None and handoff is not None
        done: list[str] = []
        queued = 0
        for n, effect in enumerate(effects):
            written = await write_side_effect(session, f"admin-release:{handoff.id}:{n}", effect, agent_id)
            queued += written
            done.append(_done(effect, written))
        return Released(handoff.id, customer.id, customer.display_name, rep, was, queued, done)

    try:
        released = in_store(settings, work)
    except DeskError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(asdict(released))
        return
    held = f"{released.was}, with {released.rep}" if released.rep else released.was
    click.echo(f"released {released.customer} #{released.customer_id} from handoff {released.handoff_id} ({held}): "
               "the bot answers them again")
    click.echo(f"{released.queued} message(s) queued for the running bot to send"
               + (f": {'; '.join(released.done)}" if released.done else ""))
