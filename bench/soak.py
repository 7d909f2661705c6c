"""Soak with every fault: customers chat for --minutes while PostgreSQL, Redis, Rasa, a worker and the API fail.

    make soak                                              # 10 minutes, Rasa NLU
    .venv/bin/python bench/soak.py --minutes 3 --customers 12 [--seed 1] [--nlu rules] [--keep]

What runs, all on this machine and all the soak's own (the shared PostgreSQL on :5432 and Redis
on :6379 are never touched): a PostgreSQL cluster made with initdb on a free port and a
redis-server on another (bench/servers.py); the bot as `scrm serve --role web` (callbacks,
/healthz, the managed Rasa with `--nlu rasa`) and two `--role worker` processes, configured
through SCRM__ variables and calling a fake WeCom/OA API served from this process.

The load: --customers people chat at once on kf and the OA (arrive, write, wait for the
answer, think, write again; a new customer per conversation), and every 20 s a group-buy
family: an inviter shows their 邀请有礼 code, three friends arrive through it (kf: the link,
OA: typed), one opens a group of 3 and the other two, with three strangers, join at the same
moment, so an overfilled group would show; filled groups move members to 成交, which rewards
the inviter. A nurture sequence with short steps runs through the faults and a `scrm push`
goes out during the 45009 burst. Callbacks are retried as WeChat retries them.

The faults, one at a time after a warm-up, with quiet time between and a quiet tail:
PostgreSQL restart, fake API 503 burst, Rasa SIGKILL (its bot restarts it), Redis restart
(keys lost), fake API 45009 burst, one worker SIGKILLed and a new one started, and a slow fake
API (answers 1 s past the bot's 5 s API timeout). Then the load stops and the bot is given up
to --settle seconds to finish.

How to read it: per fault, "answering again" is the time from the fault's start until a probe
customer's message sent after it began was answered on kf and on the OA, with /healthz answering
200 and not "down"; "part ok" is until /healthz showed the part at fault (store, Redis, NLU) ok
again after it had shown it not ok ("-": it never noticed; the managed Rasa takes from half a
minute to minutes to load, longer on a busy machine); "lost" counts the turns whose answer
failed in that fault's slot. The totals are read from the fake API's record and the store, not
from this driver's bookkeeping: replies lost (a customer's message or arrival that got no
answer), replies twice (a delivery no outbox row explains), rewards granted twice (the ledger,
and reward messages received), groups overfilled, inbox/outbox items stuck and messages marked
sent that never arrived must all be 0, or the exit status is 1; each lost turn is listed with
its cause. OA rows failed as "outcome unknown" are listed apart, with how many the fake did
receive. Not counted as lost: turns of customers a flow handed to a person (a rep's to answer),
and kf welcomes that missed WeChat's 20 s for the welcome code (a platform limit), both shown.
Throughput is answered turns per second before, during and after the faults. Automatic handoffs
are off (no rep answers in the soak); quiet hours are off and the daily cap is 50, so nurture
runs whatever the time. The run directory (--keep keeps it, and the servers' data) has each
process's log, the Rasa log and health.jsonl, what /healthz said twice a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.checks import exit_status, print_checks  # noqa: E402
from bench.servers import ThrowawayPostgres, ThrowawayRedis  # noqa: E402
from bench.soak_audit import audit, unfinished  # noqa: E402
from bench.soak_bot import (  # noqa: E402
    API_TIMEOUT_S,
    Bot,
    BotConfig,
    HealthWatch,
    SoakFake,
    kill_rasa,
    scrm,
    serve_fake,
    soak_model,
    wait_rasa_ready,
)
from bench.soak_people import Crowd, Person, WeChatSide  # noqa: E402
from bench.soak_plan import (  # noqa: E402
    FAMILY_EVERY_S,
    FAULTS,
    RUSHERS,
    SEQUENCE,
    WORKERS,
    FaultRun,
    Plan,
    Run,
    make_plan,
    sequence_yaml,
)
from bench.soak_report import report  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from crm_store.migrate import upgrade_async  # noqa: E402
from flows.settings import SHIPPED_FLOWS  # noqa: E402

PG_DOWN_S = REDIS_DOWN_S = 2.0
WORKER_PAUSE_S = 1.0  # between a worker's SIGKILL and its replacement's start
PATIENCE_S = 20.0  # how long a customer waits for an answer before writing on

# ---------------------------------------------------------------- faults


@dataclass
class World:
    """Everything the run touches, for the faults to act on."""

    pg: ThrowawayPostgres
    redis: ThrowawayRedis
    bot: Bot
    fake: SoakFake
    health: HealthWatch
    env: dict[str, str]
    plan: Plan

    async def inject(self, kind: str) -> str:
        """Cause the fault; what happened, for the table."""
        actions: dict[str, Callable[[], Awaitable[str]]] = {
            "postgres": self._postgres, "redis": self._redis, "rasa": self._rasa,
            "worker": lambda: self.bot.kill_and_restart_worker(WORKER_PAUSE_S), "api_5xx": self._api_5xx,
            "api_45009": self._api_45009, "api_slow": self._api_slow,
        }
        return await actions[kind]()

    async def _postgres(self) -> str:
        await self.pg.restart(down_s=PG_DOWN_S)
        return f"fast shutdown, {PG_DOWN_S:g} s down"

    async def _redis(self) -> str:
        await self.redis.restart(down_s=REDIS_DOWN_S)
        return f"SIGTERM, {REDIS_DOWN_S:g} s down, every key lost"

    async def _rasa(self) -> str:
        pid = self.rasa_pid()
        if pid is None:
            return "no Rasa pid in /healthz: nothing killed"
        kill_rasa(pid)
        return f"pid {pid} killed"

    def rasa_pid(self) -> int | None:
        latest = self.health.latest()
        return latest.rasa_pid if latest is not None else None

    async def _api_5xx(self) -> str:
        # 503: the API would not take the calls, so the bot retries even OA sends. A 500/502/504 might follow a
        # call that took effect: OA sends are then written off as "outcome unknown", never resent, and counted
        # apart below (tests/bot/test_faults.py covers both).
        self.fake.fail_for(self.plan.window_s, http_status=503)
        return f"every API call HTTP 503 for {self.plan.window_s:g} s"

    async def _api_45009(self) -> str:
        self.fake.fail_for(self.plan.window_s, errcode=45009)
        push = json.loads(await scrm(self.env, "push", "create", "--name", "soak push", "--reachable", "--json",
                                     "--text", "【推送】{{ customer.name }}，周末特惠，全场 8 折"))
        return f"errcode 45009 for {self.plan.window_s:g} s; a push to {push['audience']} customers"

    async def _api_slow(self) -> str:
        delay = API_TIMEOUT_S + 1
        self.fake.slow_for(self.plan.window_s, delay)
        return f"answers {delay:g} s late for {self.plan.window_s:g} s"


async def run_fault(world: World, crowd: Crowd, kind: str, probes: tuple[Person, Person]) -> FaultRun:
    """Inject `kind` while probe customers on kf and the OA write until each is answered."""
    started = time.time()
    deadline = started + world.plan.slot_s - 2
    killed = world.rasa_pid() if kind == "rasa" else None
    injected = asyncio.create_task(world.inject(kind))
    answers = await asyncio.gather(*(crowd.probe(person, deadline) for person in probes))
    note = await injected
    answered = None if None in answers else max(a for a in answers if a is not None)
    return FaultRun(kind, started, answered, note, killed)


async def fault_schedule(world: World, crowd: Crowd, load_start: float,
                         probes: list[tuple[Person, Person]]) -> list[FaultRun]:
    runs = []
    for index, kind in enumerate(world.plan.faults):
        await asyncio.sleep(max(0.0, load_start + world.plan.fault_at(index) - time.time()))
        print(f"  {time.time() - load_start:6.1f} s  {FAULTS[kind]}", flush=True)
        runs.append(await run_fault(world, crowd, kind, probes[index]))
    return runs


# ---------------------------------------------------------------- the load


async def families(crowd: Crowd) -> None:
    """A group-buy family every FAMILY_EVERY_S while the load runs (each in its own task)."""
    running: set[asyncio.Task[None]] = set()
    while crowd.running:
        task = asyncio.create_task(crowd.family(RUSHERS))
        running.add(task)
        task.add_done_callback(running.discard)
        await asyncio.sleep(FAMILY_EVERY_S)
    await asyncio.gather(*running)


async def enrol_later(world: World, delay_s: float) -> None:
    """At the end of the warm-up, everyone reachable joins the soak's sequence (as an admin would)."""
    await asyncio.sleep(delay_s)
    await scrm(world.env, "sequences", "enroll", SEQUENCE, "--reachable")


