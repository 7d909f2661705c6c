"""Customer-group benchmark: a full sync of 10,000 groups × 200 members from the fake WeCom, and a group push's
dispatch to them, on PostgreSQL.

    .venv/bin/python bench/groupchats.py [--groups 10000] [--members 200] [--owners 50] [--keep] [--json]
    .venv/bin/python bench/groupchats.py --groups 200 --members 20      # a quick look, well under a minute

The sandbox's fake WeCom API is filled with the groups at once (`populate_group_chats`, not timed)
and served over HTTP on a local port, as the tests do; the bot's own API client and store talk to it.
  1. reference: `groupchat/get` of every group, bare (the answer read and dropped), as many in flight as
     the sync has (`groupchats.sync_concurrency`), the fake's frequency limit lifted: what the API
     itself costs here;
  2. the full sync (`bot.group_chat_sync.full_sync`): `groupchat/list` pages and a `groupchat/get` per
     group, every group and member stored, customers linked, joins on their timelines, within
     `groupchats.calls_per_minute` (WeCom allows 10,000 calls a minute per API and enterprise, 45009
     beyond: https://developer.work.weixin.qq.com/document/path/90312). Measured: seconds, groups/s,
     API calls, calls a minute on average and in the busiest minute the fake saw, and the ratio of the
     sync's time to the reference's (the store's cost over the API's). With the default limit of
     6,000 a minute, 10,000 groups cannot take less than 100 s: the floor is printed too;
  3. a group push to every group (`--owners` owners): `bot.group_push_dispatch.dispatch_due` creates
     one owner-confirmed task (`add_msg_template`, chat_type group) per owner and batch. Measured:
     tasks/s and groups/s; checked: every group in exactly one task, none refused by the fake.
With `--skip-sync` the groups are COPYed into the store instead of synced (phases 1 and 2 left
out), for the push at full size without the sync's time. Exits non-zero when a check fails;
`--json` prints the figures and checks as one JSON object instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.checks import exit_status, print_checks  # noqa: E402
from bench.pg_database import fresh_database  # noqa: E402
from bot.app import with_api_base  # noqa: E402
from bot.group_chat_sync import full_sync  # noqa: E402
from bot.group_push_dispatch import GroupPushDispatcher  # noqa: E402
from bot.runtime import build_apis  # noqa: E402
from bot.sandbox.fake_wechat import FakeWeChat  # noqa: E402
from bot.sandbox.simulator import fake_for  # noqa: E402
from bot.settings import Settings, load_settings  # noqa: E402
from bot.wechat_api import WeChatApi  # noqa: E402
from core.shared_state import open_shared_state  # noqa: E402
from crm_store.db import session_factory  # noqa: E402
from crm_store.group_pushes import GroupPushSpec, create_group_push  # noqa: E402
from crm_store.group_segments import GroupSegment  # noqa: E402

PG_ADMIN = os.environ.get("SCRM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
WECOM_PER_MINUTE = 10_000  # per API and enterprise (document 90312)
POOL = 20
GET = "externalcontact/groupchat/get"
TASK = "externalcontact/add_msg_template"
TASK_MAX_GROUPS = 2000  # add_msg_template's chat_id_list (document 92135)
PER_GROUP_MONTH = 28  # group messages a group may receive a month: as many as the month has days (document 92135)


@dataclass
class Report:
    groups: int
    members: int
    owners: int
    calls_per_minute: int  # the sync's own limit (groupchats.calls_per_minute)
    setup: list[tuple[str, float]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[tuple[str, bool]] = field(default_factory=list)

    def check(self, name: str, passed: bool) -> None:
        self.checks.append((name, passed))


class CallMeter:
    """When each call reached the fake (a middleware of its app): per API, the most calls in any 60 s."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.on = False

    def attach(self, app: web.Application) -> None:
        @web.middleware
        async def stamp(request: web.Request, handler: Any) -> web.StreamResponse:
            if self.on:
                self.times[request.path.removeprefix("/cgi-bin/")].append(time.monotonic())
            return await handler(request)

        app.middlewares.append(stamp)

    def reset(self) -> None:
        self.times.clear()

    def peak_per_minute(self, path: str) -> int:
        times, peak, start = self.times.get(path, []), 0, 0
        for end, at in enumerate(times):
            while times[start] <= at - 60.0:
                start += 1
            peak = max(peak, end - start + 1)
        return peak


def bench_settings(url: str, args: argparse.Namespace) -> Settings:
    groupchats: dict[str, Any] = {}
    if args.calls_per_minute:
        groupchats["calls_per_minute"] = args.calls_per_minute
    return load_settings(store={"url": url}, sandbox={"enabled": True, "api_port": 0}, nlu={"mode": "rules"},
                         logging={"level": "WARNING"}, groupchats=groupchats)


