"""Nurture benchmark: 100,000 sequence steps due at once among 1,000,000 enrolments, on PostgreSQL.

    .venv/bin/python bench/nurture.py [--customers 1000000] [--due 100000] [--workers 2] [--batch 500] [--keep]
    .venv/bin/python bench/nurture.py --customers 20000 --due 5000      # a quick look, well under a minute

The morning a daily step comes due for a whole audience (`at: "day 1 10:00"`), the scheduler has
to get through it fast, on more than one process, and survive a crash, without annoying anyone:
  1. the burst: --workers processes each run `NurtureDispatcher.run_due(now)` (now = noon, brand
     time) until nothing is due; when a third of the due sends are decided one process is killed
     with SIGKILL and a new one started. Measured: wall time until no send is due any more, as
     decisions/s (sent + deferred) and sent/s, against a goal of 2,000/s before platform limits.
     The same burst is run first without quota checks (`budgets=False`, then the sends are put
     back as they were): the rate with the checks against the rate without is the checks' cost;
  2. correctness after the crash: one outbox row per sent step and none twice (zero duplicates),
     every due send sent or waiting (zero misses), the 2% of customers already at the daily cap,
     the 1% a rep has taken over (an open handoff) and the 1% whose five kf messages are used
     (the quota ledger) sent nothing and wait, each sent customer's allowance spent once, each
     sent enrolment has exactly one next step pending (+1 day);
  3. quiet hours: 10,000 more sends (--quiet) brought forward to 22:00, one dispatcher at 23:00:
     nothing sent, each waiting until 08:30 the next morning;
  4. 5,000 of the outbox rows written (--api-sends) delivered by the outbox runner and the real
     `OutboxSender` to the sandbox's fake WeCom API on a local port (API sends/s), each received
     exactly once; the fake enforces the kf quota (it was told what each due customer did), and
     the sends it refused are counted (goal 0).
Setup (a fresh database, the sequence published with `publish()`, customers, enrolments and
their pending sends COPYed in) is timed apart and is not part of any figure. Every customer
wrote to the kf account within the hour (`reach`, and the five messages it earned in the quota
ledger, `send_allowances`), so every step may go out as `kf/send_msg`, except to the 1% of the
due whose five the bot already sent; the due ones enrolled yesterday, the others this morning
(their first step is due tomorrow).
The customers have no tags, conversations, identities or group-buys: the dispatcher still
queries those tables for every batch, but finds nothing there, so production will be slower.

The machines here are noisy, so the burst is compared with a reference measured in the same run:
the same processes, killed and restarted the same way, doing the bare minimum per batch in raw
SQL over a table of the same shape: claim due rows FOR UPDATE SKIP LOCKED, mark them sent, insert
one outbox row each. Exits non-zero when a correctness check fails; the 2,000/s goal is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.checks import exit_status, print_checks  # noqa: E402
from bench.pg_database import fresh_database  # noqa: E402
from bot.app import with_api_base  # noqa: E402
from bot.nurture_dispatch import NurtureDispatcher, Outcome  # noqa: E402
from bot.queue_runner import QueueRunner  # noqa: E402
from bot.runtime import build_apis  # noqa: E402
from bot.sandbox.simulator import fake_for  # noqa: E402
from bot.sender import OutboxSender  # noqa: E402
from bot.settings import Settings, load_settings  # noqa: E402
from core.allowance import Allowance  # noqa: E402
from core.shared_state import open_shared_state  # noqa: E402
from crm_store.allowances import to_data  # noqa: E402
from crm_store.db import session_factory  # noqa: E402
from crm_store.enrolments import publish  # noqa: E402
from crm_store.lifecycle import Lifecycle  # noqa: E402
from crm_store.models import OutboxItem  # noqa: E402
from crm_store.nurture_models import NurtureSend  # noqa: E402
from flows.sequences import load_sequences  # noqa: E402

PG_ADMIN = os.environ.get("SCRM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
GOAL_PER_S = 2000.0
SEQUENCE = "bench_morning"
SEQUENCE_YAML = f"""\
sequence: {SEQUENCE}
description: the morning after enrolling, then a day and three days later
steps:
  - {{id: welcome, at: "day 1 10:00", say: "{{{{ customer.name }}}}，早上好～新品上架啦"}}
  - {{id: tips, after_previous: 1d, say: 连衣裙搭配小贴士}}
  - {{id: coupon, after_previous: 2d, say: 送您一张优惠券}}
"""
KF_ACCOUNT = "wkBenchKf"
Sessions = async_sessionmaker[AsyncSession]


def bench_settings(url: str, batch: int) -> Settings:
    """The shipped config.yaml (quiet hours, cap, handoff recheck) on the bench's database, sandbox on."""
    return load_settings(store={"url": url}, nurture={"batch": batch}, sandbox={"enabled": True, "api_port": 0},
                         nlu={"mode": "rules"}, logging={"level": "WARNING"})


# --- who is due, and when ------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Customer k (1-based) has enrolment k and pending send k; `due` of them are due at 10:00 today."""

    now: datetime  # noon today, brand time: after every due send, outside quiet hours
    customers: int
    due: list[int]
    capped: list[int]  # due, and already sent as many pushes this morning as the daily cap allows
    handed_off: list[int]  # due, and a rep has them (an open handoff)
    spent: list[int]  # due, and the five kf messages their last message earned are sent already
    quiet: list[int]  # not due; brought forward to 22:00 for the quiet-hours phase
    cap: int  # nurture.cap_per_day

    @property
    def expected_sent(self) -> int:
        return len(self.due) - len(self.capped) - len(self.handed_off) - len(self.spent)

    @property
    def pushes_at(self) -> list[datetime]:
        """When the capped customers got this morning's pushes: from 09:00, every 10 minutes."""
        return [self.now - timedelta(hours=3) + timedelta(minutes=10 * n) for n in range(self.cap)]