async def load(world: World, customers: int, seed: int) -> Run:
    rng = random.Random(seed)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        side = WeChatSide(world.bot.base, world.fake, http, rng)
        crowd = Crowd(side, world.fake, rng, PATIENCE_S)
        probes = [(Person.new("kf", f"Probe{i}"), Person.new("oa", f"Probe{i}")) for i in range(len(FAULTS))]
        await asyncio.gather(*(crowd.say(person, "你好") for pair in probes for person in pair))  # known customers
        load_start, load_average = time.time(), os.getloadavg()
        crowd.load_until = load_start + world.plan.load_s
        print(f"load started: {customers} customers chatting, a group-buy family every {FAMILY_EVERY_S:g} s",
              flush=True)
        work = [asyncio.create_task(crowd.chatter()) for _ in range(customers)]
        work += [asyncio.create_task(families(crowd)),
                 asyncio.create_task(enrol_later(world, world.plan.warmup_s / 2))]
        faults = await fault_schedule(world, crowd, load_start, probes)
        await asyncio.gather(*work)
        await side.drain()
    print(f"load stopped at {time.time() - load_start:.0f} s; settling", flush=True)
    return Run(load_start, faults, crowd, side, load_average)


async def settle(dsn: str, limit_s: float, nurture_until: float) -> float | None:
    """Until no inbox or outbox work is left, nor a nurture send due by `nurture_until` (the soak's sequence
    steps; a send deferred further, such as for a customer with a rep, is not waited for), for 5 s in a row;
    the seconds it took, or None at the limit."""
    started = time.time()
    quiet_since: float | None = None
    while time.time() - started < limit_s:
        if await unfinished(dsn, max(time.time(), nurture_until)) == 0:
            quiet_since = quiet_since or time.time()
            if time.time() - quiet_since >= 5:
                return quiet_since - started
        else:
            quiet_since = None
        await asyncio.sleep(1)
    return None


