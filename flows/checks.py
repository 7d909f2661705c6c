"""Step 3 of loading: what no single file can tell, each error naming the flow and the step.

Names: steps of the flow, flows of the set, tags of the catalog, stages of the
lifecycle, intents of the NLU domain (when known), actions, template fields, FAQ
entries (faq.yaml; its own checks are in flows/faq.py), say steps' media files (when the
directory is known: flows/media_assets.py).
Shape of each flow: duplicate step ids, steps nothing leads to, loops that never
wait for the customer (they would spin within one turn), steps from which the flow
can never end; a slot filled with two sorts of value (a photo's media reference and
text), or a media reference shown to the customer. Across flows: duplicate ids, and
flows that call themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.spelling import did_you_mean
from crm_store.lifecycle_settings import LifecycleSettings
from flows.build import Draft, Ref, stage_id
from flows.errors import Reporter
from flows.graph import call_cycles, check_steps, waiting_flows
from flows.media_assets import asset_problem
from flows.model import ACTION_OUTPUTS, ACTIONS, MEDIA_EXPECTS, TEMPLATE_FIELDS, Action, Ask, Flow

_LISTED = 20


@dataclass(frozen=True)
class Names:
    """What references may name: `flows` includes ids of files that failed earlier steps."""

    flows: frozenset[str]
    tags: frozenset[str] | None  # None: tags.yaml has errors, tags are not checked
    lifecycle: LifecycleSettings
    intents: frozenset[str] | None
    faq: frozenset[str] | None = None  # entry ids of faq.yaml; None: it has errors, not checked
    assets: Path | None = None  # the flow directory, whose media files say steps send; None: not looked at


def listing(names: Iterable[str]) -> str:
    ordered = sorted(set(names))
    shown = ", ".join(ordered[:_LISTED])
    return (
        shown + (f", … ({len(ordered) - _LISTED} more)" if len(ordered) > _LISTED else "")
        if ordered
        else "none"
    )


def check_all(drafts: list[Draft], rules: Draft | None, names: Names, reporters: dict[str, Reporter]) -> None:
    """Every semantic error of every flow and of the rules, appended to the reporters' list."""
    first_file: dict[str, str] = {}
    for draft in drafts:
        assert draft.flow is not None
        report = reporters[draft.file].at(flow=draft.flow.id)
        if draft.flow.id in first_file:
            report.error(
                draft.line, f"flow id '{draft.flow.id}' is already used by {first_file[draft.flow.id]}"
            )
        first_file.setdefault(draft.flow.id, draft.file)
        _check_flow(draft, names, report)
    flows = {draft.flow.id: draft.flow for draft in drafts if draft.flow is not None}
    waiting = waiting_flows(flows)
    for draft in drafts:
        if draft.flow is not None and _unique_steps(draft.flow, reporters[draft.file].at(flow=draft.flow.id)):
            check_steps(draft.flow, waiting, reporters[draft.file].at(flow=draft.flow.id))
    for flow_id, step, cycle in call_cycles(flows):
        reporters[flows[flow_id].source_path].at(flow=flow_id, step=step.id).error(
            step.line, f"flow {flow_id} calls itself through call: {' → '.join(cycle)}; a call must return"
        )
    if rules is not None:
        _check_rules(rules, names, reporters[rules.file])


def _check_flow(draft: Draft, names: Names, report: Reporter) -> None:
    assert draft.flow is not None
    step_ids = [step.id for step in draft.flow.steps]
    filled = set(draft.declared_slots)
    for step in draft.flow.steps:
        if isinstance(step, Ask) and step.slot:
            filled.add(step.slot)
        if isinstance(step, Action):
            filled.update(ACTION_OUTPUTS.get(step.name, ()))
    for ref in draft.refs:
        problem = _problem(ref, names, step_ids, filled)
        if problem:
            report.at(step=ref.step).error(ref.line, problem)
    _check_slot_sorts(draft, report)


def _slot_sort(expect: str) -> str:
    if expect == "location":
        return "a location"
    return "a media reference" if expect in MEDIA_EXPECTS else "text"


def _check_slot_sorts(draft: Draft, report: Reporter) -> None:
    """One slot, one sort of value: text, a location ("lat,lng label") or a media reference
    ("media:kf:<media_id>", for the rep side). A slot one step fills with a photo and another with
    words leaves a branch or a template guessing; a media reference means nothing to a customer."""
    assert draft.flow is not None
    first = {slot: ("text", "the flow's slots: (NLU entities)") for slot in draft.declared_slots}
    for step in draft.flow.steps:
        if isinstance(step, Ask) and step.slot:
            fills = [(step.slot, _slot_sort(step.expect), f"step {step.id} (expect: {step.expect})")]
        elif isinstance(step, Action):
            fills = [(slot, "text", f"action {step.name}") for slot in ACTION_OUTPUTS.get(step.name, ())]
        else:
            continue
        for slot, sort, where in fills:
            earlier_sort, earlier_where = first.setdefault(slot, (sort, where))
            if earlier_sort != sort:
                report.at(step=step.id).error(
                    step.line,
                    f"slot '{slot}' gets {sort} here but {earlier_sort} from {earlier_where}: "
                    "a slot holds one sort of value; give one of them another slot name",
                )
    media = {slot for slot, (sort, _) in first.items() if sort == "a media reference"}
    for ref in draft.refs:
        if ref.kind == "field" and ref.name.removeprefix("slots.") in media and ref.name.startswith("slots."):
            report.at(step=ref.step).error(
                ref.line,
                f"template field {ref.name} in {ref.where} is a media reference (media:<channel>:<id>), "
                "which means nothing to the customer: say that the photo or file was received instead",
            )


