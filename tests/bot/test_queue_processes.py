"""Several bot processes on one PostgreSQL, as a big brand runs them: real `scrm serve` processes, a burst of
signed callbacks, a sender SIGKILLed in the middle of its batch.

- two worker processes (each with its outbox sender) under 5,000 messages from 500 customers, each
  customer's in bursts of five: every message handled once, each customer's in the order they were sent,
  every one answered, none twice;
- a sender killed while hundreds of its sends are in flight or finished but not yet recorded: a new
  sender delivers every kf text exactly once (WeCom drops a repeated `msgid`) and loses none; an OA
  message whose call had started is written off as "outcome unknown", never sent again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from bench.ingest import CORP, KEYS, KF, OA_APP, OA_SECRET, SECRETS, bot_environment, free_port, wait_for_port
from bot.sandbox import wechat_side
from bot.sandbox.fake_wechat import FakeWeChat
from tests.conftest import Backend

SCRM = Path(sys.executable).with_name("scrm")
pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)
BURST = 5


class Fake:
    """The fake WeCom/OA API on a local port, in this process (its record is what the tests read)."""

    def __init__(self) -> None:
        self.api = FakeWeChat(CORP, list(SECRETS.values()), OA_APP, OA_SECRET)
        self.runner = web.AppRunner(self.api.app(), access_log=None)
        self.port = free_port()

    async def __aenter__(self) -> FakeWeChat:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self.api

    async def __aexit__(self, *_: object) -> None:
        await self.runner.cleanup()


def serve(env: dict[str, str], role: str, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(SCRM), "serve", "--role", role, "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL)


def environment(backend: Backend, fake: Fake, port: int, **extra: str) -> dict[str, str]:
    env = bot_environment(backend.store_url, port, f"http://127.0.0.1:{fake.port}/cgi-bin")
    return {**env, "SCRM__REDIS__URL": backend.redis_url, **extra}


def dsn(backend: Backend) -> str:
    return backend.store_url.replace("postgresql+asyncpg://", "postgresql://")


async def wait_until(condition: str, backend: Backend, timeout_s: float) -> None:
    """Until `condition` (SQL returning a boolean) holds in the store."""
    connection = await asyncpg.connect(dsn(backend))
    try:
        for _ in range(int(timeout_s / 0.2)):
            if await connection.fetchval(condition):
                return
            await asyncio.sleep(0.2)
    finally:
        await connection.close()
    raise TimeoutError(f"not within {timeout_s} s: {condition}")


NOTHING_LEFT = ("SELECT NOT EXISTS (SELECT 1 FROM inbox WHERE status IN ('pending', 'claimed'))"
                " AND NOT EXISTS (SELECT 1 FROM outbox WHERE status IN ('pending', 'claimed'))")


def stop(*processes: subprocess.Popen[bytes] | None) -> None:
    for process in processes:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


async def test_two_workers_and_two_senders_answer_a_burst_once_each_in_order(backend: Backend) -> None:
    customers, each = 500, 10
    fake_server = Fake()
    async with fake_server as fake:
        web_port = free_port()
        env = environment(backend, fake_server, web_port)
        server = serve(env, "web", web_port)
        workers: list[subprocess.Popen[bytes]] = []
        try:
            await wait_for_port(web_port, server)
            workers = [serve(env, "worker", free_port()) for _ in range(2)]  # they take work as it is stored

            answered: Counter[str] = Counter()

            async def customer(index: int, http: aiohttp.ClientSession, slots: asyncio.Semaphore) -> None:
                """Two bursts of five messages (the OA lets five answers follow a message: the platform's quota,
                not the bot, would refuse a sixth), the second once the first five are answered."""
                openid = f"oBurst{index}"
                for number in range(each):
                    if number and number % BURST == 0:
                        while answered[openid] < number:
                            await asyncio.sleep(0.1)
                    fake.oa_customer_acted(openid, "message")
                    xml = wechat_side.oa_text_xml("gh_burst", openid, f"你好 {openid} #{number}",
                                                  msg_id=index * 100 + number + 1)
                    signed = wechat_side.sign_oa(*KEYS["oa"], OA_APP, xml, "safe")
                    async with slots, http.post(f"http://127.0.0.1:{web_port}/oa/callback", params=signed.query,
                                                data=signed.body) as response:
                        assert response.status == 200

            async def count_answers() -> None:
                while True:
                    answered.clear()
                    answered.update(sent.to for sent in fake.sent)
                    await asyncio.sleep(0.1)

            slots = asyncio.Semaphore(32)
            counting = asyncio.create_task(count_answers())
            async with aiohttp.ClientSession() as http:
                await asyncio.gather(*(customer(index, http, slots) for index in range(customers)))
            counting.cancel()
            await wait_until(NOTHING_LEFT, backend, timeout_s=600)
            assert all(worker.poll() is None for worker in workers)
        finally:
            stop(server, *workers)
        replies = Counter(sent.to for sent in fake.sent)
        assert len(replies) == customers and set(replies.values()) == {each}  # each message answered, once

    connection = await asyncpg.connect(dsn(backend))
    try:
        texts = await connection.fetch("SELECT data->>'text' AS text FROM timeline_events"
                                       " WHERE kind = 'inbound.message' ORDER BY id")
        statuses = await connection.fetch("SELECT status, count(*) FROM inbox GROUP BY status")
    finally:
        await connection.close()
    seen: dict[str, list[int]] = defaultdict(list)
    for row in texts:
        _, openid, number = row["text"].split(" ")
        seen[openid].append(int(number.lstrip("#")))
    assert len(seen) == customers
    assert all(numbers == list(range(each)) for numbers in seen.values())  # once each, in the order sent
    assert dict(statuses) == {"done": customers * each}


async def test_a_sender_killed_mid_batch_sends_nothing_twice_and_loses_no_kf_text(backend: Backend) -> None:
    kf_rows, oa_rows = 600, 200
    fake_server = Fake()
    async with fake_server as fake:
        fake.api_per_minute = fake.api_per_hour = None
        for index in range(kf_rows):
            fake.grant_kf(KF, f"wmKill{index}")
        for index in range(oa_rows):
            fake.oa_customer_acted(f"oKill{index}", "message")
        port = free_port()
        env = environment(backend, fake_server, port, SCRM__WORKER__CLAIM_TTL_S="3",
                          SCRM__WORKER__OUTBOX_CONCURRENCY="64")
        await store_sends(backend, kf_rows, oa_rows)
        first = serve(env, "worker", port)
        second = None
        try:
            for _ in range(600):  # until the sender is well into the backlog
                if len(fake.sent) >= 150:
                    break
                await asyncio.sleep(0.02)
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
            delivered_before = len(fake.sent)
            second = serve(env, "worker", free_port())
            await wait_until(NOTHING_LEFT, backend, timeout_s=120)
        finally:
            stop(first, second)
        kf = Counter(sent.to for sent in fake.sent if sent.to.startswith("wmKill"))
        oa = Counter(sent.to for sent in fake.sent if sent.to.startswith("oKill"))
    assert 0 < delivered_before < kf_rows + oa_rows  # killed in the middle
    assert len(kf) == kf_rows and set(kf.values()) == {1}  # every kf text once: none lost, none twice
    assert set(oa.values()) <= {1}  # no OA message twice

    connection = await asyncpg.connect(dsn(backend))
    try:
        outcomes = await connection.fetch("SELECT payload->>'touser' AS touser, status, last_error FROM outbox")
    finally:
        await connection.close()
    for row in outcomes:
        if row["touser"].startswith("wmKill"):
            assert row["status"] == "done"
        elif row["status"] == "failed":  # an OA message in flight when the sender died: never resent
            assert "outcome unknown" in row["last_error"]
            assert oa[row["touser"]] <= 1
        else:
            assert row["status"] == "done" and oa[row["touser"]] == 1
    written_off = sum(1 for row in outcomes if row["status"] == "failed")
    assert written_off + sum(oa.values()) >= oa_rows  # every OA row either arrived or is written off


async def store_sends(backend: Backend, kf_rows: int, oa_rows: int) -> None:
    """Outbox rows stored at once, one customer each, kf and OA interleaved."""
    now = datetime.now(UTC)
    rows = []
    for index in range(max(kf_rows, oa_rows)):
        if index < kf_rows:
            rows.append((f"kill:kf:{index}", f"kill:wmKill{index}", "kf.send_msg", json.dumps(
                {"touser": f"wmKill{index}", "open_kfid": KF, "msgtype": "text", "text": {"content": "hi"}})))
        if index < oa_rows:
            rows.append((f"kill:oa:{index}", f"kill:oKill{index}", "oa.custom_send", json.dumps(
                {"touser": f"oKill{index}", "msgtype": "text", "text": {"content": "hi"}})))
    connection = await asyncpg.connect(dsn(backend))
    try:
        await connection.copy_records_to_table(
            "outbox", columns=["dedup_key", "queue_key", "kind", "payload", "status", "attempts", "available_at",
                               "created_at"],
            records=[(*row, "pending", 0, now, now) for row in rows])
    finally:
        await connection.close()
