"""Conversation benchmark: turns answered per second, callback to reply, against a plain Rasa assistant.

    .venv/bin/python bench/flows.py [--customers 200] [--concurrency 50] [--channel mix] [--json]

What a brand compares: the bot (`scrm serve --role all` on PostgreSQL and Redis, Rasa 3.6 doing
NLU as the product runs it, `nlu.mode = managed`) against the assistant it would build with Rasa
alone (bench/rasa_assistant: the same NLU pipeline and data, one answer per intent, rules and
stories, served by `rasa run` with its REST channel). Both answer the same conversations on this
machine in one run, one after the other, so neither steals the other's CPU.

The conversations: N customers (seeded), each playing one multi-turn script (greet, ask a price,
name the product, thank; order status; complaint; group buy; chitchat; off-topic; unsubscribe...)
with texts drawn from the NLU training and held-out test sets, so phrasing varies as it does in
real chats. A customer sends turn k+1 only once turn k was answered; --concurrency customers chat
at a time. Latency is callback POST -> the reply reaching the fake WeCom/OA API (bot) or POST ->
REST response (Rasa). A turn is answered when the customer received at least one more message;
one unanswered after --turn-timeout counts as unanswered (and at the timeout in the percentiles).
The bot is judged on turn counts, never on what it says: its conversation layer may change.

Before measuring, each side gets a warm-up on texts the measured run never uses (so Rasa's graph
is warm but the bot's parse cache holds none of the measured texts); the bot's NLU answer sources
(rasa, cache, rules) during the measured run are printed, so a rules fallback cannot pass as speed,
and so is the CPU each side spent per turn (Linux /proc), which says where the time goes.
The plain assistant's model is trained when missing or stale and cached in bench/.cache/ (a few
minutes, once); the bot's NLU model is trained by the bot itself into nlu/models when stale.
PostgreSQL: $SCRM_BENCH_PG (as bench/ingest.py); Redis: $SCRM_BENCH_FLOWS_REDIS (db 13, flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402
    CORP,
    KEYS,
    OA_APP,
    OA_SECRET,
    PG_ADMIN,
    SECRETS,
    bot_environment,
    free_port,
    wait_for_port,
)
from bench.rasa_assistant import CACHE, NLU_PROJECT, ensure_assistant_model, running_assistant  # noqa: E402
from bot.sandbox import wechat_side  # noqa: E402
from bot.sandbox.fake_kf import Sent  # noqa: E402
from bot.sandbox.fake_wechat import FakeWeChat  # noqa: E402
from nlu.training_data import load_project  # noqa: E402

REDIS = os.environ.get("SCRM_BENCH_FLOWS_REDIS", "redis://127.0.0.1:6379/13")
STORE_COUNTERS = {"scrm_store_statements_total": "statements", "scrm_store_transactions_total": "transactions"}
KF = "wkFlowsKf"
GOAL_RATIO, GOAL_P95_S = 3.0, 1.0

# script name -> (turns, share of customers). "name_product" answers "which product?";
# "ask_price_named" is a price question that names the product.
SCRIPTS: dict[str, tuple[tuple[str, ...], float]] = {
    "shopper": (("greet", "ask_price", "name_product", "thanks"), 0.25),
    "named_price": (("ask_price_named", "ask_shipping", "affirm"), 0.10),
    "order": (("greet", "ask_order_status", "thanks", "goodbye"), 0.15),
    "complaint": (("complain", "refund", "want_human"), 0.10),
    "person": (("greet", "want_human"), 0.05),
    "group_buy": (("join_group_buy", "ask_group_buy_status", "invite_friend", "thanks"), 0.10),
    "deals": (("ask_discount", "ask_product", "deny"), 0.08),
    "chitchat": (("chitchat", "chitchat", "goodbye"), 0.07),
    "off_topic": (("greet", "out_of_scope", "goodbye"), 0.05),
    "unsubscribe": (("unsubscribe",), 0.05),
}
PRODUCT_TURNS = ("{p}", "{p}吧", "要{p}", "{p}的", "就那个{p}", "我想买{p}", "{p}呢")
WARMUP_PREFIX = "亲，"  # warm-up texts differ from every measured text


@dataclass(frozen=True)
class Customer:
    user: str
    channel: str  # kf or oa
    script: str
    turns: tuple[str, ...]


# --- the conversation mix ------------------------------------------------------------------
def text_pools() -> dict[str, list[str]]:
    """Texts per turn kind, from the NLU training and test sets (real phrasing, not templates)."""
    data = load_project(NLU_PROJECT)
    pools: dict[str, list[str]] = {}
    for example in (*data.train, *data.test):
        names = {name for name, _ in example.entities}
        if not names:
            pools.setdefault(example.intent, []).append(example.text)
        elif example.intent == "ask_price" and names == {"product"}:
            pools.setdefault("ask_price_named", []).append(example.text)
    products = yaml.safe_load((NLU_PROJECT / "rules.yml").read_text(encoding="utf-8"))["products"]
    pools["name_product"] = [turn.format(p=p) for turn in PRODUCT_TURNS for p in products]
    return pools


def make_customers(count: int, seed: int, channel: str, pools: dict[str, list[str]], prefix: str = "",
                   tag: str = "") -> list[Customer]:
    rng = random.Random(seed)
    names = list(SCRIPTS)
    weights = [SCRIPTS[name][1] for name in names]
    customers = []
    for index in range(count):
        script = rng.choices(names, weights)[0]
        turns = tuple(prefix + rng.choice(pools[kind]) for kind in SCRIPTS[script][0])
        kind = channel if channel != "mix" else ("kf", "oa")[index % 2]
        user = f"{'wm' if kind == 'kf' else 'o'}Flows{tag}{seed}x{index}"
        customers.append(Customer(user, kind, script, turns))
    return customers


# --- playing conversations -----------------------------------------------------------------
Say = Callable[[Customer, str], Awaitable[bool]]


async def play(customers: list[Customer], concurrency: int, say: Say, timeout_s: float) -> dict[str, Any]:
    """Each customer's turns in order, `concurrency` customers at a time; latency per turn."""
    queue = iter(customers)
    latencies: list[float] = []
    by_channel: dict[str, list[float]] = {}
    unanswered = 0

    async def chat() -> None:
        nonlocal unanswered
        for customer in queue:
            for text in customer.turns:
                started = time.perf_counter()
                if await say(customer, text):
                    latency = time.perf_counter() - started
                else:
                    unanswered += 1
                    latency = max(timeout_s, time.perf_counter() - started)
                latencies.append(latency)
                by_channel.setdefault(customer.channel, []).append(latency)

    started = time.perf_counter()
    await asyncio.gather(*(chat() for _ in range(concurrency)))
    stats = summary(latencies, unanswered, time.perf_counter() - started)
    stats["p50_p95_ms_by_channel"] = {channel: [percentile(values, 0.50), percentile(values, 0.95)]
                                      for channel, values in sorted(by_channel.items())}
    return stats


