"""`scrm webhooks ...` through Click's runner on SQLite and PostgreSQL, with a local receiver for `test`."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.customers import Profile, resolve_customer
from crm_store.lifecycle import Lifecycle, set_stage
from crm_store.models import OutboxItem, TimelineEvent
from crm_store.webhooks import WebhookError, check_url
from tests.admin_cli.harness import ScrmRunner
from tests.bot.conftest import make_settings
from tests.conftest import Backend

T = TypeVar("T")


class Scrm(ScrmRunner):
    command = ("webhooks",)
    failure_exit = -1


class Receiver(BaseHTTPRequestHandler):
    status = 200
    hits: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.hits.append((dict(self.headers), body))
        self.send_response(Receiver.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.status, Receiver.hits = 200, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


@pytest.fixture
def scrm(backend: Backend, clean_env: None) -> Scrm:
    return Scrm(backend.store_url)


def stage_change(scrm: Scrm, backend: Backend, name: str) -> int:
    """A customer moved to `interested` through the library; the timeline event's id."""
    lifecycle = Lifecycle(make_settings(backend).lifecycle)

    async def work(session: AsyncSession) -> int:
        customer = await resolve_customer(session, "wecom", f"wm_{name}", Profile(display_name=name))
        await session.flush()
        await set_stage(session, customer, "interested", "test", lifecycle)
        await session.flush()
        found = await session.scalar(select(TimelineEvent.id).where(TimelineEvent.customer_id == customer.id,
                                                                    TimelineEvent.kind == "stage.changed"))
        assert found is not None
        return int(found)

    return scrm.run(work)


def webhook_keys(scrm: Scrm) -> list[str]:
    async def work(session: AsyncSession) -> list[str]:
        return sorted(await session.scalars(select(OutboxItem.dedup_key).where(OutboxItem.kind == "webhook.post")))

    return scrm.run(work)


def test_add_shows_the_secret_once_and_list_never(scrm: Scrm) -> None:
    shown = scrm("add", "https://erp.example.com/scrm", "--event", "stage.changed", "--event", "tag.added").stdout
    assert shown.startswith("webhook #1 → https://erp.example.com/scrm (stage.changed, tag.added)")
    secret = shown.splitlines()[1].removeprefix("secret: ")
    assert secret.startswith("whsec_") and len(secret) > 30
    listed = scrm("list").stdout
    assert "https://erp.example.com/scrm" in listed and secret not in listed
    [data] = scrm.json("list")
    assert data["events"] == ["stage.changed", "tag.added"] and "secret" not in data
    chosen = scrm.json("add", "http://127.0.0.1:9/x", "--event", "*", "--secret", "a-secret-of-my-own-1234")
    assert chosen["secret"] == "a-secret-of-my-own-1234" and chosen["events"] == ["*"]


def test_add_refuses_bad_urls_short_secrets_and_unknown_events(scrm: Scrm) -> None:
    assert "must not contain credentials" in scrm("add", "https://u:p@x.example.com/", "--event", "tag.added",
                                                  ok=False).output
    assert "not an http:// or https:// URL" in scrm("add", "ftp://x.example.com/", "--event", "tag.added",
                                                    ok=False).output
    assert "unknown event type(s) tag.add" in scrm("add", "https://x.example.com/", "--event", "tag.add",
                                                   ok=False).output
    assert "at least 16 characters" in scrm("add", "https://x.example.com/", "--event", "tag.added",
                                            "--secret", "short", ok=False).output
    assert scrm.json("list") == []


def test_check_url_accepts_http_and_https_only() -> None:
    assert check_url(" https://a.example.com/h?x=1 ") == "https://a.example.com/h?x=1"
    for bad in ("a.example.com/h", "https:///nohost", "javascript:alert(1)", "http://user@a.example.com/"):
        with pytest.raises(WebhookError):
            check_url(bad)


def test_test_sends_a_signed_ping_and_logs_it(scrm: Scrm, receiver: str) -> None:
    secret = scrm.json("add", receiver, "--event", "tag.added")["secret"]
    assert " answered 200 in " in scrm("test", "1").stdout
    [(headers, body)] = Receiver.hits
    expected = hmac.new(secret.encode(), headers["X-Scrm-Timestamp"].encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    assert headers["X-Scrm-Signature"] == f"sha256={expected}"
    assert json.loads(body)["type"] == "ping" and headers["X-Scrm-Event-Id"].startswith("ping_")
    Receiver.status = 500
    failed = scrm("test", "1", ok=False)
    assert failed.exit_code == 1 and "HTTP 500" in failed.output
    log = scrm.json("log", "--endpoint", "1")
    assert [(row["status_code"], row["ok"]) for row in log] == [(500, False), (200, True)]
    assert [row["status_code"] for row in scrm.json("log", "--failed")] == [500]
    assert "FAILED" in scrm("log").stdout
    assert "no webhook endpoint #7" in scrm("test", "7", ok=False).output


def test_replay_queues_new_deliveries_for_one_event_or_a_period(scrm: Scrm, backend: Backend) -> None:
    scrm("add", "https://erp.example.com/scrm", "--event", "stage.changed")
    scrm("add", "https://crm.example.com/in", "--event", "tag.added")  # not subscribed: gets nothing
    event = stage_change(scrm, backend, "阿May")
    assert scrm("replay", f"evt_{event}").stdout.strip() == "1 deliveries queued"
    assert scrm("replay", str(event), "--endpoint", "1").stdout.strip() == "1 deliveries queued"
    assert scrm("replay", "--since", "2000-01-01").stdout.strip() == "1 deliveries queued"
    keys = webhook_keys(scrm)
    assert len(keys) == 3 and all(key.startswith(f"webhook:1:{event}:replay:") for key in keys)
    assert scrm("replay", ok=False).exit_code == 2
    assert "not an event id" in scrm("replay", "abc", ok=False).output
    assert "does not exist" in scrm("replay", "999999", ok=False).output


def test_remove_deletes_the_endpoint_and_its_log(scrm: Scrm, receiver: str) -> None:
    scrm("add", receiver, "--event", "handoff.opened")
    scrm("test", "1")
    assert scrm("remove", "1").stdout.strip() == f"removed webhook #1 ({receiver})"
    assert scrm.json("list") == [] and scrm.json("log") == []
    assert "no webhook endpoint #1" in scrm("remove", "1", ok=False).output