def make_plan(args: argparse.Namespace, zone: ZoneInfo, cap: int) -> Plan:
    today = datetime.now(zone).date() + timedelta(days=1)  # a day ahead: "now" is never behind the clock
    stride = args.customers // args.due
    due = [1 + stride * k for k in range(args.due)]
    due_set = set(due)
    later = [k for k in range(1, args.customers + 1) if k not in due_set]
    quiet_step = max(1, len(later) // args.quiet)
    return Plan(datetime.combine(today, clock(12), zone), args.customers, due,
                capped=[c for i, c in enumerate(due) if i % 50 == 0],
                handed_off=[c for i, c in enumerate(due) if i % 100 == 25],
                spent=[c for i, c in enumerate(due) if i % 100 == 75], quiet=later[::quiet_step][:args.quiet], cap=cap)


# --- setup: COPY, not the bot (the bot's own enrolment path is what tests/bot/test_nurture.py covers)
async def publish_sequence(sessions: Sessions, settings: Settings) -> None:
    lifecycle = Lifecycle(settings.lifecycle)
    stages = {**{s: s for s in lifecycle.stage_ids}, **{lifecycle.label(s): s for s in lifecycle.stage_ids}}
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / f"{SEQUENCE}.yaml").write_text(SEQUENCE_YAML, encoding="utf-8")
        sequences, sources = load_sequences(Path(directory), [], stages)
    async with sessions() as session, session.begin():
        await publish(session, sequences, sources, by="bench")


def wrote_at(plan: Plan, rng: random.Random) -> list[float]:
    """When each customer last wrote to the kf account: within the last hour (the 48-hour window is open)."""
    wall = time.time()
    return [float(round(wall - rng.uniform(0, 3600))) for _ in range(plan.customers)]


def customer_rows(wrote: list[float]) -> Iterator[tuple[Any, ...]]:
    for k, at in enumerate(wrote, 1):
        yield k, f"客户{k}", f'{{"channel": "kf", "sender": "wmBench{k}", "account": "{KF_ACCOUNT}", "at": {at:.0f}}}'


def allowance_rows(plan: Plan, wrote: list[float]) -> Iterator[tuple[Any, ...]]:
    """The quota ledger: the five messages each customer's last message earned; the spent ones' all used."""
    spent, now = set(plan.spent), datetime.now(plan.now.tzinfo)
    for k, at in enumerate(wrote, 1):
        allowance = Allowance("kf").earned("message", at).spent(5 if k in spent else 0, at)
        yield k, "kf", json.dumps(to_data(allowance)), now


def enrolment_rows(plan: Plan, rng: random.Random, due: set[int]) -> Iterator[tuple[Any, ...]]:
    """Due: enrolled yesterday (welcome at 10:00 today). Later: enrolled this morning (welcome tomorrow)."""
    midnight = plan.now.replace(hour=0)
    for k in range(1, plan.customers + 1):
        if k in due:
            enrolled = midnight - timedelta(seconds=rng.uniform(0, 86_399))
            welcome = midnight + timedelta(hours=10)
        else:
            enrolled = midnight + timedelta(seconds=rng.uniform(0, 12 * 3600 - 60))
            welcome = midnight + timedelta(days=1, hours=10)
        yield k, enrolled, welcome


async def load(dsn: str, plan: Plan) -> None:
    """Customers, enrolments and their pending first steps (ids equal), the cap's history, the handoffs."""
    connection = await asyncpg.connect(dsn)
    try:
        # Rows are consistent by construction: no per-row foreign-key triggers while loading.
        await connection.execute("SET session_replication_role = replica")
        rng, due = random.Random(11), set(plan.due)
        wrote = wrote_at(plan, rng)
        await connection.copy_records_to_table("customers", columns=["id", "display_name", "reach"],
                                               records=customer_rows(wrote))
        await connection.copy_records_to_table("send_allowances", columns=["customer_id", "channel", "ledger",
                                                                           "updated_at"],
                                               records=allowance_rows(plan, wrote))
        del wrote
        enrolments = list(enrolment_rows(plan, rng, due))
        await connection.copy_records_to_table(
            "enrolments", columns=["id", "customer_id", "sequence", "version", "status", "source", "enrolled_at",
                                   "exit_reason"],
            records=((k, k, SEQUENCE, 1, "active", "bench", enrolled, "") for k, enrolled, _ in enrolments))
        await connection.copy_records_to_table(
            "nurture_sends", columns=["id", "customer_id", "enrolment_id", "step", "step_index", "due_at", "status",
                                      "reason", "via", "deferrals"],
            records=((k, k, k, "welcome", 0, welcome, "pending", "", "", 0) for k, _, welcome in enrolments))
        del enrolments
        for table in ("customers", "enrolments", "nurture_sends"):
            await connection.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {plan.customers})")
        await load_history(connection, plan)
    finally:
        await connection.close()