@contextlib.asynccontextmanager
async def served(fake: FakeWeChat, settings: Settings, meter: CallMeter) -> AsyncIterator[WeChatApi]:
    """The fake on a free local port, watched by `meter`, and the bot's contacts API client pointed at it."""
    app = fake.app()
    meter.attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    effective = with_api_base(settings, f"http://127.0.0.1:{runner.addresses[0][1]}/cgi-bin")
    state = open_shared_state(None)
    try:
        async with aiohttp.ClientSession() as http:
            yield build_apis(effective, http, state)["wecom.contacts"]
    finally:
        await state.close()
        await runner.cleanup()


async def reference(api: WeChatApi, fake: FakeWeChat, chat_ids: list[str], concurrency: int,
                    report: Report) -> float:
    """Bare groupchat/get of every group, `concurrency` in flight, the fake's limit lifted for it."""
    limits = fake.api_per_minute, fake.api_per_hour
    fake.api_per_minute = fake.api_per_hour = None
    queue = list(reversed(chat_ids))
    members = 0

    async def worker() -> None:
        nonlocal members
        while queue:
            answer = await api.post(GET, {"chat_id": queue.pop(), "need_name": 1})
            members += len(answer["group_chat"]["member_list"])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    fake.api_per_minute, fake.api_per_hour = limits
    report.figures["reference"] = {"calls": len(chat_ids), "seconds": round(seconds, 2),
                                   "calls_per_s": round(len(chat_ids) / seconds, 1)}
    report.check(f"reference: {len(chat_ids):,} groupchat/get answered, {members:,} members read",
                 members == report.groups * report.members)
    return seconds


async def sync_phase(sessions: Any, api: WeChatApi, fake: FakeWeChat, meter: CallMeter, settings: Settings,
                     dsn: str, report: Report, reference_s: float) -> None:
    refused_before = len(fake.refused)
    meter.reset()
    meter.on = True
    started = time.perf_counter()
    try:
        outcome = await full_sync(sessions, api, settings.groupchats)
    finally:
        seconds = time.perf_counter() - started
        meter.on = False
    calls = {path: len(times) for path, times in meter.times.items()}
    peaks = {path: meter.peak_per_minute(path) for path in calls}
    limit = settings.groupchats.calls_per_minute
    floor_s = max(0.0, (max(calls.values(), default=0) - limit) / limit * 60.0)  # the first minute's worth is free
    report.figures["sync"] = {
        "status": outcome.status, "groups": outcome.groups, "calls": outcome.calls, "seconds": round(seconds, 2),
        "groups_per_s": round(outcome.groups / seconds, 1),
        "members_per_s": round(outcome.groups * report.members / seconds, 1), "calls_by_api": calls,
        "calls_per_minute_average": round(sum(calls.values()) / seconds * 60.0),
        "peak_per_minute_by_api": peaks, "pacing_floor_s": round(floor_s, 1),
        "ratio_to_reference": round(seconds / reference_s, 2) if reference_s else None,
    }
    refused = Counter(refusal.errcode for refusal in fake.refused[refused_before:])
    report.check(f"sync: status {outcome.status}, {outcome.groups:,} groups read", outcome.status == "done"
                 and outcome.groups == report.groups)
    report.check(f"sync: busiest minute per API {peaks} within groupchats.calls_per_minute {limit:,} "
                 f"(WeCom's {WECOM_PER_MINUTE:,})", all(peak <= limit for peak in peaks.values()))
    report.check(f"sync: calls refused by the fake {dict(refused) or 'none'} (goal 0)", not refused)
    connection = await asyncpg.connect(dsn)
    try:
        groups, members = await connection.fetchrow(
            "SELECT (SELECT count(*) FROM group_chats), (SELECT count(*) FROM group_chat_members WHERE left_at IS NULL)")
        linked = await connection.fetchval(
            "SELECT count(*) FROM group_chat_members WHERE kind = 'customer' AND customer_id IS NOT NULL")
    finally:
        await connection.close()
    report.figures["sync"]["customers_linked"] = linked
    report.check(f"store: {groups:,} groups, {members:,} members in them, {linked:,} linked to customers",
                 groups == report.groups and members == report.groups * report.members
                 and linked == report.groups * (report.members - 1))  # every member but the owner is a customer


