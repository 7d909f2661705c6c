"""Push benchmark: how long a customer who chats waits for the answer, without a push and while one drains.

    .venv/bin/python bench/push.py [--customers 50] [--interval 2] [--seconds 60] [--push 100000]
    .venv/bin/python bench/push.py --push 5000 --seconds 10       # a quick look, about a minute

The bot runs as `scrm serve --role all` (callbacks, worker and sender in one process) on a fresh
PostgreSQL database, its API pointed at the sandbox's fake WeCom API in this process, which keeps
WeCom's per-API limit (10,000 calls a minute, 150,000 an hour, errcode 45009 beyond:
https://developer.work.weixin.qq.com/document/path/90312) and the kf send quota (5 messages per
customer message, document 94677). In one run:
  1. --customers kf customers each write "你好" about every --interval seconds (jittered), through the
     real signed callback; after a warm-up round (their first message makes them customers), for
     --seconds: the reply latency of each message, from just before the customer's message reaches
     WeCom (the fake) to the moment the fake received the bot's kf/send_msg answering it;
  2. --push marketing rows (lane 2, kf/send_msg, one per customer, each customer granted their sends
     at the fake) are inserted into the outbox with SQL, as a push decided elsewhere; the bot finds
     them by polling. The same customers chat for another --seconds while the push drains: the
     latency of the messages written before the push was done.
Prints both p95s, their ratio, the goal (p95 < 1 s during the push) met or not, the 45009s the fake
answered and how far the push got. Exits non-zero when a message was answered twice or not at all.
The push is not waited for: at 10,000 calls a minute 100,000 rows take ten minutes or more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.checks import Check, exit_status, print_checks  # noqa: E402
from bench.ingest import KEYS, KF, OA_APP, OA_SECRET, SECRETS, bot_environment, wait_for_port  # noqa: E402
from bench.pg_database import fresh_database  # noqa: E402
from bench.servers import free_port  # noqa: E402
from bot.sandbox import wechat_side  # noqa: E402
from bot.sandbox.fake_quotas import TOO_FREQUENT  # noqa: E402
from bot.sandbox.fake_wechat import FakeWeChat  # noqa: E402

PG_ADMIN = os.environ.get("SCRM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("SCRM_BENCH_REDIS", "redis://127.0.0.1:6379/14")
GOAL_P95_S = 1.0
PUSH_TEXT = "双十二预热，全场 8 折"
REPLY_WAIT_S = 60.0  # after a phase, how long its last replies may still take


@dataclass
class Chat:
    """What the customers wrote (when, per customer, in order) and what the push did, read from the fake."""

    fake: FakeWeChat
    corp: str
    written: dict[str, list[float]] = field(default_factory=dict)  # user -> when each message was written

    def replies(self) -> dict[str, list[float]]:
        """When the fake received each kf/send_msg to a chatting customer, per customer, in order."""
        received: dict[str, list[float]] = {user: [] for user in self.written}
        for sent in self.fake.sent:
            if sent.path == "kf/send_msg" and sent.to in received:
                received[sent.to].append(sent.at)
        return received

    def latencies(self, since: float, until: float) -> list[float]:
        """Each message written in [since, until): how long its answer took (inf: none yet). The k-th reply
        to a customer answers their k-th message: each "你好" gets one, and one customer's go in order."""
        replies, waits = self.replies(), []
        for user, times in self.written.items():
            for index, at in enumerate(times):
                if since <= at < until:
                    waits.append(replies[user][index] - at if index < len(replies[user]) else math.inf)
        return sorted(waits)

    def pushed(self) -> int:
        return sum(1 for sent in self.fake.sent if sent.path == "kf/send_msg" and sent.to.startswith("wmPush"))

    def rate_refusals(self) -> int:
        return sum(1 for refusal in self.fake.refused if refusal.errcode == TOO_FREQUENT)


async def write(chat: Chat, http: aiohttp.ClientSession, base: str, user: str) -> None:
    """The customer writes "你好" in kf: WeCom keeps the message and notifies the bot's callback."""
    chat.written.setdefault(user, []).append(time.time())
    chat.fake.add_kf_text(KF, user, "你好")
    signed = wechat_side.sign_wecom(*KEYS["kf"], chat.corp,
                                    wechat_side.kf_notification_xml(chat.corp, KF, secrets.token_hex(8)))
    async with http.post(f"{base}/wecom/kf/callback", params=signed.query, data=signed.body) as response:
        await response.read()