def _unique_steps(flow: Flow, report: Reporter) -> bool:
    first: dict[str, int] = {}
    for step in flow.steps:
        if step.id in first:
            report.at(step=step.id).error(
                step.line, f"duplicate step id '{step.id}' (first at line {first[step.id]})"
            )
        first.setdefault(step.id, step.line)
    return len(first) == len(flow.steps)


def _check_rules(rules: Draft, names: Names, report: Reporter) -> None:
    first: dict[str, int] = {}
    for rule in rules.rules:
        if rule.id in first:
            report.error(rule.line, f"rule {rule.id}: duplicate rule id (first at line {first[rule.id]})")
        first.setdefault(rule.id, rule.line)
    for ref in rules.refs:
        problem = name_problem(ref, names)
        if problem:
            report.error(ref.line, f"rule {ref.step}: {problem}")


def name_problem(ref: Ref, names: Names) -> str | None:
    """What is wrong with a name used outside a flow (rules.yaml, faq.yaml): tags, stages, intents, or None."""
    return _problem(ref, names, [], set())


def _problem(ref: Ref, names: Names, step_ids: list[str], filled: set[str]) -> str | None:
    """What is wrong with one reference, or None."""
    name, where = ref.name, ref.where
    if ref.kind == "step" and name not in step_ids:
        hint = did_you_mean(name, step_ids)
        return f"unknown step '{name}' in {where}{hint} (steps are: {', '.join(step_ids)})"
    if ref.kind == "flow" and name not in names.flows:
        hint = did_you_mean(name, sorted(names.flows))
        return f"unknown flow '{name}' in {where}{hint} (flows are: {listing(names.flows)})"
    if ref.kind == "tag" and names.tags is not None and name not in names.tags:
        known = f"tags.yaml defines: {listing(names.tags)}" if names.tags else "tags.yaml defines no tags"
        return f"unknown tag '{name}' in {where}{did_you_mean(name, sorted(names.tags))}; {known}"
    if ref.kind == "stage" and stage_id(names.lifecycle, name) is None:
        stages = [f"{stage.id} ({stage.label})" for stage in names.lifecycle.stages]
        options = [stage.id for stage in names.lifecycle.stages] + [
            stage.label for stage in names.lifecycle.stages
        ]
        return (
            f"unknown stage '{name}' in {where}{did_you_mean(name, options)}; stages are: {', '.join(stages)}"
        )
    if ref.kind == "intent" and names.intents is not None and name not in names.intents:
        return (
            f"unknown intent '{name}' in {where}{did_you_mean(name, sorted(names.intents))}; "
            f"intents are those of the NLU domain: {listing(names.intents)}"
        )
    if ref.kind == "action" and name not in ACTIONS:
        return (
            f"unknown action '{name}'{did_you_mean(name, sorted(ACTIONS))}; actions are: {listing(ACTIONS)}"
        )
    if ref.kind == "faq" and names.faq is not None and name not in names.faq:
        known = f"faq.yaml has: {listing(names.faq)}" if names.faq else "there is no faq.yaml entry at all"
        return (
            f"unknown FAQ entry '{name}' in {where}{did_you_mean(name, sorted(names.faq))}; {known}: "
            "add the entry to faq.yaml, or name one it has"
        )
    if ref.kind == "field":
        return _field_problem(name, where, filled)
    if ref.kind == "asset" and names.assets is not None:
        return asset_problem(names.assets, name, where)
    return None


def _field_problem(name: str, where: str, filled: set[str]) -> str | None:
    if name in TEMPLATE_FIELDS:
        return None
    parts = name.split(".")
    if len(parts) == 2 and parts[0] == "slots":
        if parts[1] in filled:
            return None
        return (
            f"template field {name} in {where} is never filled in this flow (filled: {listing(filled)}); "
            "fill it with an ask's slot:, an action, or list it under the flow's slots: for NLU entities"
        )
    return (
        f"unknown template field '{name}' in {where}{did_you_mean(name, sorted(TEMPLATE_FIELDS))}; "
        f"fields are: {listing(TEMPLATE_FIELDS)} and slots.<name>"
    )