async def load_history(connection: asyncpg.Connection, plan: Plan) -> None:
    """The day's cap of pushes sent this morning to the capped customers; their open handoffs."""
    sends = []
    for number, sent_at in enumerate(plan.pushes_at, 1):
        push = await connection.fetchval(
            "INSERT INTO pushes (name, segment, text, status, scheduled_at, created_at, audience, created_by) "
            "VALUES ($1, '{}', $2, 'done', $3, $3, $4, 'bench') RETURNING id",
            f"bench push {number}", f"早间推送 {number}", sent_at, len(plan.capped))
        sends += [(c, push, "", 0, sent_at, "sent", "", "kf", 0, sent_at) for c in plan.capped]
    await connection.copy_records_to_table("nurture_sends", columns=[
        "customer_id", "push_id", "step", "step_index", "due_at", "status", "reason", "via", "deferrals", "sent_at"],
        records=sends)
    opened = plan.now - timedelta(minutes=10)
    await connection.copy_records_to_table("handoffs", columns=[
        "customer_id", "status", "reason", "detail", "intent", "team", "tried", "channel", "kf_account",
        "kf_customer", "stage_at_start", "created_at", "closed_by", "outcome_stage"], records=[
        (c, "queued", "want_human", "", "", "", "[]", "kf", KF_ACCOUNT, f"wmBench{c}", "lead", opened, "", "")
        for c in plan.handed_off])


async def load_reference(connection: asyncpg.Connection, plan: Plan) -> None:
    """bench_sends: the same number of rows, the same due ones, the same partial index; an outbox copy."""
    await connection.execute(
        "CREATE TABLE bench_sends (id bigint PRIMARY KEY, due_at timestamptz NOT NULL, "
        "status varchar(16) NOT NULL DEFAULT 'pending', sent_at timestamptz);"
        "CREATE TABLE bench_outbox (LIKE outbox INCLUDING ALL)")
    due = set(plan.due)
    later = plan.now + timedelta(hours=22)
    await connection.copy_records_to_table("bench_sends", columns=["id", "due_at"], records=(
        (k, plan.now - timedelta(hours=2) if k in due else later) for k in range(1, plan.customers + 1)))
    await connection.execute("CREATE INDEX ix_bench_sends_due ON bench_sends (due_at) WHERE status = 'pending'")


# --- the worker processes ------------------------------------------------------------------
POLL_S = 0.1  # how often the parent counts what is still due
POOL = 20  # the parent's connections (quiet hours, the outbox sender)
ANY_DUE = {  # cheap enough to ask ten times a second: the first live entry of the partial index
    "nurture": "SELECT EXISTS (SELECT 1 FROM nurture_sends WHERE status = 'pending' AND due_at <= $1)",
    "reference": "SELECT EXISTS (SELECT 1 FROM bench_sends WHERE status = 'pending' AND due_at <= $1)",
}
ANY_DUE["unchecked"] = ANY_DUE["nurture"]  # the dispatcher without quota checks
WRITTEN = "SELECT last_value - CASE WHEN is_called THEN 0 ELSE 1 END FROM outbox_id_seq"  # both outboxes use it
PENDING_DUE = {
    "nurture": "SELECT count(*) FROM nurture_sends WHERE status = 'pending' AND due_at <= $1",
    "reference": "SELECT count(*) FROM bench_sends WHERE status = 'pending' AND due_at <= $1",
}
REFERENCE_SQL = (
    "SELECT id FROM bench_sends WHERE status = 'pending' AND due_at <= $1 ORDER BY due_at LIMIT $2 "
    "FOR UPDATE SKIP LOCKED",
    "UPDATE bench_sends SET status = 'sent', sent_at = $2 WHERE id = ANY($1::bigint[])",
    "INSERT INTO bench_outbox (dedup_key, queue_key, kind, payload, status, attempts, available_at, created_at) "
    "SELECT 'reference:' || id, 'customer:' || id, 'kf.send_msg', json_build_object('touser', 'wmBench' || id, "
    "'open_kfid', $2::text, 'msgtype', 'text', 'text', json_build_object('content', '客户' || id || '，早上好～新品上架啦')), "
    "'pending', 0, now(), now() FROM unnest($1::bigint[]) AS id",
)


async def nurture_worker(dsn: str, now: datetime, batch: int, budgets: bool = True) -> dict[str, Any]:
    """run_due(now) until nothing is due; rows another process holds are waited for, not given up on."""
    url = "postgresql+asyncpg://" + dsn.split("://", 1)[1]
    settings = bench_settings(url, batch)
    engine = create_async_engine(url, pool_size=1, max_overflow=0)  # one connection: its backend pid is ours
    sessions = session_factory(engine)
    dispatcher = NurtureDispatcher(sessions, settings.nurture, Lifecycle(settings.lifecycle), budgets=budgets)
    total = Outcome()
    try:
        async with sessions() as session:  # connect before "ready"
            backend = await session.scalar(select(func.pg_backend_pid()))
        await ready(int(backend or 0))
        while True:
            outcome = await dispatcher.run_due(now)
            total.add(outcome)
            if outcome.sent + outcome.skipped + outcome.deferred:
                continue
            async with sessions() as session:
                left = await session.scalar(select(func.count()).select_from(NurtureSend).where(
                    NurtureSend.status == "pending", NurtureSend.due_at <= now))
            if not left:
                break
            await asyncio.sleep(0.05)  # another process holds the last batches
    finally:
        await engine.dispose()
    return {"sent": total.sent, "skipped": total.skipped, "deferred": total.deferred, "reasons": dict(total.reasons)}


async def reference_worker(dsn: str, now: datetime, batch: int) -> dict[str, Any]:
    claim, mark, insert = REFERENCE_SQL
    connection = await asyncpg.connect(dsn)
    done = 0
    try:
        await ready(connection.get_server_pid())
        while True:
            async with connection.transaction():
                ids = [row["id"] for row in await connection.fetch(claim, now, batch)]
                if ids:
                    await connection.execute(mark, ids, now)
                    await connection.execute(insert, ids, KF_ACCOUNT)
            done += len(ids)
            if not ids:
                if not await connection.fetchval(PENDING_DUE["reference"], now):
                    break
                await asyncio.sleep(0.05)
    finally:
        await connection.close()
    return {"sent": done, "skipped": 0, "deferred": 0, "reasons": {}}


