"""API benchmark: `POST /orders`, a segment query and every report over 1,000,000 customers, on PostgreSQL.

    .venv/bin/python bench/api.py [--customers 1000000] [--concurrency 50] [--seconds 20] [--runs 50] [--keep]
    .venv/bin/python bench/api.py --quick        # 20,000 customers, 5 s of orders: a look in well under a minute

What the shop, the ERP and the admins do to a store of a million customers:
  1. setup (timed apart, not a figure): a fresh database, migrated; customers (stages over the
     lifecycle, last seen over 90 days, entry channels), ~2 tags each from 50 (skewed: the first
     tags are the commonest), ~3 timeline events each (inbound messages with intent, confidence
     and source; stage changes), stage history, conversations, referrals and their rewards,
     social value, group-buy campaigns with groups and members, reps and handoffs, enrolments
     with their sends, pushes with theirs: all COPYed, then VACUUM ANALYZE;
  2. the segment "commonest tag ∧ stage interested ∧ active within 30 days": --runs timed runs of
     `count_and_sample` (what the admin sees before a push) and of the bare id query with LIMIT 100,
     each in a new session, against p99 < 200 ms; reference: a customer by primary key;
  3. every report (crm_store.reports, crm_store.reports_bot) over the whole period (since=None),
     run once to warm, then timed, against 5 s; the slowest statement of each is named, and for a
     report over its goal that statement is shown with EXPLAIN ANALYZE; reference: count(*) of customers;
  4. the real app (`create_app(settings, run_workers=False)`) in a process of its own on a local
     port, and --concurrency clients for --seconds: each a new order for a random customer
     (`customer: {id}`), 5% a repeat of an order already answered (must be 200, replayed) →
     orders/s and p50/p95/p99, the app's CPU per request (/proc), the clients' CPU per request
     (this process) and the statements and transactions per request (the app's /metrics);
     reference: `GET /healthz` (one pooled connection, four small queries) under the same
     concurrency in the same run. The clients run apart from the app (--same-loop: in its event
     loop, as before): they cost ~0.35-0.5 ms of CPU a request, 8-10% of an order's 4-5.5 ms; apart,
     the app pays a process wake-up per request instead, which on this 2-vCPU VM roughly halves
     /healthz (~550/s in the loop, ~250-300/s apart) and leaves orders/s about equal.
Exits non-zero when a correctness check fails (counts of the reports against what was loaded,
the segment against raw SQL, one order row per new order id, replays answered 200, no 5xx);
the 200 ms and 5 s goals are reported, not enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.checks import exit_status, print_checks  # noqa: E402
from bench.pg_database import fresh_database  # noqa: E402
from bot.app import create_app  # noqa: E402
from bot.settings import Settings, load_settings  # noqa: E402
from crm_store import reports, reports_bot  # noqa: E402
from crm_store.api_keys import create_key  # noqa: E402
from crm_store.db import session_factory  # noqa: E402
from crm_store.enrolments import publish  # noqa: E402
from crm_store.lifecycle import Lifecycle  # noqa: E402
from crm_store.models import Customer, utcnow  # noqa: E402
from crm_store.segments import Segment, count_and_sample, segment_conditions, segment_query, tag_ids  # noqa: E402
from flows.sequences import load_sequences  # noqa: E402

PG_ADMIN = os.environ.get("SCRM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SEGMENT_GOAL_MS, REPORT_GOAL_S = 200.0, 5.0
REPEAT_SHARE = 0.05
Sessions = async_sessionmaker[AsyncSession]


def bench_settings(url: str) -> Settings:
    """The shipped config.yaml on the bench's database: sandbox on (fake WeCom API), rules NLU, no rate cap."""
    return load_settings(store={"url": url}, sandbox={"enabled": True, "api_port": 0}, nlu={"mode": "rules"},
                         api={"requests_per_window": 1_000_000_000}, logging={"level": "WARNING"})


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


