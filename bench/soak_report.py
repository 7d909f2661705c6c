"""The soak's report: the fault table, throughput, what was sent and received, and why any turn went unanswered."""

from __future__ import annotations

import argparse
import os
import time

from bench.soak_audit import Audit, rate
from bench.soak_bot import HealthWatch
from bench.soak_plan import FAMILY_EVERY_S, FAULTS, WORKERS, FaultRun, Plan, Run

PARTS = {"postgres": "store", "redis": "redis", "rasa": "nlu"}  # the /healthz part each fault takes down

def report(args: argparse.Namespace, plan: Plan, ports: tuple[int, int], health: HealthWatch, run: Run,
           found: Audit, settled: float | None) -> None:
    print(f"\nsoak: {args.minutes:g} min of load (warm-up {plan.warmup_s:.0f} s, faults every {plan.slot_s:.0f} s "
          f"from {plan.warmup_s:.0f} s to {plan.faults_end:.0f} s, quiet tail), {args.customers} customers "
          f"chatting at a time plus a group-buy family every {FAMILY_EVERY_S:g} s, seed {args.seed}, NLU {args.nlu}")
    print(f"bot: scrm serve --role web + {WORKERS} × --role worker on a throwaway PostgreSQL (:{ports[0]}) and "
          f"redis-server (:{ports[1]}); fake WeCom/OA API in this process")
    before, after = (", ".join(f"{x:.1f}" for x in load) for load in (run.load_average, os.getloadavg()))
    print(f"machine: {os.cpu_count()} CPUs; load average (1, 5, 15 min) at the start of the load {before}, "
          f"at the end {after}: other work on the machine slows Rasa's restart and every figure here")
    print_faults(run, health, plan, found.turns.lost_at)
    print_totals(run, found, plan, settled, args.settle)


def print_faults(run: Run, health: HealthWatch, plan: Plan, lost_at: list[float]) -> None:
    print("\nfaults, one at a time (seconds from the fault's start; lost: turns whose answer failed from then "
          "until the next fault):")
    print(f"  {'fault':30}{'at s':>7}{'answering again':>17}{'part ok':>10}{'lost':>6}  what happened")
    for fault in run.faults:
        answering = health.answering_from(fault.answered) if fault.answered else None
        part = PARTS.get(fault.kind)
        parts = health.ok_again(part, fault.started, fault.started + plan.slot_s) if part else None
        lost = sum(1 for moment in lost_at if fault.started <= moment < fault.started + plan.slot_s)
        part_ok = _seconds(parts, fault.started) if part else "n/a"
        at, again = fault.started - run.load_start, _seconds(answering, fault.started)
        print(f"  {FAULTS[fault.kind]:30}{at:7.1f}{again:>17}{part_ok:>10}{lost:6d}  {fault.note}"
              f"{_rasa_back(fault, health)}")
    print("  answering again: a probe written after the fault began was answered on kf and on the OA, and /healthz "
          "said 200, not \"down\"\n  part ok: /healthz showed the part at fault (store, Redis, NLU) ok again after "
          "showing it not ok (-: it never showed it; n/a: /healthz has no part for it)")


def _rasa_back(fault: FaultRun, health: HealthWatch) -> str:
    if fault.killed_pid is None:
        return ""
    back = health.rasa_back(fault.killed_pid, fault.started)
    return "" if back is None else f"; pid {back.rasa_pid} ready {back.at - fault.started:.1f} s later"


def _seconds(moment: float | None, start: float) -> str:
    return "-" if moment is None else f"{moment - start:.1f}"


def print_totals(run: Run, found: Audit, plan: Plan, settled: float | None, settle_limit: float) -> None:
    start, answered = run.load_start, found.turns.answered_at
    before = rate(answered, start, start + plan.warmup_s)
    during = rate(answered, start + plan.warmup_s, start + plan.faults_end)
    after = rate(answered, start + plan.faults_end, start + plan.load_s)
    print(f"\nthroughput, answered turns/s: before {before:.1f}, during {during:.1f}, after {after:.1f}")
    stats, growth = run.side.stats, run.crowd.growth
    turns = ", ".join(f"{kind} {count}" for kind, count in sorted(found.turns.total.items()))
    print(f"turns: {sum(found.turns.total.values())} ({turns}); {found.turns.with_rep} with a rep after a flow's "
          f"handoff. callbacks {stats.sent}: resent after no 200 {stats.retried}, given up {stats.given_up}, "
          f"sent twice on purpose {stats.resent_on_purpose}")
    settling = f"in {settled:.0f} s" if settled is not None else f"NOT within {settle_limit:g} s"
    print(f"settled: {settling} after the load (no inbox, outbox or nurture work left for 5 s)")
    print(f"group-buys: {growth.families} families, {growth.invite_codes} invite codes shown, "
          f"{growth.groups_opened} groups opened by them, {growth.joins_tried} joins tried, {growth.no_code} without "
          f"a code in time; store: {found.groups.groups} groups, {found.groups.filled} filled, "
          f"{found.groups.members} members, {found.groups.inconsistent} with a members count unlike their rows")
    print("nurture and push sends: " + ", ".join(f"{k} {v}" for k, v in sorted(found.marketing.items()))
          + f"; due and unsent {found.marketing_due}")
    queues = found.queues
    print(f"queues: inbox {dict(sorted(queues.inbox.items()))}, outbox {dict(sorted(queues.outbox.items()))}; "
          f"kf resends absorbed by msgid {found.deliveries.resends_absorbed}")
    print(f"outbox rows failed as \"outcome unknown\" (OA sends whose call may have taken effect — a timeout, HTTP 500/502/504 — never resent): "
          f"{queues.outcome_unknown}, of which the customer did receive {queues.outcome_unknown_delivered}")
    _counted("other failed outbox rows", found.queues.failed)
    _counted("failed inbox items", found.queues.inbox_failed)
    _counted("turns without an answer, by cause", found.turns.lost)
    for lost in found.turns.lost_turns[:20]:
        turn = lost.turn
        print(f"    sent {turn.sent_at - run.load_start:6.1f} s, failed {lost.at - run.load_start:6.1f} s  "
              f"{turn.channel} {turn.kind} {turn.user}: {lost.cause}")
    print(f"kf arrivals whose welcome missed WeChat's 20 s for its code (a platform limit; not counted as lost): "
          f"{found.turns.welcome_late}")
    print(f"deliveries no outbox row explains (replies twice): {found.deliveries.twice or 'none'}")
    for message in found.deliveries.unexplained[:10]:
        print(f"  {time.strftime('%H:%M:%S', time.localtime(message.at))}  {message.path} to {message.to}: "
              f"{message.text[:60]!r}")


def _counted(title: str, counts: dict[str, int]) -> None:
    print(f"{title}: {sum(counts.values()) or 'none'}")
    for reason, count in sorted(counts.items(), key=lambda item: -item[1])[:12]:
        print(f"  {count:6d}  {reason}")
