"""Group SOPs (群SOP) as YAML, next to the flows in `<flows.directory>/group_sops/`: pushes to groups on a calendar.

    id: new_arrivals                     # [a-z][a-z0-9_]*: how the CLI names it
    name: 新品群每日上新
    enabled: true                        # false: checked and shown, never sent (default true)
    groups: {tags: [新品群]}              # tags (all of), any_tags, owner, name_contains, code (gc_…)
    timezone: Asia/Shanghai              # default: nurture.timezone
    steps:
      - id: morning
        at: "09:00"                      # the SOP's time of day, HH:MM
        every: day                       # day | weekday (mon–fri) | [mon, thu] | sat | 2026-12-24 (one date)
        text: 早上好，今日上新……
        link: {title: 今日新品, url: "https://shop.example.com/new", desc: …, picurl: …}   # optional

Each step's occurrence on a day is one group push (`sop:<id>:<step>:<local date>`), created once
by the scheduler (bot/group_sop_jobs.py). Loading checks everything and reports each problem with
its file and line (a bad time, an unknown day, an empty segment, a message WeCom would refuse);
one bad file publishes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.spelling import did_you_mean
from crm_store.group_pushes import MAX_NAME, GroupPushSpec, Link, check_spec
from crm_store.group_segments import GroupSegment
from flows.errors import FlowError, FlowLoadError, Reporter
from flows.yaml_source import Node, parse_yaml

GROUP_SOP_DIR = "group_sops"
NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
AT = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TOP_KEYS = ("id", "name", "enabled", "groups", "timezone", "steps")
STEP_KEYS = ("id", "at", "every", "text", "link")
GROUP_KEYS = {"tags": "tags_all", "any_tags": "tags_any", "owner": "owner", "name_contains": "name_contains",
              "code": "code"}
LINK_KEYS = ("title", "url", "desc", "picurl")


@dataclass(frozen=True)
class Every:
    """Which days a step runs: a set of weekdays (0 = Monday), or one date."""

    weekdays: frozenset[int] = frozenset(range(7))
    on: date | None = None

    def matches(self, day: date) -> bool:
        return day == self.on if self.on is not None else day.weekday() in self.weekdays

    def describe(self) -> str:
        if self.on is not None:
            return self.on.isoformat()
        if len(self.weekdays) == 7:
            return "day"
        if self.weekdays == frozenset(range(5)):
            return "weekday"
        return ",".join(DAYS[d] for d in sorted(self.weekdays))


@dataclass(frozen=True)
class GroupSopStep:
    id: str
    at: time
    every: Every
    text: str
    link: Link | None = None


@dataclass(frozen=True)
class GroupSop:
    id: str
    name: str
    segment: GroupSegment
    timezone: str
    steps: tuple[GroupSopStep, ...]
    enabled: bool = True  # false: checked and shown, never sent (how the shipped example comes)


@dataclass(frozen=True)
class Occurrence:
    """One step on one local day: the push it becomes."""

    sop: GroupSop
    step: GroupSopStep
    day: date
    due_at: datetime  # UTC

    @property
    def source_key(self) -> str:
        return f"sop:{self.sop.id}:{self.step.id}:{self.day.isoformat()}"

    def spec(self) -> GroupPushSpec:
        suffix = f" · {self.step.id} {self.day.isoformat()}"
        return GroupPushSpec(self.sop.name[:MAX_NAME - len(suffix)] + suffix, self.sop.segment, self.step.text,
                             self.step.link, None, self.due_at)


def group_sop_dir(flow_directory: Path) -> Path:
    return flow_directory / GROUP_SOP_DIR


def occurrences(sop: GroupSop, since: datetime, until: datetime) -> list[Occurrence]:
    """Every occurrence due in (since, until], in time order (days counted in the SOP's zone)."""
    zone = ZoneInfo(sop.timezone)
    first, last = since.astimezone(zone).date(), until.astimezone(zone).date()
    found: list[Occurrence] = []
    day = first
    while day <= last:
        for step in sop.steps:
            due = datetime.combine(day, step.at, zone).astimezone(UTC)
            if step.every.matches(day) and since < due <= until:
                found.append(Occurrence(sop, step, day, due))
        day += timedelta(days=1)
    return sorted(found, key=lambda o: (o.due_at, o.step.id))


def next_occurrences(sop: GroupSop, after: datetime, count: int = 5, horizon_days: int = 400) -> list[Occurrence]:
    """The next `count` occurrences after `after` (looking at most `horizon_days` ahead)."""
    found: list[Occurrence] = []
    start = after
    while len(found) < count and start < after + timedelta(days=horizon_days):
        end = start + timedelta(days=31)
        found += occurrences(sop, start, end)
        start = end
    return found[:count]


def load_group_sops(directory: Path, default_timezone: str) -> tuple[dict[str, GroupSop], dict[str, str]]:
    """Every group SOP in `directory` and its source text; FlowLoadError listing every problem otherwise."""
    errors: list[FlowError] = []
    found: dict[str, GroupSop] = {}
    sources: dict[str, str] = {}
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()) \
        if directory.is_dir() else []
    for path in files:
        report = Reporter(f"{GROUP_SOP_DIR}/{path.name}", errors)
        text = path.read_text(encoding="utf-8")
        tree = parse_yaml(text, report)
        if tree is None:
            continue
        sop = _sop(tree, report, default_timezone)
        if sop is None:
            continue
        if sop.id in found:
            report.error(tree.line, f"group SOP {sop.id} is defined twice")
            continue
        found[sop.id], sources[sop.id] = sop, text
    if errors:
        raise FlowLoadError(errors)
    return found, sources


