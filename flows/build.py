"""Step 2 of loading: nodes that passed the schema → the frozen objects of flows/model.py.

Each step's `next` is resolved here (the following step, END after the last; goto
and end steps have none); ask's on_fail and on_timeout default to END; a branch's
otherwise defaults to its next. Stage labels become ids, keywords their normal form.
Every name that another file or the settings must know (steps, flows, tags,
stages, intents, actions, template fields) is recorded as a `Ref` with its line,
for step 3 to resolve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.events import MediaAttachment
from core.templates import Template, parse_template
from crm_store.lifecycle_settings import LifecycleSettings
from flows.media_assets import MEDIA_KEYS, is_url
from flows.model import (
    END,
    Action,
    Ask,
    Branch,
    Call,
    Case,
    Condition,
    End,
    EventTrigger,
    ExternalTrigger,
    FaqTrigger,
    Flow,
    Goto,
    Handoff,
    IntentTrigger,
    Link,
    Marketing,
    MediaTrigger,
    MenuChoice,
    MiniProgram,
    Say,
    SetStage,
    StageTrigger,
    Step,
    TagCatalog,
    TagRule,
    TagStep,
    TagTrigger,
    TextTrigger,
    Trigger,
    Wait,
)
from flows.patterns import normalise
from flows.schema import step_name
from flows.spec import parse_duration
from flows.yaml_source import Node


@dataclass(frozen=True)
class Ref:
    """A name used at `line` that step 3 must find.

    kind: step, flow, tag, stage, intent, action, faq (an entry of faq.yaml), field (of a template) or asset
    (a say step's media file, `where` its kind).
    """

    kind: str
    name: str
    line: int
    step: str = ""
    where: str = ""  # the key it came from, for messages: "next", "on_fail", "trigger", ...


@dataclass
class Draft:
    """One built file: a flow (or the rules) with the names it uses and the slots it declares."""

    file: str
    flow: Flow | None = None
    line: int = 0  # of the flow id
    rules: tuple[TagRule, ...] = ()
    refs: list[Ref] = field(default_factory=list)
    declared_slots: tuple[str, ...] = ()


def stage_id(lifecycle: LifecycleSettings, name: str) -> str | None:
    """The stage id for an id or a label; None when it is neither."""
    return next((stage.id for stage in lifecycle.stages if name in (stage.id, stage.label)), None)


def _many(node: Node | None) -> tuple[str, ...]:
    if node is None:
        return ()
    return tuple(item.text for item in node.items) if node.kind == "seq" else (node.text,)


def _text(node: Node | None, default: str = "") -> str:
    return node.text if node is not None and node.value is not None else default


class _Builder:
    """Builds one flow; `ref()` records names for step 3 under the current step."""

    def __init__(self, draft: Draft, lifecycle: LifecycleSettings) -> None:
        self.draft = draft
        self.lifecycle = lifecycle
        self.step = ""

    def ref(self, kind: str, node: Node | None, where: str, name: str | None = None) -> str:
        if node is None:
            return ""
        value = node.text if name is None else name
        self.draft.refs.append(Ref(kind, value, node.line, self.step, where))
        return value

    def stage(self, node: Node, where: str) -> str:
        self.ref("stage", node, where)
        return stage_id(self.lifecycle, node.text) or node.text

    def template(self, node: Node | None, where: str) -> Template:
        if node is None or node.value is None:
            return Template("")
        template = parse_template(node.text)
        for name in template.fields:
            self.ref("field", node, where, name)
        return template

    def condition(self, node: Node) -> Condition:
        for intent in _nodes(node.get("intent")):
            self.ref("intent", intent, "when")
        for key in ("tag", "not_tag"):
            self.ref("tag", node.get(key), "when")
        equals = node.get("equals")
        return Condition(
            intent=_many(node.get("intent")),
            slot=_text(node.get("slot")),
            equals=equals.text if equals is not None else None,
            tag=_text(node.get("tag")),
            not_tag=_text(node.get("not_tag")),
            stage=tuple(self.stage(stage, "when") for stage in _nodes(node.get("stage"))),
            check=_text(node.get("check")),
            social_min=_value(node.get("social_min"), None),
            content=tuple(dict.fromkeys(_many(node.get("content")))),
        )

    def choices(self, node: Node | None) -> tuple[MenuChoice, ...]:
        if node is None:
            return ()
        for item in node.items:
            self.ref("step", item.get("goto"), "choice goto")
        return tuple(
            MenuChoice(_text(item.get("id")), _text(item.get("text")), _text(item.get("goto")))
            for item in node.items
        )

    def target(self, node: Node, key: str, default: str = END) -> str:
        return self.ref("step", node.get(key), key) if key in node.mapping else default


def build_flow(file: str, tree: Node, lifecycle: LifecycleSettings) -> Draft:
    """The flow of a file that passed step 1."""
    draft = Draft(file, line=tree.mapping["flow"].line, declared_slots=_many(tree.get("slots")))
    builder = _Builder(draft, lifecycle)
    items = tree.mapping["steps"].items
    names = [step_name(index, item) for index, item in enumerate(items)]
    steps = []
    for index, item in enumerate(items):
        builder.step = names[index]
        following = names[index + 1] if index + 1 < len(items) else END
        steps.append(_build_step(builder, item, names[index], builder.target(item, "next", following)))
    builder.step = ""
    triggers = tuple(_build_trigger(builder, item) for item in _items(tree.get("triggers")))
    draft.flow = Flow(
        id=tree.mapping["flow"].text,
        steps=tuple(steps),
        triggers=triggers,
        description=_text(tree.get("description")),
        priority=_value(tree.get("priority"), 50),
        interruptible=_value(tree.get("interruptible"), True),
        timeout_s=_seconds(tree.get("timeout"), 1800.0),
        slots=draft.declared_slots,
        source_path=file,
    )
    return draft


def _items(node: Node | None) -> list[Node]:
    return node.items if node is not None else []


def _nodes(node: Node | None) -> list[Node]:
    """One value or a list of them, as a list."""
    if node is None:
        return []
    return node.items if node.kind == "seq" else [node]


def _seconds(node: Node | None, default: float) -> float:
    seconds = parse_duration(node) if node is not None else None
    return default if seconds is None else seconds


def _value(node: Node | None, default: Any) -> Any:
    return default if node is None else node.value


def _build_step(b: _Builder, node: Node, step_id: str, next_id: str) -> Step:
    base: dict[str, Any] = {"id": step_id, "next": next_id, "line": node.line}
    m = node.mapping
    if "say" in m:
        return _say(b, node, base)
    if "ask" in m:
        return _ask(b, node, base)
    if "branch" in m:
        cases = [case for case in m["branch"].items if "else" not in case.mapping]
        otherwise = [case for case in m["branch"].items if "else" in case.mapping]
        return Branch(
            **base,
            cases=tuple(
                Case(b.condition(c.mapping["when"]), b.ref("step", c.get("goto"), "goto"), c.line)
                for c in cases
            ),
            otherwise=b.ref("step", otherwise[0].get("else"), "else") if otherwise else next_id,
        )
    if "tag" in m or "untag" in m:
        add = tuple(b.ref("tag", tag, "tag") for tag in _nodes(m.get("tag")))
        remove = tuple(b.ref("tag", tag, "untag") for tag in _nodes(m.get("untag")))
        return TagStep(**base, add=add, remove=remove)
    if "set_stage" in m:
        return SetStage(**base, stage=b.stage(m["set_stage"], "set_stage"))
    if "goto" in m:
        return _goto(b, m["goto"], base)
    if "call" in m:
        return Call(**base, flow=b.ref("flow", m["call"], "call"))
    if "wait" in m:
        return _wait(b, m["wait"], base)
    if "handoff" in m:
        spec = m["handoff"]
        reason = _text(spec.get("reason")) if spec.kind == "map" else _text(spec)
        return Handoff(**base, reason=reason, message=b.template(spec.get("message"), "message"))
    if "marketing" in m:
        return Marketing(**base, subscribe=m["marketing"].text == "resume")
    if "action" in m:
        params = _plain(m["params"]) if "params" in m else {}
        return Action(**base, name=b.ref("action", m["action"], "action"), params=params)
    return End(**{**base, "next": END}, message=b.template(m["end"], "end"))


def _say(b: _Builder, node: Node, base: dict[str, Any]) -> Say:
    m = node.mapping
    return Say(
        **base,
        text=b.template(m["say"], "say"),
        menu=b.choices(m.get("menu")),
        links=links_of(m.get("links")),
        miniprogram=miniprogram_of(m.get("miniprogram")),
        media=_media(b, m),
    )


def _media(b: _Builder, m: dict[str, Node]) -> MediaAttachment | None:
    """A say step's image:/file:/voice:/video:; a path is recorded for step 3 to look at the file."""
    kind = next((key for key in MEDIA_KEYS if key in m), None)
    if kind is None:
        return None
    source = m[kind].text
    if not is_url(source):
        b.ref("asset", m[kind], kind)
    return MediaAttachment(kind, source)


def links_of(node: Node | None) -> tuple[Link, ...]:
    """The link cards of a `links:` list (a say step's, an FAQ entry's)."""
    return tuple(
        Link(_text(link.get("title")), _text(link.get("url")), _text(link.get("desc"))) for link in _items(node)
    )


def miniprogram_of(node: Node | None) -> MiniProgram | None:
    """The card of a `miniprogram:` mapping, or None without one."""
    if node is None:
        return None
    return MiniProgram(*(_text(node.get(key)) for key in ("appid", "pagepath", "title", "thumb_media_id")))


def _ask(b: _Builder, node: Node, base: dict[str, Any]) -> Ask:
    m = node.mapping
    prompt = b.template(m["ask"], "ask")
    return Ask(
        **base,
        prompt=prompt,
        expect=_text(m.get("expect"), "text"),
        slot=_text(m.get("slot")),
        intents=tuple(b.ref("intent", intent, "intents") for intent in _items(m.get("intents"))),
        choices=b.choices(m.get("choices")),
        retries=_value(m.get("retries"), 2),
        reprompt=b.template(m["reprompt"], "reprompt") if "reprompt" in m else prompt,
        on_fail=b.target(node, "on_fail"),
        timeout_s=_seconds(m.get("timeout"), 0.0),
        on_timeout=b.target(node, "on_timeout"),
    )


def _goto(b: _Builder, node: Node, base: dict[str, Any]) -> Goto:
    base = {**base, "next": END}
    if node.kind == "scalar":
        return Goto(**base, step=b.ref("step", node, "goto"))
    if "flow" in node.mapping:
        return Goto(**base, flow=b.ref("flow", node.mapping["flow"], "goto"))
    return Goto(**base, step=b.ref("step", node.mapping["step"], "goto"))


def _wait(b: _Builder, node: Node, base: dict[str, Any]) -> Wait:
    if node.kind == "scalar":
        return Wait(**base, seconds=_seconds(node, 0.0))
    on_reply = b.target(node, "on_reply", "")
    reply = node.get("reply")
    return Wait(
        **base,
        seconds=_seconds(node.get("seconds") or node.get("for"), 0.0),
        reply=bool(on_reply) or (reply is not None and reply.value is True),
        on_reply=on_reply,
    )


def _plain(node: Node) -> Any:
    if node.kind == "map":
        return {key: _plain(value) for key, value in node.mapping.items()}
    if node.kind == "seq":
        return [_plain(item) for item in node.items]
    return node.value


def _build_trigger(b: _Builder, node: Node) -> Trigger:
    m = node.mapping
    if "intent" in m:
        return IntentTrigger(
            b.ref("intent", m["intent"], "trigger"), _value(m.get("min_confidence"), 0.6), node.line
        )
    if "keywords" in m:
        keywords = dict.fromkeys(normalise(keyword.text) for keyword in m["keywords"].items)
        return TextTrigger(keywords=tuple(keywords), line=node.line)
    if "regex" in m:
        return TextTrigger(regex=m["regex"].text, line=node.line)
    if "event" in m:
        return EventTrigger(m["event"].text, _text(m.get("channel")), _text(m.get("code")), node.line)
    if "stage" in m:
        return StageTrigger(b.stage(m["stage"], "trigger"), node.line)
    if "external" in m:
        return ExternalTrigger(m["external"].text, node.line)
    if "faq" in m:
        return FaqTrigger(b.ref("faq", m["faq"], "trigger"), node.line)
    if "media" in m:
        return MediaTrigger(tuple(dict.fromkeys(_many(m["media"]))), node.line)
    return TagTrigger(b.ref("tag", m["tag"], "trigger"), node.line)


def build_catalog(tree: Node | None) -> TagCatalog:
    if tree is None:
        return TagCatalog()
    groups = tree.mapping["groups"].mapping
    return TagCatalog(
        {group: tuple(dict.fromkeys(tag.text for tag in tags.items)) for group, tags in groups.items()}
    )


def build_rules(file: str, tree: Node | None, lifecycle: LifecycleSettings) -> Draft:
    """The tag rules of rules.yaml; their refs name the rule in `step`."""
    draft = Draft(file)
    builder = _Builder(draft, lifecycle)
    rules = []
    for item in _items(tree.get("rules") if tree is not None else None):
        builder.step = item.mapping["id"].text
        when = item.mapping["when"]
        rules.append(
            TagRule(
                id=builder.step,
                intent=builder.ref("intent", when.mapping["intent"], "when"),
                count=when.mapping["count"].value,
                tag=builder.ref("tag", item.get("tag"), "tag"),
                stage=builder.stage(item.mapping["set_stage"], "set_stage")
                if "set_stage" in item.mapping
                else "",
                line=item.line,
            )
        )
    draft.rules = tuple(rules)
    return draft
