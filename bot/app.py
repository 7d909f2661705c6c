"""The aiohttp application: callback endpoints, /healthz, /metrics, /media links and, in the sandbox, the chat page.

`create_app(settings)` returns an app whose start-up opens the runtime (and, with the
sandbox on, the fake WeCom/OA API on `sandbox.api_port`, which the API clients are
pointed at), and whose clean-up finishes in-flight work before closing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from bot.api import API_LIMITS, PREFIX, ApiLimits, create_api
from bot.callbacks import ENDPOINTS, CallbackChannel, CallbackEndpoint, add_callback_routes
from bot.channels.oa import OaCallback
from bot.channels.wecom import WecomCallback
from bot.health import healthz, metrics_endpoint
from bot.inbox import InboxWriter
from bot.media_routes import add_media_routes
from bot.runtime import RUNTIME, Runtime
from bot.sandbox.fake_wechat import FakeWeChat
from bot.sandbox.simulator import SIMULATOR, Simulator, add_sandbox_routes, fake_for
from bot.settings import Settings
from bot.worker import TurnPipeline
from nlu.server import ManagedRasa

log = logging.getLogger("scrm.app")

FAKE_WECHAT = web.AppKey("fake_wechat", FakeWeChat)


def create_app(
    settings: Settings,
    pipeline: TurnPipeline | None = None,
    run_workers: bool = True,
    managed_rasa: ManagedRasa | None = None,
) -> web.Application:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    add_callback_routes(app)
    add_media_routes(app)  # signed links to stored media, for reps (bot/media_links.py)
    api = create_api(ApiLimits(settings.api.requests_per_window, settings.api.window_s, settings.api.max_body_bytes))
    app.add_subapp(PREFIX, api)
    app[API_LIMITS] = api[API_LIMITS]  # one object: tightening it on the main app holds for the API
    if settings.sandbox.enabled:
        add_sandbox_routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        effective = settings
        fake_runner = None
        if settings.sandbox.enabled:
            fake = fake_for(settings)
            fake_runner, port = await _start_fake(fake, settings.sandbox.api_port)
            effective = with_api_base(settings, f"http://127.0.0.1:{port}/cgi-bin")
            app[FAKE_WECHAT] = fake
            log.warning("sandbox.on fake WeCom/OA API at http://127.0.0.1:%s/cgi-bin; chat page at /sandbox", port)
        runtime = await Runtime.open(effective, pipeline, managed_rasa)
        app[RUNTIME] = runtime
        if settings.sandbox.enabled:
            app[SIMULATOR] = Simulator(effective, app[FAKE_WECHAT], runtime.http)
        app[ENDPOINTS] = callback_endpoints(runtime)
        if run_workers:
            runtime.start_background()
        yield
        await runtime.close()
        if fake_runner is not None:
            await fake_runner.cleanup()

    app.cleanup_ctx.append(lifecycle)
    return app


def callback_endpoints(runtime: Runtime) -> dict[str, CallbackEndpoint]:
    settings = runtime.settings
    tolerance = settings.security.timestamp_tolerance_s
    wecom = settings.wecom
    oa = settings.oa
    channels: dict[str, CallbackChannel] = {
        "/wecom/kf/callback": WecomCallback(
            "kf", wecom.kf.token.get_secret_value(), wecom.kf.encoding_aes_key.get_secret_value(), wecom.corp_id, tolerance
        ),
        "/wecom/contacts/callback": WecomCallback(
            "contacts", wecom.contacts.token.get_secret_value(),
            wecom.contacts.encoding_aes_key.get_secret_value(), wecom.corp_id, tolerance,
        ),
        "/wecom/app/callback": WecomCallback(
            "app", wecom.app.token.get_secret_value(), wecom.app.encoding_aes_key.get_secret_value(),
            wecom.corp_id, tolerance,
        ),
        "/oa/callback": OaCallback(
            oa.token.get_secret_value(), oa.encoding_aes_key.get_secret_value(), oa.app_id, oa.mode, tolerance
        ),
    }
    writer = InboxWriter(runtime.sessions, runtime.inbox)
    return {
        path: CallbackEndpoint(path.split("/")[-2], channel, writer, settings.server.max_body_bytes)
        for path, channel in channels.items()
    }


def with_api_base(settings: Settings, base: str) -> Settings:
    """The same settings with both API bases pointing at `base` (the sandbox's fake API)."""
    wecom = settings.wecom.model_copy(update={"api_base": base})
    oa = settings.oa.model_copy(update={"api_base": base})
    return settings.model_copy(update={"wecom": wecom, "oa": oa})


async def _start_fake(fake: FakeWeChat, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, bound
