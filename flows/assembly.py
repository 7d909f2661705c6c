"""The conversation layer, assembled once from settings: the pipeline of a turn and the parts it is made of.

The worker, the waker, the HTTP API and the scheduler's jobs all use the one `Domain` the
runtime builds (bot/runtime.py): one lifecycle, one set of hooks, one pipeline object.

The order of a turn's stages, written once:

    identity        a new customer starts at the first stage
    release         the published flows (none: the built-in responder answers, and the turn ends)
    handoff_gate    a person has the customer: the bot says nothing, and the turn ends
    lifecycle       leaving (the turn ends) / arriving: owner, return from churn; the running flow loaded
    growth_arrival  a channel, invite or group code on arrival: attribution, welcome flow, enrolments
    nurture_reply   a message answers the last sequence step
    intent          what the message means: Rasa only when the answer matters (not for a typed answer
                    to the waiting step, nor while a person has the customer)
    tag_rules       intent counts: "asked the price 3 times → 高意向"
    flow_runner     resume, interrupt, start or fall back; a timer wakes its conversation
    signals         tags and stages the turn changed: sequences, referrals, rewards, flows they start
    handoff_after   does the turn call for a person? then the desk hands the customer over
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from crm_store.growth_settings import GrowthSettings
from crm_store.handoff_settings import HandoffSettings
from crm_store.lifecycle import Lifecycle
from crm_store.lifecycle_settings import LifecycleSettings
from crm_store.nurture_settings import NurtureSettings
from flows import growth_hooks
from flows.engine import FlowEngine
from flows.faq_answers import FaqAnswerer
from flows.faq_model import FaqBook
from flows.group_fission import PersonalGroupCodes
from flows.group_joins import GroupJoins
from flows.growth import Growth
from flows.handoff_desk import HandoffDesk
from flows.hooks import Hooks
from flows.nurture_hooks import NurtureHooks
from flows.pipeline import Pipeline
from flows.releases import ReleaseCache
from flows.runner import Runner
from flows.settings import FlowSettings
from flows.stages.flow_runner import FlowRunner
from flows.stages.growth_arrival import GrowthArrival
from flows.stages.handoff_after import HandoffAfter
from flows.stages.handoff_gate import HandoffGate
from flows.stages.identity import IdentityStage
from flows.stages.intent import IntentParser, IntentStage
from flows.stages.lifecycle import LifecycleStage
from flows.stages.nurture_reply import NurtureReply
from flows.stages.release import ReleaseStage
from flows.stages.signals import SignalFollower
from flows.stages.tag_rules import TagRules


@dataclass(frozen=True)
class Domain:
    lifecycle: Lifecycle
    growth: Growth
    nurture: NurtureHooks
    desk: HandoffDesk
    hooks: Hooks
    engine: FlowEngine
    signals: SignalFollower
    pipeline: Pipeline
    group_joins: GroupJoins  # the join hook of customer groups: live codes' tags, group fission


def assemble(
    flows: FlowSettings,
    lifecycle_settings: LifecycleSettings,
    growth_settings: GrowthSettings,
    handoff: HandoffSettings,
    nurture_settings: NurtureSettings,
    nlu: IntentParser,
    media_link: Callable[[int], str] | None = None,
    personal_group_codes: PersonalGroupCodes | None = None,
) -> Domain:
    """`media_link`: a stored media item's id -> a signed link, for reps' cards (bot/media_links.py);
    `personal_group_codes`: makes customers' personal group invites (bot/group_join_ways.py)."""
    lifecycle = Lifecycle(lifecycle_settings)
    growth = Growth(growth_settings, lifecycle)
    nurture = NurtureHooks(nurture_settings.timezone, growth_settings.purchase_stages)
    hooks = nurture.register(growth_hooks.register(Hooks(), growth, personal_group_codes))
    desk = HandoffDesk(handoff, lifecycle, media_link)
    engine = FlowEngine(flows, ReleaseCache(lifecycle_settings), Runner(hooks, flows.max_steps_per_turn, lifecycle),
                        FaqAnswerer(flows, lifecycle))
    signals = SignalFollower(engine, growth, nurture)
    intent = IntentStage(nlu, engine)
    pipeline = Pipeline([
        IdentityStage(lifecycle),
        ReleaseStage(engine.releases, intent.understand, _faq_follower(nlu)),
        HandoffGate(desk),
        LifecycleStage(lifecycle, engine),
        GrowthArrival(growth, nurture),
        NurtureReply(nurture),
        intent,
        TagRules(lifecycle),
        FlowRunner(engine),
        signals,
        HandoffAfter(desk),
    ])
    return Domain(lifecycle, growth, nurture, desk, hooks, engine, signals, pipeline, GroupJoins(growth))


def _faq_follower(nlu: IntentParser) -> Callable[[FaqBook], None] | None:
    """Give the NLU's keyword rules a newly published FAQ (a parser without FAQ rules needs nothing)."""
    set_faq = getattr(nlu, "set_faq", None)
    if set_faq is None:
        return None

    def follow(book: FaqBook) -> None:
        set_faq(book.training_rows(), {entry.id: entry.title for entry in book.entries.values()})

    return follow