async def chatting(chat: Chat, http: aiohttp.ClientSession, base: str, users: list[str], interval_s: float,
                   seconds: float, rng: random.Random) -> tuple[float, float]:
    """Every customer writes about every `interval_s` for `seconds`; (start, end) of the phase."""
    started = time.time()
    end = started + seconds

    async def one(user: str) -> None:
        await asyncio.sleep(rng.uniform(0, interval_s))
        while time.time() < end:
            await write(chat, http, base, user)
            await asyncio.sleep(interval_s * rng.uniform(0.75, 1.25))

    await asyncio.gather(*(one(user) for user in users))
    return started, time.time()


async def answered(chat: Chat, since: float, until: float, timeout_s: float = REPLY_WAIT_S) -> None:
    """Until every message written in [since, until) has its answer, or `timeout_s`."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and math.inf in chat.latencies(since, until):
        await asyncio.sleep(0.2)


async def insert_push(fake: FakeWeChat, dsn: str, count: int, lane: int) -> float:
    """`count` rows of `lane` for as many customers, as the nurture dispatcher writes them; seconds taken."""
    started = time.perf_counter()
    users = [f"wmPush{index}" for index in range(count)]
    for user in users:
        fake.grant_kf(KF, user)  # each of them wrote within 48 hours: five sends allowed
    now = datetime.now(UTC)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.copy_records_to_table(
            "outbox", columns=["dedup_key", "queue_key", "kind", "payload", "status", "attempts", "available_at",
                               "created_at", "lane"],
            records=[(f"nurture:bench-{user}", f"push:{user}", "kf.send_msg",
                      json.dumps({"touser": user, "open_kfid": KF, "msgtype": "text", "text": {"content": PUSH_TEXT}}),
                      "pending", 0, now, now, lane) for user in users])
    finally:
        await connection.close()
    return time.perf_counter() - started


async def watch_push(dsn: str, done: asyncio.Event, finished: list[float]) -> None:
    """When no push row is left unfinished (the push's end), polled twice a second until `done`."""
    connection = await asyncpg.connect(dsn)
    try:
        while not done.is_set():
            left = await connection.fetchval("SELECT count(*) FROM outbox WHERE dedup_key LIKE 'nurture:bench-%' "
                                             "AND status IN ('pending', 'claimed')")
            if left == 0:
                finished.append(time.time())
                return
            await asyncio.sleep(0.5)
    finally:
        await connection.close()


def p95(latencies: list[float]) -> float:
    return latencies[max(0, math.ceil(0.95 * len(latencies)) - 1)] if latencies else math.nan


def median(latencies: list[float]) -> float:
    return latencies[len(latencies) // 2] if latencies else math.nan


@dataclass
class Result:
    quiet: list[float]
    busy: list[float]
    push_started: float
    push_ended: float | None
    pushed: int
    push_insert_s: float
    refusals: int
    checks: list[Check]


async def run(args: argparse.Namespace, log_path: Path) -> Result:
    corp = f"wwpush{secrets.token_hex(4)}"  # the bot's token and API budgets in Redis are this run's own
    fake = FakeWeChat(corp, list(SECRETS.values()), OA_APP, OA_SECRET)
    fake_runner = web.AppRunner(fake.app(), access_log=None)
    await fake_runner.setup()
    fake_port, bot_port = free_port(), free_port()
    await web.TCPSite(fake_runner, "127.0.0.1", fake_port).start()
    chat, rng = Chat(fake, corp), random.Random(7)
    users = [f"wmChat{index}" for index in range(args.customers)]
    async with fresh_database(args.pg_admin_dsn, args.keep, "push") as (url, dsn):
        env = {**bot_environment(url, bot_port, f"http://127.0.0.1:{fake_port}/cgi-bin"),
               "SCRM__WECOM__CORP_ID": corp, "SCRM__REDIS__URL": args.redis}
        with log_path.open("wb") as log:
            bot = subprocess.Popen([str(ROOT / ".venv/bin/scrm"), "serve", "--role", "all"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
            try:
                await wait_for_port(bot_port, bot)
                return await phases(args, chat, users, f"http://127.0.0.1:{bot_port}", dsn, rng)
            finally:
                bot.terminate()
                await asyncio.to_thread(bot.wait, 30)
                await fake_runner.cleanup()


async def phases(args: argparse.Namespace, chat: Chat, users: list[str], base: str, dsn: str,
                 rng: random.Random) -> Result:
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as http:
        warm_from = time.time()
        await asyncio.gather(*(write(chat, http, base, user) for user in users))  # each becomes a customer
        await answered(chat, warm_from, time.time())
        quiet_from, quiet_to = await chatting(chat, http, base, users, args.interval, args.seconds, rng)
        await answered(chat, quiet_from, quiet_to)
        insert_s = await insert_push(chat.fake, dsn, args.push, args.push_lane)
        push_from, done, finished = time.time(), asyncio.Event(), list[float]()
        watcher = asyncio.create_task(watch_push(dsn, done, finished))
        busy_from, busy_to = await chatting(chat, http, base, users, args.interval, args.seconds, rng)
        await answered(chat, busy_from, busy_to)
        done.set()
        await watcher
    push_end = finished[0] if finished else None  # messages written after it did not wait for the push
    quiet, busy = chat.latencies(quiet_from, quiet_to), chat.latencies(busy_from, min(push_end or busy_to, busy_to))
    replies, written = chat.replies(), chat.written
    extra = sum(max(0, len(replies[user]) - len(times)) for user, times in written.items())
    missing = sum(max(0, len(times) - len(replies[user])) for user, times in written.items())
    checks: list[Check] = [
        (f"every message answered ({sum(map(len, written.values())):,} written, {missing} without an answer "
         f"within {REPLY_WAIT_S:.0f} s)", missing == 0),
        (f"no message answered twice ({extra} extra replies)", extra == 0),
        (f"the push was draining during the measured messages ({len(busy):,} of them)", len(busy) > 0),
    ]
    return Result(quiet, busy, push_from, push_end, chat.pushed(), insert_s, chat.rate_refusals(), checks)


def print_report(args: argparse.Namespace, result: Result, elapsed_s: float, log_path: Path) -> None:
    print(f"push benchmark on PostgreSQL: {args.customers} kf customers each writing about every "
          f"{args.interval:g} s for {args.seconds:g} s, then again while a push of {args.push:,} rows (lane "
          f"{args.push_lane}) drains; one bot process (scrm serve --role all); {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"setup (not measured): {args.push:,} push rows COPYed into the outbox in {result.push_insert_s:.1f} s")
    print(f"{'reply latency':28}{'messages':>9}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for name, waits in (("without a push", result.quiet), ("while the push drains", result.busy)):
        print(f"{name:28}{len(waits):9,}{median(waits) * 1000:9.0f}{p95(waits) * 1000:9.0f}"
              f"{(waits[-1] if waits else math.nan) * 1000:9.0f}")
    quiet, busy = p95(result.quiet), p95(result.busy)
    print(f"p95 ratio (during / without the push): {busy / quiet:.2f}")
    print(f"goal p95 < {GOAL_P95_S:g} s during the push: {busy:.3f} s: {'met' if busy < GOAL_P95_S else 'NOT met'}")
    if result.push_ended is not None:
        span = result.push_ended - result.push_started
        print(f"push: all {args.push:,} rows sent in {span:.1f} s ({args.push / span:,.0f}/s, polling included)")
    else:
        span = time.time() - result.push_started
        print(f"push: {result.pushed:,} of {args.push:,} rows sent in {span:.1f} s (not waited for further)")
    print(f"45009 (over the per-API rate) answered by the fake: {result.refusals:,}")
    print(f"bot log: {log_path}")
    print_checks(result.checks, elapsed_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=50,
                        help="kf customers chatting (50 at one message each 2 s: 25 turns/s, what one bot process "
                             "answers on 2 cores while it sends a push; 200 exceed it with or without a push)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between one customer's messages")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long each phase chats")
    parser.add_argument("--push", type=int, default=100_000, help="marketing rows in the push")
    parser.add_argument("--push-lane", type=int, choices=(0, 1, 2), default=2,
                        help="the push rows' lane; 0 puts them with the replies, as the id order had them before lanes")
    parser.add_argument("--redis", default=REDIS, help="the bot's Redis ($SCRM_BENCH_REDIS)")
    parser.add_argument("--keep", action="store_true", help="keep the database (its DSN is printed)")
    parser.add_argument("--pg-admin-dsn", default=PG_ADMIN, help="where to create the database ($SCRM_BENCH_PG)")
    args = parser.parse_args()
    if args.customers < 1 or args.push < 1 or args.seconds <= 0 or args.interval <= 0:
        parser.error("--customers, --push, --seconds and --interval must be positive")
    log_path = Path(tempfile.gettempdir()) / f"scrm-bench-push-{secrets.token_hex(3)}.log"
    started = time.perf_counter()
    result = asyncio.run(run(args, log_path))
    print_report(args, result, time.perf_counter() - started, log_path)
    return exit_status(result.checks)


if __name__ == "__main__":
    sys.exit(main())
