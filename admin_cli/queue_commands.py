"""`scrm inbox` and `scrm outbox`: what the queues hold, queueing failed items again, and how far behind
the queues are (the figures /healthz and /metrics show, crm_store/queue_stats.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

import click
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.common import in_store
from admin_cli.main import cli, echo_json, settings_of
from bot.api_budget import ApiBudgets, WindowLeft
from bot.settings import Settings
from core.faults import fault_component
from core.shared_state import open_shared_state
from crm_store import work_queue
from crm_store.models import InboxItem, OutboxItem, QueueItem
from crm_store.queue_stats import QUEUES, QueueStats, queue_stats


def _queue_command(name: str) -> None:
    model = QUEUES[name]

    @cli.group(name=name, help=f"Look at the {name}.")
    def group() -> None:
        pass

    @group.command("list")
    @click.option("--status", type=click.Choice(["pending", "claimed", "done", "failed"]), default="failed",
                  show_default=True)
    @click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Output JSON.")
    @click.pass_context
    def list_items(ctx: click.Context, status: str, limit: int, as_json: bool) -> None:
        rows = in_store(settings_of(ctx), lambda session: _items(session, model, status, limit))
        if as_json:
            echo_json(rows)
            return
        if not rows:
            click.echo(f"no {status} items")
        for row in rows:
            click.echo(f"#{row['id']} {row['kind']} attempts={row['attempts']} {row['last_error'] or ''}")

    list_items.help = f"""List {name} items by status, newest first, with the last error.

    Example: scrm {name} list --status failed --json
    """

    @group.command("retry")
    @click.argument("item_ids", nargs=-1, type=int, required=True)
    @click.pass_context
    def retry(ctx: click.Context, item_ids: tuple[int, ...]) -> None:
        requeued = in_store(settings_of(ctx), lambda session: work_queue.requeue_failed(session, model, list(item_ids)))
        missing = sorted(set(item_ids) - set(requeued))
        for item_id in requeued:
            click.echo(f"#{item_id} queued again")
        if missing:
            raise click.ClickException(f"not failed (or not found), left as they are: {missing}")

    retry.help = f"""Queue failed {name} items again, after the cause was fixed.

    Only failed items are touched; the worker picks them up at once.

    Example: scrm {name} retry 17 18
    """

    @group.command("stats")
    @click.option("--json", "as_json", is_flag=True, help="Output one JSON object.")
    @click.pass_context
    def stats(ctx: click.Context, as_json: bool) -> None:
        settings = settings_of(ctx)
        shown = in_store(settings, lambda session: queue_stats(session, model))
        budgets = asyncio.run(_budgets_left(settings)) if model is OutboxItem else None
        if as_json:
            echo_json(shown.as_json() | ({} if budgets is None else {"api_budgets": budgets.as_json()}))
            return
        for line in _stats_lines(shown) + ([] if budgets is None else budgets.lines()):
            click.echo(line)

    stats.help = f"""How far behind the {name} is: backlog, lag (the oldest unfinished item's age), drain
    (items finished per second over the last minute, by every process) and failures{BY_LANE[name]}.

    Cheap on a store of millions of finished items: it reads the unfinished and failed ones and the
    last minute's.

    Example: scrm {name} stats --json
    """


BY_LANE = {"inbox": "", "outbox": ", by lane (reply, transactional, marketing), and the calls left in each "
                                  "API's budget (from Redis, where every sender counts them)"}


def _stats_lines(stats: QueueStats) -> list[str]:
    drain = stats.drain
    lines = [f"{stats.queue}: backlog {stats.backlog} (pending {stats.pending}, claimed {stats.claimed}), "
             f"lag {stats.lag_s:.1f} s, drain {drain.per_s:.2f}/s ({drain.finished}"
             f"{'' if drain.complete else ' or more'} finished in the last minute), failed {stats.failed}"]
    lines += [f"  {lane.lane:<14} backlog {lane.backlog:>7}  failed {lane.failed:>5}  lag {lane.lag_s:.1f} s"
              for lane in stats.lanes]
    return lines


@dataclass(frozen=True)
class BudgetsSeen:
    """The calls left in each API budget the outbox spends; `unknown`: why they could not be read here."""

    rows: tuple[WindowLeft, ...] = ()
    unknown: str = ""

    def as_json(self) -> list[dict[str, Any]] | None:
        if self.unknown:
            return None
        return [{"account": row.account, "api": row.path, "window": row.window, "limit": row.limit,
                 "used": row.used, "left": row.left} for row in self.rows]

    def lines(self) -> list[str]:
        if self.unknown:
            return [f"api budgets: {self.unknown}"]
        windows: dict[str, list[str]] = {}
        for row in self.rows:
            windows.setdefault(f"{row.account} {row.path}", []).append(f"{row.window} {row.left}/{row.limit}")
        width = max((len(api) for api in windows), default=0)
        return ["api budgets (calls left in each window):"] + [
            f"  {api:<{width}}  {'  '.join(left)}" for api, left in windows.items()]


async def _budgets_left(settings: Settings) -> BudgetsSeen:
    """The budgets of the APIs the outbox calls, as every sender process counts them (in Redis)."""
    if not settings.redis.url:
        return BudgetsSeen(unknown="counted in each `scrm serve` process (no redis.url): see its /metrics")
    state = open_shared_state(settings.redis.url)
    try:
        budgets = ApiBudgets(state, settings.sender.budget_share).watch_outbox(settings.wecom.corp_id,
                                                                               settings.oa.app_id)
        return BudgetsSeen(tuple(await budgets.left()))
    except Exception as exc:
        if fault_component(exc) is None:
            raise
        return BudgetsSeen(unknown=f"Redis does not answer ({type(exc).__name__}: {exc})")
    finally:
        await state.close()


async def _items(
    session: AsyncSession, model: type[InboxItem] | type[OutboxItem], status: str, limit: int
) -> list[dict[str, Any]]:
    rows = await session.scalars(select(model).where(model.status == status).order_by(model.id.desc()).limit(limit))
    items = cast(list[QueueItem], list(rows.all()))
    return [
        {"id": row.id, "kind": row.kind, "status": row.status, "attempts": row.attempts,
         "last_error": row.last_error, "created_at": row.created_at, "payload": row.payload}
        for row in items
    ]


for _name in QUEUES:
    _queue_command(_name)
