"""Delivers "webhook.post" outbox rows: a signed JSON POST to the endpoint, every attempt logged.

Headers: `X-Scrm-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` with the
endpoint's secret, `X-Scrm-Timestamp` (Unix seconds), `X-Scrm-Event-Id`, `X-Scrm-Event-Type`.
A 2xx answer finishes the row; any other answer, a timeout or a connection error puts it
back with the outbox's exponential back-off until `max_attempts`, then it fails. The
delivery is at least once (a crash after the POST sends it again): receivers deduplicate
by X-Scrm-Event-Id.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import metrics
from crm_store import work_queue
from crm_store.models import OutboxItem
from crm_store.webhook_models import WebhookEndpoint
from crm_store.webhooks import WEBHOOK_POST, delivery_row, sign
from crm_store.work_queue import ClaimLost

log = logging.getLogger("scrm.webhooks")

DEFAULT_TIMEOUT_S = 10.0
USER_AGENT = "scrm-webhooks/1"


@dataclass(frozen=True)
class Attempt:
    """What one POST came to."""

    ok: bool
    status_code: int | None
    error: str | None
    latency_ms: int


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def signed_headers(secret: str, body: dict[str, Any], data: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = str(int(now if now is not None else time.time()))
    return {"Content-Type": "application/json", "User-Agent": USER_AGENT,
            "X-Scrm-Signature": sign(secret, timestamp, data), "X-Scrm-Timestamp": timestamp,
            "X-Scrm-Event-Id": str(body.get("id", "")), "X-Scrm-Event-Type": str(body.get("type", ""))}


async def post(http: aiohttp.ClientSession, url: str, secret: str, body: dict[str, Any],
               timeout_s: float = DEFAULT_TIMEOUT_S) -> Attempt:
    """One signed POST; never raises for the endpoint's failures (they are the Attempt's error)."""
    data = encode(body)
    started = time.monotonic()
    status: int | None = None
    error: str | None = None
    try:
        async with http.post(url, data=data, headers=signed_headers(secret, body, data), allow_redirects=False,
                             timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            status = response.status
            if not 200 <= status < 300:
                text = (await response.content.read(200)).decode(errors="replace")
                error = f"HTTP {status}: {text}".strip()
    except TimeoutError:
        error = f"timed out after {timeout_s:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return Attempt(error is None, status, error, int((time.monotonic() - started) * 1000))


class WebhookSender:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], http: aiohttp.ClientSession, max_attempts: int,
                 retry_base_s: float, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.sessions = sessions
        self.http = http
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.timeout_s = timeout_s

    async def deliver(self, item: OutboxItem) -> bool:
        """Send one outbox row; True when the endpoint took it."""
        endpoint_id, body = int(item.payload["endpoint_id"]), dict(item.payload["event"])
        async with self.sessions() as session:
            endpoint = await session.get(WebhookEndpoint, endpoint_id)
        if endpoint is None or not endpoint.active:
            await self._close(item, "failed", "endpoint removed or disabled; not sent")
            return False
        attempt = await post(self.http, endpoint.url, endpoint.secret, body, self.timeout_s)
        async with self.sessions() as session, session.begin():
            session.add(delivery_row(endpoint_id, body, item.attempts, attempt.status_code, attempt.ok,
                                     attempt.error, attempt.latency_ms))
        if attempt.ok:
            log.info("webhooks.delivered id=%s endpoint=%s event=%s ms=%s", item.id, endpoint_id, body.get("id"),
                     attempt.latency_ms)
            await self._close(item, "done", None)
            return True
        metrics.SEND_ERRORS.labels(WEBHOOK_POST, str(attempt.status_code or "transport")).inc()
        reason = attempt.error or "failed"
        if item.attempts < self.max_attempts:
            delay = work_queue.backoff_s(item.attempts, self.retry_base_s)
            log.warning("webhooks.retry id=%s endpoint=%s %s in %.1fs", item.id, endpoint_id, reason, delay)
            async with self.sessions() as session, session.begin():
                await work_queue.retry_later(session, item, delay, reason)
            return False
        log.error("webhooks.failed id=%s endpoint=%s attempts=%s %s", item.id, endpoint_id, item.attempts, reason)
        await self._close(item, "failed", f"{reason} (after {item.attempts} attempts)")
        return False

    async def _close(self, item: OutboxItem, status: str, error: str | None) -> None:
        try:
            async with self.sessions() as session, session.begin():
                await work_queue.finish(session, item, status, error)
        except ClaimLost:
            log.warning("webhooks.claim_lost id=%s", item.id)