@dataclass
class Load:
    """What --concurrency clients got in --seconds: statuses, latencies (ms), and the orders they sent."""

    name: str
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    new_ids: set[str] = field(default_factory=set)  # answered 201
    answered: list[dict[str, Any]] = field(default_factory=list)  # their bodies: what a repeat resends
    replays: Counter[str] = field(default_factory=Counter)  # "200 replayed" | anything else
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    app_cpu_s: float = 0.0  # the app's process
    client_cpu_s: float = 0.0  # this process: the clients
    statements: float = 0.0  # the app's, from /metrics
    transactions: float = 0.0

    def per_s(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0

    def per_request(self, total: float) -> float:
        return total / len(self.latencies_ms) if self.latencies_ms else 0.0


@dataclass
class Report:
    setup: list[tuple[str, float]] = field(default_factory=list)
    loads: dict[str, Load] = field(default_factory=dict)
    timings: dict[str, list[float]] = field(default_factory=dict)  # segment queries, ms
    reports: list[tuple[str, float, float, str, float]] = field(default_factory=list)  # warm s, s, slowest, its s
    plans: list[tuple[str, list[str]]] = field(default_factory=list)
    checks: list[tuple[str, bool]] = field(default_factory=list)

    def check(self, name: str, passed: bool) -> None:
        self.checks.append((name, passed))


# --- 1: setup, COPYed (the bot's own writes are what tests/ cover) ---------------------------
DAY_S = 86_400.0
STAGE_SHARES = {"lead": 0.40, "interested": 0.25, "customer": 0.15, "repeat": 0.08, "loyal": 0.05, "churned": 0.07}
HISTORY = {  # the moves behind each stage: (from, to)
    "interested": [("lead", "interested")], "customer": [("lead", "customer")],
    "repeat": [("lead", "customer"), ("customer", "repeat")], "loyal": [("lead", "customer"), ("customer", "loyal")],
    "churned": [("lead", "churned")],
}
INTENTS = {"ask_price": 0.30, "greet": 0.20, "ask_size": 0.15, "order_status": 0.12, "want_human": 0.06,
           "nlu_fallback": 0.09, "out_of_scope": 0.03, None: 0.05}
SAID = {"ask_price": ["多少钱", "这件什么价", "有优惠吗"], "greet": ["你好", "在吗"], "ask_size": ["M码有吗", "我穿多大"],
        "order_status": ["我的快递到哪了", "什么时候发货"], "want_human": ["转人工", "找客服"],
        "nlu_fallback": [f"看不懂的话{n}" for n in range(40)], "out_of_scope": ["今天天气怎么样", "讲个笑话"],
        None: ["[图片]"]}
FLOWS = {"welcome": 0.35, "ask_price": 0.30, "order_status": 0.15, "fallback": 0.12, "handoff": 0.08}
ENDINGS = {"completed": 0.6, "timeout": 0.2, "handoff": 0.1, "interrupted:ask_price": 0.1}
TAGS, CHANNELS, CAMPAIGNS, REPS, PUSHES = 50, 10, 5, 20, 10
SEQUENCES = ("welcome_series", "reactivate", "vip_care")  # published as they are (the order hooks look them up)
SEQUENCE_YAML = """\
sequence: {name}
description: bench
steps:
  - {{id: welcome, after: 1d, say: 您好～新品上架啦}}
  - {{id: tips, after_previous: 1d, say: 连衣裙搭配小贴士}}
"""


@dataclass
class Loaded:
    """What was loaded: the figures every report and check is compared with."""

    customers: int
    tag_names: list[str]
    with_channel: int = 0
    tag_rows: int = 0
    events: int = 0
    messages: int = 0
    fallback: int = 0
    conversations: int = 0
    referrals: int = 0
    converted_referrals: int = 0
    groups: int = 0
    handoffs: int = 0
    enrolments: int = 0
    sends: int = 0
    pushes: int = PUSHES
    reached: Counter[str] = field(default_factory=Counter)  # stage -> customers who have been in it

    def describe(self) -> str:
        return (f"{self.customers:,} customers, {self.tag_rows:,} tag links ({len(self.tag_names)} tags), "
                f"{self.events:,} timeline events ({self.messages:,} messages), {self.conversations:,} "
                f"conversations, {self.referrals:,} referrals, {self.groups:,} group-buys, {self.handoffs:,} "
                f"handoffs, {self.enrolments:,} enrolments and {self.sends:,} sends")


class People:
    """Customer k's stage, creation and last contact (epoch seconds), drawn once and used by every table."""

    def __init__(self, count: int, stage_ids: list[str], rng: random.Random) -> None:
        self.count, self.now = count, time.time()
        shares = [STAGE_SHARES.get(stage, 0.05) for stage in stage_ids]
        self.stage = [""] + rng.choices(stage_ids, shares, k=count)
        self.seen = [0.0] + [self.now - rng.uniform(0, 90 * DAY_S) for _ in range(count)]
        self.created = [0.0] + [seen - rng.uniform(0, 60 * DAY_S) for seen in self.seen[1:]]

    def at(self, k: int, rng: random.Random) -> datetime:
        """A moment in customer k's life: between their creation and now."""
        return moment(rng.uniform(self.created[k], self.now))


def moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def pick(rng: random.Random, shares: dict[Any, float]) -> Any:
    return rng.choices(list(shares), list(shares.values()))[0]


async def copy(connection: asyncpg.Connection, table: str, columns: str, records: Any) -> None:
    await connection.copy_records_to_table(table, columns=columns.split(), records=records)


async def load(dsn: str, count: int, lifecycle: Lifecycle) -> Loaded:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("SET session_replication_role = replica")  # consistent by construction
        rng = random.Random(17)
        people = People(count, list(lifecycle.stage_ids), rng)
        loaded = Loaded(count, [f"bench-tag-{k:02d}" for k in range(TAGS)])
        await load_customers(connection, people, loaded, rng)
        await load_timeline(connection, people, loaded, rng)
        await load_growth(connection, people, loaded, rng, lifecycle)
        await load_handoffs(connection, people, loaded, rng)
        await load_nurture(connection, people, loaded, rng)
        await publish_sequences(dsn, lifecycle)
        for table in ("customers", "tags", "entry_channels", "campaigns", "group_buys", "enrolments", "pushes",
                      "flow_releases"):
            await connection.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        return loaded
    finally:
        await connection.close()


async def load_customers(connection: asyncpg.Connection, people: People, loaded: Loaded,
                         rng: random.Random) -> None:
    start = moment(people.now - 120 * DAY_S)
    await copy(connection, "entry_channels", "id code name kind welcome_flow tags reps daily_cap cost_cents "
               "config_id url rota active created_at", [
                   (k, f"ch_bench{k}", f"渠道{k}", "contact_way", "", "[]", "[]", 0, 100_000 * k, "", "", "[]",
                   True, start) for k in range(1, CHANNELS + 1)])
    channels = [rng.randint(1, CHANNELS) if rng.random() < 0.7 else None for _ in range(people.count + 1)]
    loaded.with_channel = sum(1 for channel in channels[1:] if channel is not None)
    reached = {stage: sorted({stage, *(end for move in moves for end in move)}) for stage, moves in HISTORY.items()}
    for stage in people.stage[1:]:
        loaded.reached.update(reached.get(stage, [stage]))
    await copy(connection, "customers", "id display_name created_at last_seen_at stage stage_changed_at "
               "entry_channel_id stages_reached", (
                   (k, f"客户{k}", moment(people.created[k]), moment(people.seen[k]), people.stage[k],
                    moment(people.created[k]), channels[k], ",".join(reached.get(people.stage[k], [])))
                   for k in range(1, people.count + 1)))
    await copy(connection, "tags", "id name group_name created_at",
               [(k + 1, name, "bench", start) for k, name in enumerate(loaded.tag_names)])
    weights = [1 / (k + 1) ** 0.6 for k in range(TAGS)]  # the first tags are the commonest

    def tag_rows() -> Any:
        for k in range(1, people.count + 1):
            for tag in set(rng.choices(range(1, TAGS + 1), weights, k=rng.choice((1, 2, 2, 3)))):
                loaded.tag_rows += 1
                yield k, tag, "bench", people.at(k, rng)

    await copy(connection, "customer_tags", "customer_id tag_id cause added_at", tag_rows())
    await copy(connection, "stage_changes", "customer_id from_stage to_stage reason created_at", (
        (k, before, after, "bench", people.at(k, rng))
        for k in range(1, people.count + 1) for before, after in HISTORY.get(people.stage[k], [])))


async def load_timeline(connection: asyncpg.Connection, people: People, loaded: Loaded,
                        rng: random.Random) -> None:
    """Two inbound messages and one stage or tag event per customer; a conversation for 30% of them."""
    def events() -> Any:
        for k in range(1, people.count + 1):
            for _ in range(2):
                intent = pick(rng, INTENTS)
                data: dict[str, Any] = {"text": rng.choice(SAID[intent])}
                if intent is not None:
                    data |= {"intent": intent, "confidence": round(rng.uniform(0.3, 1.0), 3),
                             "intent_source": rng.choice(("rules", "rules", "keyword"))}
                loaded.messages += 1
                loaded.fallback += intent == "nlu_fallback"
                yield k, "inbound.message", json.dumps(data, ensure_ascii=False), people.at(k, rng)
            stage = people.stage[k]
            kind, data = ("stage.changed", {"to": stage}) if stage != "lead" else ("tag.added", {"tag": "bench"})
            yield k, kind, json.dumps(data), people.at(k, rng)
            loaded.events += 3

    await copy(connection, "timeline_events", "customer_id kind data created_at", events())
    await connection.execute("INSERT INTO flow_releases (id, sources, versions, note, published_by, published_at) "
                             "VALUES (1, '{}', '{}', 'bench', 'bench', now())")

    def conversations() -> Any:
        for k in range(1, people.count + 1):
            if rng.random() >= 0.3:
                continue
            started = people.at(k, rng)
            active = rng.random() < 0.05
            ended = None if active else started + timedelta(minutes=rng.uniform(1, 30))
            loaded.conversations += 1
            yield (k, pick(rng, FLOWS), 1, 1, "start", "{}", "[]", 0, "active" if active else "ended", "{}",
                   started, ended or started, ended, "" if active else pick(rng, ENDINGS))

    await copy(connection, "conversations", "customer_id flow_id flow_version release_id step_id slots stack "
               "retries status reply_to started_at updated_at ended_at end_reason", conversations())


async def load_growth(connection: asyncpg.Connection, people: People, loaded: Loaded, rng: random.Random,
                      lifecycle: Lifecycle) -> None:
    """10% of customers referred by one of the first 5% (rewards and social value for the converted);
    group-buys, one per 50 customers, over five campaigns."""
    purchase = {"customer", "repeat", "loyal"}
    referrals, friends, converted = [], Counter[int](), Counter[int]()
    for k in range(1, people.count + 1):
        inviter = rng.randint(1, max(2, people.count // 20))
        if rng.random() >= 0.1 or inviter == k:
            continue
        created = moment(people.created[k])
        bought = people.at(k, rng) if people.stage[k] in purchase else None
        referrals.append((k, inviter, "code", rng.choice(("kf", "oa", "contacts")), created, bought))
        friends[inviter] += 1
        converted[inviter] += bought is not None
    loaded.referrals = len(referrals)
    loaded.converted_referrals = sum(converted.values())
    await copy(connection, "referrals", "friend_id inviter_id via channel created_at converted_at", referrals)
    await copy(connection, "reward_ledger", "kind rule_id customer_id friend_id reward grant_key reason created_at", [
        ("grant", "friend_bought", inviter, friend, "coupon 10", f"friend_bought:{friend}", "", bought)
        for friend, inviter, _via, _channel, _created, bought in referrals if bought is not None])
    now = moment(people.now)
    await copy(connection, "social_stats", "customer_id friends friends_converted groups_led groups_filled "
               "downstream_converted score updated_at", [
                   (inviter, n, converted[inviter], 0, 0, 0, float(n + 3 * converted[inviter]), now)
                   for inviter, n in friends.items()])
    await load_groups(connection, people, loaded, rng)


async def load_groups(connection: asyncpg.Connection, people: People, loaded: Loaded, rng: random.Random) -> None:
    groups, members, sold = [], [], Counter[int]()
    for g in range(1, people.count // 50 + 1):
        campaign, leader = rng.randint(1, CAMPAIGNS), rng.randint(1, people.count)
        status = pick(rng, {"filled": 0.6, "expired": 0.3, "open": 0.1})
        wanted = 3 if status == "filled" else rng.randint(1, 2)
        seated = [leader, *({rng.randint(1, people.count) for _ in range(wanted - 1)} - {leader})]
        created = people.at(leader, rng)
        closed = None if status == "open" else created + timedelta(hours=rng.uniform(1, 24))
        groups.append((g, campaign, f"G{g}", leader, 3, len(seated), status, created + timedelta(days=1), created,
                       closed))
        members += [(g, who, campaign, created) for who in seated]
        sold[campaign] += len(seated) if status != "expired" else 0
    start, end = moment(people.now - 120 * DAY_S), moment(people.now + 30 * DAY_S)
    await copy(connection, "campaigns", "id code name product price_cents group_size group_ttl_s starts_at ends_at "
               "stock sold limit_per_customer new_customers_only fill_stage fill_tags status created_at", [
                   (c, f"bench-{c}", f"拼团{c}", "连衣裙", 9900, 3, 86_400, start, end, 10**7, sold[c], 1, False,
                    "", "[]", "open", start) for c in range(1, CAMPAIGNS + 1)])
    await copy(connection, "group_buys", "id campaign_id code leader_id size members status deadline created_at "
               "closed_at", groups)
    await copy(connection, "group_members", "group_id customer_id campaign_id joined_at", members)
    loaded.groups = len(groups)


async def load_handoffs(connection: asyncpg.Connection, people: People, loaded: Loaded,
                        rng: random.Random) -> None:
    """Reps, and a handoff for 5% of customers (one each), nine in ten closed."""
    start = moment(people.now - 120 * DAY_S)
    reps = [f"rep{k:02d}" for k in range(REPS)]
    await copy(connection, "reps", "userid name on_duty capacity hours active created_at",
               [(rep, f"客服{rep}", True, 5, "", True, start) for rep in reps])

    def handoffs() -> Any:
        for k in rng.sample(range(1, people.count + 1), people.count // 20):
            created = people.at(k, rng)
            status = pick(rng, {"closed": 0.9, "queued": 0.04, "offered": 0.03, "taken": 0.03})
            rep = rng.choice(reps) if status in ("taken", "closed") else None
            later = [created + timedelta(minutes=m) for m in (1, 3, 5, 30)]
            taken = later[1] if rep else None
            closed = later[3] if status == "closed" else None
            closer = pick(rng, {"rep": 0.8, "timeout": 0.15, "admin": 0.05}) if closed else ""
            loaded.handoffs += 1
            yield (k, status, pick(rng, {"want_human": 0.5, "complain": 0.1, "low_confidence": 0.2, "flow": 0.2}),
                   "", "", "", rep, json.dumps(rng.sample(reps, 2)), "kf", "wkBench", f"wm{k}", "lead", created,
                   None if status == "queued" else later[0], taken, later[2] if rep else None, later[2], closed,
                   closer, people.stage[k] if closed else "")

    await copy(connection, "handoffs", "customer_id status reason detail intent team rep_userid tried channel kf_account kf_customer "
               "stage_at_start created_at offered_at taken_at first_response_at last_activity_at closed_at "
               "closed_by outcome_stage", handoffs())


async def publish_sequences(dsn: str, lifecycle: Lifecycle) -> None:
    stages = {**{s: s for s in lifecycle.stage_ids}, **{lifecycle.label(s): s for s in lifecycle.stage_ids}}
    with tempfile.TemporaryDirectory() as directory:
        for name in SEQUENCES:
            (Path(directory) / f"{name}.yaml").write_text(SEQUENCE_YAML.format(name=name), encoding="utf-8")
        sequences, sources = load_sequences(Path(directory), [], stages)
    engine = create_async_engine("postgresql+asyncpg://" + dsn.split("://", 1)[1], pool_size=1)
    try:
        async with session_factory(engine)() as session, session.begin():
            await publish(session, sequences, sources, by="bench")
    finally:
        await engine.dispose()


async def load_nurture(connection: asyncpg.Connection, people: People, loaded: Loaded, rng: random.Random) -> None:
    """Enrolments for 20% of customers with two sends each; ten pushes of one customer in 200 each."""
    enrolments: list[tuple[Any, ...]] = []
    sends: list[tuple[Any, ...]] = []
    for k in range(1, people.count + 1):
        if rng.random() >= 0.2:
            continue
        e, enrolled = len(enrolments) + 1, people.at(k, rng)
        status = pick(rng, {"active": 0.5, "completed": 0.3, "exited": 0.15, "paused": 0.05})
        ended = enrolled + timedelta(days=3) if status in ("completed", "exited") else None
        bought = enrolled + timedelta(days=2) if rng.random() < 0.1 else None
        enrolments.append((e, k, rng.choice(SEQUENCES), 1, status, "bench", enrolled, ended,
                           "stage" if status == "exited" else "", bought))
        for index, step in enumerate(("welcome", "tips")):
            due = enrolled + timedelta(days=index + 1)
            sent = index == 0 or status != "active"
            replied = due + timedelta(hours=1) if sent and rng.random() < 0.2 else None
            sends.append((k, e, None, step, index, due, "sent" if sent else "pending", "kf", due if sent else None,
                          replied))
    now = moment(people.now)
    pushes = [(p, f"bench push {p}", "{}", f"推送{p}", "done", now - timedelta(days=3 * p), now - timedelta(days=3 * p),
               people.count // 200, "bench") for p in range(1, PUSHES + 1)]
    for push, *_rest, scheduled, _created, audience, _by in pushes:
        for k in rng.sample(range(1, people.count + 1), audience):
            status = pick(rng, {"sent": 0.9, "skipped": 0.07, "failed": 0.03})
            sends.append((k, None, push, "push", 0, scheduled, status, "kf", scheduled if status == "sent" else None,
                          scheduled + timedelta(hours=2) if status == "sent" and rng.random() < 0.1 else None))
    await copy(connection, "enrolments", "id customer_id sequence version status source enrolled_at ended_at "
               "exit_reason converted_at", enrolments)
    await copy(connection, "pushes", "id name segment text status scheduled_at created_at audience created_by",
               pushes)
    await copy(connection, "nurture_sends", "customer_id enrolment_id push_id step step_index due_at status reason "
               "via deferrals sent_at replied_at", ((*row[:7], "", row[7], 0, *row[8:]) for row in sends))
    loaded.enrolments, loaded.sends = len(enrolments), len(sends)


# --- statements and their times ------------------------------------------------------------
class StatementClock:
    """Every statement the engine runs, with its parameters and time: to name a slow report's slow query."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.seen: list[tuple[float, str, Any]] = []
        sync = engine.sync_engine
        event.listen(sync, "before_cursor_execute", self._before)
        event.listen(sync, "after_cursor_execute", self._after)

    def _before(self, conn: Any, _cursor: Any, _statement: str, _params: Any, _context: Any, _many: bool) -> None:
        conn.info.setdefault("bench_started", []).append(time.perf_counter())

    def _after(self, conn: Any, _cursor: Any, statement: str, params: Any, _context: Any, _many: bool) -> None:
        self.seen.append((time.perf_counter() - conn.info["bench_started"].pop(), statement, params))

    def slowest(self) -> tuple[float, str, Any]:
        return max(self.seen, key=lambda seen: seen[0]) if self.seen else (0.0, "", ())


async def explain(dsn: str, statement: str, params: Any) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("EXPLAIN (ANALYZE, BUFFERS) " + statement, *(params or ()))
        return [row[0] for row in rows]
    except Exception as error:  # noqa: BLE001 - a plan we cannot get is said, not raised
        return [f"(EXPLAIN failed: {type(error).__name__}: {error})"]
    finally:
        await connection.close()


def plan_summary(lines: list[str], keep: int = 14) -> list[str]:
    nodes = [line for line in lines if "->" in line or line is lines[0]]
    timing = [line for line in lines if line.startswith(("Planning Time", "Execution Time"))]
    return nodes[:keep] + timing


# --- 2: the segment ------------------------------------------------------------------------
async def segment_queries(sessions: Sessions, dsn: str, loaded: Loaded, args: argparse.Namespace,
                          report: Report) -> None:
    now = utcnow()
    segment = Segment(tags=(loaded.tag_names[0],), stages=("interested",), active_within_days=30)
    probe = random.Random(5)

    async def bare_ids(session: AsyncSession) -> list[int]:
        return list(await session.scalars(segment_query(segment, now, ids=await tag_ids(session, segment)).limit(100)))

    queries: dict[str, Callable[[AsyncSession], Awaitable[Any]]] = {
        "customer by primary key (reference)": lambda s: s.get(Customer, probe.randint(1, loaded.customers)),
        "count_and_sample(segment, 10)": lambda s: count_and_sample(s, segment, 10, now),
        "segment ids, LIMIT 100": bare_ids,
    }
    results: dict[str, Any] = {}
    times: dict[str, list[float]] = {name: [] for name in queries}
    for repeat in range(args.runs + 1):  # the first round warms the pool and the caches; not counted
        for name, query in queries.items():
            async with sessions() as session:
                started = time.perf_counter()
                results[name] = await query(session)
                if repeat:
                    times[name].append((time.perf_counter() - started) * 1000)
    report.timings = times
    await check_segment(dsn, loaded, segment, now, results, report)
    p99 = percentile(times["count_and_sample(segment, 10)"], 0.99)
    if p99 >= SEGMENT_GOAL_MS or args.explain:
        await explain_segment(sessions, dsn, segment, now, report)


async def check_segment(dsn: str, loaded: Loaded, segment: Segment, now: datetime, results: dict[str, Any],
                        report: Report) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        expected = await connection.fetchval(
            "SELECT count(*) FROM customers c WHERE c.merged_into_id IS NULL AND c.stage = 'interested' "
            "AND c.last_seen_at >= $2 AND EXISTS (SELECT 1 FROM customer_tags ct JOIN tags t ON t.id = ct.tag_id "
            "WHERE ct.customer_id = c.id AND t.name = $1)", segment.tags[0], now - timedelta(days=30))
    finally:
        await connection.close()
    count, sample = results["count_and_sample(segment, 10)"]
    ids = results["segment ids, LIMIT 100"]
    fits = all(s.stage == "interested" and segment.tags[0] in s.tags and s.last_seen_at is not None
               and s.last_seen_at >= now - timedelta(days=30) for s in sample)
    report.check(f"segment {segment.describe()}: count {count:,} (raw SQL {expected:,}), sample of "
                 f"{len(sample)} all in it: {fits}, id query {len(ids)} rows",
                 count == expected > 0 and len(sample) == min(10, count) and fits and len(ids) == min(100, count))


async def explain_segment(sessions: Sessions, dsn: str, segment: Segment, now: datetime, report: Report) -> None:
    async with sessions() as session:
        query = select(func.count()).select_from(Customer).where(
            *segment_conditions(segment, now, ids=await tag_ids(session, segment)))
        compiled = query.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
    report.plans.append(("segment count (count_and_sample's first query)",
                         plan_summary(await explain(dsn, str(compiled), ()))))


# --- 3: the reports ------------------------------------------------------------------------
def report_calls(settings: Settings) -> dict[str, Callable[[AsyncSession], Awaitable[Any]]]:
    lifecycle, purchase = Lifecycle(settings.lifecycle), settings.growth.purchase_stages
    return {
        "funnel": lambda s: reports.funnel_report(s, None, None, lifecycle=lifecycle),
        "channels": lambda s: reports.channels_report(s, None, None, purchase_stages=purchase),
        "groups": lambda s: reports.groups_report(s, None, None),
        "referrals": lambda s: reports.referrals_report(s, None, None),
        "nurture": lambda s: reports_bot.nurture_report(s, None, None),
        "handoffs": lambda s: reports_bot.handoffs_report(s, None, None),
        "bots": lambda s: reports_bot.bots_report(s, None, None),
        "nlu": lambda s: reports_bot.nlu_report(s, None, None),
    }


async def run_reports(sessions: Sessions, clock: StatementClock, dsn: str, settings: Settings, loaded: Loaded,
                      report: Report) -> None:
    results: dict[str, Any] = {}
    for name, call in {"count(*) of customers (reference)": count_customers, **report_calls(settings)}.items():
        seconds = []
        for _ in range(2):  # warm, then timed
            clock.seen.clear()
            async with sessions() as session:
                started = time.perf_counter()
                results[name] = await call(session)
                seconds.append(time.perf_counter() - started)
        slowest_s, statement, params = clock.slowest()
        report.reports.append((name, seconds[0], seconds[1], " ".join(statement.split())[:110], slowest_s))
        if seconds[1] >= REPORT_GOAL_S:
            report.plans.append((f"{name} report, its slowest statement", plan_summary(
                await explain(dsn, statement, params))))
    check_reports(results, loaded, report)


async def count_customers(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(Customer)) or 0)


def check_reports(results: dict[str, Any], loaded: Loaded, report: Report) -> None:
    funnel, channels, groups = results["funnel"], results["channels"], results["groups"]
    referrals, nurture, handoffs = results["referrals"], results["nurture"], results["handoffs"]
    bots, nlu = results["bots"], results["nlu"]
    figures = [
        ("funnel new customers", funnel.new_customers, loaded.customers),
        *((f"funnel reached {line.stage}", line.reached, loaded.reached[line.stage]) for line in funnel.stages),
        ("channels adds", sum(line.adds for line in channels), loaded.with_channel),
        ("groups opened", sum(line.groups_opened for line in groups), loaded.groups),
        ("referral friends", referrals.friends, loaded.referrals),
        ("referrals converted", referrals.converted, loaded.converted_referrals),
        ("reward grants", referrals.rewards_granted, loaded.converted_referrals),
        ("enrolments", sum(line.enrolled for line in nurture.sequences), loaded.enrolments),
        ("push lines", len(nurture.pushes), loaded.pushes),
        ("handoffs opened", handoffs.opened, loaded.handoffs),
        ("conversations", bots.conversations, loaded.conversations),
        ("messages (bots)", bots.messages, loaded.messages),
        ("messages (nlu)", nlu.messages, loaded.messages),
        ("nlu fallback", nlu.fallback, loaded.fallback),
    ]
    wrong = [f"{name} {got:,} (loaded {want:,})" for name, got, want in figures if got != want]
    report.check(f"reports: {len(figures)} figures against what was loaded"
                 + (": " + "; ".join(wrong) if wrong else f", all equal (e.g. {loaded.messages:,} messages)"),
                 not wrong and len(funnel.stages) == 6)


# --- 4: POST /orders against GET /healthz --------------------------------------------------
APP_READY = "app listening on port "


@contextlib.asynccontextmanager
async def app_here(url: str) -> AsyncIterator[str]:
    runner = web.AppRunner(create_app(bench_settings(url), run_workers=False), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def serve_app(url: str) -> None:
    """The app alone in this process (`--serve-app URL`): its port on stdout, then serve until killed."""
    async with app_here(url) as base:
        print(f"{APP_READY}{base.rsplit(':', 1)[1]}", flush=True)
        await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def running_app(url: str, same_loop: bool) -> AsyncIterator[tuple[str, int]]:
    """The app in a process of its own, so the clients' CPU is not taken from it, or (`same_loop`) in
    this process's event loop with the clients: (base URL, the app's pid)."""
    if same_loop:
        async with app_here(url) as base:
            yield base, os.getpid()
        return
    process = await asyncio.create_subprocess_exec(sys.executable, __file__, "--serve-app", url,
                                                   stdout=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 120)).decode()
        if not line.startswith(APP_READY):
            raise RuntimeError(f"the app did not start: {line!r}")
        yield f"http://127.0.0.1:{line[len(APP_READY):].strip()}", process.pid
    finally:
        process.terminate()
        await process.wait()


def process_cpu_s(pid: int) -> float:
    """User + system CPU of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def store_work(http: aiohttp.ClientSession, base: str) -> tuple[float, float]:
    """The app's statements and transactions so far (its /metrics)."""
    async with http.get(f"{base}/metrics") as response:
        text = await response.text()
    found = {name: float(value) for name, _, value in (line.partition(" ") for line in text.splitlines())
             if name in ("scrm_store_statements_total", "scrm_store_transactions_total")}
    return found.get("scrm_store_statements_total", 0.0), found.get("scrm_store_transactions_total", 0.0)


async def measured(http: aiohttp.ClientSession, base: str, pid: int, run: Awaitable[Load]) -> Load:
    """`run`, with the app's CPU and store work and this process's CPU over it."""
    statements, transactions = await store_work(http, base)
    app_cpu, client_cpu = process_cpu_s(pid), time.process_time()
    load = await run
    load.app_cpu_s, load.client_cpu_s = process_cpu_s(pid) - app_cpu, time.process_time() - client_cpu
    if pid == os.getpid():  # one process: its CPU is the app's and the clients' together
        load.client_cpu_s = math.nan
    after = await store_work(http, base)
    load.statements, load.transactions = after[0] - statements, after[1] - transactions
    return load


def order_body(number: int, customer: int, rng: random.Random) -> dict[str, Any]:
    price = f"{rng.randint(10, 999)}.{rng.randint(0, 99):02d}"
    return {"order_id": f"bench-{number}", "customer": {"id": customer}, "amount": price,
            "items": [{"sku": f"sku-{rng.randint(1, 300)}", "name": "连衣裙", "quantity": 1, "price": price}]}


async def hammer(http: aiohttp.ClientSession, name: str, args: argparse.Namespace, seconds: float,
                 request: Callable[[random.Random, Load], tuple[str, str, dict[str, Any] | None, str]]) -> Load:
    """--concurrency clients, each sending one request after the other until `seconds` are up."""
    load = Load(name)
    deadline = time.perf_counter() + seconds

    async def client(number: int) -> None:
        rng = random.Random(number)
        while time.perf_counter() < deadline:
            method, url, body, kind = request(rng, load)
            started = time.perf_counter()
            try:
                async with http.request(method, url, json=body) as response:
                    await response.read()
                    status, replayed = response.status, response.headers.get("Idempotent-Replayed") == "true"
            except Exception as error:  # noqa: BLE001 - counted and shown
                load.errors.append(f"{type(error).__name__}: {error}")
                continue
            load.latencies_ms.append((time.perf_counter() - started) * 1000)
            load.statuses[status] += 1
            if kind == "repeat":
                load.replays["200 replayed" if status == 200 and replayed else f"{status} replayed={replayed}"] += 1
            elif kind and status == 201:
                load.new_ids.add(kind)
                load.answered.append(body or {})

    started = time.perf_counter()
    await asyncio.gather(*(client(number) for number in range(args.concurrency)))
    load.wall_s = time.perf_counter() - started
    return load


async def orders_phase(settings: Settings, dsn: str, loaded: Loaded, args: argparse.Namespace,
                       report: Report) -> None:
    async with session_factory(create_async_engine(settings.store.url, pool_size=1))() as session, session.begin():
        key = (await create_key(session, "shop", "write")).key
    numbers = iter(range(1, 10**9))
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with running_app(settings.store.url, args.same_loop) as (base, pid), aiohttp.ClientSession(
            headers=headers, connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:

        def healthz(_rng: random.Random, _load: Load) -> tuple[str, str, None, str]:
            return "GET", f"{base}/healthz", None, ""

        def order(rng: random.Random, load: Load) -> tuple[str, str, dict[str, Any], str]:
            answered = load.answered
            if answered and rng.random() < REPEAT_SHARE:
                return "POST", f"{base}/api/v1/orders", rng.choice(answered), "repeat"
            body = order_body(next(numbers), rng.randint(1, loaded.customers), rng)
            return "POST", f"{base}/api/v1/orders", body, body["order_id"]

        await hammer(http, "warm-up", args, 1.0, healthz)
        report.loads["healthz"] = await measured(http, base, pid, hammer(
            http, "GET /healthz (reference)", args, args.seconds, healthz))
        report.loads["orders"] = await measured(http, base, pid, hammer(
            http, "POST /api/v1/orders", args, args.seconds, order))
    await check_orders(dsn, report.loads["orders"], report.loads["healthz"], settings, report)


async def check_orders(dsn: str, orders: Load, healthz: Load, settings: Settings, report: Report) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        rows, distinct = await connection.fetchrow("SELECT count(*), count(DISTINCT order_id) FROM orders")
        ordered_ids = [int(body["customer"]["id"]) for body in orders.answered]
        outside = await connection.fetchval(
            "SELECT count(*) FROM customers WHERE id = ANY($1::bigint[]) AND NOT stage = ANY($2::text[])",
            ordered_ids, list(settings.growth.purchase_stages))
    finally:
        await connection.close()
    server_errors = sum(n for status, n in orders.statuses.items() if status >= 500)
    report.check(f"orders: {rows:,} rows ({distinct:,} distinct ids) for {len(orders.new_ids):,} new order ids "
                 f"answered 201; statuses {dict(orders.statuses)}; {len(orders.errors)} client errors"
                 + (f" (first: {orders.errors[0]})" if orders.errors else ""),
                 rows == distinct == len(orders.new_ids) > 0 and server_errors == 0 and not orders.errors
                 and set(orders.statuses) <= {200, 201})
    report.check(f"orders: repeats answered {dict(orders.replays)}",
                 bool(orders.replays) and set(orders.replays) == {"200 replayed"})
    report.check(f"orders: every customer with an order is in a purchase stage ({outside} not)", outside == 0)
    report.check(f"healthz: statuses {dict(healthz.statuses)}, {len(healthz.errors)} client errors",
                 set(healthz.statuses) == {200} and not healthz.errors)


# --- the run and its report ----------------------------------------------------------------
async def bench(args: argparse.Namespace) -> tuple[Report, Loaded]:
    report = Report()
    async with fresh_database(args.pg_admin_dsn, args.keep, "api") as (url, dsn):
        settings = bench_settings(url)
        started = time.perf_counter()
        loaded = await load(dsn, args.customers, Lifecycle(settings.lifecycle))
        report.setup.append((f"load {args.customers:,} customers and their history (COPY)",
                             time.perf_counter() - started))
        connection = await asyncpg.connect(dsn)
        started = time.perf_counter()
        await connection.execute("VACUUM ANALYZE")
        await connection.close()
        report.setup.append(("VACUUM ANALYZE", time.perf_counter() - started))
        engine = create_async_engine(url, pool_size=2, max_overflow=0)
        clock = StatementClock(engine)
        try:
            await segment_queries(session_factory(engine), dsn, loaded, args, report)
            await run_reports(session_factory(engine), clock, dsn, settings, loaded, report)
        finally:
            await engine.dispose()
        await orders_phase(settings, dsn, loaded, args, report)
    return report, loaded


def print_report(report: Report, loaded: Loaded, args: argparse.Namespace, elapsed_s: float) -> None:
    print(f"API benchmark on PostgreSQL: {loaded.describe()}; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}")
    for name, seconds in report.setup:
        print(f"setup (not measured): {name}: {seconds:.1f} s")
    orders, healthz = report.loads["orders"], report.loads["healthz"]
    where = ("in this process's event loop with the clients (app CPU includes theirs)" if args.same_loop
             else "in its own process")
    print(f"HTTP: the real app (run_workers=False) {where} on a local port, {args.concurrency} clients for "
          f"{args.seconds:g} s each; reference GET /healthz; ratio: per s / reference per s; per request: the "
          "app's CPU, the clients' CPU, the app's statements and transactions")
    print(f"{'':30}{'requests':>9}{'per s':>8}{'ratio':>7}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
          f"{'app CPU ms':>11}{'client CPU ms':>14}{'statements':>11}{'tx':>6}")
    for load in (orders, healthz):
        print(f"{load.name:30}{len(load.latencies_ms):9,}{load.per_s():8.0f}{load.per_s() / healthz.per_s():7.2f}"
              + "".join(f"{percentile(load.latencies_ms, q):8.1f}" for q in (0.5, 0.95, 0.99))
              + f"{load.per_request(load.app_cpu_s) * 1000:11.2f}{load.per_request(load.client_cpu_s) * 1000:14.2f}"
              f"{load.per_request(load.statements):11.1f}{load.per_request(load.transactions):6.2f}")
    print(f"  of the orders: {len(orders.new_ids):,} new (201), {sum(orders.replays.values()):,} repeats")
    reference_ms = percentile(report.timings["customer by primary key (reference)"], 0.5)
    print(f"segment over {loaded.customers:,} customers, {args.runs} runs each, a new session per run; "
          "ratio: p50 / primary-key lookup p50")
    print(f"{'':38}{'p50 ms':>8}{'p99 ms':>8}{'ratio':>8}{'< 200 ms':>10}")
    for name, times in report.timings.items():
        p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
        print(f"{name:38}{p50:8.2f}{p99:8.2f}{p50 / reference_ms:8.1f}{'yes' if p99 < SEGMENT_GOAL_MS else 'NO':>10}")
    base_s = report.reports[0][2]
    print("reports over the whole period (since=None): run once to warm, then timed; ratio: timed / count(*) of "
          "customers; the slowest statement of the timed run")
    print(f"{'':36}{'warm s':>8}{'s':>8}{'ratio':>7}{'< 5 s':>7}  slowest statement")
    for name, warm_s, timed_s, statement, slowest_s in report.reports:
        print(f"{name:36}{warm_s:8.2f}{timed_s:8.2f}{timed_s / base_s:7.1f}"
              f"{'yes' if timed_s < REPORT_GOAL_S else 'NO':>7}  {slowest_s:.2f} s: {statement}")
    for name, lines in report.plans:
        print(f"EXPLAIN ANALYZE, {name}:")
        for line in lines:
            print(f"    {line}")
    segment_p99 = percentile(report.timings["count_and_sample(segment, 10)"], 0.99)
    slow = [name for name, _w, timed_s, _s, _t in report.reports[1:] if timed_s >= REPORT_GOAL_S]
    print(f"POST /orders: {orders.per_s():,.0f} orders/s sustained, p99 {percentile(orders.latencies_ms, 0.99):.0f} ms, "
          f"{orders.per_request(orders.app_cpu_s) * 1000:.1f} ms of the app's CPU and "
          f"{orders.per_request(orders.statements):.1f} statements an order")
    print(f"goal segment p99 < {SEGMENT_GOAL_MS:.0f} ms: {segment_p99:.1f} ms: "
          f"{'met' if segment_p99 < SEGMENT_GOAL_MS else 'not met'}")
    print(f"goal every report < {REPORT_GOAL_S:.0f} s: " + ("met" if not slow else f"not met ({', '.join(slow)})"))
    print_checks(report.checks, elapsed_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000, help="customers loaded")
    parser.add_argument("--concurrency", type=int, default=50, help="HTTP clients at a time")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each HTTP load runs")
    parser.add_argument("--runs", type=int, default=50, help="timed runs of each segment query")
    parser.add_argument("--quick", action="store_true", help="20,000 customers, 5 s of HTTP, 20 runs")
    parser.add_argument("--explain", action="store_true", help="show the segment's plan even when it is fast")
    parser.add_argument("--keep", action="store_true", help="keep the database (its DSN is printed)")
    parser.add_argument("--pg-admin-dsn", default=PG_ADMIN, help="where to create the database ($SCRM_BENCH_PG)")
    parser.add_argument("--same-loop", action="store_true",
                        help="run the app in this process's event loop with the clients (as before 2026-12)")
    parser.add_argument("--serve-app", metavar="URL", help=argparse.SUPPRESS)  # the app's own process
    args = parser.parse_args()
    if args.serve_app:
        asyncio.run(serve_app(args.serve_app))
        return 0
    if args.quick:
        args.customers, args.seconds, args.runs = 20_000, 5.0, 20
    if args.customers < 1000 or args.concurrency < 1:
        parser.error("--customers must be at least 1,000 and --concurrency at least 1")
    started = time.perf_counter()
    report, loaded = asyncio.run(bench(args))
    print_report(report, loaded, args, time.perf_counter() - started)
    return exit_status(report.checks)


if __name__ == "__main__":
    sys.exit(main())
