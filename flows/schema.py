"""Step 1 of loading: the shape of a flow file, tags.yaml and rules.yaml, checked with line numbers.

faq.yaml's shape is in flows/faq.py, built from the parts defined here (LINK, MINIPROGRAM, TAG, ...).

Names that depend on other files or settings (steps, flows, tags, stages, intents,
actions, template fields) are only checked for shape here; step 3 resolves them.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.templates import TemplateError, parse_template
from flows.errors import Reporter
from flows.media_assets import MEDIA_KEYS, source_problem
from flows.model import CONDITION_CONTENT, CONTENT_NAMES, ENTRY_EVENTS, EXPECTS
from flows.patterns import PatternError, compile_pattern, normalise
from flows.spec import (
    AnyValue,
    Boolean,
    Duration,
    Either,
    Integer,
    ListOf,
    MapOf,
    Nullable,
    Number,
    OneOf,
    OneOrList,
    Record,
    Rule,
    Spec,
    Tagged,
    Text,
)
from flows.yaml_source import Node

ID_PATTERN = r"[a-z][a-z0-9_]{0,63}"
FAQ_ID_PATTERN = r"[a-z][a-z0-9_]{0,39}"  # shorter: it becomes Rasa's retrieval intent `faq/<id>`
_ID_WHAT = "an id (lowercase letters, digits and _, starting with a letter)"


def _template_problem(text: str) -> str | None:
    try:
        parse_template(text)
    except TemplateError as exc:
        return str(exc)
    return None


def _regex_problem(text: str) -> str | None:
    try:
        compile_pattern(text)
    except PatternError as exc:
        return str(exc)
    return None


def _keyword_problem(text: str) -> str | None:
    return None if normalise(text) else f"keyword {text!r} is empty once normalised"


ID = Text(what=_ID_WHAT, pattern=ID_PATTERN)
STEP_REF = Text(what=f"a step id ({_ID_WHAT[6:]}", pattern=ID_PATTERN)
FLOW_REF = Text(what=f"a flow id ({_ID_WHAT[6:]}", pattern=ID_PATTERN)
SLOT = Text(what=f"a slot name ({_ID_WHAT[6:]}", pattern=ID_PATTERN)
FAQ_ID = Text(what=f"an FAQ entry id {_ID_WHAT[6:-1]}; at most 40 characters)", pattern=FAQ_ID_PATTERN)
NAME = Text(what="a name", max_len=64)
TAG = Text(what="a tag name", max_len=32)
STAGE = Text(what="a stage id or label", max_len=32)
INTENT = Text(what="an intent name", pattern=r"[A-Za-z_][A-Za-z0-9_]{0,63}")
TEMPLATE = Text(what="text", max_len=2000, validate=_template_problem)
DURATION = Duration()


def _present(node: Node, *keys: str) -> list[str]:
    return [key for key in keys if key in node.mapping]


def _exactly_one(*keys: str) -> Rule:
    def rule(node: Node, report: Reporter) -> None:
        if len(_present(node, *keys)) != 1:
            report.error(node.line, f"give exactly one of: {', '.join(keys)}")

    return rule


def _at_most_one(*keys: str) -> Rule:
    def rule(node: Node, report: Reporter) -> None:
        present = _present(node, *keys)
        if len(present) > 1:
            report.error(node.key_lines[present[1]], f"one of {', '.join(keys)} per step: give {present[1]} a step "
                                                     "of its own")

    return rule


def _branch_rules(node: Node, report: Reporter) -> None:
    cases = node.mapping["branch"].items if "branch" in node.mapping else []
    if "next" in node.mapping and any("else" in case.mapping for case in cases):
        report.error(
            node.key_lines["next"],
            "a branch with an else case has no next: when no case holds it goes to else",
        )


def _needs(key: str, other: str) -> Rule:
    def rule(node: Node, report: Reporter) -> None:
        if other in node.mapping and key not in node.mapping:
            report.error(node.key_lines[other], f"'{other}' needs '{key}'")

    return rule


def _ask_rules(node: Node, report: Reporter) -> None:
    expect = node.get("expect")
    expect_text = expect.text if expect else "text"
    for key, kind in (("intents", "intent"), ("choices", "choice")):
        if expect_text == kind and key not in node.mapping:
            report.error(node.line, f"an ask with expect: {kind} needs '{key}'")
        if key in node.mapping and expect_text != kind:
            report.error(node.key_lines[key], f"'{key}' only goes with expect: {kind}")


def _condition_not_empty(node: Node, report: Reporter) -> None:
    if not node.mapping:
        report.error(node.line, "empty condition: use `else: step` for the case that always holds")


def _wait_rules(node: Node, report: Reporter) -> None:
    if len(_present(node, "seconds", "for")) > 1:
        report.error(node.line, "give 'seconds' or 'for', not both")
    reply = node.get("reply")
    if (
        not _present(node, "seconds", "for")
        and not (reply and reply.value is True)
        and "on_reply" not in node.mapping
    ):
        report.error(node.line, "a wait needs a duration ('for' or 'seconds'), 'reply: true' or 'on_reply'")


def _case_rules(node: Node, report: Reporter) -> None:
    if "else" in node.mapping:
        if _present(node, "when", "goto"):
            report.error(node.line, "a case is either {when: ..., goto: step} or {else: step}")
    elif _present(node, "when", "goto") != ["when", "goto"]:
        report.error(node.line, "a case needs 'when' and 'goto' (or is {else: step})")


def _else_last(node: Node, report: Reporter) -> None:
    for index, case in enumerate(node.items):
        if "else" in case.mapping and index != len(node.items) - 1:
            report.error(case.line, "'else' must be the last case")


def _step(kind: str, spec: Spec, *rules: Rule, goes_on: bool = True, **extra: Spec) -> Record:
    fields: dict[str, Spec] = {kind: spec, "id": ID, **({"next": STEP_REF} if goes_on else {}), **extra}
    return Record(fields, what=f"a {kind} step", rules=rules)


CHOICE = Record({"id": NAME, "text": Text(max_len=128), "goto": STEP_REF}, ("id", "text"), "a choice")
LINK = Record(
    {
        "title": Text(max_len=128),
        "url": Text(what="a URL (https://...)", pattern=r"https?://\S+"),
        "desc": Text(max_len=512),
    },
    ("title", "url"),
    "a link",
)
MINIPROGRAM = Record(
    {"appid": NAME, "pagepath": Text(max_len=256), "title": Text(max_len=128), "thumb_media_id": NAME},
    ("appid", "pagepath", "title"),
    "a miniprogram",
)
# A say step's image:/file:/voice:/video: a file of the flow directory or an https URL (flows/media_assets.py).
MEDIA_SOURCE = {kind: Text(what=f"a {kind}: a path in the flow directory or an https URL", max_len=1000,
                           validate=source_problem(kind)) for kind in MEDIA_KEYS}
CONDITION = Record(
    {
        "intent": OneOrList(INTENT),
        "slot": SLOT,
        "equals": Text(max_len=256),
        "tag": TAG,
        "not_tag": TAG,
        "stage": OneOrList(STAGE),
        "check": Text(what="a check name", pattern=r"[a-z][a-z0-9_.]{0,63}"),
        "social_min": Number(0, 1_000_000_000, what="a social value"),
        "content": OneOrList(OneOf(tuple(CONDITION_CONTENT), "content kind")),
    },
    what="a condition",
    rules=(_condition_not_empty, _needs("slot", "equals")),
)
CASE = Record({"when": CONDITION, "goto": STEP_REF, "else": STEP_REF}, what="a case", rules=(_case_rules,))


@dataclass(frozen=True)
class _Cases(ListOf):
    def check(self, node: Node, report: Reporter) -> None:
        super().check(node, report)
        _else_last(node, report)


TAG_STEP = _step("tag", OneOrList(TAG), untag=OneOrList(TAG))
STEP_VARIANTS: dict[str, Record] = {
    "say": _step(
        "say",
        TEMPLATE,
        _at_most_one(*MEDIA_KEYS),
        menu=ListOf(CHOICE, 1, 10, "choices"),
        links=ListOf(LINK, 1, 8, "links"),
        miniprogram=MINIPROGRAM,
        image=MEDIA_SOURCE["image"],
        file=MEDIA_SOURCE["file"],
        voice=MEDIA_SOURCE["voice"],
        video=MEDIA_SOURCE["video"],
    ),
    "ask": _step(
        "ask",
        TEMPLATE,
        _ask_rules,
        _needs("timeout", "on_timeout"),
        expect=OneOf(tuple(sorted(EXPECTS)), "expect"),
        slot=SLOT,
        intents=ListOf(INTENT, 1, 50, "intents"),
        choices=ListOf(CHOICE, 1, 10, "choices"),
        retries=Integer(0, 5),
        reprompt=TEMPLATE,
        on_fail=STEP_REF,
        timeout=DURATION,
        on_timeout=STEP_REF,
    ),
    "branch": _step("branch", _Cases(CASE, 1, 50, "cases"), _branch_rules),
    "tag": TAG_STEP,
    "untag": TAG_STEP,
    "set_stage": _step("set_stage", STAGE),
    "goto": _step(
        "goto",
        Either(
            (
                STEP_REF,
                Record(
                    {"flow": FLOW_REF, "step": STEP_REF},
                    what="a goto target",
                    rules=(_exactly_one("flow", "step"),),
                ),
            )
        ),
        goes_on=False,
    ),
    "call": _step("call", FLOW_REF),
    "wait": _step(
        "wait",
        Either(
            (
                DURATION,
                Record(
                    {"seconds": DURATION, "for": DURATION, "reply": Boolean(), "on_reply": STEP_REF},
                    what="a wait",
                    rules=(_wait_rules,),
                ),
            )
        ),
    ),
    "handoff": _step(
        "handoff", Either((Nullable(NAME), Record({"reason": NAME, "message": TEMPLATE}, what="a handoff")))
    ),
    "marketing": _step("marketing", OneOf(("stop", "resume"), "marketing choice")),
    "action": _step(
        "action",
        Text(what="an action name", pattern=r"[a-z][a-z0-9_.]{0,63}"),
        params=MapOf(NAME, AnyValue()),
    ),
    "end": _step("end", Nullable(TEMPLATE), goes_on=False),
}
_STEP_KEYS = frozenset(key for record in STEP_VARIANTS.values() for key in record.fields)
STEP = Tagged(STEP_VARIANTS, "a step", "step type", known_keys=_STEP_KEYS)


def step_name(index: int, node: Node) -> str:
    """The id a step is known by: its own, or "step<N>" (1-based)."""
    given = node.get("id")
    return given.text if given is not None and given.text else f"step{index + 1}"


@dataclass(frozen=True)
class _Steps(ListOf):
    def check_item(self, index: int, item: Node, report: Reporter) -> None:
        self.item.check(item, report.at(step=step_name(index, item)))


TRIGGER_VARIANTS: dict[str, Record] = {
    "intent": Record({"intent": INTENT, "min_confidence": Number(0, 1)}, what="an intent trigger"),
    "keywords": Record(
        {"keywords": ListOf(Text(max_len=64, validate=_keyword_problem), 1, 100, "keywords")},
        what="a keywords trigger",
    ),
    "regex": Record({"regex": Text(max_len=500, validate=_regex_problem)}, what="a regex trigger"),
    "event": Record(
        {
            "event": OneOf(tuple(sorted(ENTRY_EVENTS)), "event"),
            "channel": OneOf(("kf", "contacts", "oa"), "channel"),
            "code": Text(max_len=64),
        },
        what="an event trigger",
    ),
    "stage": Record({"stage": STAGE}, what="a stage trigger"),
    "tag": Record({"tag": TAG}, what="a tag trigger"),
    "external": Record({"external": ID}, what="an external event trigger (POST /api/v1/events)"),
    "faq": Record({"faq": FAQ_ID}, what="an FAQ trigger (an entry of faq.yaml this flow takes over)"),
    "media": Record(
        {"media": OneOrList(OneOf(tuple(CONTENT_NAMES), "media kind"))},
        what="a media trigger (a photo, voice note, location… without words)",
    ),
}
_TRIGGER_KEYS = frozenset(key for record in TRIGGER_VARIANTS.values() for key in record.fields)
TRIGGER = Tagged(TRIGGER_VARIANTS, "a trigger", "trigger type", known_keys=_TRIGGER_KEYS)

FLOW = Record(
    {
        "flow": ID,
        "description": Text(max_len=500),
        "priority": Integer(0, 100),
        "interruptible": Boolean(),
        "timeout": DURATION,
        "slots": ListOf(SLOT, 0, 50, "slot names"),
        "triggers": ListOf(TRIGGER, 0, 50, "triggers"),
        "steps": _Steps(STEP, 1, 500, "steps"),
    },
    ("flow", "steps"),
    "a flow",
)


def _tags_unique(node: Node, report: Reporter) -> None:
    groups = node.get("groups")
    seen: dict[str, str] = {}
    for group, tags in (groups.mapping if groups else {}).items():
        for tag in tags.items:
            if tag.text in seen:
                report.error(
                    tag.line, f"tag '{tag.text}' is listed twice (group {seen[tag.text]} and {group})"
                )
            seen.setdefault(tag.text, group)


def _rule_acts(node: Node, report: Reporter) -> None:
    if not _present(node, "tag", "set_stage"):
        report.error(node.line, "a rule needs 'tag', 'set_stage' or both")


TAGS_FILE = Record(
    {"groups": MapOf(Text(what="a group name", max_len=32), ListOf(TAG, 1, 500, "tags"))},
    ("groups",),
    "tags.yaml",
    (_tags_unique,),
)
RULE = Record(
    {
        "id": ID,
        "when": Record({"intent": INTENT, "count": Integer(1, 1000)}, ("intent", "count"), "a rule's when"),
        "tag": TAG,
        "set_stage": STAGE,
    },
    ("id", "when"),
    "a rule",
    (_rule_acts,),
)
RULES_FILE = Record({"rules": ListOf(RULE, 0, 500, "rules")}, ("rules",), "rules.yaml")


def check_file(name: str, tree: Node, report: Reporter) -> None:
    """Step 1 for one parsed file: tags.yaml, rules.yaml, or a flow."""
    if name == "tags.yaml":
        return TAGS_FILE.check(tree, report)
    if name == "rules.yaml":
        return RULES_FILE.check(tree, report)
    flow_id = tree.get("flow")
    FLOW.check(tree, report.at(flow=flow_id.text if flow_id is not None else ""))