def percentile(latencies: list[float], q: float) -> float:
    """The q-quantile of `latencies` (seconds), in milliseconds."""
    ordered = sorted(latencies)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else 0.0


def summary(latencies: list[float], unanswered: int, wall_s: float) -> dict[str, Any]:
    turns = len(latencies)
    return {"turns": turns, "answered": turns - unanswered, "unanswered": unanswered,
            "wall_s": round(wall_s, 2), "msgs_per_s": round((turns - unanswered) / wall_s, 1),
            "p50_ms": percentile(latencies, 0.50), "p95_ms": percentile(latencies, 0.95),
            "p99_ms": percentile(latencies, 0.99)}


# --- the bot's side ------------------------------------------------------------------------
class ReplyCounter(FakeWeChat):
    """The fake WeCom/OA API, counting messages per customer and waking whoever waits for one."""

    def __init__(self) -> None:
        super().__init__(CORP, list(SECRETS.values()), OA_APP, OA_SECRET)
        self.replies: Counter[str] = Counter()
        self._arrived: dict[str, asyncio.Event] = {}

    def _deliver(self, path: str, body: dict[str, Any]) -> str:
        before = len(self.sent)
        msgid = super()._deliver(path, body)
        if len(self.sent) > before:
            sent = self.sent[-1]
            user = str(body.get("_to") or sent.to)
            if self.counts(sent):
                self.replies[user] += 1
                self.received(user, sent)
                if user in self._arrived:
                    self._arrived[user].set()
        return msgid

    def counts(self, sent: Sent) -> bool:
        """Whether a delivered message is a reply someone may wait for (all of them, here)."""
        return True

    def received(self, user: str, sent: Sent) -> None:
        """A counted reply was delivered (for subclasses that keep more)."""

    async def reply_after(self, user: str, seen: int, timeout_s: float) -> bool:
        """True once `user` has more than `seen` messages; False after `timeout_s`."""
        arrived = self._arrived.setdefault(user, asyncio.Event())
        deadline = time.monotonic() + timeout_s
        while self.replies[user] <= seen:
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                return self.replies[user] > seen
        return True