async def ready(backend: int) -> None:
    """Tell the parent the process is connected (and its backend's pid), and wait for "go"."""
    print(f"ready {backend}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def worker_main(args: argparse.Namespace) -> int:
    now = datetime.fromisoformat(args.now)
    if args.worker == "reference":
        result = asyncio.run(reference_worker(args.dsn, now, args.batch))
    else:
        result = asyncio.run(nurture_worker(args.dsn, now, args.batch, budgets=args.worker == "nurture"))
    print(json.dumps(result), flush=True)
    return 0


# --- the race: N processes, one killed at a third ------------------------------------------
@dataclass
class Race:
    name: str
    total: int  # due rows
    outbox_rows: int  # rows the run writes to the outbox
    wall_s: float = 0.0
    killed_at: int = -1  # outbox rows written (ids taken) when the process was killed
    killed_code: int | None = None
    killed_state: str = ""  # its connection's state in pg_stat_activity just before the kill
    restart_s: float = 0.0  # from the kill until the new process was connected
    results: list[dict[str, Any]] = field(default_factory=list)  # of the processes that finished
    failures: list[str] = field(default_factory=list)

    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, outbox ids taken), as polled
    polling_s: float = 0.0  # the parent's own counting queries, which share the machine

    def per_s(self, count: int | None = None) -> float:
        return (self.total if count is None else count) / self.wall_s if self.wall_s else 0.0

    def thirds(self) -> list[str]:
        """Outbox rows/s over the first, second and last third of them (the kill falls at the first mark)."""
        marks = [next(((t, n) for t, n in self.samples if n >= self.outbox_rows * k / 3), self.samples[-1])
                 for k in (1, 2, 3)]
        rates, previous = [], (0.0, 0)
        for at, done in marks:  # a third within one poll of the last has no rate of its own
            rates.append(f"{(done - previous[1]) / (at - previous[0]):,.0f}" if at > previous[0] else "-")
            previous = (at, done)
        return rates


@dataclass
class Worker:
    process: asyncio.subprocess.Process
    backend: int  # the pid of its PostgreSQL connection


async def spawn(mode: str, dsn: str, now: datetime, batch: int) -> Worker:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--dsn", dsn, "--now", now.isoformat(),
        "--batch", str(batch), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    word, _, backend = (await process.stdout.readline()).decode().partition(" ")
    if word != "ready":
        _out, err = await process.communicate()
        raise RuntimeError(f"{mode} worker did not start: {word!r} {err.decode()[-2000:]}")
    return Worker(process, int(backend))


def go(worker: Worker) -> Worker:
    assert worker.process.stdin is not None
    worker.process.stdin.write(b"go\n")
    return worker


async def race(mode: str, dsn: str, now: datetime, due: int, outbox_rows: int, args: argparse.Namespace) -> Race:
    """Start the workers, SIGKILL the first when a third of the outbox rows are written and start another;
    until nothing is due. Progress is read from the outbox's id sequence, which costs the database nothing."""
    result = Race(mode, due, outbox_rows)
    workers = [await spawn(mode, dsn, now, args.batch) for _ in range(args.workers)]
    monitor = await asyncpg.connect(dsn)
    replacement: asyncio.Task[Worker] | None = None
    base = await monitor.fetchval(WRITTEN)
    started = time.perf_counter()
    for worker in workers:
        go(worker)
    try:
        while True:
            polled = time.perf_counter()
            written, any_due = await monitor.fetchval(WRITTEN) - base, await monitor.fetchval(ANY_DUE[mode], now)
            result.samples.append((time.perf_counter() - started, written))
            result.polling_s += time.perf_counter() - polled
            if result.killed_at < 0 and written >= outbox_rows / 3:
                result.killed_at = written
                await kill(monitor, workers[0], result)
                replacement = asyncio.create_task(restart(mode, dsn, now, args.batch, result))
            if not any_due:
                result.wall_s = time.perf_counter() - started
                break
            if all(w.process.returncode is not None for w in workers) and (replacement is None or replacement.done()):
                result.failures.append("every process exited with sends still due")
                break
            await asyncio.sleep(POLL_S)
    finally:
        await monitor.close()
    if replacement is not None:
        workers[0] = await replacement
    for worker in workers:
        out, err = await asyncio.wait_for(worker.process.communicate(), 120)
        if worker.process.returncode != 0:
            result.failures.append(f"a {mode} process exited {worker.process.returncode}: {err.decode()[-1500:]}")
        else:
            result.results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return result


async def kill(monitor: asyncpg.Connection, worker: Worker, result: Race) -> None:
    """SIGKILL, noting whether its connection was inside a transaction (a batch under way) at that moment."""
    state = await monitor.fetchval("SELECT coalesce(state, '?') || CASE WHEN xact_start IS NULL THEN '' "
                                   "ELSE ', transaction open' END FROM pg_stat_activity WHERE pid = $1", worker.backend)
    worker.process.send_signal(signal.SIGKILL)
    result.killed_code = await worker.process.wait()
    result.killed_state = state or "no connection"


async def restart(mode: str, dsn: str, now: datetime, batch: int, result: Race) -> Worker:
    """The replacement of a killed process: started while the others go on, set going once connected."""
    started = time.perf_counter()
    worker = go(await spawn(mode, dsn, now, batch))
    result.restart_s = time.perf_counter() - started
    return worker


