"""Outgoing webhooks end to end: timeline → feed → outbox → a signed POST to a local receiver, logged.

The receiver is a real aiohttp server on a local port that can be told to fail; the bot
is the real app on SQLite and PostgreSQL with its outbox drained by the test.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import func, select

from bot.webhook_feed import WebhookFeed
from crm_store import webhooks
from crm_store.customers import Profile, record, resolve_customer
from crm_store.models import OutboxItem, StageChange, TimelineEvent
from crm_store.webhook_models import WebhookDelivery, WebhookEndpoint
from tests.bot.conftest import Bot
from tests.flows.test_engine import customer_of, say


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """A webhook receiver: answers with the next scripted status (then 200) and keeps what it got."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(Hit(dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok" if status < 300 else "boom")


@pytest.fixture
async def receiver(aiohttp_server) -> Receiver:  # type: ignore[no-untyped-def]
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    server = await aiohttp_server(app)
    found.url = str(server.make_url("/hook"))
    return found


def signature_ok(secret: str, hit: Hit) -> bool:
    timestamp = hit.headers["X-Scrm-Timestamp"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + hit.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(hit.headers["X-Scrm-Signature"], f"sha256={expected}")


async def add_endpoint(bot: Bot, url: str, *events: str) -> WebhookEndpoint:
    async with bot.runtime.sessions() as session, session.begin():
        return await webhooks.add_endpoint(session, url, events)


async def feed_until(bot: Bot, expect: int, timeout_s: float = 10.0) -> int:
    """Run the feed until it has queued `expect` deliveries. On PostgreSQL it reads only events older than
    every transaction still open on the server, other databases' included (tests running beside this one)."""
    feed = bot.runtime.webhook_feed
    assert feed is not None
    queued = await feed.run_due()
    deadline = asyncio.get_running_loop().time() + timeout_s
    while queued < expect and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        queued += await feed.run_due()
    return queued


async def feed_and_deliver(bot: Bot, receiver: Receiver, expect: int, rounds: int = 200) -> None:
    """Run the feed, then drain while retries wait out their back-off."""
    assert bot.runtime.webhook_feed is not None
    await bot.runtime.webhook_feed.run_due()
    for _ in range(rounds):
        await bot.runtime.webhook_feed.run_due()
        await bot.drain()
        if len(receiver.hits) >= expect:
            break
        await asyncio.sleep(0.02)
    await bot.drain()


async def new_events(bot: Bot, name: str, count: int, kind: str = "tag.added") -> list[int]:
    async with bot.runtime.sessions() as session, session.begin():
        customer = await resolve_customer(session, "wecom", f"wm_{name}", Profile(display_name=name))
        await session.flush()
        for index in range(count):
            await record(session, customer.id, kind, {"tag": f"t{index}", "cause": "test"})
        await session.flush()
        rows = await session.scalars(select(TimelineEvent.id).where(TimelineEvent.customer_id == customer.id,
                                                                    TimelineEvent.kind == kind))
        return sorted(rows)


async def test_a_stage_change_from_a_customer_message_reaches_the_receiver_once_signed(
    bot: Bot, receiver: Receiver
) -> None:
    endpoint = await add_endpoint(bot, receiver.url, "stage.changed")
    await bot.simulator.kf_enters(bot.url, "wmHook")
    await bot.drain()
    await say(bot, "wmHook", "问价格", menu_id="price")
    await say(bot, "wmHook", "连衣裙")
    customer = await customer_of(bot, "wmHook")
    assert customer.stage == "interested"
    async with bot.runtime.sessions() as session:
        changes = int(await session.scalar(select(func.count()).select_from(StageChange)
                                           .where(StageChange.customer_id == customer.id)) or 0)
    await feed_and_deliver(bot, receiver, changes)
    await feed_and_deliver(bot, receiver, changes + 1, rounds=3)  # a second run finds nothing new
    assert len(receiver.hits) == changes >= 1
    assert all(signature_ok(endpoint.secret, hit) for hit in receiver.hits)
    last = receiver.hits[-1]
    assert last.headers["X-Scrm-Event-Id"] == last.event["id"] and last.event["id"].startswith("evt_")
    assert last.event["type"] == "stage.changed" and last.event["customer_id"] == customer.id
    assert last.event["data"]["to"] == "interested" and set(last.event) == {
        "id", "type", "occurred_at", "customer_id", "data"}
    assert not signature_ok("whsec_wrong", last)


async def test_a_receiver_failing_twice_gets_the_event_once_and_the_log_shows_three_attempts(
    start_bot: Any, receiver: Receiver
) -> None:
    bot = await start_bot(worker={"retry_base_s": 0.01})
    endpoint = await add_endpoint(bot, receiver.url, "tag.added")
    receiver.statuses = [500, 500, 200]
    [event_id] = await new_events(bot, "retry", 1)
    await feed_and_deliver(bot, receiver, 3)
    assert [hit.event["id"] for hit in receiver.hits] == [f"evt_{event_id}"] * 3
    async with bot.runtime.sessions() as session:
        log = list(await session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))
        item = await session.scalar(select(OutboxItem).where(OutboxItem.kind == "webhook.post"))
    assert [(row.attempt, row.status_code, row.ok) for row in log] == [(1, 500, False), (2, 500, False),
                                                                        (3, 200, True)]
    assert log[0].error == "HTTP 500: boom" and all(row.endpoint_id == endpoint.id for row in log)
    assert item is not None and item.status == "done" and item.dedup_key == f"webhook:{endpoint.id}:{event_id}"


