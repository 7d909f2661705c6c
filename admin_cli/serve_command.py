"""`scrm serve`: the bot server with its worker, sender and (on a first run) the sandbox."""

from __future__ import annotations

import asyncio
import logging
import signal

import click
from aiohttp import web

from admin_cli.main import cli, settings_of
from bot.app import create_app
from bot.logs import configure_logging
from bot.settings import Settings
from crm_store.migrate import upgrade
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
    configure_logging(settings.logging.level, settings.logging.json_format)
    if not no_migrate:
        upgrade(settings.store.url)
    asyncio.run(_serve(settings, role))


async def _serve(settings: Settings, role: str) -> None:
    rasa = ManagedRasa(settings.nlu) if settings.nlu.mode == "managed" else None
    if rasa is not None:
        await rasa.start()
    app = create_app(settings, run_workers=role != "web", managed_rasa=rasa)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.server.shutdown_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, settings.server.port)
    await site.start()
    base = f"http://{settings.server.host}:{settings.server.port}"
    click.echo(f"SCRM bot listening on {base}")
    if settings.sandbox.enabled:
        click.echo(f"Sandbox chat page: {base}/sandbox")
    click.echo(f"Health: {base}/healthz  Metrics: {base}/metrics")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signame in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signame, stop.set)
    await stop.wait()
    click.echo("Shutting down: finishing in-flight work…")
    await runner.cleanup()
    if rasa is not None:
        await rasa.stop()