# --- checks --------------------------------------------------------------------------------
@dataclass
class Report:
    setup: list[tuple[str, float]] = field(default_factory=list)
    races: dict[str, Race] = field(default_factory=dict)
    rows: list[tuple[str, int, float]] = field(default_factory=list)  # other measured phases: rows, wall s
    checks: list[tuple[str, bool]] = field(default_factory=list)
    unchecked_over: int = 0  # sends the run without quota checks queued to customers with nothing left
    refused: dict[int, int] = field(default_factory=dict)  # the fake API's refusals of the sends, by errcode
    api_calls: int = 0  # kf/send_msg calls the fake API answered

    def check(self, name: str, passed: bool) -> None:
        self.checks.append((name, passed))


async def check_race(race_: Race, report: Report) -> None:
    report.check(f"{race_.name}: every process ran cleanly" + "".join(f"\n      {f}" for f in race_.failures),
                 not race_.failures)
    report.check(f"{race_.name}: one process SIGKILLed mid-run (after {race_.killed_at:,} of "
                 f"{race_.outbox_rows:,} outbox rows; its connection {race_.killed_state}; exit {race_.killed_code}) and replaced (started "
                 f"and connected in {race_.restart_s:.1f} s)",
                 0 < race_.killed_at < race_.outbox_rows and race_.killed_code == -signal.SIGKILL)


async def check_dispatch(connection: asyncpg.Connection, plan: Plan, settings: Settings, report: Report) -> None:
    expected = plan.expected_sent
    rows, keys = await connection.fetchrow(
        "SELECT count(*), count(DISTINCT dedup_key) FROM outbox WHERE dedup_key LIKE 'nurture:%'")
    sent = await connection.fetchval(
        "SELECT count(*) FROM nurture_sends WHERE status = 'sent' AND enrolment_id IS NOT NULL")
    matched = await connection.fetchval(
        "SELECT count(*) FROM outbox o JOIN nurture_sends s ON o.dedup_key = 'nurture:' || s.id "
        "WHERE s.status = 'sent' AND o.kind = 'kf.send_msg' AND o.customer_id = s.customer_id "
        "AND o.payload ->> 'touser' = 'wmBench' || s.customer_id AND o.payload ->> 'open_kfid' = $1", KF_ACCOUNT)
    unique = await connection.fetchval(
        "SELECT count(*) FROM pg_indexes WHERE tablename = 'outbox' "
        "AND indexdef LIKE 'CREATE UNIQUE INDEX%(dedup_key)'")
    report.check(f"zero duplicates: {rows:,} nurture outbox rows, {keys:,} distinct keys (unique index: "
                 f"{'yes' if unique else 'NO'}), {sent:,} sends sent, {matched:,} rows matching their send and "
                 f"customer; expected {expected:,}", rows == keys == sent == matched == expected and unique == 1)
    left = await connection.fetchval(PENDING_DUE["nurture"], plan.now)
    states = {(status, reason): n for status, reason, n in await connection.fetch(
        "SELECT status, reason, count(*) FROM nurture_sends WHERE id = ANY($1::bigint[]) GROUP BY 1, 2", plan.due)}
    wanted = {("sent", ""): expected, ("pending", "waiting: daily cap"): len(plan.capped),
              ("pending", "waiting: handed off"): len(plan.handed_off), ("pending", "waiting: no quota"): len(plan.spent)}
    report.check(f"zero misses: {left} sends still due; the {len(plan.due):,} due: "
                 + ", ".join(f"{s} {r!r} {n:,}" for (s, r), n in sorted(states.items())),
                 left == 0 and states == wanted)
    zone, recheck = ZoneInfo(settings.nurture.timezone), timedelta(seconds=settings.nurture.handoff_recheck_s)
    await check_waiting(connection, plan.capped, "daily cap", plan.pushes_at[0] + timedelta(hours=24), zone, report)
    await check_waiting(connection, plan.handed_off, "handed off", plan.now + recheck, zone, report)
    await check_waiting(connection, plan.spent, "no quota",
                        plan.now + timedelta(seconds=settings.nurture.quota_recheck_s), zone, report)
    await check_allowances(connection, plan, report)
    await check_next_steps(connection, plan, report)


async def check_allowances(connection: asyncpg.Connection, plan: Plan, report: Report) -> None:
    """Each sent customer's kf allowance spent exactly once (4 of 5 left), the spent ones' untouched."""
    used = dict(await connection.fetch(
        "SELECT (ledger -> 'message' ->> 'used')::int AS used, count(*) FROM send_allowances "
        "WHERE customer_id = ANY($1::bigint[]) GROUP BY 1", plan.due))
    spent, untouched = len(plan.spent), len(plan.capped) + len(plan.handed_off)
    report.check(f"quota ledger: the {len(plan.due):,} due customers' kf messages used: "
                 + ", ".join(f"{n} by {count:,}" for n, count in sorted(used.items()))
                 + f"; expected 1 by {plan.expected_sent:,}, 0 by {untouched:,}, 5 by {spent:,}",
                 used == {n: c for n, c in ((1, plan.expected_sent), (0, untouched), (5, spent)) if c})


async def check_unchecked(connection: asyncpg.Connection, plan: Plan, report: Report) -> None:
    """Without quota checks every due send inside the window is queued, also to those with nothing left."""
    rows, over = await connection.fetchrow(
        "SELECT count(*), count(*) FILTER (WHERE customer_id = ANY($1::bigint[])) FROM outbox "
        "WHERE dedup_key LIKE 'nurture:%'", plan.spent)
    report.unchecked_over = over
    report.check(f"without quota checks: {rows:,} outbox rows, {over:,} of them to the {len(plan.spent):,} "
                 "customers with nothing left (the platform refuses those)",
                 rows == plan.expected_sent + len(plan.spent) and over == len(plan.spent))