def bot_sayer(base: str, fake: ReplyCounter, http: aiohttp.ClientSession, timeout_s: float) -> Say:
    msg_ids = itertools.count(secrets.randbelow(10**12) * 1000)

    async def say(customer: Customer, text: str) -> bool:
        seen = fake.replies[customer.user]
        if customer.channel == "kf":
            fake.add_kf_text(KF, customer.user, text)
            xml = wechat_side.kf_notification_xml(CORP, KF, secrets.token_hex(8))
            path, signed = "/wecom/kf/callback", wechat_side.sign_wecom(*KEYS["kf"], CORP, xml)
        else:
            fake.oa_customer_acted(customer.user, "message")  # the fake never sees OA callbacks: its send grant
            xml = wechat_side.oa_text_xml("gh_flows", customer.user, text, msg_id=next(msg_ids))
            path, signed = "/oa/callback", wechat_side.sign_oa(*KEYS["oa"], OA_APP, xml, "safe")
        try:
            async with http.post(base + path, params=signed.query, data=signed.body) as response:
                await response.read()
                if response.status != 200:
                    return False
        except (TimeoutError, aiohttp.ClientError):
            return False
        return await fake.reply_after(customer.user, seen, timeout_s)

    return say


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new PostgreSQL database for one run, dropped afterwards; yields its SQLAlchemy URL."""
    database = f"scrm_flows_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{database}"')
    try:
        yield f"postgresql+asyncpg://{PG_ADMIN.split('://', 1)[1].rsplit('/', 1)[0]}/{database}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


@dataclass(frozen=True)
class RunningBot:
    base: str
    fake: ReplyCounter
    pid: int


@contextlib.asynccontextmanager
async def running_bot(store_url: str) -> AsyncIterator[RunningBot]:
    """`scrm serve --role all` with managed Rasa, its API pointed at a fake in this process."""
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(REDIS)
    await client.flushdb()
    await client.aclose()
    fake = ReplyCounter()
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    fake_port, bot_port = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", fake_port).start()
    env = bot_environment(store_url, bot_port, f"http://127.0.0.1:{fake_port}/cgi-bin")
    env.update({"SCRM__REDIS__URL": REDIS, "SCRM__NLU__MODE": "managed"})
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "flows-bot.log").open("wb") as log:
        bot = subprocess.Popen([str(ROOT / ".venv/bin/scrm"), "serve", "--role", "all"], env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        await wait_for_port(bot_port, bot, timeout_s=120)
        await wait_nlu_ready(f"http://127.0.0.1:{bot_port}", bot)
        yield RunningBot(f"http://127.0.0.1:{bot_port}", fake, bot.pid)
    finally:
        bot.terminate()
        bot.wait(timeout=60)
        await runner.cleanup()


async def wait_nlu_ready(base: str, bot: subprocess.Popen[bytes], timeout_s: float = 900) -> None:
    """Until the bot's /healthz says its Rasa answers (training a changed model included)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if bot.poll() is not None:
                raise RuntimeError(f"the bot exited with {bot.returncode}; see {CACHE / 'flows-bot.log'}")
            async with http.get(f"{base}/healthz") as response:
                nlu = (await response.json()).get("nlu", {})
            if nlu.get("status") == "ok":
                return
            if (nlu.get("managed") or {}).get("state") == "failed":
                raise RuntimeError(f"the bot's Rasa failed: {nlu['managed'].get('last_error')}")
            await asyncio.sleep(1)
    raise TimeoutError("the bot's Rasa did not become ready")


