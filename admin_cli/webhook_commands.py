"""`scrm webhooks ...`: outgoing webhooks: endpoints, their delivery log, replays and a test ping.

Each command is one transaction over crm_store.webhooks. Deliveries are queued in the
outbox and sent by the running bot's outbox sender; only `test` posts from here.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import aiohttp
import click
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.common import in_store, json_option, table, when
from admin_cli.main import cli, echo_json, settings_of
from bot.webhook_sender import Attempt, post
from crm_store import webhooks
from crm_store.webhook_models import WebhookDelivery, WebhookEndpoint
from crm_store.webhooks import WebhookError

SINCE = click.DateTime(["%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"])


def _run(ctx: click.Context, work: Any) -> Any:
    try:
        return in_store(settings_of(ctx), work)
    except WebhookError as exc:
        raise click.ClickException(str(exc)) from None


def _endpoint_data(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {"id": endpoint.id, "url": endpoint.url, "events": endpoint.events, "active": endpoint.active,
            "created_at": endpoint.created_at}


@cli.group("webhooks")
def webhooks_group() -> None:
    """Outgoing webhooks: signed POSTs to your systems on stage changes, tags, handoffs, rewards, group-buys."""


@webhooks_group.command("add")
@click.argument("url")
@click.option("--event", "events", multiple=True, required=True, metavar="TYPE",
              help=f"An event type to send (repeat), or * for all: {', '.join(sorted(webhooks.TIMELINE_KINDS))}.")
@click.option("--secret", envvar="SCRM_WEBHOOK_SECRET", help="The signing secret (default: a new random one; "
              "env SCRM_WEBHOOK_SECRET).")
@json_option
@click.pass_context
def add(ctx: click.Context, url: str, events: tuple[str, ...], secret: str | None, as_json: bool) -> None:
    """Add an endpoint and print its signing secret (shown this once).

    Example: scrm webhooks add https://erp.example.com/scrm --event stage.changed --event tag.added
    """
    async def work(session: AsyncSession) -> dict[str, Any]:
        endpoint = await webhooks.add_endpoint(session, url, events, secret)
        return {**_endpoint_data(endpoint), "secret": endpoint.secret}

    data = _run(ctx, work)
    if as_json:
        echo_json(data)
        return
    click.echo(f"webhook #{data['id']} → {data['url']} ({', '.join(data['events'])})")
    click.echo(f"secret: {data['secret']}")
    click.echo("keep it: it is not shown again; verify X-Scrm-Signature with it.")


@webhooks_group.command("list")
@json_option
@click.pass_context
def list_endpoints(ctx: click.Context, as_json: bool) -> None:
    """The endpoints and the events each receives (secrets are not shown).

    Example: scrm webhooks list --json
    """
    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        return [_endpoint_data(endpoint) for endpoint in await webhooks.endpoints(session)]

    rows = _run(ctx, work)
    if as_json:
        echo_json(rows)
        return
    click.echo(table([(r["id"], r["url"], ",".join(r["events"]), "yes" if r["active"] else "no",
                       when(r["created_at"])) for r in rows], ["id", "url", "events", "active", "added"]))


@webhooks_group.command("remove")
@click.argument("endpoint_id", type=int)
@click.pass_context
def remove(ctx: click.Context, endpoint_id: int) -> None:
    """Delete an endpoint and its delivery log; deliveries still queued for it fail unsent.

    Example: scrm webhooks remove 3
    """
    async def work(session: AsyncSession) -> str:
        return (await webhooks.remove_endpoint(session, endpoint_id)).url

    click.echo(f"removed webhook #{endpoint_id} ({_run(ctx, work)})")


def _delivery_data(row: WebhookDelivery) -> dict[str, Any]:
    return {"id": row.id, "endpoint_id": row.endpoint_id, "event_id": row.event_id, "type": row.event_type,
            "attempt": row.attempt, "status_code": row.status_code, "ok": row.ok, "error": row.error,
            "latency_ms": row.latency_ms, "at": row.at}


@webhooks_group.command("log")
@click.option("--endpoint", "endpoint_id", type=int, help="Only this endpoint's deliveries.")
@click.option("--failed", is_flag=True, help="Only attempts that failed.")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
@click.pass_context
def log(ctx: click.Context, endpoint_id: int | None, failed: bool, limit: int, as_json: bool) -> None:
    """Delivery attempts, newest first: status code, latency, error.

    Example: scrm webhooks log --endpoint 1 --failed
    """
    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        return [_delivery_data(row) for row in await webhooks.deliveries(session, endpoint_id, failed, limit)]

    rows = _run(ctx, work)
    if as_json:
        echo_json(rows)
        return
    click.echo(table([(r["at"] and when(r["at"]), r["endpoint_id"], r["event_id"], r["type"], r["attempt"],
                       r["status_code"] or "-", "ok" if r["ok"] else "FAILED", r["latency_ms"], r["error"] or "")
                      for r in rows],
                     ["at", "endpoint", "event", "type", "attempt", "status", "result", "ms", "error"]))


@webhooks_group.command("replay")
@click.argument("event_id", required=False)
@click.option("--since", type=SINCE, help="Every webhook event since this local date instead of one event.")
@click.option("--endpoint", "endpoint_id", type=int, help="Only to this endpoint (default: every subscriber).")
@click.pass_context
def replay(ctx: click.Context, event_id: str | None, since: datetime | None, endpoint_id: int | None) -> None:
    """Queue events again for their subscribed endpoints (same event ids, new deliveries).

    Example: scrm webhooks replay evt_1234 --endpoint 2   or   scrm webhooks replay --since 2026-11-20
    """
    if (event_id is None) == (since is None):
        raise click.UsageError("give an EVENT_ID or --since (one of them)")

    async def work(session: AsyncSession) -> int:
        timeline_id = webhooks.parse_event_id(event_id) if event_id else None
        return await webhooks.replay(session, timeline_id, since.astimezone() if since else None, endpoint_id)

    click.echo(f"{_run(ctx, work)} deliveries queued")


@webhooks_group.command("test")
@click.argument("endpoint_id", type=int)
@click.pass_context
def test(ctx: click.Context, endpoint_id: int) -> None:
    """POST a signed `ping` event to an endpoint now and show what it answered (logged as a delivery).

    Example: scrm webhooks test 1
    """
    endpoint = _run(ctx, lambda session: webhooks.get_endpoint(session, endpoint_id))
    body = webhooks.ping_body()

    async def send() -> Attempt:
        async with aiohttp.ClientSession() as http:
            return await post(http, endpoint.url, endpoint.secret, body)

    attempt = asyncio.run(send())

    async def record(session: AsyncSession) -> None:
        session.add(webhooks.delivery_row(endpoint_id, body, 1, attempt.status_code, attempt.ok, attempt.error,
                                          attempt.latency_ms))

    _run(ctx, record)
    if not attempt.ok:
        raise click.ClickException(f"{endpoint.url}: {attempt.error} ({attempt.latency_ms} ms)")
    click.echo(f"{endpoint.url} answered {attempt.status_code} in {attempt.latency_ms} ms ({body['id']})")
