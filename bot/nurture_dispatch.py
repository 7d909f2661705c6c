"""Sends what sequences and pushes owe customers, politely, exactly once, on any number of processes.

APScheduler is only the clock. Each run claims due sends (`FOR UPDATE SKIP LOCKED`, a batch
per transaction) and decides each one in memory from data loaded once per batch:

    enrolment ended or sequence paused → skip / wait      unsubscribed → skip, exit
    a rep has the customer → wait                         step condition false → skip, next step
    quiet hours → wait for the morning                    daily cap reached → wait until it frees
    a channel that may deliver now: kf or OA inside the 48-hour window while the customer's quota
    allowance has a message left, else a WeCom group-message task for the owning rep (monthly
    limit) → outbox row; the window open but its allowance spent → wait for the customer's next
    message (looked at again every `quota_recheck_s`); neither → skip with the reason

The send's new status, its outbox row, the allowance it spent and the next step's pending send
commit together, so a crash (even SIGKILL) redoes a whole batch or none of it, and two processes
never take the same row. The batch's facts are loaded by bot/nurture_batch.py. The outbox sender
paces the API calls and backs off on 45009.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.delivery import OutboundCall, notify_call, queue_call
from bot.jobs import every
from bot.nurture_batch import CAP_WINDOW, Batch, BatchLoader
from bot.quota import SPENDS_ALLOWANCE
from core import metrics
from core.sequences import Condition, NurtureSequence
from core.templates import parse_template, render
from crm_store.enrolments import schedule_step
from crm_store.lifecycle import Lifecycle
from crm_store.models import Customer, Lane, as_utc, utcnow
from crm_store.nurture_models import Enrolment, NurtureSend
from crm_store.nurture_settings import NurtureSettings

log = logging.getLogger("scrm.nurture")

GROUP_MESSAGE = "contacts.add_msg_template"
PAUSED_RECHECK = timedelta(minutes=15)
NO_QUOTA = "no quota"


@dataclass
class Outcome:
    sent: int = 0
    skipped: int = 0
    deferred: int = 0
    reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, other: Outcome) -> None:
        self.sent, self.skipped, self.deferred = (self.sent + other.sent, self.skipped + other.skipped,
                                                  self.deferred + other.deferred)
        for reason, count in other.reasons.items():
            self.reasons[reason] += count


@dataclass(frozen=True)
class Route:
    """How a send may go now: a call and its channel, or none and why."""

    call: OutboundCall | None
    via: str = ""
    why: str = ""
    no_quota: bool = False  # the chat window is open but its allowance is spent (routed, or waiting)
    spends: bool = False  # the call takes a message from the customer's allowance


class NurtureDispatcher:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: NurtureSettings, lifecycle: Lifecycle,
                 agent_id: int = 0, budgets: bool = True) -> None:
        """`budgets=False` sends inside the chat window without asking the quota ledger: for the benchmark's
        comparison only (the platform refuses what the ledger would have held)."""
        self.sessions = sessions
        self.settings = settings
        self.lifecycle = lifecycle
        self.agent_id = agent_id
        self.budgets = budgets
        self.zone = ZoneInfo(settings.timezone)
        self.loader = BatchLoader(self.zone, budgets)
        self.on_outbox = lambda: None
        if not budgets:
            log.warning("nurture.budgets.off sends are not fitted to the platform's quota (a benchmark's baseline)")

    def schedule(self, scheduler: AsyncIOScheduler) -> None:
        every(scheduler, self.settings.interval_s, "nurture-due", self.run_due)

    async def run_due(self, now: datetime | None = None, max_batches: int | None = None) -> Outcome:
        """Handle every send due at `now` (default: the clock), a batch per transaction."""
        total = Outcome()
        batches = 0
        while max_batches is None or batches < max_batches:
            at = now or utcnow()
            async with self.sessions() as session, session.begin():
                claimed = list(await session.scalars(
                    select(NurtureSend).where(NurtureSend.status == "pending", NurtureSend.due_at <= at)
                    .order_by(NurtureSend.due_at).limit(self.settings.batch).with_for_update(skip_locked=True)))
                if not claimed:
                    break
                outcome = await self._decide_all(session, claimed, at)
            total.add(outcome)
            batches += 1
            if outcome.sent:
                self.on_outbox()
            if len(claimed) < self.settings.batch:
                break
        if total.sent or total.skipped:
            log.info("nurture.dispatched sent=%s skipped=%s deferred=%s", total.sent, total.skipped, total.deferred)
        return total

    # ------------------------------------------------------------ one batch

    async def _decide_all(self, session: AsyncSession, sends: list[NurtureSend], now: datetime) -> Outcome:
        batch = await self.loader.load(session, sends, now)
        outcome = Outcome()
        for send in sends:
            enrolment = batch.enrolments.get(send.enrolment_id or 0)
            sequence = None if enrolment is None else batch.sequences[(enrolment.sequence, enrolment.version)]
            await self._decide(session, send, enrolment, sequence, batch, now, outcome)
        await batch.save_allowances(session)
        await session.flush()
        return outcome

    async def _decide(self, session: AsyncSession, send: NurtureSend, enrolment: Enrolment | None,
                      sequence: NurtureSequence | None, batch: Batch, now: datetime, outcome: Outcome) -> None:
        customer = batch.customers.get(send.customer_id)
        push = batch.pushes.get(send.push_id or 0)
        if customer is None or customer.merged_into_id is not None:
            return self._skip(session, send, enrolment, sequence, now, "customer merged into another", outcome)
        if enrolment is not None and sequence is not None:
            if enrolment.status != "active" and enrolment.status != "paused":
                return self._skip(session, send, None, None, now, f"enrolment {enrolment.status}", outcome)
            if enrolment.status == "paused" or enrolment.sequence in batch.paused:
                return self._defer(send, now + PAUSED_RECHECK, "paused", outcome)
            step = sequence.steps[send.step_index]
            text, marketing = step.say, sequence.marketing
            if step.exit and not text:
                self._finish(send, "skipped", "the sequence ends here", now, outcome)
                enrolment.status, enrolment.ended_at = "completed", now
                return None
            exit_reason = self._exit_reason(sequence, enrolment, customer.id, batch)
            if exit_reason:
                enrolment.status, enrolment.ended_at, enrolment.exit_reason = "exited", now, exit_reason
                return self._skip(session, send, None, None, now, f"exited: {exit_reason}", outcome)
            if not self._holds(step.when, customer, batch):
                return self._skip(session, send, enrolment, sequence, now, "condition not met", outcome)
        elif push is not None:
            if push.status == "cancelled":
                return self._skip(session, send, None, None, now, "cancelled", outcome)
            text, marketing = push.text, True
        else:
            return self._skip(session, send, None, None, now, "nothing to send", outcome)
        if marketing and customer.marketing_opt_out:
            if enrolment is not None:
                enrolment.status, enrolment.ended_at, enrolment.exit_reason = "exited", now, "unsubscribed"
            return self._skip(session, send, None, None, now, "unsubscribed", outcome)
        if customer.id in batch.handed_off:
            return self._defer(send, now + timedelta(seconds=self.settings.handoff_recheck_s), "handed off", outcome)
        morning = self._after_quiet(now)
        if morning is not None:
            return self._defer(send, morning, "quiet hours", outcome)
        count, oldest = batch.recent.get(customer.id, (0, now))
        if count >= self.settings.cap_per_day:
            return self._defer(send, oldest + CAP_WINDOW, "daily cap", outcome)
        return self._send(session, send, enrolment, sequence, customer, self._render(text, customer), batch, now,
                          outcome)

    def _send(self, session: AsyncSession, send: NurtureSend, enrolment: Enrolment | None,
              sequence: NurtureSequence | None, customer: Customer, text: str, batch: Batch, now: datetime,
              outcome: Outcome) -> None:
        """Through a channel that may deliver now (the send, its outbox row and the next step together);
        or waiting for the customer's next message; or skipped with the reason."""
        route = self._channel(customer, text, batch, now)
        source = "push" if send.push_id else "nurture"
        if route.call is None and route.no_quota:
            metrics.QUOTA_DECISIONS.labels(source, "deferred").inc()
            return self._defer(send, now + timedelta(seconds=self.settings.quota_recheck_s), NO_QUOTA, outcome)
        if route.call is None:
            return self._skip(session, send, enrolment, sequence, now, f"no channel: {route.why}", outcome)
        queue_call(session, f"nurture:{send.id}", route.call, customer.id, lane=Lane.MARKETING)
        count, oldest = batch.recent.get(customer.id, (0, now))
        batch.recent[customer.id] = (count + 1, min(oldest, now))
        if route.spends:
            batch.spend(customer.id, route.via, now)
        if route.via == "groupmsg":
            batch.group_messages[customer.id] = batch.group_messages.get(customer.id, 0) + 1
            if route.no_quota:
                metrics.QUOTA_DECISIONS.labels(source, "routed").inc()
        send.via = route.via
        self._finish(send, "sent", "", now, outcome)
        if enrolment is not None and sequence is not None:
            if sequence.steps[send.step_index].exit:
                enrolment.status, enrolment.ended_at = "completed", now
            else:
                schedule_step(session, enrolment, sequence, send.step_index + 1, now, self.zone)
        return None

    def _skip(self, session: AsyncSession, send: NurtureSend, enrolment: Enrolment | None,
              sequence: NurtureSequence | None, now: datetime, reason: str, outcome: Outcome) -> None:
        """Skipped with the reason; a sequence goes on with its next step."""
        self._finish(send, "skipped", reason, now, outcome)
        if enrolment is not None and sequence is not None and enrolment.status == "active":
            schedule_step(session, enrolment, sequence, send.step_index + 1, now, self.zone)

    @staticmethod
    def _finish(send: NurtureSend, status: str, reason: str, now: datetime, outcome: Outcome) -> None:
        send.status, send.reason = status, reason[:200]
        if status == "sent":
            send.sent_at = now
            outcome.sent += 1
        else:
            outcome.skipped += 1
            outcome.reasons[reason.split(":")[0]] += 1

    @staticmethod
    def _defer(send: NurtureSend, until: datetime, reason: str, outcome: Outcome) -> None:
        send.due_at, send.reason, send.deferrals = until, f"waiting: {reason}", send.deferrals + 1
        outcome.deferred += 1
        outcome.reasons[f"waiting: {reason}"] += 1

    # ------------------------------------------------------------ rules

    def _after_quiet(self, now: datetime) -> datetime | None:
        """When quiet hours end, if `now` is inside them (the window may cross midnight)."""
        local = now.astimezone(self.zone)
        start, end = (time.fromisoformat(t) for t in (self.settings.quiet_from, self.settings.quiet_until))
        clock = local.time()
        inside = (start <= clock or clock < end) if start > end else (start <= clock < end)
        if not inside:
            return None
        day = local.date() if clock < end else local.date() + timedelta(days=1)
        return datetime.combine(day, end, self.zone).astimezone(UTC)  # stored as UTC everywhere

    @staticmethod
    def _exit_reason(sequence: NurtureSequence, enrolment: Enrolment, customer_id: int, batch: Batch) -> str:
        """Exits known at send time: a rep took the customer, a group they are in filled."""
        if sequence.exits_on("handed_off") and customer_id in batch.handed_off:
            return "handed_off"
        filled = batch.groups_filled.get(customer_id)
        if sequence.exits_on("group_filled") and filled is not None and filled >= as_utc(enrolment.enrolled_at):
            return "group_filled"
        return ""

    @staticmethod
    def _holds(condition: Condition | None, customer: Customer, batch: Batch) -> bool:
        if condition is None:
            return True
        tags = batch.tags.get(customer.id, set())
        if any(tag not in tags for tag in condition.tags) or any(tag in tags for tag in condition.not_tags):
            return False
        if condition.stages and customer.stage not in condition.stages:
            return False
        if condition.social_min is not None and batch.social.get(customer.id, 0.0) < condition.social_min:
            return False
        slots = batch.slots.get(customer.id, {})
        return all(slots.get(name) == value for name, value in condition.slots.items())

    def _render(self, text: str, customer: Customer) -> str:
        return render(parse_template(text), {
            "customer.name": customer.display_name or "您", "customer.id": customer.id,
            "customer.stage": customer.stage, "customer.stage_label": self.lifecycle.label(customer.stage)})

    def _channel(self, customer: Customer, text: str, batch: Batch, now: datetime) -> Route:
        """The call that may deliver now: a kf or OA message in the 48-hour window while the customer's
        allowance has one left, else a rep's group message."""
        reach = customer.reach or {}
        call, why = notify_call(reach, text, self.agent_id, now=now.timestamp())
        channel = str(reach.get("channel", ""))
        spends = call is not None and self.budgets and call.kind in SPENDS_ALLOWANCE
        if call is not None and (not spends or batch.left(customer.id, channel, now) > 0):
            return Route(call, channel, spends=spends)
        no_quota = call is not None  # inside the window, nothing left: the customer's next message earns more
        external = batch.wecom_ids.get(customer.id)
        if not customer.owner_userid or external is None:
            return Route(None, why=why, no_quota=no_quota)
        if batch.group_messages.get(customer.id, 0) >= self.settings.group_messages_per_month:
            used = f"{why}; WeCom's {self.settings.group_messages_per_month} group messages this month used"
            return Route(None, why=used, no_quota=no_quota)
        payload = {"chat_type": "single", "external_userid": [external], "sender": customer.owner_userid,
                   "text": {"content": text}}
        return Route(OutboundCall(GROUP_MESSAGE, payload), "groupmsg", no_quota=no_quota)