async def put_back(connection: asyncpg.Connection, plan: Plan, report: Report) -> None:
    """Undo the run without quota checks (it spent no allowance): its outbox rows and next steps gone, the due
    sends pending again as loaded; vacuumed, so the run with the checks finds the tables as the first did."""
    started = time.perf_counter()
    await connection.execute("DELETE FROM outbox WHERE dedup_key LIKE 'nurture:%'")
    await connection.execute("DELETE FROM nurture_sends WHERE enrolment_id IS NOT NULL AND step <> 'welcome'")
    await connection.execute(
        "UPDATE nurture_sends SET status = 'pending', reason = '', via = '', deferrals = 0, sent_at = NULL, "
        "due_at = $2 WHERE id = ANY($1::bigint[])", plan.due, plan.now.replace(hour=10))
    await connection.execute("VACUUM ANALYZE nurture_sends, outbox")
    report.setup.append(("put the due sends back after the run without quota checks, VACUUM ANALYZE",
                         time.perf_counter() - started))


async def check_waiting(connection: asyncpg.Connection, customers: list[int], reason: str, until: datetime,
                        zone: ZoneInfo, report: Report) -> None:
    got = await connection.fetchval("SELECT count(*) FROM outbox WHERE customer_id = ANY($1::bigint[])", customers)
    waiting = await connection.fetchval(
        "SELECT count(*) FROM nurture_sends WHERE id = ANY($1::bigint[]) AND status = 'pending' AND reason = $2 "
        "AND due_at = $3 AND deferrals = 1", customers, f"waiting: {reason}", until)
    report.check(f"{reason}: {len(customers):,} customers got {got} messages; {waiting:,} sends wait until "
                 f"{until.astimezone(zone):%m-%d %H:%M} ({zone.key})",
                 got == 0 and waiting == len(customers))


async def check_next_steps(connection: asyncpg.Connection, plan: Plan, report: Report) -> None:
    tips, at_time = await connection.fetchrow(
        "SELECT count(*), count(*) FILTER (WHERE n.due_at = $1) FROM nurture_sends s "
        "JOIN nurture_sends n ON n.enrolment_id = s.enrolment_id AND n.step = 'tips' AND n.status = 'pending' "
        "WHERE s.step = 'welcome' AND s.status = 'sent'", plan.now + timedelta(days=1))
    pending, enrolments, doubled = await connection.fetchrow(
        "SELECT count(*), count(DISTINCT enrolment_id), (SELECT count(*) FROM (SELECT 1 FROM nurture_sends "
        "WHERE status = 'pending' GROUP BY enrolment_id HAVING count(*) > 1) d) "
        "FROM nurture_sends WHERE status = 'pending' AND enrolment_id IS NOT NULL")
    report.check(f"next steps: {tips:,} sent enrolments have their +1d step pending ({at_time:,} due at noon "
                 f"tomorrow); {pending:,} pending sends for {enrolments:,} enrolments, {doubled} with two",
                 tips == at_time == plan.expected_sent and pending == enrolments == plan.customers and doubled == 0)


async def check_reference(connection: asyncpg.Connection, plan: Plan, report: Report) -> None:
    rows, keys = await connection.fetchrow("SELECT count(*), count(DISTINCT dedup_key) FROM bench_outbox")
    sent = await connection.fetchval("SELECT count(*) FROM bench_sends WHERE status = 'sent'")
    report.check(f"reference: {rows:,} outbox rows, {keys:,} distinct, {sent:,} rows sent; expected {len(plan.due):,}",
                 rows == keys == sent == len(plan.due))


# --- quiet hours ---------------------------------------------------------------------------
async def quiet_hours(sessions: Sessions, connection: asyncpg.Connection, plan: Plan, settings: Settings,
                      report: Report) -> None:
    """10,000 sends brought forward to 22:00; one dispatcher at 23:00 sends nothing, each waits for 08:30."""
    zone = ZoneInfo(settings.nurture.timezone)
    evening, at = plan.now.replace(hour=22), plan.now.replace(hour=23)
    await connection.execute("UPDATE nurture_sends SET due_at = $2 WHERE id = ANY($1::bigint[])", plan.quiet, evening)
    outbox_before = await connection.fetchval("SELECT count(*) FROM outbox")
    dispatcher = NurtureDispatcher(sessions, settings.nurture, Lifecycle(settings.lifecycle))
    total = Outcome()
    started = time.perf_counter()
    while True:
        outcome = await dispatcher.run_due(at)
        total.add(outcome)
        if not outcome.sent + outcome.skipped + outcome.deferred:
            break
    wall_s = time.perf_counter() - started
    report.rows.append(("quiet hours, 1 process at 23:00", total.deferred + total.skipped + total.sent, wall_s))
    morning = datetime.combine(at.date() + timedelta(days=1), clock.fromisoformat(settings.nurture.quiet_until), zone)
    waiting = await connection.fetchval(
        "SELECT count(*) FROM nurture_sends WHERE id = ANY($1::bigint[]) AND status = 'pending' "
        "AND reason = 'waiting: quiet hours' AND due_at = $2 AND deferrals = 1", plan.quiet, morning)
    outbox_after = await connection.fetchval("SELECT count(*) FROM outbox")
    reasons = dict(total.reasons)
    wanted = {"waiting: quiet hours": len(plan.quiet) + len(plan.spent),  # no quota at noon: due again since 13:00
              "waiting: handed off": len(plan.handed_off)}
    report.check(f"quiet hours at 23:00: sent {total.sent}, outbox rows added {outbox_after - outbox_before}; "
                 f"{waiting:,} of {len(plan.quiet):,} wait until {morning:%m-%d %H:%M}; decisions {reasons}",
                 total.sent == 0 and outbox_after == outbox_before and waiting == len(plan.quiet) and reasons == wanted)


