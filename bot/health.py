"""/healthz and /metrics: what works, what runs degraded, and how far behind the queues are."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from bot.media_links import links_problem
from bot.runtime import RUNTIME, Runtime
from core import metrics
from core.faults import FAULTS
from crm_store import work_queue
from crm_store.models import InboxItem, OutboxItem


async def health_report(runtime: Runtime) -> tuple[int, dict[str, Any]]:
    degraded: list[str] = []
    report: dict[str, Any] = {}
    try:
        async with runtime.sessions() as session:
            await session.execute(text("SELECT 1"))
            inbox = await work_queue.counts(session, InboxItem)
            outbox = await work_queue.counts(session, OutboxItem)
            lag = await work_queue.oldest_pending_age_s(session, InboxItem)
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
    backlog = outbox.get("pending", 0) + outbox.get("claimed", 0)
    report["inbox"] = {"backlog": inbox.get("pending", 0) + inbox.get("claimed", 0), "lag_s": round(lag, 3),
                       "failed": inbox.get("failed", 0)}
    report["sender"] = {"backlog": backlog, "failed": outbox.get("failed", 0), "sent": outbox.get("done", 0),
                        "last_error": runtime.outbox.last_error}
    if outbox.get("failed", 0):
        degraded.append(f"sender: {outbox['failed']} messages failed permanently (see `scrm outbox list --status failed`)")
    if problem := links_problem(runtime.settings):
        degraded.append(problem)
    faults = FAULTS.report()
    degraded.extend(f"{fault['component']}: unavailable for {fault['down_s']} s ({fault['error']}); "
                    f"work waits and is retried" for fault in faults)
    status = "degraded" if degraded else "ok"
    return 200, {"status": status, "degraded": degraded, **report, "faults": faults}


async def healthz(request: web.Request) -> web.Response:
    status, report = await health_report(request.app[RUNTIME])
    return web.json_response(report, status=status, dumps=_dumps)


async def metrics_endpoint(request: web.Request) -> web.Response:
    runtime: Runtime = request.app[RUNTIME]
    async with runtime.sessions() as session:
        inbox = await work_queue.counts(session, InboxItem)
        outbox = await work_queue.counts(session, OutboxItem)
        metrics.INBOX_LAG.set(await work_queue.oldest_pending_age_s(session, InboxItem))
    metrics.INBOX_BACKLOG.set(inbox.get("pending", 0) + inbox.get("claimed", 0))
    metrics.OUTBOX_BACKLOG.set(outbox.get("pending", 0) + outbox.get("claimed", 0))
    metrics.OUTBOX_FAILED.set(outbox.get("failed", 0))
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2)
