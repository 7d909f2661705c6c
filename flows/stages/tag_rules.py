"""Tag rules: "asked the price 3 times → 高意向" (flows/library/rules.yaml)."""

from __future__ import annotations

from crm_store import lifecycle as stages
from crm_store import tags
from crm_store.intent_counts import count_intent
from flows.pipeline import Next
from flows.turn import Turn

NOT_COUNTED = frozenset({"nlu_fallback", "out_of_scope"})


class TagRules:
    name = "tag_rules"

    def __init__(self, lifecycle: stages.Lifecycle) -> None:
        self.lifecycle = lifecycle

    async def __call__(self, turn: Turn, next: Next) -> None:
        await self._count(turn)
        await next()

    async def _count(self, turn: Turn) -> None:
        intent, customer, release = turn.intent, turn.customer, turn.release
        if intent is None or release is None or turn.event.kind != "message" or intent.name in NOT_COUNTED:
            return
        rules = [rule for rule in release.flows.rules if rule.intent == intent.name]
        if not rules:
            return
        count = await count_intent(turn.session, customer.id, intent.name)
        for rule in rules:
            if count != rule.count:
                continue
            cause = f"rule:{rule.id}"
            if rule.tag:
                added = await tags.add_tags(turn.session, customer, [rule.tag], cause)
                turn.signals.extend(("tag", name) for name in added)
            if rule.stage:
                try:
                    if await stages.set_stage(turn.session, customer, rule.stage, cause, self.lifecycle):
                        turn.signals.append(("stage", rule.stage))
                except stages.StageNotAllowed as exc:
                    turn.note("stage.refused", stage=rule.stage, reason=str(exc), rule=rule.id)