async def push_phase(sessions: Any, api: WeChatApi, fake: FakeWeChat, settings: Settings, dsn: str,
                     owners: list[str], report: Report) -> None:
    """One push to every group; the dispatcher run until nothing is pending, then the owners confirm."""
    started = time.perf_counter()
    async with sessions() as session, session.begin():
        push = await create_group_push(session, GroupPushSpec("bench", GroupSegment(name_contains="客户群"),
                                                              text="今日特价，群内专享"), by="bench")
        push_id, audience = push.id, push.audience
    report.setup.append((f"group push created: {audience:,} targets", time.perf_counter() - started))
    refused_before, tasks_before = len(fake.refused), len(fake.group_chat_tasks)
    dispatcher = GroupPushDispatcher(sessions, api, settings.groupchats, PER_GROUP_MONTH)
    tasks = groups = rounds = 0
    started = time.perf_counter()
    while rounds < 100:
        rounds += 1
        outcome = await dispatcher.dispatch_due()
        tasks, groups = tasks + outcome.tasks, groups + outcome.groups
        if not outcome.paused and not outcome.tasks:
            break
    seconds = time.perf_counter() - started
    for msgid in list(fake.group_chat_tasks)[tasks_before:]:  # the owners confirm (not timed): delivered now
        fake.confirm_group_task(msgid)
    refused = dict(Counter(refusal.errcode for refusal in fake.refused[refused_before:]))
    report.figures["push"] = {"groups": groups, "owners": len(owners), "tasks": tasks, "rounds": rounds,
                              "seconds": round(seconds, 3), "tasks_per_s": round(tasks / seconds, 1),
                              "groups_per_s": round(groups / seconds, 1), "refused": refused}
    per_owner = Counter(group.owner for group in fake.group_chats.values())
    expected = sum(-(-count // TASK_MAX_GROUPS) for count in per_owner.values())
    in_tasks = Counter(chat_id for task in list(fake.group_chat_tasks.values())[tasks_before:] for chat_id in task.status)
    report.check(f"push: {groups:,} of {audience:,} groups in {tasks:,} tasks ({expected:,} expected: one per owner "
                 f"and {TASK_MAX_GROUPS:,} groups)", groups == audience == report.groups and tasks == expected)
    report.check(f"push: every group in exactly one task, {sum(in_tasks.values()):,} delivered",
                 len(in_tasks) == report.groups and set(in_tasks.values()) == {1})
    report.check(f"push: refused by the fake {refused or 'none'} (goal 0), each group within its "
                 f"{PER_GROUP_MONTH} a month", not refused and all(
                     fake.group_chat_received(chat_id) <= PER_GROUP_MONTH for chat_id in in_tasks))
    connection = await asyncpg.connect(dsn)
    try:
        statuses = dict(await connection.fetch(
            "SELECT status, count(*) FROM group_push_targets WHERE push_id = $1 AND msgid <> '' GROUP BY 1", push_id))
    finally:
        await connection.close()
    report.check(f"store: the push's targets with a task, by status {statuses}",
                 sum(statuses.values()) == report.groups)
    await push_reference(api, fake, report)


async def push_reference(api: WeChatApi, fake: FakeWeChat, report: Report) -> None:
    """The same tasks made bare: add_msg_template per owner and 2,000 groups, one after another, nothing stored
    (the owners do not confirm them: nothing is delivered twice)."""
    by_owner: dict[str, list[str]] = defaultdict(list)
    for group in fake.group_chats.values():
        by_owner[group.owner].append(group.chat_id)
    bodies = [{"chat_type": "group", "sender": owner, "chat_id_list": chats[start:start + TASK_MAX_GROUPS],
               "text": {"content": "今日特价，群内专享"}}
              for owner, chats in sorted(by_owner.items()) for start in range(0, len(chats), TASK_MAX_GROUPS)]
    started = time.perf_counter()
    for body in bodies:
        await api.post(TASK, body)
    seconds = time.perf_counter() - started
    push = report.figures["push"]
    push["reference"] = {"tasks": len(bodies), "seconds": round(seconds, 3),
                         "tasks_per_s": round(len(bodies) / seconds, 1)}
    push["ratio_to_reference"] = round(push["seconds"] / seconds, 2)


async def copy_groups(dsn: str, fake: FakeWeChat, report: Report) -> None:
    """The fake's groups straight into the store (no members): what the push needs, without a sync."""
    started = time.perf_counter()
    connection = await asyncpg.connect(dsn)
    try:
        now = datetime.now(UTC)
        await connection.copy_records_to_table("group_chats", columns=[
            "chat_id", "name", "owner_userid", "notice", "status", "members", "member_version", "created_at",
            "updated_at"], records=[(group.chat_id, group.name, group.owner, "", "active", len(group.members),
                                     str(group.member_version), now, now) for group in fake.group_chats.values()])
    finally:
        await connection.close()
    report.setup.append((f"{len(fake.group_chats):,} groups COPYed into the store (--skip-sync)",
                         time.perf_counter() - started))


async def bench(args: argparse.Namespace) -> Report:
    async with fresh_database(args.pg_admin_dsn, args.keep, "groupchats") as (url, dsn):
        settings = bench_settings(url, args)
        report = Report(args.groups, args.members, args.owners, settings.groupchats.calls_per_minute)
        fake = fake_for(settings)
        started = time.perf_counter()
        owners = [f"owner{k:03d}" for k in range(1, args.owners + 1)]
        chat_ids = fake.populate_group_chats(args.groups, args.members, owners)
        report.setup.append((f"fake WeCom filled: {args.groups:,} groups × {args.members} members",
                             time.perf_counter() - started))
        engine = create_async_engine(url, pool_size=POOL, max_overflow=0)
        sessions = session_factory(engine)
        try:
            meter = CallMeter()
            async with served(fake, settings, meter) as api:
                if args.skip_sync:
                    await copy_groups(dsn, fake, report)
                else:
                    reference_s = await reference(api, fake, chat_ids, settings.groupchats.sync_concurrency, report)
                    await sync_phase(sessions, api, fake, meter, settings, dsn, report, reference_s)
                await push_phase(sessions, api, fake, settings, dsn, owners, report)
        finally:
            await engine.dispose()
    return report


def print_report(report: Report, elapsed_s: float) -> None:
    print(f"customer-group benchmark on PostgreSQL: {report.groups:,} groups × {report.members} members, "
          f"{report.owners} owners; sync limit {report.calls_per_minute:,} calls a minute per API "
          f"(WeCom's {WECOM_PER_MINUTE:,}); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    for name, seconds in report.setup:
        print(f"setup (not measured): {name}: {seconds:.1f} s")
    ref, sync = report.figures.get("reference", {}), report.figures.get("sync", {})
    if ref:
        print(f"reference: {ref['calls']:,} bare groupchat/get, {ref['seconds']:.1f} s, {ref['calls_per_s']:,.0f}/s")
    if sync:
        print(f"full sync: {sync['groups']:,} groups in {sync['seconds']:.1f} s = {sync['groups_per_s']:,.1f} groups/s, "
              f"{sync['members_per_s']:,.0f} members/s; "
              f"API calls {sync['calls']:,} {sync['calls_by_api']}; {sync['calls_per_minute_average']:,} a minute on "
              f"average, busiest minute {sync['peak_per_minute_by_api']}; pacing floor {sync['pacing_floor_s']:.0f} s")
        print(f"sync / reference time: {sync['ratio_to_reference']} (the store's cost over the API's, pacing included)")
    push = report.figures.get("push", {})
    if push:
        print(f"group push to {push['groups']:,} groups of {push['owners']} owners: {push['tasks']:,} tasks in "
              f"{push['seconds']:.2f} s = {push['tasks_per_s']:,.0f} tasks/s, {push['groups_per_s']:,.0f} groups/s; "
              f"refused by the fake: {push['refused'] or 'none'}")
        ref = push["reference"]
        print(f"reference: the same {ref['tasks']:,} add_msg_template calls bare, {ref['seconds']:.2f} s = "
              f"{ref['tasks_per_s']:,.0f} tasks/s; push / reference time: {push['ratio_to_reference']}")
    print_checks(report.checks, elapsed_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=10_000, help="customer groups on the fake WeCom")
    parser.add_argument("--members", type=int, default=200, help="members in each group")
    parser.add_argument("--owners", type=int, default=50, help="reps who own them (the push's tasks are per owner)")
    parser.add_argument("--calls-per-minute", type=int, help="the sync's limit (default: groupchats.calls_per_minute)")
    parser.add_argument("--skip-sync", action="store_true",
                        help="no reference and no sync: the groups are COPYed into the store for the push alone")
    parser.add_argument("--json", action="store_true", help="print the figures and checks as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the database (its DSN is printed)")
    parser.add_argument("--pg-admin-dsn", default=PG_ADMIN, help="where to create the database ($SCRM_BENCH_PG)")
    args = parser.parse_args()
    if args.groups < 1 or not 1 <= args.members <= 500 or not 1 <= args.owners <= args.groups:
        parser.error("--groups at least 1, --members 1 to 500 (a group's limit), --owners 1 to --groups")
    started = time.perf_counter()
    report = asyncio.run(bench(args))
    if args.json:
        print(json.dumps({**asdict(report), "run_s": round(time.perf_counter() - started, 1)}, ensure_ascii=False))
    else:
        print_report(report, time.perf_counter() - started)
    return exit_status(report.checks)


if __name__ == "__main__":
    sys.exit(main())
