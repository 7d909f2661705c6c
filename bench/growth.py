"""Growth benchmark: group-buys, reward triggers and the referral tree under load, on PostgreSQL.

    .venv/bin/python bench/growth.py [--concurrency 50] [--attempts 1000] [--stock 100] [--tree-size 100000]

What a brand needs to trust before a campaign goes out to a hundred thousand customers:
  1. one group of 3, and 1,000 customers joining it at once: exactly 3 members, 3 units sold,
     every other customer refused "full", nothing else going wrong;
  2. a campaign with 100 in stock and groups of 5, 1,000 customers opening or joining groups at
     once: exactly 100 sold, no group over its size, refusals only "full" / "sold out";
  3. 10,000 duplicate reward triggers (100 referred friends, each ~100 times, shuffled): one
     ledger entry per rule and friend, one tier grant per inviter, 100 milestones;
  4. a referral tree of 100,000 customers: what `scrm referrals tree` reads at its defaults (the
     first 200 people to depth 3 and the count per level), the size of the whole tree (a walk of
     all 100,000), one customer's social value and a deep leaf's inviters, against 200 ms.
Every operation is the library's own call (crm_store.group_buys, rewards, referrals, social), one
session and transaction each, --concurrency at a time over a pool of that many connections.

The machines here are noisy, so each figure is compared with a reference measured in the same
run over the same pool: for 1-3, as many transactions doing nothing but one guarded single-row
counter UPDATE (the database's own contention floor); for 4, a primary-key lookup of a customer.
Exits non-zero when a correctness check fails (the 200 ms goals are reported, as in flows.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.checks import exit_status, print_checks  # noqa: E402
from bench.pg_database import fresh_database  # noqa: E402
from crm_store import group_buys, referrals, rewards, social  # noqa: E402
from crm_store.campaigns import create_campaign, spec_from_mapping  # noqa: E402
from crm_store.customers import resolve_customer  # noqa: E402
from crm_store.db import session_factory  # noqa: E402
from crm_store.growth_models import Campaign, GroupBuy, GroupMember, ReferralMilestone, RewardEntry  # noqa: E402
from crm_store.growth_settings import GrowthSettings, RewardRule  # noqa: E402
from crm_store.models import Customer, utcnow  # noqa: E402

PG_ADMIN = os.environ.get("SCRM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PURCHASE_STAGES = GrowthSettings().purchase_stages
LEGITIMATE = {"full", "sold_out", "expired", "limit"}
RETRYABLE = {"40P01", "40001"}  # deadlock detected, serialization failure
GOAL_MS = 200.0
RULES = [
    RewardRule(id="friend_bought", when="stage:customer", to="inviter", reward="coupon 10"),
    RewardRule(id="five_friends", when="stage:customer", tier=5, to="inviter", reward="coupon 50"),
]
Sessions = async_sessionmaker[AsyncSession]
Work = Callable[[int, AsyncSession], Awaitable[str]]


@dataclass
class Run:
    """What N concurrent transactions came to: outcome counts, unexpected errors, deadlock retries."""

    outcomes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    retries: int = 0
    wall_s: float = 0.0

    def per_s(self) -> float:
        return sum(self.outcomes.values()) / self.wall_s


@dataclass
class Report:
    rows: list[tuple[str, Run, Run]] = field(default_factory=list)  # name, run, its reference
    checks: list[tuple[str, bool]] = field(default_factory=list)
    timings: list[tuple[str, list[float]]] = field(default_factory=list)

    def check(self, name: str, passed: bool) -> None:
        self.checks.append((name, passed))


# --- running transactions concurrently -----------------------------------------------------
async def concurrently(sessions: Sessions, concurrency: int, count: int, work: Work, retry: bool = False) -> Run:
    """`work(i, session)` for i < count, each in its own session and transaction, `concurrency` at a time."""
    run, gate = Run(), asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with gate:
            for _ in range(5):
                try:
                    async with sessions() as session, session.begin():
                        run.outcomes[await work(index, session)] += 1
                    return
                except group_buys.GroupRefused as refused:
                    run.outcomes[refused.reason] += 1
                    return
                except DBAPIError as error:
                    if not retry or getattr(error.orig, "sqlstate", None) not in RETRYABLE:
                        return failed(error)
                    run.retries += 1
                except Exception as error:  # counted and shown: the benchmark's point is that there are none
                    return failed(error)
            failed(RuntimeError("still deadlocked after 5 attempts"))

    def failed(error: Exception) -> None:
        run.outcomes["error"] += 1
        run.errors.append(f"{type(error).__name__}: {str(error)[:200]}")

    started = time.perf_counter()
    await asyncio.gather(*(one(index) for index in range(count)))
    run.wall_s = time.perf_counter() - started
    return run


async def reference(sessions: Sessions, concurrency: int, count: int) -> Run:
    """The contention floor: `count` transactions each taking the same single row with a guarded UPDATE."""
    guarded = text("UPDATE bench_counter SET n = n + 1 WHERE id = 1 AND n < 1000000")

    async def bump(_index: int, session: AsyncSession) -> str:
        await session.execute(guarded)
        return "ok"

    return await concurrently(sessions, concurrency, count, bump)


# --- setup through the bot's own functions -------------------------------------------------
async def new_customers(sessions: Sessions, prefix: str, count: int) -> list[Customer]:
    """Customers as the bot creates them on first contact (resolve_customer), 100 per transaction."""

    async def chunk(start: int) -> list[Customer]:
        async with sessions() as session, session.begin():
            ids = range(start, min(start + 100, count))
            return [await resolve_customer(session, "wecom", f"wmGrowth{prefix}{i}") for i in ids]

    parts = await asyncio.gather(*(chunk(start) for start in range(0, count, 100)))
    return [customer for part in parts for customer in part]


async def new_campaign(sessions: Sessions, code: str, size: int, stock: int) -> Campaign:
    spec = spec_from_mapping({
        "code": code, "name": f"bench {code}", "price": "9.90", "group_size": size, "group_hours": 24,
        "ends": (utcnow() + timedelta(days=2)).isoformat(), "stock": stock, "limit_per_customer": 1,
    }, stage_ids=[], tag_names=[])
    async with sessions() as session, session.begin():
        return await create_campaign(session, spec)


# --- 1 and 2: group-buys -------------------------------------------------------------------
async def one_group(sessions: Sessions, args: argparse.Namespace, people: list[Customer], report: Report) -> Run:
    campaign = await new_campaign(sessions, "bench-one-group", 3, 1_000_000)
    async with sessions() as session, session.begin():
        code = (await group_buys.open_group(session, campaign, people[0])).code

    async def join(index: int, session: AsyncSession) -> str:
        await group_buys.join_group(session, code, people[index + 1], PURCHASE_STAGES)
        return "joined"

    run = await concurrently(sessions, args.concurrency, args.attempts, join)
    async with sessions() as session:
        group = await group_buys.group_by_code(session, code)
        assert group is not None
        rows = await session.scalar(select(func.count()).where(GroupMember.group_id == group.id))
        sold = await session.scalar(select(Campaign.sold).where(Campaign.id == campaign.id))
    report.check(f"one group of 3: members {group.members}, member rows {rows}, sold {sold}, status {group.status}",
                 group.members == rows == sold == 3 and group.status == "filled")
    report.check(f"one group of 3: {outcome_text(run)}",
                 run.outcomes == Counter({"joined": 2, "full": args.attempts - 2}))
    return run


async def limited_stock(sessions: Sessions, args: argparse.Namespace, people: list[Customer], report: Report) -> Run:
    size = 5
    campaign = await new_campaign(sessions, "bench-stock", size, args.stock)
    known: list[str] = []  # open groups the customers have heard of (shared links)
    rng = random.Random(7)

    async def open_or_join(index: int, session: AsyncSession) -> str:
        if known and rng.random() > 1 / size:
            code = rng.choice(known)
            try:
                await group_buys.join_group(session, code, people[index], PURCHASE_STAGES)
            except group_buys.GroupRefused as refused:
                if refused.reason == "full" and code in known:
                    known.remove(code)
                raise
            return "joined"
        group = await group_buys.open_group(session, campaign, people[index])
        known.append(group.code)
        return "opened"

    run = await concurrently(sessions, args.concurrency, args.attempts, open_or_join)
    await check_stock(sessions, campaign, run, args.stock, report)
    return run


async def check_stock(sessions: Sessions, campaign: Campaign, run: Run, stock: int, report: Report) -> None:
    async with sessions() as session:
        sold = await session.scalar(select(Campaign.sold).where(Campaign.id == campaign.id))
        groups = (await session.execute(
            select(GroupBuy.members, GroupBuy.size, func.count(GroupMember.customer_id))
            .join(GroupMember, GroupMember.group_id == GroupBuy.id)
            .where(GroupBuy.campaign_id == campaign.id, GroupBuy.status.in_(("open", "filled")))
            .group_by(GroupBuy.id)
        )).all()
    seats = sum(rows for _members, _size, rows in groups)
    over = sum(1 for members, size, rows in groups if not rows == members <= size)
    taken = run.outcomes["opened"] + run.outcomes["joined"]
    report.check(f"stock {stock}: sold {sold}, member rows {seats} in {len(groups)} groups, "
                 f"groups over size or miscounted {over}", sold == seats == taken == stock and over == 0)
    report.check(f"stock {stock}: {outcome_text(run)}",
                 set(run.outcomes) <= LEGITIMATE | {"opened", "joined"} and not run.errors)


# --- 3: duplicate reward triggers ----------------------------------------------------------
async def reward_triggers(sessions: Sessions, args: argparse.Namespace, report: Report) -> Run:
    inviters, friends = await new_customers(sessions, "Inv", 10), await new_customers(sessions, "Fr", 100)
    async with sessions() as session, session.begin():
        for index, friend in enumerate(friends):
            await referrals.attribute(session, friend, inviters[index % 10].id, "inv_bench", "kf", 86_400)
    calls = [friends[index % len(friends)].id for index in range(args.triggers)]
    random.Random(3).shuffle(calls)
    granted: Counter[str] = Counter()

    async def trigger(index: int, session: AsyncSession) -> str:
        for grant in await rewards.qualify(session, calls[index], "stage:customer", RULES):
            granted[grant.rule.id] += 1
        return "called"

    run = await concurrently(sessions, args.concurrency, args.triggers, trigger, retry=True)
    async with sessions() as session:
        ledger = Counter(dict((await session.execute(
            select(RewardEntry.rule_id, func.count()).group_by(RewardEntry.rule_id))).all()))
        keys = await session.scalar(select(func.count(func.distinct(RewardEntry.grant_key))))
        milestones = await session.scalar(select(func.count()).select_from(ReferralMilestone))
    expected = Counter({"friend_bought": len(friends), "five_friends": len(inviters)})
    report.check(f"rewards: ledger {dict(ledger)}, distinct grant keys {keys}, milestones {milestones}, "
                 f"grants returned {dict(granted)}",
                 ledger == granted == expected and keys == sum(expected.values()) and milestones == len(friends))
    report.check(f"rewards: {outcome_text(run)}, deadlocks retried {run.retries}", not run.errors)
    return run


# --- 4: the referral tree ------------------------------------------------------------------
@dataclass(frozen=True)
class Tree:
    ids: list[int]
    parent: list[int]  # index of the inviter; -1 for the root
    depth: list[int]


def shape(first_id: int, size: int, fanout: int) -> Tree:
    """A complete tree in heap order: customer k was invited by customer (k - 1) // fanout."""
    parent = [-1] + [(k - 1) // fanout for k in range(1, size)]
    depth = [0] * size
    for k in range(1, size):
        depth[k] = depth[parent[k]] + 1
    return Tree(list(range(first_id, first_id + size)), parent, depth)


async def load_tree(dsn: str, size: int, fanout: int) -> Tree:
    """100,000 customers, their referrals and social rows, COPYed straight into the tables.

    This bypasses the bot on purpose: attributing 100k friends one by one would measure the setup,
    not the queries. Rows look like the bot's (every third friend converted, counters on inviters).
    """
    connection = await asyncpg.connect(dsn)
    try:
        tree = shape(1 + await connection.fetchval("SELECT coalesce(max(id), 0) FROM customers"), size, fanout)
        start, weights = utcnow() - timedelta(days=30), GrowthSettings().social_weights
        converted = [k % 3 == 0 for k in range(size)]
        await connection.copy_records_to_table("customers", columns=["id", "display_name", "stage"], records=[
            (cid, f"tree {k}", "customer" if converted[k] else "lead") for k, cid in enumerate(tree.ids)])
        await connection.copy_records_to_table(
            "referrals", columns=["friend_id", "inviter_id", "via", "channel", "created_at", "converted_at"],
            records=[(tree.ids[k], tree.ids[tree.parent[k]], "inv_bench", "kf", start + timedelta(seconds=k),
                      start + timedelta(seconds=k + 60) if converted[k] else None) for k in range(1, size)])
        friends, bought = Counter(tree.parent[1:]), Counter(tree.parent[k] for k in range(1, size) if converted[k])
        await connection.copy_records_to_table("social_stats", columns=[
            "customer_id", "friends", "friends_converted", "groups_led", "groups_filled", "downstream_converted",
            "score", "updated_at"], records=[
            (tree.ids[k], n, bought[k], 0, 0, 0, n * weights.friends + bought[k] * weights.friends_converted,
             start) for k, n in friends.items()])
        await connection.execute("SELECT setval('customers_id_seq', (SELECT max(id) FROM customers))")
        await connection.execute("ANALYZE customers; ANALYZE referrals; ANALYZE social_stats")
    finally:
        await connection.close()
    return tree


async def tree_queries(sessions: Sessions, dsn: str, args: argparse.Namespace, report: Report) -> Tree:
    fanout = 5
    tree = await load_tree(dsn, args.tree_size, fanout)
    root, one, leaf = tree.ids[0], tree.ids[1], len(tree.ids) - 1
    async def tree_command(session: AsyncSession) -> tuple[Any, ...]:
        """What `scrm referrals tree ROOT` reads at its defaults: the rows shown and the count per level."""
        return await referrals.tree(session, root, 3, 200), await referrals.tree_size(session, root, 3)

    queries: dict[str, Callable[[AsyncSession], Awaitable[Any]]] = {
        "customer by primary key (reference)": lambda s: s.get(Customer, one),
        "scrm referrals tree ROOT (depth 3)": tree_command,
        "tree(root, depth 3, limit 200)": lambda s: referrals.tree(s, root, depth=3, limit=200),
        "tree_size(root, depth 10)": lambda s: referrals.tree_size(s, root, depth=10),
        "social.stats_of(one customer)": lambda s: social.stats_of(s, one),
        "ancestors(deepest leaf, 20)": lambda s: referrals.ancestors(s, tree.ids[leaf], 20),
    }
    results: dict[str, Any] = {}
    times: dict[str, list[float]] = {name: [] for name in queries}
    for repeat in range(args.repeats + 1):  # the first round warms the pool and the caches; not counted
        for name, query in queries.items():  # round-robin, so noise falls on every query alike
            async with sessions() as session:
                started = time.perf_counter()
                results[name] = await query(session)
                if repeat:
                    times[name].append((time.perf_counter() - started) * 1000)
    report.timings = list(times.items())
    check_tree(tree, fanout, results, report)
    return tree


def check_tree(tree: Tree, fanout: int, results: dict[str, Any], report: Report) -> None:
    rows, levels = results["tree(root, depth 3, limit 200)"], results["tree_size(root, depth 10)"]
    expected_rows = min(200, sum(1 for d in tree.depth if 1 <= d <= 3))
    report.check(f"tree: {len(rows)} rows to depth 3 (expected {expected_rows}), levels in order",
                 len(rows) == expected_rows and [r.depth for r in rows] == sorted(r.depth for r in rows))
    expected_levels = Counter(d for d in tree.depth if 1 <= d <= 10)
    report.check(f"tree_size: {sum(levels.values())} people on {len(levels)} levels (expected "
                 f"{sum(expected_levels.values())})", levels == dict(expected_levels))
    chain, k = [], len(tree.ids) - 1
    while tree.parent[k] >= 0 and len(chain) < 20:
        k = tree.parent[k]
        chain.append(tree.ids[k])
    found = results["ancestors(deepest leaf, 20)"]
    report.check(f"ancestors: {len(found)} inviters up to the root, nearest first", found == chain)
    stats = results["social.stats_of(one customer)"]
    friends, score = (stats.friends, stats.score) if stats is not None else (0, 0.0)
    report.check(f"social value of one customer: {friends} friends, score {score:g}", friends == fanout)


REFERENCE_TABLE = "CREATE TABLE bench_counter (id int PRIMARY KEY, n int NOT NULL); INSERT INTO bench_counter VALUES (1, 0)"


# --- the run and its report ----------------------------------------------------------------
async def bench(args: argparse.Namespace) -> Report:
    report = Report()
    async with fresh_database(args.pg_admin_dsn, args.keep_db, "growth", REFERENCE_TABLE) as (url, dsn):
        # crm_store.db.create_engine has a fixed pool of 10 + 10; the bench needs one connection per worker.
        engine = create_async_engine(url, pool_size=args.concurrency, max_overflow=0)
        sessions = session_factory(engine)
        try:
            people = await new_customers(sessions, "P", args.attempts + 1)
            await reference(sessions, args.concurrency, 2 * args.concurrency)  # opens every connection
            # each scenario's reference is measured just before it, so drift in the machine's load hits both
            floor = await reference(sessions, args.concurrency, args.attempts)
            report.rows.append((f"one group of 3, {args.attempts} joins", await one_group(
                sessions, args, people, report), floor))
            floor = await reference(sessions, args.concurrency, args.attempts)
            report.rows.append((f"stock {args.stock}, {args.attempts} open/join", await limited_stock(
                sessions, args, people[1:], report), floor))
            floor = await reference(sessions, args.concurrency, args.triggers)
            report.rows.append((f"{args.triggers} reward triggers", await reward_triggers(
                sessions, args, report), floor))
            await tree_queries(sessions, dsn, args, report)
        finally:
            await engine.dispose()
    return report


def outcome_text(run: Run) -> str:
    counts = ", ".join(f"{name} {count}" for name, count in sorted(run.outcomes.items()))
    return counts + "".join(f"\n      error: {error}" for error in run.errors[:3])


def print_report(report: Report, args: argparse.Namespace, elapsed_s: float) -> None:
    print(f"growth benchmark on PostgreSQL: {args.concurrency} transactions at a time over a pool of "
          f"{args.concurrency} connections; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print("reference: as many transactions doing one guarded single-row counter UPDATE, same pool, same run")
    print(f"{'':34}{'txns':>7}{'per s':>9}{'ref/s':>9}{'ratio':>7}{'errors':>8}")
    for name, run, floor in report.rows:
        print(f"{name:34}{sum(run.outcomes.values()):7d}{run.per_s():9.0f}{floor.per_s():9.0f}"
              f"{run.per_s() / floor.per_s():7.2f}{run.outcomes['error']:8d}")
    reference_ms = statistics.median(report.timings[0][1])
    print(f"referral tree of {args.tree_size:,} customers (fan-out 5), {args.repeats} runs each, "
          "a new session per run; ratio: p50 / primary-key lookup p50")
    print(f"{'':38}{'p50 ms':>8}{'p95 ms':>8}{'ratio':>7}{'< 200 ms':>10}")
    for name, times in report.timings:
        ordered, p50 = sorted(times), statistics.median(times)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        print(f"{name:38}{p50:8.2f}{p95:8.2f}{p50 / reference_ms:7.1f}{'yes' if p95 < GOAL_MS else 'NO':>10}")
    print_checks(report.checks, elapsed_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=50, help="transactions at a time (and pool size)")
    parser.add_argument("--attempts", type=int, default=1000, help="customers opening or joining, per scenario")
    parser.add_argument("--stock", type=int, default=100, help="stock of the limited campaign")
    parser.add_argument("--triggers", type=int, default=10_000, help="duplicate reward triggers (100 friends)")
    parser.add_argument("--tree-size", type=int, default=100_000, help="customers in the referral tree")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of each tree query")
    parser.add_argument("--keep-db", action="store_true", help="keep the database (its DSN is printed)")
    parser.add_argument("--pg-admin-dsn", default=PG_ADMIN, help="where to create the database ($SCRM_BENCH_PG)")
    args = parser.parse_args()
    started = time.perf_counter()
    report = asyncio.run(bench(args))
    print_report(report, args, time.perf_counter() - started)
    return exit_status(report.checks)


if __name__ == "__main__":
    sys.exit(main())
