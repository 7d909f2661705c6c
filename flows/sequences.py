"""Nurture sequences (培育/SOP) as YAML, next to the flows in `<flows.directory>/sequences/`.

    sequence: new_lead              # [a-z][a-z0-9_]*: how flows and the CLI name it
    description: 新客户 7 天培育
    marketing: true                 # marketing never reaches unsubscribed customers (default true)
    enroll:                         # events that enrol a customer on their own
      - {stage: 意向}                # entering a stage (id or label)
      - {tag: 连衣裙}                # getting a tag
      - {contact_added: any}        # adding a rep through any channel code (or one: ch_K7P3QX9M)
    exit: [replied, stage_changed, unsubscribed, handed_off, group_filled, {tag: 已购买}, {stage: customer}]
    steps:
      - {id: welcome, say: "{{ customer.name }}，欢迎～"}        # no timing: at once
      - {id: tips, after: 1d, say: "…", when: {tag: 连衣裙}}     # after enrolment
      - {id: coupon, at: "day 3 10:00", say: "…"}               # the brand's time, days after enrolment
      - {id: check_in, after_previous: 4d, say: "…", when: {stage: 意向, social_min: 10}}
      - {id: done, exit: true}                                  # ends the sequence here

Loading checks everything and reports each problem with its file and line: negative delays,
steps after a terminal exit, unknown tags and stages, unsafe templates, unknown keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from core.sequences import Condition, NurtureSequence, SeqStep
from core.spelling import did_you_mean
from core.templates import TemplateError, parse_template
from flows.errors import FlowError, FlowLoadError, Reporter
from flows.spec import parse_duration
from flows.yaml_source import Node, parse_yaml

SEQUENCE_DIR = "sequences"
NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
AT = re.compile(r"day\s+(\d{1,3})\s+([01]\d|2[0-3]):([0-5]\d)")
EXIT_WORDS = ("replied", "stage_changed", "unsubscribed", "handed_off", "group_filled")
FIELDS = frozenset({"customer.name", "customer.stage", "customer.stage_label", "customer.id"})
TOP_KEYS = ("sequence", "description", "marketing", "enroll", "exit", "steps")
STEP_KEYS = ("id", "after", "after_previous", "at", "say", "when", "exit")
WHEN_KEYS = ("tag", "not_tag", "stage", "social_min", "slot")


def sequence_dir(flow_directory: Path) -> Path:
    return flow_directory / SEQUENCE_DIR


def load_sequences(
    directory: Path, tag_names: Sequence[str], stages: Mapping[str, str]
) -> tuple[dict[str, NurtureSequence], dict[str, str]]:
    """Every sequence in `directory` and its source text; FlowLoadError listing every problem otherwise.

    `stages` maps stage ids and labels to ids.
    """
    errors: list[FlowError] = []
    found: dict[str, NurtureSequence] = {}
    sources: dict[str, str] = {}
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()) \
        if directory.is_dir() else []
    for path in files:
        report = Reporter(path.name, errors)
        text = path.read_text(encoding="utf-8")
        tree = parse_yaml(text, report)
        if tree is None:
            continue
        sequence = _sequence(tree, report, set(tag_names), stages)
        if sequence is None:
            continue
        if sequence.name in found:
            report.error(tree.line, f"sequence {sequence.name} is defined twice")
            continue
        found[sequence.name], sources[sequence.name] = sequence, text
    if errors:
        raise FlowLoadError(errors)
    return found, sources


def _sequence(tree: Node, report: Reporter, tags: set[str], stages: Mapping[str, str]) -> NurtureSequence | None:
    before = report.count
    _unknown_keys(tree, TOP_KEYS, report)
    name_node = tree.get("sequence")
    name = name_node.text if name_node else ""
    if not NAME.fullmatch(name):
        report.error(tree.line if name_node is None else name_node.line,
                     "sequence: a name of lower-case letters, digits and _ (e.g. new_lead) is required")
    report = report.at(flow=f"sequence {name}" if name else "")
    marketing = tree.get("marketing")
    if marketing is not None and not isinstance(marketing.value, bool):
        report.error(marketing.line, "marketing: true or false")
    enroll = [_enroll_item(item, report, tags, stages) for item in _list(tree.get("enroll"), "enroll", report)]
    exits = [_exit_item(item, report, tags, stages) for item in _list(tree.get("exit"), "exit", report)]
    steps_node = tree.get("steps")
    step_nodes = _list(steps_node, "steps", report)
    if not step_nodes:
        report.error(tree.line if steps_node is None else steps_node.line, "steps: at least one step")
    steps: list[SeqStep] = []
    seen: set[str] = set()
    terminal = ""
    for index, node in enumerate(step_nodes):
        step = _step(index, node, report, tags, stages)
        if step is None:
            continue
        if step.id in seen:
            report.at(step=step.id).error(node.line, f"step id {step.id} is used twice")
        if terminal:
            report.at(step=step.id).error(node.line, f"comes after the terminal exit at step {terminal}: "
                                                     "it can never be sent")
        seen.add(step.id)
        terminal = terminal or (step.id if step.exit else "")
        if steps and step.after_s is not None and steps[-1].after_s is not None and step.after_s < steps[-1].after_s:
            report.at(step=step.id).error(node.line, "after: earlier than the step before it (use after_previous "
                                                     "for a delay from the previous step)")
        steps.append(step)
    if report.count > before:
        return None
    return NurtureSequence(
        name, tuple(steps), tree.get("description").text if tree.get("description") else "",  # type: ignore[union-attr]
        True if marketing is None else bool(marketing.value),
        tuple(e for e in enroll if e is not None), tuple(e for e in exits if e is not None),
    )


def _step(index: int, node: Node, report: Reporter, tags: set[str], stages: Mapping[str, str]) -> SeqStep | None:
    if node.kind != "map":
        report.error(node.line, f"step {index + 1}: a mapping like {{id: tips, after: 1d, say: …}}")
        return None
    step_id = node.get("id").text if node.get("id") else ""  # type: ignore[union-attr]
    at = report.at(step=step_id or f"#{index + 1}")
    before = at.count
    _unknown_keys(node, STEP_KEYS, at)
    if not NAME.fullmatch(step_id):
        at.error(node.line, "id: a name of lower-case letters, digits and _ is required")
    timings = [key for key in ("after", "after_previous", "at") if key in node.mapping]
    if len(timings) > 1:
        at.error(node.line, f"one timing per step, not {' and '.join(timings)}")
    after = _delay(node.get("after"), "after", at)
    after_previous = _delay(node.get("after_previous"), "after_previous", at)
    at_day, at_time = None, ""
    if node.get("at") is not None:
        match = AT.fullmatch(node.get("at").text.strip())  # type: ignore[union-attr]
        if match is None:
            at.error(node.get("at").line, 'at: "day N HH:MM", e.g. "day 3 10:00" (the brand\'s time)')  # type: ignore[union-attr]
        else:
            at_day, at_time = int(match.group(1)), f"{match.group(2)}:{match.group(3)}"
    exit_node = node.get("exit")
    is_exit = exit_node is not None and exit_node.value is True
    if exit_node is not None and not isinstance(exit_node.value, bool):
        at.error(exit_node.line, "exit: true (the sequence ends at this step)")
    say = node.get("say").text if node.get("say") else ""  # type: ignore[union-attr]
    if not say and not is_exit:
        at.error(node.line, "say: the message this step sends (or exit: true)")
    if say:
        _check_template(say, node.get("say").line, at)  # type: ignore[union-attr]
    when = _condition(node.get("when"), at, tags, stages)
    if at.count > before:
        return None
    if not timings and index == 0:
        after = 0.0
    elif not timings:
        after_previous = 0.0
    return SeqStep(step_id, say, after, after_previous, at_day, at_time, when, is_exit)


def _delay(node: Node | None, key: str, report: Reporter) -> float | None:
    if node is None:
        return None
    if node.text.strip().startswith("-") or (isinstance(node.value, int | float) and node.value < 0):
        report.error(node.line, f"{key}: a delay may not be negative ({node.text})")
        return None
    seconds = parse_duration(node)
    if seconds is None:
        report.error(node.line, f"{key}: a duration like 30m, 2h or 1d, not {node.text!r}")
    return seconds


def _check_template(text: str, line: int, report: Reporter) -> None:
    try:
        template = parse_template(text)
    except TemplateError as exc:
        report.error(line, f"say: {exc}")
        return
    unknown = [name for name in template.fields if name not in FIELDS]
    if unknown:
        report.error(line, f"say: unknown field(s) {', '.join(unknown)}; a sequence may show {', '.join(sorted(FIELDS))}")


def _condition(node: Node | None, report: Reporter, tags: set[str], stages: Mapping[str, str]) -> Condition | None:
    if node is None:
        return None
    if node.kind != "map" or not node.mapping:
        report.error(node.line, "when: a mapping like {tag: 连衣裙, stage: 意向, social_min: 10}")
        return None
    _unknown_keys(node, WHEN_KEYS, report)
    condition_tags = _names(node.get("tag"), "tag", report, tags)
    not_tags = _names(node.get("not_tag"), "not_tag", report, tags)
    stage_ids = tuple(_stage(item, report, stages) for item in _scalars(node.get("stage")))
    social = node.get("social_min")
    social_min = None
    if social is not None:
        if isinstance(social.value, bool) or not isinstance(social.value, int | float) or social.value < 0:
            report.error(social.line, "social_min: a number of at least 0")
        else:
            social_min = float(social.value)
    slot_node = node.get("slot")
    slots = {key: value.text for key, value in slot_node.mapping.items()} if slot_node is not None else {}
    if slot_node is not None and slot_node.kind != "map":
        report.error(slot_node.line, "slot: a mapping of slot names to values, e.g. {product: 连衣裙}")
    return Condition(condition_tags, not_tags, tuple(s for s in stage_ids if s), social_min, slots)


def _enroll_item(node: Node, report: Reporter, tags: set[str], stages: Mapping[str, str]) -> tuple[str, str] | None:
    if node.kind != "map" or len(node.mapping) != 1:
        report.error(node.line, "enroll: each item one of {stage: …}, {tag: …}, {contact_added: any|ch_…}")
        return None
    [(key, value)] = node.mapping.items()
    if key == "stage":
        stage = _stage(value, report, stages)
        return ("stage", stage) if stage else None
    if key == "tag":
        names = _names(value, "tag", report, tags)
        return ("tag", names[0]) if names else None
    if key == "contact_added":
        return ("contact_added", value.text or "any")
    report.error(node.line, f"enroll: unknown trigger {key!r}; use stage, tag or contact_added")
    return None


def _exit_item(node: Node, report: Reporter, tags: set[str], stages: Mapping[str, str]) -> tuple[str, str] | None:
    if node.kind == "scalar":
        if node.text in EXIT_WORDS:
            return node.text, ""
        report.error(node.line, f"exit: {node.text!r} is not an exit{did_you_mean(node.text, EXIT_WORDS)}; "
                                f"use {', '.join(EXIT_WORDS)}, {{tag: …}} or {{stage: …}}")
        return None
    if node.kind == "map" and len(node.mapping) == 1:
        [(key, value)] = node.mapping.items()
        if key == "tag":
            names = _names(value, "tag", report, tags)
            return ("tag", names[0]) if names else None
        if key == "stage":
            stage = _stage(value, report, stages)
            return ("stage", stage) if stage else None
    report.error(node.line, f"exit: use {', '.join(EXIT_WORDS)}, {{tag: …}} or {{stage: …}}")
    return None


def _names(node: Node | None, key: str, report: Reporter, tags: set[str]) -> tuple[str, ...]:
    names = tuple(item.text for item in _scalars(node))
    for name, item in zip(names, _scalars(node), strict=True):
        if name not in tags:
            report.error(item.line, f"{key}: {name!r} is not in the tag catalog (tags.yaml)"
                                    f"{did_you_mean(name, sorted(tags))}")
    return tuple(name for name in names if name in tags)


def _stage(node: Node, report: Reporter, stages: Mapping[str, str]) -> str:
    stage = stages.get(node.text, "")
    if not stage:
        report.error(node.line, f"stage: unknown stage {node.text!r}{did_you_mean(node.text, list(stages))}")
    return stage


def _scalars(node: Node | None) -> list[Node]:
    if node is None:
        return []
    return node.items if node.kind == "seq" else [node]


def _list(node: Node | None, key: str, report: Reporter) -> list[Node]:
    if node is None:
        return []
    if node.kind != "seq":
        report.error(node.line, f"{key}: a list")
        return []
    return node.items


def _unknown_keys(node: Node, known: Sequence[str], report: Reporter) -> None:
    for key in node.mapping:
        if key not in known:
            report.error(node.key_lines.get(key, node.line),
                         f"unknown key {key!r}{did_you_mean(key, known)}; known: {', '.join(known)}")