async def nlu_sources(base: str, http: aiohttp.ClientSession) -> Counter[str]:
    """The bot's NLU answers so far, by source, its rules fallbacks, by reason, and the messages that needed
    no parse (a typed answer to the waiting step), by reason: only "rasa" turns cost a Rasa parse."""
    async with http.get(f"{base}/metrics") as response:
        text = await response.text()
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "scrm_nlu_requests_total":
                counts[sample.labels["source"]] += int(sample.value)
            elif sample.name == "scrm_nlu_fallbacks_total":
                counts[f"fallback_{sample.labels['reason']}"] += int(sample.value)
            elif sample.name == "scrm_nlu_not_needed_total":
                counts[f"not_needed_{sample.labels['reason']}"] += int(sample.value)
            elif sample.name in STORE_COUNTERS:
                counts[STORE_COUNTERS[sample.name]] += int(sample.value)
    return counts


async def bot_side(customers: list[Customer], warmup: list[Customer], args: argparse.Namespace) -> dict[str, Any]:
    async with fresh_database() as store_url, running_bot(store_url) as bot:
        timeout = aiohttp.ClientTimeout(total=args.turn_timeout)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
            say = bot_sayer(bot.base, bot.fake, http, args.turn_timeout)
            await play(warmup, args.concurrency, say, args.turn_timeout)
            before, cpu_before = await nlu_sources(bot.base, http), cpu_seconds(bot.pid)
            stats = await play(customers, args.concurrency, say, args.turn_timeout)
            after, cpu_after = await nlu_sources(bot.base, http), cpu_seconds(bot.pid)
    store = {key: after.pop(key, 0) - before.pop(key, 0) for key in STORE_COUNTERS.values()}
    stats["store_per_turn"] = {key: round(value / max(stats["turns"], 1), 1) for key, value in store.items()}
    stats["nlu"] = {key: after[key] - before[key] for key in sorted(after) if after[key] - before[key]}
    stats["cpu_ms_per_turn"] = cpu_per_turn(cpu_before, cpu_after, stats["turns"])
    return stats


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of `pid` ("own"), of all its descendants (Linux /proc), and of this driver."""
    own = _process_cpu(pid)
    children = 0.0
    pending = _children(pid)
    while pending:
        child = pending.pop()
        children += _process_cpu(child)
        pending += _children(child)
    return {"own": own, "children": children, "driver": time.process_time()}


def cpu_per_turn(before: dict[str, float], after: dict[str, float], turns: int) -> dict[str, float]:
    return {key: round((after[key] - before[key]) * 1000 / max(turns, 1), 1) for key in before}


def _process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


# --- the plain Rasa assistant --------------------------------------------------------------
def rasa_sayer(url: str, http: aiohttp.ClientSession) -> Say:
    async def say(customer: Customer, text: str) -> bool:
        try:
            async with http.post(f"{url}/webhooks/rest/webhook", json={"sender": customer.user, "message": text}) as r:
                return r.status == 200 and len(await r.json()) > 0
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return False

    return say


async def rasa_side(customers: list[Customer], warmup: list[Customer], args: argparse.Namespace) -> dict[str, Any]:
    model = ensure_assistant_model()
    async with running_assistant(model) as (url, pid):
        timeout = aiohttp.ClientTimeout(total=args.turn_timeout)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
            say = rasa_sayer(url, http)
            await play(warmup, args.concurrency, say, args.turn_timeout)
            cpu_before = cpu_seconds(pid)
            stats = await play(customers, args.concurrency, say, args.turn_timeout)
            stats["cpu_ms_per_turn"] = cpu_per_turn(cpu_before, cpu_seconds(pid), stats["turns"])
            return stats


# --- the run and its report ----------------------------------------------------------------
async def bench(args: argparse.Namespace) -> dict[str, Any]:
    pools = text_pools()
    customers = make_customers(args.customers, args.seed, args.channel, pools)
    warmup = make_customers(args.warmup, args.seed + 1, args.channel, pools, prefix=WARMUP_PREFIX, tag="w")
    report: dict[str, Any] = {
        "customers": args.customers, "turns": sum(len(c.turns) for c in customers), "concurrency": args.concurrency,
        "channel": args.channel, "seed": args.seed, "turn_timeout_s": args.turn_timeout,
        "scripts": dict(Counter(c.script for c in customers)),
        "load_average_before": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
    }
    report["plain_rasa"] = await rasa_side(customers, warmup, args)
    report["bot"] = await bot_side(customers, warmup, args)
    ratio = report["bot"]["msgs_per_s"] / max(report["plain_rasa"]["msgs_per_s"], 1e-9)
    report["ratio_bot_vs_rasa"] = round(ratio, 2)
    report["goal_ratio_met"] = ratio >= GOAL_RATIO
    report["goal_p95_met"] = report["bot"]["p95_ms"] < GOAL_P95_S * 1000 and report["bot"]["unanswered"] == 0
    return report


def print_report(report: dict[str, Any]) -> None:
    print(f"flows benchmark: {report['customers']} customers, {report['turns']} turns "
          f"(channel {report['channel']}), {report['concurrency']} customers at a time, "
          f"turn timeout {report['turn_timeout_s']:g} s; bot on PostgreSQL with Rasa 3.6 NLU (managed)")
    print(f"{'':34}{'msgs/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'unanswered':>12}")
    for name, key in (("bot (callback -> fake API)", "bot"), ("plain Rasa (REST channel)", "plain_rasa")):
        row = report[key]
        print(f"{name:34}{row['msgs_per_s']:8.1f}{row['p50_ms']:9.1f}{row['p95_ms']:9.1f}{row['p99_ms']:9.1f}"
              f"{row['unanswered']:12d}")
    for name, key in (("bot", "bot"), ("plain Rasa", "plain_rasa")):
        channels = report[key]["p50_p95_ms_by_channel"]
        print(f"{name} p50 / p95 ms by channel: " + ", ".join(f"{c} {p50:g} / {p95:g}" for c, (p50, p95) in channels.items()))
    print(f"ratio bot/rasa: {report['ratio_bot_vs_rasa']:.2f}x")
    print(f"goal ≥ {GOAL_RATIO:.1f}x: {'met' if report['goal_ratio_met'] else 'not met'}")
    print(f"p95 < {GOAL_P95_S:g} s: {'met' if report['goal_p95_met'] else 'not met'}")
    bot_cpu, rasa_cpu = report["bot"]["cpu_ms_per_turn"], report["plain_rasa"]["cpu_ms_per_turn"]
    print(f"CPU per turn: bot process {bot_cpu['own']} ms + its Rasa {bot_cpu['children']} ms; plain Rasa "
          f"{rasa_cpu['own'] + rasa_cpu['children']:.1f} ms; this driver {bot_cpu['driver']} ms (bot, fake API "
          f"included) and {rasa_cpu['driver']} ms (Rasa); PostgreSQL and Redis not counted")
    nlu = report["bot"]["nlu"]
    store = report["bot"]["store_per_turn"]
    print(f"store per turn, end to end (callbacks, kf pulls, turns, sends, claims; both channels): "
          f"{store['statements']} statements in {store['transactions']} transactions")
    print("bot NLU answers during the run: " + ", ".join(f"{k} {v}" for k, v in nlu.items())
          + f"; turns that needed a Rasa parse: {nlu.get('rasa', 0)} of {report['bot']['turns']}")
    print(f"machine: {report['cpus']} CPUs, load average before the run {report['load_average_before']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50, help="customers chatting at the same time")
    parser.add_argument("--channel", choices=["mix", "kf", "oa"], default="mix", help="mix: half kf, half OA")
    parser.add_argument("--turn-timeout", type=float, default=10.0, help="seconds before a turn is unanswered")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up customers per side (not measured)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print_report(report)
    return 0 if report["bot"]["unanswered"] == 0 and report["plain_rasa"]["unanswered"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