# --- outbox rows to the fake WeCom API -----------------------------------------------------
@contextlib.asynccontextmanager
async def fake_api(settings: Settings) -> AsyncIterator[tuple[Any, Settings]]:
    """The sandbox's fake WeCom/OA API on a free local port, and settings whose API bases point at it."""
    fake = fake_for(settings)
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield fake, with_api_base(settings, f"http://127.0.0.1:{runner.addresses[0][1]}/cgi-bin")
    finally:
        await runner.cleanup()


async def api_sends(sessions: Sessions, connection: asyncpg.Connection, settings: Settings, plan: Plan,
                    count: int, report: Report) -> None:
    """The outbox runner and OutboxSender, as the bot runs them, over the whole outbox; stopped after `count`."""
    worker = settings.worker
    count = min(count, await connection.fetchval("SELECT count(*) FROM outbox WHERE status = 'pending'"))
    async with fake_api(settings) as (fake, effective), aiohttp.ClientSession() as http:
        for k in plan.due:  # what the fake knows of them: each wrote (5 sends for 48 h), the spent ones got 5
            fake.grant_kf(KF_ACCOUNT, f"wmBench{k}")
        for k in plan.spent:
            for _ in range(5):
                fake.use_kf_grant(KF_ACCOUNT, f"wmBench{k}")
        state = open_shared_state(None)
        sender = OutboxSender(sessions, build_apis(effective, http, state), worker.max_attempts, worker.retry_base_s)
        runner = QueueRunner("outbox", sessions, OutboxItem, sender.send, worker.outbox_concurrency,
                             worker.poll_interval_s, worker.claim_ttl_s)
        started = time.perf_counter()
        task = asyncio.create_task(runner.run(), name="bench-outbox")
        while sender.sent < count and not task.done() and time.perf_counter() - started < 600:
            await asyncio.sleep(0.01)
        wall_s, sent = time.perf_counter() - started, sender.sent
        await runner.stop(10)
        await task  # the loop ends after its current claim; then every row it started finishes
        while runner.in_flight:
            await asyncio.gather(*list(runner.in_flight), return_exceptions=True)
        await state.close()
    report.rows.append((f"outbox -> fake WeCom API, {worker.outbox_concurrency} at a time", sent, wall_s))
    report.refused = dict(Counter(refusal.errcode for refusal in fake.refused))
    report.api_calls = fake.calls.count("kf/send_msg")
    report.check(f"fake API refused {len(fake.refused)} sends (goal 0): {report.refused or 'none'}", not fake.refused)
    done = [row["touser"] for row in await connection.fetch(
        "SELECT payload ->> 'touser' AS touser FROM outbox WHERE status = 'done' AND dedup_key LIKE 'nurture:%'")]
    statuses = dict(await connection.fetch("SELECT status, count(*) FROM outbox GROUP BY 1"))
    received = [sent for sent in fake.sent if sent.path == "kf/send_msg"]
    msgids = {sent.body.get("msgid") for sent in received}
    report.check(f"fake API: {len(received):,} kf/send_msg received ({fake.calls.count('kf/send_msg'):,} calls, "
                 f"{len(msgids):,} distinct msgids) for {len(done):,} outbox rows done; outbox now {statuses}",
                 len(received) == len(msgids) == fake.calls.count("kf/send_msg") == len(done) >= count
                 and sorted(s.to for s in received) == sorted(done) and set(statuses) <= {"done", "pending"})


# --- the run and its report ----------------------------------------------------------------
async def setup(sessions: Sessions, dsn: str, plan: Plan, settings: Settings, report: Report) -> None:
    started = time.perf_counter()
    await publish_sequence(sessions, settings)
    await load(dsn, plan)
    connection = await asyncpg.connect(dsn)
    try:
        await load_reference(connection, plan)
        report.setup.append((f"load {plan.customers:,} customers, enrolments and sends (COPY)",
                             time.perf_counter() - started))
        started = time.perf_counter()
        await connection.execute("VACUUM ANALYZE")
        report.setup.append(("VACUUM ANALYZE", time.perf_counter() - started))
    finally:
        await connection.close()


async def bench(args: argparse.Namespace) -> tuple[Report, Plan]:
    report = Report()
    async with fresh_database(args.pg_admin_dsn, args.keep, "nurture") as (url, dsn):
        settings = bench_settings(url, args.batch)
        plan = make_plan(args, ZoneInfo(settings.nurture.timezone), settings.nurture.cap_per_day)
        engine = create_async_engine(url, pool_size=POOL, max_overflow=0)
        sessions = session_factory(engine)
        connection = await asyncpg.connect(dsn)
        try:
            await setup(sessions, dsn, plan, settings, report)
            # the reference first, then the dispatcher, on the same processes' choreography
            report.races["reference"] = await race("reference", dsn, plan.now, len(plan.due), len(plan.due), args)
            await check_race(report.races["reference"], report)
            await check_reference(connection, plan, report)
            report.races["unchecked"] = await race("unchecked", dsn, plan.now, len(plan.due),
                                                   plan.expected_sent + len(plan.spent), args)
            await check_race(report.races["unchecked"], report)
            await check_unchecked(connection, plan, report)
            await put_back(connection, plan, report)
            report.races["nurture"] = await race("nurture", dsn, plan.now, len(plan.due), plan.expected_sent, args)
            await check_race(report.races["nurture"], report)
            await check_dispatch(connection, plan, settings, report)
            await quiet_hours(sessions, connection, plan, settings, report)
            await api_sends(sessions, connection, settings, plan, args.api_sends, report)
        finally:
            await connection.close()
            await engine.dispose()
    return report, plan


