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
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo

from core.sequences import NurtureSequence
from crm_store.enrolments import (
    EnrolError,
    SequenceCatalog,
    end_enrolments,
    enrol,
    mark_replied,
    running_enrolments,
)
from crm_store.models import utcnow
from flows.hooks import ActionResult, Hooks
from flows.turn import Turn

log = logging.getLogger("scrm.nurture")


class NurtureHooks:
    def __init__(self, timezone: str, purchase_stages: Sequence[str]) -> None:
        self.zone = ZoneInfo(timezone)
        self.purchase_stages = frozenset(purchase_stages)
        self.catalog = SequenceCatalog()

    def register(self, hooks: Hooks) -> Hooks:
        hooks.actions.update({"sequence.enroll": self.enroll_action, "sequence.stop": self.stop_action})
        return hooks

    async def enroll_action(self, turn: Turn, params: Mapping[str, Any]) -> ActionResult:
        name = str(params.get("sequence", ""))
        try:
            sequence, state = await self.catalog.current(turn.session, name)
        except EnrolError as exc:
            log.warning("nurture.enroll_refused customer=%s %s", turn.customer.id, exc)
            return ActionResult()
        await self._enrol(turn, sequence, state.current_version, "flow")
        return ActionResult()

    async def stop_action(self, turn: Turn, params: Mapping[str, Any]) -> ActionResult:
        name = params.get("sequence")
        await end_enrolments(turn.session, [turn.customer.id], "flow", [str(name)] if name else None)
        return ActionResult()

    async def signal(self, turn: Turn, kind: str, value: str) -> None:
        """A tag or a stage: exits first (a stage change ends what watched for one), then enrolments."""
        session, customer, facts = turn.session, turn.customer, turn.facts
        now = utcnow()
        none_running = facts is not None and not facts.running_enrolments  # not asked again
        for enrolment in [] if none_running else await running_enrolments(session, customer.id):
            sequence = await self.catalog.get(session, enrolment.sequence, enrolment.version)
            if kind == "stage" and value in self.purchase_stages and enrolment.converted_at is None:
                enrolment.converted_at = now
            reason = ("stage_changed" if kind == "stage" and sequence.exits_on("stage_changed") else
                      f"{kind}:{value}" if sequence.exits_on(kind, value) else "")
            if reason:
                await end_enrolments(session, [customer.id], reason, [enrolment.sequence], now)
        await self._enrol_on(turn, kind, value)

    async def arrival(self, turn: Turn) -> None:
        """A contact added through a channel code may enrol the customer in the sequences that watch for it."""
        if turn.event.kind == "contact_added" and turn.event.scene:
            await self._enrol_on(turn, "contact_added", turn.event.scene)

    async def replied(self, turn: Turn) -> None:
        """The customer wrote: recent sends count as replied; sequences that end on a reply end. What the
        turn's facts say is not there (no recent send, no running sequence) is not asked again."""
        now, facts = utcnow(), turn.facts
        if facts is None or facts.unreplied_sends:
            await mark_replied(turn.session, turn.customer.id, now)
        if facts is not None and not facts.running_enrolments:
            return
        for enrolment in await running_enrolments(turn.session, turn.customer.id):
            sequence = await self.catalog.get(turn.session, enrolment.sequence, enrolment.version)
            if sequence.exits_on("replied"):
                await end_enrolments(turn.session, [turn.customer.id], "replied", [enrolment.sequence], now)

    async def _enrol_on(self, turn: Turn, kind: str, value: str) -> None:
        for sequence, version in await self.catalog.live(turn.session):
            if any(k == kind and (v == value or (kind == "contact_added" and v == "any")) for k, v in sequence.enroll):
                await self._enrol(turn, sequence, version, f"{kind}:{value}")

    async def _enrol(self, turn: Turn, sequence: NurtureSequence, version: int, source: str) -> None:
        """Enrol the turn's customer; from here on the turn's facts say so (a later signal asks again)."""
        await enrol(turn.session, turn.customer.id, sequence, version, source, self.zone)
        if turn.facts is not None and not turn.facts.running_enrolments:
            turn.facts = replace(turn.facts, running_enrolments=True)