async def test_an_endpoint_that_keeps_failing_is_given_up_after_max_attempts(
    start_bot: Any, receiver: Receiver
) -> None:
    bot = await start_bot(worker={"retry_base_s": 0.01, "max_attempts": 2})
    await add_endpoint(bot, receiver.url, "*")
    receiver.statuses = [503] * 5
    await new_events(bot, "dead", 1, kind="group.filled")
    await feed_and_deliver(bot, receiver, 3, rounds=30)
    assert len(receiver.hits) == 2 and receiver.hits[0].event["type"] == "group_buy.filled"
    async with bot.runtime.sessions() as session:
        item = await session.scalar(select(OutboxItem).where(OutboxItem.kind == "webhook.post"))
    assert item is not None and item.status == "failed" and "after 2 attempts" in (item.last_error or "")


async def test_two_feed_runs_at_once_queue_each_event_once_per_endpoint(bot: Bot, receiver: Receiver,
                                                                        backend: Any) -> None:
    if backend.name != "postgres":
        pytest.skip("concurrent writers: PostgreSQL's row lock is what is under test")
    first = await add_endpoint(bot, receiver.url, "tag.added")
    second = await add_endpoint(bot, receiver.url + "?second=1", "*")
    events = await new_events(bot, "race", 40)
    await new_events(bot, "noise", 5, kind="rep.note")  # not a webhook event: nobody gets it
    feeds = [WebhookFeed(bot.runtime.sessions, 1.0) for _ in range(3)]
    queued = sum(await asyncio.gather(*(feed.run_due() for feed in feeds)))
    if queued < 80:  # a transaction of a test beside this one held some back: they come next time
        queued += await feed_until(bot, 80 - queued)
    assert queued == 80
    await feed_and_deliver(bot, receiver, 80)
    got = sorted((hit.headers["X-Scrm-Event-Id"], hit.headers["X-Scrm-Signature"][:7]) for hit in receiver.hits)
    assert len(got) == 80 == len(set((hit.headers["X-Scrm-Event-Id"], hit.headers["X-Scrm-Signature"])
                                     for hit in receiver.hits))
    async with bot.runtime.sessions() as session:
        keys = set(await session.scalars(select(OutboxItem.dedup_key).where(OutboxItem.kind == "webhook.post")))
    assert keys == {f"webhook:{endpoint.id}:{event}" for endpoint in (first, second) for event in events}


async def test_a_replay_sends_the_same_event_again_with_a_new_delivery(bot: Bot, receiver: Receiver) -> None:
    endpoint = await add_endpoint(bot, receiver.url, "tag.added")
    [event_id] = await new_events(bot, "replay", 1)
    await feed_and_deliver(bot, receiver, 1)
    async with bot.runtime.sessions() as session, session.begin():
        assert await webhooks.replay(session, event_id) == 1
    await feed_and_deliver(bot, receiver, 2)
    assert [hit.headers["X-Scrm-Event-Id"] for hit in receiver.hits] == [f"evt_{event_id}"] * 2
    assert receiver.hits[0].event == receiver.hits[1].event
    async with bot.runtime.sessions() as session:
        keys = sorted(await session.scalars(select(OutboxItem.dedup_key).where(OutboxItem.kind == "webhook.post")))
    assert keys[0] == f"webhook:{endpoint.id}:{event_id}" and keys[1].startswith(f"{keys[0]}:replay:")


async def test_events_before_an_endpoint_was_added_and_removed_endpoints_are_not_sent(
    bot: Bot, receiver: Receiver
) -> None:
    await new_events(bot, "early", 2)
    endpoint = await add_endpoint(bot, receiver.url, "tag.added")
    await feed_and_deliver(bot, receiver, 1, rounds=3)
    assert receiver.hits == []
    await new_events(bot, "late", 1)
    assert await feed_until(bot, 1) == 1
    async with bot.runtime.sessions() as session, session.begin():
        await webhooks.remove_endpoint(session, endpoint.id)
    await bot.drain()
    assert receiver.hits == []
    async with bot.runtime.sessions() as session:
        item = await session.scalar(select(OutboxItem).where(OutboxItem.kind == "webhook.post"))
    assert item is not None and item.status == "failed" and "endpoint removed" in (item.last_error or "")


async def test_an_event_committed_late_is_sent_not_skipped(bot: Bot, receiver: Receiver, backend: Any) -> None:
    endpoint = await add_endpoint(bot, receiver.url, "tag.added")
    feed = bot.runtime.webhook_feed
    assert feed is not None
    if backend.name != "postgres":  # one writer at a time: ids are in commit order, read at once
        await new_events(bot, "now", 1)
        assert await feed.run_due() == 1
        return
    async with bot.runtime.sessions() as slow:  # takes the lower id, commits last
        await slow.begin()
        customer = await resolve_customer(slow, "wecom", "wm_slow", Profile(display_name="slow"))
        await slow.flush()
        await record(slow, customer.id, "tag.added", {"tag": "late", "cause": "test"})
        await slow.flush()
        [quick] = await new_events(bot, "quick", 1)
        assert await feed.run_due() == 0  # an older transaction is open: nothing after it is read yet
        await slow.commit()
    assert await feed_until(bot, 2) == 2
    async with bot.runtime.sessions() as session:
        late = await session.scalar(select(TimelineEvent.id).where(TimelineEvent.customer_id == customer.id,
                                                                   TimelineEvent.kind == "tag.added"))
        keys = set(await session.scalars(select(OutboxItem.dedup_key).where(OutboxItem.kind == "webhook.post")))
    assert late is not None and late < quick
    assert keys == {f"webhook:{endpoint.id}:{late}", f"webhook:{endpoint.id}:{quick}"}
