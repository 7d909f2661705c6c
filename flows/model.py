"""Flows as typed, immutable objects: what the loader produces and the engine runs.

A flow has triggers (what starts it) and steps (what it does). Every step knows the
step that follows it (`next`, resolved by the loader: END when the flow is over), and
its source line, so the engine and the CLI can point admins at the YAML.

    Flow ─ triggers: IntentTrigger | TextTrigger | EventTrigger | StageTrigger | TagTrigger
                     | ExternalTrigger | FaqTrigger | MediaTrigger
         └ steps:    Say | Ask | Branch | TagStep | SetStage | Goto | Call | Wait
                     | Handoff | Marketing | Action | End
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, get_args

from core.content import MEDIA_KINDS, ContentKind
from core.events import LinkCard, MediaAttachment, MiniProgramCard
from core.templates import Template
from flows.faq_model import FaqBook

END = ""  # `next` of the last step: the flow (or sub-flow) is finished

# Events a flow can start on (InboundEvent.kind, plus the synthetic `timer`).
ENTRY_EVENTS = frozenset(
    {"enter_session", "contact_added", "subscribe", "scan", "unsubscribe", "contact_removed", "contact_lost"}
)
# Slots each hook fills, so templates after it may show them.
ACTION_OUTPUTS: dict[str, tuple[str, ...]] = {
    "group_buy.open": ("group_code", "group_link", "group_share", "group_size", "group_members", "group_deadline",
                       "group_price", "campaign_name", "group_refused"),
    "group_buy.join": ("group_code", "group_link", "group_share", "group_members", "group_size", "group_deadline",
                       "group_price", "campaign_name", "group_filled", "group_refused"),
    "group_buy.status": ("group_code", "group_members", "group_size", "group_deadline", "group_status",
                         "campaign_name", "group_share"),
    "invite.show": ("invite_code", "invite_link", "invite_share", "invite_friends"),
    "invite.claim": ("inviter_name", "invite_refused"),
    "group_invite": ("group_invite_qr", "group_invite_code", "group_invite_friends", "group_invite_name",
                     "group_invite_refused"),
    "sequence.enroll": (),
    "sequence.stop": (),
}
ACTIONS = frozenset(ACTION_OUTPUTS)
# What a `media:` trigger names → the content kinds (core/content.py) it takes. The flow words are
# short and few: `card` is WeChat's business_card, `channels` any 视频号 post, product or order.
CONTENT_NAMES: dict[str, frozenset[str]] = {
    "image": frozenset({"image"}),
    "voice": frozenset({"voice"}),
    "video": frozenset({"video"}),
    "file": frozenset({"file"}),
    "location": frozenset({"location"}),
    "link": frozenset({"link"}),
    "miniprogram": frozenset({"miniprogram"}),
    "card": frozenset({"business_card"}),
    "channels": frozenset({"channels", "channels_shop_product", "channels_shop_order"}),
    "merged": frozenset({"merged_msg"}),
    "any": frozenset(get_args(ContentKind)),  # whatever is not text, an unreadable part ("other") included
}
# A branch's `content:` may also ask for a plain text message.
CONDITION_CONTENT: dict[str, frozenset[str]] = {**CONTENT_NAMES, "text": frozenset({"text"})}
# Asks whose answer is a content part, not words → the content kinds each accepts.
MEDIA_EXPECTS: dict[str, frozenset[str]] = {
    "image": frozenset({"image"}),
    "voice": frozenset({"voice"}),
    "video": frozenset({"video"}),
    "file": frozenset({"file"}),
    "location": frozenset({"location"}),
    "media": MEDIA_KINDS,  # a photo, voice note, video or file
}
EXPECTS = frozenset({"text", "intent", "choice", "phone", "number", "email", *MEDIA_EXPECTS})
# Fields a template may show besides `slots.<name>`.
TEMPLATE_FIELDS = frozenset(
    {"customer.name", "customer.stage", "customer.stage_label", "customer.id", "event.code", "intent.name"}
)


# ---------------------------------------------------------------- triggers


@dataclass(frozen=True)
class IntentTrigger:
    intent: str
    min_confidence: float = 0.6
    line: int = 0


@dataclass(frozen=True)
class TextTrigger:
    """Keywords (any of them, after normalisation) or a regular expression (bounded in time)."""

    keywords: tuple[str, ...] = ()
    regex: str = ""
    line: int = 0


@dataclass(frozen=True)
class EventTrigger:
    """An entry event; `code_prefix` matches the code carried by the entry (scene_param, State, qrscene_)."""

    event: str
    channel: str = ""  # kf | contacts | oa; empty: any
    code_prefix: str = ""
    line: int = 0


@dataclass(frozen=True)
class StageTrigger:
    stage: str  # entered this stage
    line: int = 0


@dataclass(frozen=True)
class TagTrigger:
    tag: str  # this tag was added
    line: int = 0


@dataclass(frozen=True)
class ExternalTrigger:
    """An event another system reported (POST /api/v1/events), by name: order_shipped, coupon_used…"""

    name: str
    line: int = 0


@dataclass(frozen=True)
class FaqTrigger:
    """The flow takes over an FAQ entry (faq.yaml): a message the FAQ would answer with it starts the flow."""

    entry: str
    line: int = 0


@dataclass(frozen=True)
class MediaTrigger:
    """A message that carries a photo, a voice note, a location… and no words; `kinds` are CONTENT_NAMES.

    A message with words is read as text, even when it carries a part too (an OA voice note WeChat
    transcribed): its words go to the NLU and the text triggers, so `voice` takes only the voice notes
    nobody could read."""

    kinds: tuple[str, ...]
    line: int = 0


Trigger = (
    IntentTrigger | TextTrigger | EventTrigger | StageTrigger | TagTrigger | ExternalTrigger | FaqTrigger | MediaTrigger
)


def content_named(names: tuple[str, ...], content_kind: str) -> bool:
    """Does a message of `content_kind` ("text", "image", "business_card"…) fit one of the flow words `names`
    (a media trigger's kinds, a condition's content)?"""
    return any(content_kind in CONDITION_CONTENT.get(name, ()) for name in names)


# ---------------------------------------------------------------- steps


@dataclass(frozen=True)
class MenuChoice:
    """A kf `msgmenu` button (a numbered line on the OA); `goto` jumps to a step when chosen."""

    id: str
    text: str
    goto: str = ""


# Cards are what the channels send: the flow model uses the same types.
Link = LinkCard
MiniProgram = MiniProgramCard


@dataclass(frozen=True)
class Condition:
    """True when every given part holds; empty parts are ignored. `otherwise` cases have none."""

    intent: tuple[str, ...] = ()
    slot: str = ""  # slot name; with `equals` compared, without: must be filled
    equals: str | None = None
    tag: str = ""
    not_tag: str = ""
    stage: tuple[str, ...] = ()
    check: str = ""  # a predicate provided by a hook, e.g. group_buy.code_given
    social_min: float | None = None  # social value at least this (what the customer's friends brought)
    content: tuple[str, ...] = ()  # the turn's message is one of these (CONDITION_CONTENT: image, text, any…)


@dataclass(frozen=True)
class Case:
    when: Condition
    goto: str
    line: int = 0


@dataclass(frozen=True)
class Step:
    id: str
    next: str = END
    line: int = 0


@dataclass(frozen=True)
class Say(Step):
    text: Template = Template("")
    menu: tuple[MenuChoice, ...] = ()
    links: tuple[Link, ...] = ()
    miniprogram: MiniProgram | None = None
    media: MediaAttachment | None = None  # image:/file:/voice:/video:, sent as its own message after the text


@dataclass(frozen=True)
class Ask(Step):
    """Ask and wait for the answer; a wrong answer re-prompts up to `retries` times, then `on_fail`."""

    prompt: Template = Template("")
    expect: str = "text"
    slot: str = ""
    intents: tuple[str, ...] = ()  # expect: intent
    choices: tuple[MenuChoice, ...] = ()  # expect: choice (shown as a menu)
    retries: int = 2
    reprompt: Template = Template("")
    on_fail: str = END
    timeout_s: float = 0.0  # 0: the flow's inactivity timeout applies
    on_timeout: str = END


@dataclass(frozen=True)
class Branch(Step):
    cases: tuple[Case, ...] = ()
    otherwise: str = END


@dataclass(frozen=True)
class TagStep(Step):
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class SetStage(Step):
    stage: str = ""


@dataclass(frozen=True)
class Goto(Step):
    """Jump to a step of this flow, or hand the conversation to another flow (no return)."""

    step: str = ""
    flow: str = ""


@dataclass(frozen=True)
class Call(Step):
    """Run another flow as a sub-flow, then carry on with `next`."""

    flow: str = ""


@dataclass(frozen=True)
class Wait(Step):
    """Pause for `seconds`, or until the customer replies (`reply`), whichever comes first."""

    seconds: float = 0.0
    reply: bool = False
    on_reply: str = ""  # where a reply goes; empty: `next`


@dataclass(frozen=True)
class Handoff(Step):
    reason: str = ""
    message: Template = Template("")


@dataclass(frozen=True)
class Marketing(Step):
    """Stop (`subscribe: false`) or resume all marketing to the customer at once."""

    subscribe: bool = False


@dataclass(frozen=True)
class Action(Step):
    """A hook implemented elsewhere in the product (group-buy, invite, sequences)."""

    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.id, self.name))


@dataclass(frozen=True)
class End(Step):
    message: Template = Template("")


@dataclass(frozen=True)
class Flow:
    id: str
    steps: tuple[Step, ...]
    triggers: tuple[Trigger, ...] = ()
    description: str = ""
    priority: int = 50  # the higher, the stronger: a stronger trigger may interrupt a running flow
    interruptible: bool = True
    timeout_s: float = 1800.0  # inactivity after which the conversation ends
    slots: tuple[str, ...] = ()  # filled from the NLU's entities when the flow starts
    source_path: str = ""

    @property
    def first_step(self) -> str:
        return self.steps[0].id

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(f"flow {self.id!r} has no step {step_id!r}")


@dataclass(frozen=True)
class TagCatalog:
    """Tag groups and their tags, as the brand defines them (tags.yaml next to the flows)."""

    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def tags(self) -> frozenset[str]:
        return frozenset(tag for tags in self.groups.values() for tag in tags)

    def group_of(self, tag: str) -> str:
        return next((group for group, tags in self.groups.items() if tag in tags), "")

    def __hash__(self) -> int:
        return hash(tuple(sorted((group, tags) for group, tags in self.groups.items())))


@dataclass(frozen=True)
class TagRule:
    """"asked price 3 times → 高意向": counts an intent per customer and acts at the threshold."""

    id: str
    intent: str
    count: int
    tag: str = ""
    stage: str = ""
    line: int = 0


@dataclass(frozen=True)
class FlowSet:
    """Everything one release publishes: the flows, the tag catalog, the rules and the FAQ."""

    flows: dict[str, Flow]
    tags: TagCatalog = TagCatalog()
    rules: tuple[TagRule, ...] = ()
    faq: FaqBook = FaqBook()
    sources: dict[str, str] = field(default_factory=dict)  # file name -> YAML text, as published

    def __hash__(self) -> int:
        return id(self)