def print_report(report: Report, plan: Plan, args: argparse.Namespace, elapsed_s: float) -> None:
    print(f"nurture benchmark on PostgreSQL: {plan.customers:,} enrolments, {len(plan.due):,} due at once "
          f"({len(plan.capped):,} at the daily cap, {len(plan.handed_off):,} handed off, {len(plan.spent):,} with no "
          f"kf messages left); {args.workers} scheduler "
          f"processes, batch {args.batch}, one SIGKILLed at a third and restarted; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    for name, seconds in report.setup:
        print(f"setup (not measured): {name}: {seconds:.1f} s")
    print("reference: the same processes, killed the same way, claiming FOR UPDATE SKIP LOCKED, marking sent and "
          "inserting one outbox row per row, three raw SQL statements a batch")
    nurture, reference, unchecked = report.races["nurture"], report.races["reference"], report.races["unchecked"]
    sent = sum(result["sent"] for result in nurture.results)
    print(f"{'':44}{'rows':>9}{'wall s':>8}{'per s':>8}{'ref/s':>8}{'ratio':>7}")
    lines = [("dispatcher decisions (sent + waiting)", nurture.total, nurture.wall_s),
             ("  of which sent", plan.expected_sent, nurture.wall_s),
             ("  without quota checks (budgets=False)", unchecked.total, unchecked.wall_s)]
    for name, rows, wall_s in lines:
        per_s = rows / wall_s if wall_s else 0.0
        print(f"{name:44}{rows:9,}{wall_s:8.1f}{per_s:8.0f}{reference.per_s():8.0f}"
              f"{per_s / reference.per_s() if reference.per_s() else 0:7.2f}")
    print(f"{'reference (raw SQL)':44}{reference.total:9,}{reference.wall_s:8.1f}{reference.per_s():8.0f}")
    for name, rows, wall_s in report.rows:
        print(f"{name:44}{rows:9,}{wall_s:8.1f}{rows / wall_s if wall_s else 0:8.0f}")
    for race_ in (nurture, unchecked, reference):
        if race_.samples and race_.wall_s:
            print(f"{race_.name}: outbox rows/s by thirds (the kill at the first mark, the replacement up in "
                  f"{race_.restart_s:.1f} s): " + " / ".join(race_.thirds())
                  + f"; the parent's {len(race_.samples)} polls took {race_.polling_s / race_.wall_s:.1%} of the wall time")
    survivors = ", ".join(f"{r['sent']:,} sent / {r['deferred']:,} waiting" for r in nurture.results)
    print(f"nurture processes that finished: {survivors} ({sent:,} sent; the killed one's committed batches make "
          "up the rest)")
    for name, per_s in (("decisions", nurture.per_s()), ("sent", nurture.per_s(plan.expected_sent))):
        print(f"goal ≥ {GOAL_PER_S:,.0f}/s ({name}): {per_s:,.0f}/s: {'met' if per_s >= GOAL_PER_S else 'not met'}")
    ratio = nurture.per_s() / unchecked.per_s() if unchecked.per_s() else 0.0
    print(f"quota checks: decisions/s with / without = {nurture.per_s():,.0f} / {unchecked.per_s():,.0f} = "
          f"{ratio:.2f}; without them {report.unchecked_over:,} sends went to customers with nothing left")
    refused = sum(report.refused.values())
    print(f"sends refused by the platform (fake API, of {report.api_calls:,} kf/send_msg calls): {refused} "
          f"{report.refused or ''}(goal 0: {'met' if refused == 0 else 'not met'})")
    print_checks(report.checks, elapsed_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000, help="enrolments (one customer each)")
    parser.add_argument("--due", type=int, default=100_000, help="of them, due at once")
    parser.add_argument("--workers", type=int, default=2, help="scheduler processes at once")
    parser.add_argument("--batch", type=int, default=500, help="due sends claimed per transaction (nurture.batch)")
    parser.add_argument("--quiet", type=int, help="sends due in the quiet-hours phase (default: a tenth of --due)")
    parser.add_argument("--api-sends", type=int,
                        help="outbox rows sent to the fake WeCom API (default: a twentieth of --due)")
    parser.add_argument("--keep", action="store_true", help="keep the database (its DSN is printed)")
    parser.add_argument("--pg-admin-dsn", default=PG_ADMIN, help="where to create the database ($SCRM_BENCH_PG)")
    parser.add_argument("--worker", choices=("nurture", "unchecked", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--now", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args)
    if not 0 < args.due <= args.customers // 2 or args.workers < 1:
        parser.error("--due must be between 1 and half of --customers; --workers at least 1")
    args.quiet = max(1, args.due // 10) if args.quiet is None else args.quiet
    args.api_sends = max(1, args.due // 20) if args.api_sends is None else args.api_sends
    started = time.perf_counter()
    report, plan = asyncio.run(bench(args))
    print_report(report, plan, args, time.perf_counter() - started)
    return exit_status(report.checks)


if __name__ == "__main__":
    sys.exit(main())
