"""Sends what sequences and pushes owe customers, politely, exactly once, on any number of processes.

APScheduler is only the clock. Each run claims due sends (`FOR UPDATE SKIP LOCKED`, a batch
per transaction) and decides each one in memory from data loaded once per batch:

    enrolment ended or sequence paused → skip / wait      unsubscribed → skip, exit
    a rep has the customer → wait                         step condition false → skip, next step
    quiet hours → wait for the morning                    daily cap reached → wait until it frees
    a channel that may deliver now: kf or OA inside the 48-hour window, else a WeCom group-message
    task for the owning rep (monthly limit) → outbox row; none → skip with the reason

The send's new status, its outbox row and the next step's pending send commit together, so a
crash (even SIGKILL) redoes a whole batch or none of it, and two processes never take the same
row. The outbox sender paces the API calls and backs off on 45009.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.delivery import OutboundCall, notify_call, queue_call
from bot.jobs import every
from core.sequences import Condition, NurtureSequence
from core.templates import parse_template, render
from crm_store.enrolments import SequenceCatalog, schedule_step
from crm_store.growth_models import GroupBuy, GroupMember, SocialStats
from crm_store.handoff_models import OPEN_STATUSES, Handoff
from crm_store.lifecycle import Lifecycle
from crm_store.models import Conversation, Customer, CustomerTag, Identity, Tag, as_utc, utcnow
from crm_store.nurture_models import Enrolment, NurtureSend, Push, SequenceState
from crm_store.nurture_settings import NurtureSettings

log = logging.getLogger("scrm.nurture")

GROUP_MESSAGE = "contacts.add_msg_template"
PAUSED_RECHECK = timedelta(minutes=15)
CAP_WINDOW = timedelta(hours=24)


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


@dataclass
class Batch:
    """What the decisions of one batch read, loaded with one query each."""

    customers: dict[int, Customer]
    enrolments: dict[int, Enrolment]
    pushes: dict[int, Push]
    paused: set[str]
    handed_off: set[int]
    recent: dict[int, tuple[int, datetime]]  # marketing sent in the cap window: count, oldest
    group_messages: dict[int, int]  # this month, brand time
    tags: dict[int, set[str]]
    social: dict[int, float]
    slots: dict[int, dict[str, str]]
    wecom_ids: dict[int, str]
    groups_filled: dict[int, datetime]  # the customer's latest filled group-buy
    sequences: dict[tuple[str, int], NurtureSequence]  # (name, version) of the batch's enrolments


class NurtureDispatcher:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: NurtureSettings, lifecycle: Lifecycle,
                 agent_id: int = 0) -> None:
        self.sessions = sessions
        self.settings = settings
        self.lifecycle = lifecycle
        self.agent_id = agent_id
        self.zone = ZoneInfo(settings.timezone)
        self.catalog = SequenceCatalog()
        self.on_outbox = lambda: None

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
        batch = await self._load(session, sends, now)
        outcome = Outcome()
        for send in sends:
            enrolment = batch.enrolments.get(send.enrolment_id or 0)
            sequence = None if enrolment is None else batch.sequences[(enrolment.sequence, enrolment.version)]
            await self._decide(session, send, enrolment, sequence, batch, now, outcome)
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
        call, via, why = self._channel(customer, self._render(text, customer), batch, now)
        if call is None:
            return self._skip(session, send, enrolment, sequence, now, f"no channel: {why}", outcome)
        queue_call(session, f"nurture:{send.id}", call, customer.id)
        batch.recent[customer.id] = (count + 1, min(oldest, now))
        if via == "groupmsg":
            batch.group_messages[customer.id] = batch.group_messages.get(customer.id, 0) + 1
        send.via = via
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

    def _channel(self, customer: Customer, text: str, batch: Batch, now: datetime
                 ) -> tuple[OutboundCall | None, str, str]:
        """The call that may deliver now: a kf or OA message in the 48-hour window, else a rep's group message."""
        call, why = notify_call(customer.reach or {}, text, self.agent_id, now=now.timestamp())
        if call is not None:
            return call, str((customer.reach or {}).get("channel", "")), ""
        external = batch.wecom_ids.get(customer.id)
        if not customer.owner_userid or external is None:
            return None, "", why
        if batch.group_messages.get(customer.id, 0) >= self.settings.group_messages_per_month:
            return None, "", f"{why}; WeCom's {self.settings.group_messages_per_month} group messages this month used"
        payload = {"chat_type": "single", "external_userid": [external], "sender": customer.owner_userid,
                   "text": {"content": text}}
        return OutboundCall(GROUP_MESSAGE, payload), "groupmsg", ""

    # ------------------------------------------------------------ loading

    async def _load(self, session: AsyncSession, sends: list[NurtureSend], now: datetime) -> Batch:
        """One query per kind of fact, and only for the customers whose decision can need it."""
        ids = list({send.customer_id for send in sends})
        enrolment_ids = [send.enrolment_id for send in sends if send.enrolment_id]
        push_ids = list({send.push_id for send in sends if send.push_id})
        customers = {c.id: c for c in await session.scalars(select(Customer).where(Customer.id.in_(ids)))}
        enrolments = {e.id: e for e in await session.scalars(select(Enrolment).where(Enrolment.id.in_(enrolment_ids)))}
        pushes = {p.id: p for p in await session.scalars(select(Push).where(Push.id.in_(push_ids)))} if push_ids else {}
        sequences = {key: await self.catalog.get(session, *key)
                     for key in {(e.sequence, e.version) for e in enrolments.values()}}
        paused = set(await session.scalars(select(SequenceState.name).where(SequenceState.paused.is_(True))))
        handed_off = set(await session.scalars(select(Handoff.customer_id).where(
            Handoff.customer_id.in_(ids), Handoff.status.in_(OPEN_STATUSES))))
        recent = {cid: (int(n), as_utc(oldest) if oldest else now) for cid, n, oldest in await session.execute(
            select(NurtureSend.customer_id, func.count(), func.min(NurtureSend.sent_at))
            .where(NurtureSend.customer_id.in_(ids), NurtureSend.status == "sent",
                   NurtureSend.sent_at > now - CAP_WINDOW)
            .group_by(NurtureSend.customer_id))}
        conditions: dict[int, Condition] = {}
        filled_watch: list[int] = []
        for send in sends:
            enrolment = enrolments.get(send.enrolment_id or 0)
            if enrolment is None:
                continue
            sequence = sequences[(enrolment.sequence, enrolment.version)]
            when = sequence.steps[send.step_index].when if send.step_index < len(sequence.steps) else None
            if when is not None:
                conditions[send.customer_id] = when
            if sequence.exits_on("group_filled"):
                filled_watch.append(send.customer_id)
        unreachable = [cid for cid, c in customers.items() if notify_call(c.reach or {}, "", now=now.timestamp())[0]
                       is None]
        return Batch(customers, enrolments, pushes, paused, handed_off, recent,
                     await self._group_messages(session, unreachable, now), *await self._facts(session, conditions),
                     await self._wecom_ids(session, unreachable), await self._groups_filled(session, filled_watch),
                     sequences)

    async def _facts(self, session: AsyncSession, conditions: dict[int, Condition]
                     ) -> tuple[dict[int, set[str]], dict[int, float], dict[int, dict[str, str]]]:
        """Tags, social scores and slots, for the customers whose step has a condition on them."""
        tags: dict[int, set[str]] = defaultdict(set)
        social: dict[int, float] = {}
        slots: dict[int, dict[str, str]] = {}
        need = {kind: [cid for cid, c in conditions.items() if test(c)] for kind, test in (
            ("tags", lambda c: bool(c.tags or c.not_tags)), ("social", lambda c: c.social_min is not None),
            ("slots", lambda c: bool(c.slots)))}
        if need["tags"]:
            for cid, name in await session.execute(select(CustomerTag.customer_id, Tag.name).join(Tag)
                                                   .where(CustomerTag.customer_id.in_(need["tags"]))):
                tags[cid].add(name)
        if need["social"]:
            social = {cid: float(score) for cid, score in await session.execute(
                select(SocialStats.customer_id, SocialStats.score).where(SocialStats.customer_id.in_(need["social"])))}
        if need["slots"]:
            for cid, values in await session.execute(
                    select(Conversation.customer_id, Conversation.slots)
                    .where(Conversation.customer_id.in_(need["slots"])).order_by(Conversation.id)):
                slots[cid] = {**slots.get(cid, {}), **(values or {})}  # the latest conversation's slots win
        return dict(tags), social, slots

    async def _group_messages(self, session: AsyncSession, ids: list[int], now: datetime) -> dict[int, int]:
        """Group messages each customer got this month (brand time): WeCom's monthly limit."""
        if not ids:
            return {}
        month = datetime.combine(now.astimezone(self.zone).date().replace(day=1), time(), self.zone)
        return {cid: int(n) for cid, n in await session.execute(
            select(NurtureSend.customer_id, func.count())
            .where(NurtureSend.customer_id.in_(ids), NurtureSend.status == "sent", NurtureSend.via == "groupmsg",
                   NurtureSend.sent_at >= month)
            .group_by(NurtureSend.customer_id))}

    @staticmethod
    async def _wecom_ids(session: AsyncSession, ids: list[int]) -> dict[int, str]:
        if not ids:
            return {}
        return {cid: ext for cid, ext in await session.execute(
            select(Identity.customer_id, Identity.external_id).where(Identity.customer_id.in_(ids),
                                                                     Identity.kind == "wecom"))}

    @staticmethod
    async def _groups_filled(session: AsyncSession, ids: list[int]) -> dict[int, datetime]:
        if not ids:
            return {}
        return {cid: as_utc(at) for cid, at in await session.execute(
            select(GroupMember.customer_id, func.max(GroupBuy.closed_at))
            .join(GroupBuy, GroupBuy.id == GroupMember.group_id)
            .where(GroupMember.customer_id.in_(ids), GroupBuy.status == "filled").group_by(GroupMember.customer_id))
            if at is not None}
