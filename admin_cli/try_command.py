"""`scrm flows try`: chat with the working flows in the terminal, through the real bot.

Nothing is faked but WeChat: a throwaway SQLite store in a temporary directory, the
working flows validated and published into it, the real app (callback endpoint, inbox
worker, NLU, flow engine, outbox sender) and the sandbox's fake WeCom API. Each line
typed is a 微信客服 message from one customer; the bot's replies are printed, and under
them, dimmed, what the customer's timeline says happened (intent, flow steps, tags,
stage changes, handoffs).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from aiohttp import web
from pydantic import SecretStr
from sqlalchemy import select

from admin_cli.flow_commands import checked, flows_group, working
from admin_cli.main import settings_of
from admin_cli.nlu_commands import rasa_for_call
from bot.app import FAKE_WECHAT, create_app
from bot.runtime import RUNTIME, Runtime
from bot.sandbox.simulator import SIMULATOR, Simulator
from bot.settings import Settings
from crm_store.customers import find_identity
from crm_store.migrate import upgrade_async
from crm_store.models import TimelineEvent
from flows.model import FlowSet
from flows.publishing import publish_flows
from nlu.settings import NluSettings

USER = "wmTryCustomer"
HELP = "type a message; /enter [code] enters the kf session with a scene code; /quit ends"


@flows_group.command("try")
@click.option("--flows", "directory", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The flow directory to try (default: flows.directory).")
@click.option("--nlu", "nlu_mode", type=click.Choice(["rules", "managed", "external"]),
              help="Intent detection: keyword rules, a Rasa started here, or nlu.rasa_url (default: nlu.mode).")
@click.pass_context
def try_command(ctx: click.Context, directory: Path | None, nlu_mode: str | None) -> None:
    """Chat with the flows in the terminal, through the real bot and a throwaway store.

    Each line is a 微信客服 message; the replies are printed with what happened under
    them. `/enter CODE` enters the session with a scene code (an invite or campaign),
    `/quit` or end of input stops. Works with input piped in.

    Example: scrm flows try --nlu rules   or   printf '你好\\n多少钱\\n' | scrm flows try
    """
    settings = settings_of(ctx)
    sources, origins = working(settings, directory)
    flows = checked(sources, settings, origins)
    if nlu_mode:
        settings = settings.model_copy(update={"nlu": settings.nlu.model_copy(update={"mode": nlu_mode})})
    click.echo(f"trying {len(flows.flows)} flows from {directory or settings.flows.directory} ({HELP})")
    asyncio.run(_chat(settings, flows))


async def _chat(settings: Settings, flows: FlowSet) -> None:
    with tempfile.TemporaryDirectory(prefix="scrm-try-") as folder:
        async with rasa_for_call(settings.nlu, flows.faq.training_rows()) as (url, token):
            nlu = settings.nlu.model_copy(update={"mode": "rules"} if url is None else {
                "mode": "external", "rasa_url": url, "auth_token": SecretStr(token or "")})
            if settings.nlu.mode != "rules" and url is None:
                click.echo("nlu: no Rasa server: keyword rules answer instead", err=True)
            quiet = logging.getLogger("scrm.app")  # its "sandbox is on" warning is no news here
            level, quiet.level = quiet.level, logging.ERROR
            try:
                async with sandbox(_sandbox_settings(settings, Path(folder), nlu), flows) as chat:
                    await chat.loop()
            finally:
                quiet.setLevel(level)


def _sandbox_settings(settings: Settings, folder: Path, nlu: NluSettings) -> Settings:
    """The configured settings, with a store in `folder`, in-process state and the fake WeCom API."""

    def section(name: str, **values: Any) -> Any:
        return getattr(settings, name).model_copy(update=values)

    return settings.model_copy(update={
        "store": section("store", url=f"sqlite+aiosqlite:///{folder / 'try.db'}", echo=False),
        "redis": section("redis", url=""),
        "sandbox": section("sandbox", enabled=True, api_port=0),
        "nlu": nlu,
        "flows": section("flows", publish_on_start=False),
        "worker": section("worker", poll_interval_s=0.05, retry_base_s=0.05),
    })


@asynccontextmanager
async def sandbox(settings: Settings, flows: FlowSet) -> AsyncIterator[Chat]:
    """The store migrated, `flows` published in it, and the app serving on a free loopback port."""
    await upgrade_async(settings.store.url)
    app = create_app(settings, run_workers=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        runtime = app[RUNTIME]
        async with runtime.sessions() as session, session.begin():
            await publish_flows(session, flows, note="scrm flows try")
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield Chat(runtime, app[SIMULATOR], f"http://127.0.0.1:{runner.addresses[0][1]}", app[FAKE_WECHAT])
    finally:
        await runner.cleanup()


@dataclass
class Chat:
    runtime: Runtime
    simulator: Simulator
    bot_url: str
    fake: Any
    replies_seen: int = 0
    last_event: int = 0

    async def loop(self) -> None:
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                click.echo("you> ", nl=False)
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line or line.strip() in ("/quit", "/exit"):
                return
            text = line.strip()
            if not text:
                continue
            if not interactive:
                click.echo(f"you> {text}")
            if text == "/enter" or text.startswith("/enter "):
                await self.simulator.kf_enters(self.bot_url, USER, text[len("/enter"):].strip())
            elif text in ("/help", "/?"):
                click.echo(HELP)
                continue
            else:
                await self.simulator.kf_says(self.bot_url, USER, text)
            await self.settle()

    async def settle(self) -> None:
        """Run the inbox and outbox until the turn is done; print the replies, then what happened."""
        for _ in range(20):
            await self.runtime.drain()
            if len(self.simulator.conversation(USER)) > self.replies_seen:
                break
            await asyncio.sleep(0.05)  # a retry waiting out its (short) back-off
        for message in self.simulator.conversation(USER)[self.replies_seen:]:
            click.echo(f"bot> {message['text']}")
            for choice in message["menu"]:
                click.echo(f"     [{choice['id']}] {choice['text']}")
            self.replies_seen += 1
        for note in await self.happenings():
            click.echo(click.style(f"     · {note}", dim=True))

    async def happenings(self) -> list[str]:
        async with self.runtime.sessions() as session:
            identity = await find_identity(session, "wecom", USER)
            if identity is None:
                return ["no customer yet: the message was not processed (see the log above)"]
            events = list(await session.scalars(
                select(TimelineEvent).where(TimelineEvent.customer_id == identity.customer_id,
                                            TimelineEvent.id > self.last_event).order_by(TimelineEvent.id)))
        if events:
            self.last_event = events[-1].id
        return [text for event in events if (text := describe(event.kind, dict(event.data)))]


def describe(kind: str, data: dict[str, Any]) -> str:
    """One dimmed line per timeline event worth showing ("" for the ones the replies already show)."""
    if kind.startswith("inbound."):
        intent = f"intent {data['intent']} {data.get('confidence', 0):.2f} ({data.get('intent_source', '')})" \
            if "intent" in data else "no intent"
        return f"{kind[8:]}: {intent}" + (f", code {data['scene']}" if data.get("scene") else "")
    if kind == "flow.turn":
        own = f"{data.get('flow')}."
        steps = [step.removeprefix(own) for step in data.get("steps") or []]
        return f"flow {data.get('flow')}: {' → '.join(steps) or 'no step'} ({data.get('outcome')})"
    if kind in ("flow.started", "flow.ended"):
        why = data.get("trigger") or data.get("reason") or ""
        return f"flow {data.get('flow')} {kind[5:]}" + (f" ({why})" if why else "")
    if kind in ("tag.added", "tag.removed"):
        return f"tag {'+' if kind == 'tag.added' else '-'}{data.get('tag')} ({data.get('cause', '')})"
    if kind == "stage.changed":
        return f"stage {data.get('from')} → {data.get('to')} ({data.get('reason', '')})"
    if kind in ("outbound.reply", "customer.created"):
        return ""
    return f"{kind} " + " ".join(f"{key}={value}" for key, value in data.items())