def _sop(tree: Node, report: Reporter, default_timezone: str) -> GroupSop | None:
    before = report.count
    if tree.kind != "map":
        report.error(tree.line, "a group SOP is a mapping with id, name, groups and steps")
        return None
    _unknown_keys(tree, TOP_KEYS, report)
    sop_id = _text(tree, "id")
    if not NAME.fullmatch(sop_id):
        report.error(_line(tree, "id"), "id: a name of lower-case letters, digits and _ (e.g. new_arrivals) is required")
    report = report.at(flow=f"group SOP {sop_id}" if sop_id else "")
    name = _text(tree, "name") or sop_id
    segment = _segment(tree.get("groups"), tree.line, report)
    zone = _text(tree, "timezone") or default_timezone
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        report.error(_line(tree, "timezone"), f"timezone: {zone!r} is not a time zone (e.g. Asia/Shanghai)")
    steps_node = tree.get("steps")
    step_nodes = steps_node.items if steps_node is not None and steps_node.kind == "seq" else []
    if not step_nodes:
        report.error(_line(tree, "steps"), "steps: a list of at least one step {id, at, every, text}")
    steps: list[GroupSopStep] = []
    for index, node in enumerate(step_nodes):
        step = _step(index, node, report, name, segment)
        if step is not None and step.id in {s.id for s in steps}:
            report.at(step=step.id).error(node.line, f"step id {step.id} is used twice")
        elif step is not None:
            steps.append(step)
    enabled = tree.get("enabled")
    if enabled is not None and not isinstance(enabled.value, bool):
        report.error(enabled.line, "enabled: true or false")
    if report.count > before or segment is None:
        return None
    return GroupSop(sop_id, name, segment, zone, tuple(steps), enabled is None or enabled.value is True)


