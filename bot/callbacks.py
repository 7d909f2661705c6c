"""The callback endpoints: verify, decrypt, store durably, answer at once.

Nothing here waits on NLU, the conversation or the WeCom API: the event is in the
inbox before "success" goes back, and the worker takes it from there. WeChat retries
the same callback when we are slow; the inbox's unique key turns a retry into a no-op.
When the store cannot take an event (a restart), the answer is 503 and WeChat's retry
brings it again: the only case where a well-formed callback is not answered "success".
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from aiohttp import web

from bot.channels.base import CallbackError
from bot.inbox import InboxWriter
from core import metrics
from core.events import InboundEvent
from core.faults import FAULTS, fault_component

log = logging.getLogger("scrm.callbacks")

CALLBACK_OUTCOMES = ("verified", "stored", "ignored", "rejected", "malformed", "unavailable")


class CallbackChannel(Protocol):
    def verify_url(self, query: dict[str, str]) -> str: ...

    def open(self, query: dict[str, str], body: bytes) -> dict[str, object]: ...

    def parse(self, message: dict[str, object]) -> list[InboundEvent]: ...


class CallbackEndpoint:
    """GET answers WeChat's URL check; POST stores the callback's events in the inbox."""

    def __init__(
        self,
        name: str,
        channel: CallbackChannel,
        inbox: InboxWriter,
        max_body_bytes: int,
    ) -> None:
        self.name = name
        self.channel = channel
        self.inbox = inbox
        self.max_body_bytes = max_body_bytes
        self._stored = metrics.INBOX_STORED.labels(name)
        self._duplicates = metrics.INBOX_DUPLICATES.labels(name)
        self._outcomes = {outcome: metrics.CALLBACKS.labels(name, outcome) for outcome in CALLBACK_OUTCOMES}
        self._seconds = metrics.CALLBACK_SECONDS.labels(name)

    async def verify(self, request: web.Request) -> web.Response:
        try:
            echo = self.channel.verify_url(dict(request.query))
        except CallbackError as exc:
            return self._refuse(exc)
        self._outcomes["verified"].inc()
        return web.Response(text=echo)

    async def receive(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            body = await self._read_body(request)
            events = self.channel.parse(self.channel.open(dict(request.query), body))
        except CallbackError as exc:
            return self._refuse(exc)
        if events:
            try:
                new = await self.inbox.store(events)
            except Exception as exc:
                return self._unavailable(exc)
            self._stored.inc(new)
            self._duplicates.inc(len(events) - new)
        self._outcomes["stored" if events else "ignored"].inc()
        self._seconds.observe(time.perf_counter() - started)
        return web.Response(text="success")

    def _unavailable(self, exc: Exception) -> web.Response:
        """The store could not take the events: 503, so WeChat delivers the callback again (never lost)."""
        component = fault_component(exc)
        if component is None:
            raise exc
        self._outcomes["unavailable"].inc()
        FAULTS.seen(component, f"callback.{self.name}", exc, retry="WeChat sends the callback again")
        return web.Response(status=503, text=f"{component} unavailable, try again")

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise CallbackTooLarge(f"body over {self.max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body.extend(chunk)
            if len(body) > self.max_body_bytes:
                raise CallbackTooLarge(f"body over {self.max_body_bytes} bytes")
        return bytes(body)

    def _refuse(self, exc: CallbackError) -> web.Response:
        outcome = "rejected" if exc.status == 403 else "malformed"
        self._outcomes[outcome].inc()
        log.warning("callback.%s channel=%s reason=%s", outcome, self.name, exc)
        return web.Response(status=exc.status, text=str(exc))


class CallbackTooLarge(CallbackError):
    status = 400


CALLBACK_PATHS = ("/wecom/kf/callback", "/wecom/contacts/callback", "/wecom/app/callback", "/oa/callback")
ENDPOINTS = web.AppKey("callback_endpoints", dict)


def add_callback_routes(app: web.Application) -> None:
    """GET and POST for each callback path; the endpoints themselves are set at start-up."""

    async def verify(request: web.Request) -> web.Response:
        return await request.app[ENDPOINTS][request.path].verify(request)

    async def receive(request: web.Request) -> web.Response:
        return await request.app[ENDPOINTS][request.path].receive(request)

    for path in CALLBACK_PATHS:
        app.router.add_get(path, verify)
        app.router.add_post(path, receive)
