"""Sequences in the conversation: `sequence.enroll` / `sequence.stop` steps, and enrolments and exits
on events (a tag added, a stage entered, a contact added through a channel code, a reply).

    - action: sequence.enroll
      params: {sequence: new_lead}
    - action: sequence.stop         # params: {sequence: new_lead}; without it, every sequence

Everything happens in the turn's transaction: an enrolment and its first pending send commit
with the reply that caused them, or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from zoneinfo import ZoneInfo

from crm_store.enrolments import (
    EnrolError,
    SequenceCatalog,
    end_enrolments,
    enrol,
    mark_replied,
    running_enrolments,
)
from crm_store.models import utcnow
from flows.hooks import ActionResult, ArrivalResult, HookCall, Hooks

log = logging.getLogger("scrm.nurture")

REPLY_WINDOW = timedelta(days=3)  # a message within this long after a send counts as a reply to it


class NurtureHooks:
    def __init__(self, timezone: str, purchase_stages: Sequence[str]) -> None:
        self.zone = ZoneInfo(timezone)
        self.purchase_stages = frozenset(purchase_stages)
        self.catalog = SequenceCatalog()

    def register(self, hooks: Hooks) -> Hooks:
        hooks.actions.update({"sequence.enroll": self.enroll_action, "sequence.stop": self.stop_action})
        hooks.signal_handlers.append(self.signal)
        hooks.message_handlers.append(self.replied)
        hooks.arrivals.append(self.arrival)
        return hooks

    async def enroll_action(self, call: HookCall) -> ActionResult:
        name = str(call.params.get("sequence", ""))
        try:
            sequence, state = await self.catalog.current(call.session, name)
        except EnrolError as exc:
            log.warning("nurture.enroll_refused customer=%s %s", call.customer.id, exc)
            return ActionResult()
        await enrol(call.session, call.customer.id, sequence, state.current_version, "flow", self.zone)
        return ActionResult()

    async def stop_action(self, call: HookCall) -> ActionResult:
        name = call.params.get("sequence")
        await end_enrolments(call.session, [call.customer.id], "flow", [str(name)] if name else None)
        return ActionResult()

    async def signal(self, call: HookCall, kind: str, value: str) -> None:
        """A tag or a stage: exits first (a stage change ends what watched for one), then enrolments."""
        session, customer = call.session, call.customer
        now = utcnow()
        for enrolment in await running_enrolments(session, customer.id):
            sequence = await self.catalog.get(session, enrolment.sequence, enrolment.version)
            if kind == "stage" and value in self.purchase_stages and enrolment.converted_at is None:
                enrolment.converted_at = now
            reason = ("stage_changed" if kind == "stage" and sequence.exits_on("stage_changed") else
                      f"{kind}:{value}" if sequence.exits_on(kind, value) else "")
            if reason:
                await end_enrolments(session, [customer.id], reason, [enrolment.sequence], now)
        await self._enrol_on(call, kind, value)

    async def arrival(self, call: HookCall) -> ArrivalResult:
        if call.event.kind == "contact_added" and call.event.scene:
            await self._enrol_on(call, "contact_added", call.event.scene)
        return ArrivalResult()

    async def replied(self, call: HookCall) -> None:
        now = utcnow()
        await mark_replied(call.session, call.customer.id, now, REPLY_WINDOW)
        for enrolment in await running_enrolments(call.session, call.customer.id):
            sequence = await self.catalog.get(call.session, enrolment.sequence, enrolment.version)
            if sequence.exits_on("replied"):
                await end_enrolments(call.session, [call.customer.id], "replied", [enrolment.sequence], now)

    async def _enrol_on(self, call: HookCall, kind: str, value: str) -> None:
        for sequence, version in await self.catalog.live(call.session):
            if any(k == kind and (v == value or (kind == "contact_added" and v == "any")) for k, v in sequence.enroll):
                await enrol(call.session, call.customer.id, sequence, version, f"{kind}:{value}", self.zone)
