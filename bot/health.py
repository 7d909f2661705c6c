"""/healthz and /metrics: what works, what runs degraded, and how far behind the queues are.

The queue figures (crm_store/queue_stats.py) read only the unfinished and failed rows and about a
minute of the newest ones, so a scrape stays cheap however many finished rows the queues keep.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from bot.api_budget import WindowLeft
from bot.media_links import links_problem
from bot.runtime import RUNTIME, Runtime
from core import metrics
from core.faults import FAULTS, fault_component
from crm_store.models import InboxItem, OutboxItem
from crm_store.queue_stats import QueueStats, queue_stats


async def health_report(runtime: Runtime) -> tuple[int, dict[str, Any]]:
    degraded: list[str] = []
    report: dict[str, Any] = {}
    try:
        async with runtime.sessions() as session:
            await session.execute(text("SELECT 1"))
            inbox = await queue_stats(session, InboxItem)
            outbox = await queue_stats(session, OutboxItem)
        report["store"] = {"ok": True, "backend": runtime.engine.dialect.name}
        if "store" in FAULTS.outages:
            FAULTS.cleared("store")
    except Exception as exc:  # noqa: BLE001 - health reports failures, it does not raise them
        report["store"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return 503, {"status": "down", **report, "faults": FAULTS.report()}
    state_ok = await runtime.state.ping()
    report["shared_state"] = {"ok": state_ok, "backend": runtime.state.backend}
    if runtime.state.backend == "memory":
        degraded.append("shared_state: in-process stand-in, one instance only (set redis.url)")
    elif not state_ok:
        degraded.append("shared_state: Redis does not answer")
    nlu = runtime.nlu.health()
    if runtime.managed_rasa is not None:
        nlu = {**nlu, "managed": runtime.managed_rasa.status()}
    report["nlu"] = nlu
    if nlu.get("status") != "ok":
        managed = nlu.get("managed") or {}
        reason = managed.get("last_error") or nlu.get("reason") or nlu.get("status")
        degraded.append(f"nlu: {reason}")
    report["inbox"] = _queue_report(inbox)
    report["sender"] = {**_queue_report(outbox), "last_error": runtime.outbox.last_error}
    if outbox.failed:
        degraded.append(f"sender: {outbox.failed} messages failed permanently (see `scrm outbox list --status failed`)")
    if problem := links_problem(runtime.settings):
        degraded.append(problem)
    faults = FAULTS.report()
    degraded.extend(f"{fault['component']}: unavailable for {fault['down_s']} s ({fault['error']}); "
                    f"work waits and is retried" for fault in faults)
    status = "degraded" if degraded else "ok"
    return 200, {"status": status, "degraded": degraded, **report, "faults": faults}


def _queue_report(stats: QueueStats) -> dict[str, Any]:
    shown = stats.as_json()
    del shown["queue"]
    return shown


async def healthz(request: web.Request) -> web.Response:
    status, report = await health_report(request.app[RUNTIME])
    return web.json_response(report, status=status, dumps=_dumps)


async def metrics_endpoint(request: web.Request) -> web.Response:
    runtime: Runtime = request.app[RUNTIME]
    async with runtime.sessions() as session:
        inbox = await queue_stats(session, InboxItem)
        outbox = await queue_stats(session, OutboxItem)
    show_queues(inbox, outbox)
    show_budgets(await _budgets_left(runtime))
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def show_queues(inbox: QueueStats, outbox: QueueStats) -> None:
    """Set the queue gauges (every process reads the same store: each shows the whole picture)."""
    metrics.INBOX_LAG.set(inbox.lag_s)
    metrics.INBOX_BACKLOG.set(inbox.backlog)
    metrics.INBOX_FAILED.set(inbox.failed)
    metrics.OUTBOX_LAG.set(outbox.lag_s)
    metrics.OUTBOX_BACKLOG.set(outbox.backlog)
    metrics.OUTBOX_FAILED.set(outbox.failed)
    for stats in (inbox, outbox):
        metrics.QUEUE_DRAIN.labels(stats.queue).set(stats.drain.per_s)
    for lane in outbox.lanes:
        metrics.OUTBOX_LANE_BACKLOG.labels(lane.lane).set(lane.backlog)
        metrics.OUTBOX_LANE_FAILED.labels(lane.lane).set(lane.failed)


async def _budgets_left(runtime: Runtime) -> list[WindowLeft]:
    """The budgets the outbox spends; while the shared state does not answer, none (the gauges keep their
    last values, the outage is reported as every other)."""
    if runtime.sender.budgets is None:
        return []
    try:
        return await runtime.sender.budgets.left()
    except Exception as exc:
        component = fault_component(exc)
        if component is None:
            raise
        FAULTS.seen(component, "metrics.api_budget", exc, retry="at the next scrape")
        return []


def show_budgets(rows: list[WindowLeft]) -> None:
    """Calls left in each window of each API budget (bot/api_budget.py), as counted in the shared state."""
    for row in rows:
        metrics.API_BUDGET_LEFT.labels(f"{row.account} {row.path}", row.window).set(row.left)


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2)