def _segment(node: Node | None, line: int, report: Reporter) -> GroupSegment | None:
    if node is None or node.kind != "map":
        report.error(line if node is None else node.line,
                     "groups: a mapping like {tags: [新品群]} (tags, any_tags, owner, name_contains, code)")
        return None
    _unknown_keys(node, tuple(GROUP_KEYS), report)
    values: dict[str, object] = {}
    for key, field_name in GROUP_KEYS.items():
        item = node.get(key)
        if item is None:
            continue
        if key in ("tags", "any_tags"):
            values[field_name] = tuple(i.text for i in (item.items if item.kind == "seq" else [item]))
        else:
            values[field_name] = item.text
    segment = GroupSegment(**values)  # type: ignore[arg-type]
    problems = segment.validate()
    for problem in problems:
        report.error(node.line, problem)
    return None if problems else segment


def _step(index: int, node: Node, report: Reporter, name: str, segment: GroupSegment | None) -> GroupSopStep | None:
    if node.kind != "map":
        report.error(node.line, f'step {index + 1}: a mapping like {{id: morning, at: "09:00", every: day, text: …}}')
        return None
    step_id = _text(node, "id")
    at = report.at(step=step_id or f"#{index + 1}")
    before = at.count
    _unknown_keys(node, STEP_KEYS, at)
    if not NAME.fullmatch(step_id):
        at.error(node.line, "id: a name of lower-case letters, digits and _ is required")
    match = AT.fullmatch(_text(node, "at").strip())
    if match is None:
        at.error(_line(node, "at"), f'at: a time of day "HH:MM" from 00:00 to 23:59, not {_text(node, "at")!r}')
    every = _every(node.get("every"), node.line, at)
    link = _link(node.get("link"), at)
    text = _text(node, "text")
    problems = [problem for problem in check_spec(GroupPushSpec(name or "-", segment or GroupSegment(owner="-"), text,
                                                                link), datetime.now(UTC), source=True)
                if problem.startswith(("text", "link"))]  # the SOP's own problems are reported once, above
    for problem in problems:
        at.error(_line(node, problem.split(".")[0].split(":")[0]), problem)
    if at.count > before or match is None or every is None:
        return None
    return GroupSopStep(step_id, time(int(match.group(1)), int(match.group(2))), every, text, link)


def _every(node: Node | None, line: int, report: Reporter) -> Every | None:
    hint = "every: day, weekday, a day (mon…sun), a list of days, or a date like 2026-12-24"
    if node is None:
        report.error(line, hint)
        return None
    if node.kind == "seq" or node.text.lower() in DAYS:
        names = [i.text.lower() for i in (node.items if node.kind == "seq" else [node])]
        unknown = [n for n in names if n not in DAYS]
        for item in unknown:
            report.error(node.line, f"every: {item!r} is not a day{did_you_mean(item, DAYS)}; use {', '.join(DAYS)}")
        return None if unknown or not names else Every(frozenset(DAYS.index(n) for n in names))
    word = node.text.strip().lower()
    if word in ("day", "daily"):
        return Every()
    if word in ("weekday", "weekdays"):
        return Every(frozenset(range(5)))
    try:
        return Every(on=date.fromisoformat(word))
    except ValueError:
        report.error(node.line, f"{hint}; not {node.text!r}{did_you_mean(word, ('day', 'weekday', *DAYS))}")
        return None


def _link(node: Node | None, report: Reporter) -> Link | None:
    if node is None:
        return None
    if node.kind != "map":
        report.error(node.line, "link: a mapping {title, url, desc?, picurl?}")
        return None
    _unknown_keys(node, LINK_KEYS, report)
    return Link(_text(node, "title"), _text(node, "url"), _text(node, "desc"), _text(node, "picurl"))


def _text(node: Node, key: str) -> str:
    item = node.get(key)
    return item.text if item is not None else ""


def _line(node: Node, key: str) -> int:
    return node.key_lines.get(key, node.line)


def _unknown_keys(node: Node, known: Sequence[str], report: Reporter) -> None:
    for key in node.mapping:
        if key not in known:
            report.error(node.key_lines.get(key, node.line),
                         f"unknown key {key!r}{did_you_mean(key, known)}; known: {', '.join(known)}")
