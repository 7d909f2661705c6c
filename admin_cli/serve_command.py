"""`scrm serve`: the bot server with its worker, sender and (on a first run) the sandbox."""

from __future__ import annotations

import asyncio
import logging
import signal

import click
from aiohttp import web
from sqlalchemy.engine import make_url

from admin_cli.main import cli, settings_of
from bot.app import create_app
from bot.logs import configure_logging
from bot.runtime import RUNTIME, directory_faq
from bot.sandbox.demo import has_customers
from bot.settings import Settings
from crm_store.migrate import SchemaNotCurrent, ensure_schema
from nlu.server import ManagedRasa

log = logging.getLogger("scrm.serve")


@cli.command()
@click.option("--port", type=int, help="Listen on this port instead of server.port.")
@click.option("--no-migrate", is_flag=True, help="Do not apply database migrations at start-up.")
@click.option(
    "--role",
    type=click.Choice(["all", "web", "worker"]),
    default="all",
    show_default=True,
    help="web: answer callbacks only; worker: process the inbox and send the outbox only; all: both.",
)
@click.pass_context
def serve(ctx: click.Context, port: int | None, no_migrate: bool, role: str) -> None:
    """Run the bot server: callbacks, inbox worker, outbox sender, NLU and the sandbox.

    Several processes can share one PostgreSQL store: run any number of each role.

    Example: scrm serve --port 8080, then open http://127.0.0.1:8080/sandbox
    """
    settings = settings_of(ctx)
    if port is not None:
        settings = settings.model_copy(update={"server": settings.server.model_copy(update={"port": port})})
    configure_logging(settings.logging.level, settings.logging.json_format, settings.logging.levels)
    if not no_migrate:
        _migrate(settings.store.url)
    try:
        asyncio.run(_serve(settings, role))
    except Exception:
        log.exception("serve.failed")  # through the formatter: masked, and one JSON object in JSON mode
        raise SystemExit(1) from None


def _migrate(url: str) -> None:
    """Bring any store to the newest schema; one line when that changed something (Alembic's own are quiet)."""
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        change = asyncio.run(ensure_schema(url, upgrade_any_store=True))
    except SchemaNotCurrent as exc:
        raise click.ClickException(f"store {shown} {exc}") from None
    if change is not None:
        log.info("store.migrated store=%s from=%s to=%s", shown, change.before or "empty", change.after)


def _announce(settings: Settings, event: str, text: str) -> None:
    """Words for the person at a text console; a log record in JSON mode, so that every line stays JSON."""
    if settings.logging.json_format:
        log.info("%s %s", event, " ".join(text.split()))
    else:
        click.echo(text)


async def _has_customers(app: web.Application) -> bool:
    async with app[RUNTIME].sessions() as session:
        return await has_customers(session)


async def _serve(settings: Settings, role: str) -> None:
    rasa = ManagedRasa(settings.nlu, faq=directory_faq(settings).training_rows()) \
        if settings.nlu.mode == "managed" else None
    if rasa is not None:
        await rasa.start()
    app = create_app(settings, run_workers=role != "web", managed_rasa=rasa)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.server.shutdown_timeout_s)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.server.host, settings.server.port).start()
        base = f"http://{settings.server.host}:{settings.server.port}"
        sandbox = f"\nSandbox chat page: {base}/sandbox" if settings.sandbox.enabled else ""
        _announce(settings, "serve.listening",
                  f"SCRM bot listening on {base}{sandbox}\nHealth: {base}/healthz  Metrics: {base}/metrics")
        if settings.sandbox.enabled and not await _has_customers(app):
            _announce(settings, "serve.no_customers", "No customers yet: for a tour, run `scrm demo` in "
                      "another terminal (a group-buy, reps on duty, a few customers; it prints what to try)")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signame in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signame, stop.set)
        await stop.wait()
        _announce(settings, "serve.stopping", "Shutting down: finishing in-flight work…")
    finally:  # also when start-up fails (the port is taken): close what was opened
        await runner.cleanup()
        if rasa is not None:
            await rasa.stop()