# ---------------------------------------------------------------- setting up


def flows_directory(directory: Path, plan: Plan) -> Path:
    """The shipped flows and sequences, plus the soak's sequence: the directory the bot and `scrm` use."""
    flows = directory / "flows"
    shutil.copytree(SHIPPED_FLOWS, flows)
    (flows / "sequences").mkdir(exist_ok=True)
    (flows / "sequences" / f"{SEQUENCE}.yaml").write_text(sequence_yaml(plan), encoding="utf-8")
    return flows


async def prepare(world: World, nlu: str) -> None:
    """Rasa ready, a group-buy campaign of 3, the soak's sequence published."""
    if nlu == "rasa":
        print("waiting for the bot's Rasa (training first if the model is stale)…", flush=True)
        await wait_rasa_ready(world.health, world.bot)
    await scrm(world.env, "campaigns", "create", "--code", "soak", "--name", "浸泡三人团", "--price", "9.90",
               "--group-size", "3", "--group-hours", "2", "--ends", "2099-12-31", "--stock", "1000000",
               "--fill-stage", "成交")
    await scrm(world.env, "sequences", "publish")


async def soak(args: argparse.Namespace) -> int:
    began = time.time()
    plan = make_plan(args.minutes, args.nlu)
    rules = load_settings(nlu={"mode": "rules"}).growth.rewards  # the reward rules the bot grants by
    directory = Path(tempfile.mkdtemp(prefix="scrm-soak-"))
    (directory / "logs").mkdir()
    print(f"soak: run directory {directory}", flush=True)
    pg, redis = ThrowawayPostgres(), ThrowawayRedis()
    fake = SoakFake()
    runner, fake_base = await serve_fake(fake)
    bot: Bot | None = None
    try:
        await pg.start()
        await redis.start()
        await upgrade_async(pg.url)
        model_dir = await soak_model(directory / "nlu-models") if args.nlu == "rasa" else None
        config = BotConfig(pg.url, redis.url, fake_base, flows_directory(directory, plan), args.nlu, model_dir)
        bot = Bot(config, directory / "logs", WORKERS)
        await bot.start()
        health = HealthWatch(bot.base)
        health.start()
        world = World(pg, redis, bot, fake, health, config.environment(), plan)
        await prepare(world, args.nlu)
        run = await load(world, args.customers, args.seed)
        settled = await settle(pg.dsn, args.settle, run.load_start + plan.nurture_until)
        await world.health.stop()
        world.health.save(directory / "health.jsonl")
        died = bot.exited()
        await bot.stop()  # the audit reads a world that no longer moves
        found = await audit(pg.dsn, run.side.turns, fake.sent, fake.resends_absorbed, rules)
        report(args, plan, (pg.port, redis.port), world.health, run, found, settled)
        checks = found.checks() + [(f"bot processes that died on their own: {len(died)} {'; '.join(died)}".rstrip(),
                                    not died)]
        print_checks(checks, time.time() - began)
        return exit_status(checks)
    finally:
        if bot is not None:
            await bot.stop()
        await runner.cleanup()
        await close_servers(pg, redis, directory, args.keep)


async def close_servers(pg: ThrowawayPostgres, redis: ThrowawayRedis, directory: Path, keep: bool) -> None:
    if not keep:
        await pg.close()
        await redis.close()
        shutil.rmtree(directory, ignore_errors=True)
        return
    await redis.stop()
    if (pg.data / "postmaster.pid").exists():
        await pg.stop()
    print(f"kept: {directory} (logs, health.jsonl, flows); PostgreSQL cluster {pg.data} (stopped; port {pg.port}, "
          f"user postgres: pg_ctl -D {pg.data} -l {pg.directory / 'log'} start); Redis {redis.directory}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="load time, faults included")
    parser.add_argument("--customers", type=int, default=20, help="customers chatting at the same time")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nlu", choices=["rasa", "rules"], default="rasa",
                        help="rasa: the bot's managed Rasa (and its SIGKILL); rules: keyword rules only")
    parser.add_argument("--settle", type=float, default=240.0, help="seconds the bot gets to finish after the load")
    parser.add_argument("--keep", action="store_true", help="keep the servers' directories and the logs")
    args = parser.parse_args()
    if args.minutes < 2:
        parser.error("--minutes: at least 2, to leave room for the faults")
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
