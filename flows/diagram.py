"""A flow as a picture: Mermaid flowchart text, or an SVG drawn here.

`mermaid()` is text to paste into a Markdown file, a wiki or mermaid.live. `svg()` is a
finished picture, laid out by hand: layers from the top (a step's layer is the longest
path to it from the first step, back edges ignored), boxes in step order within a layer,
straight arrows downwards and curved arrows on the right for the edges that go back up.
It needs no graphviz or mermaid-cli: no browser or native binary on an admin's machine
or in CI, and the Chinese text is rendered by the viewer's fonts, not rasterised here.

    start ─► step ─► step ─► END      one node per step, labelled "say: 你好…"; edges for
                  └─► flow coupon     next, branch cases, choices, on_fail, on_timeout,
                                      replies, gotos and calls (dashed, to another flow)
"""

from __future__ import annotations

from typing import NamedTuple
from xml.sax.saxutils import escape, quoteattr

from flows.model import (
    END,
    Action,
    Ask,
    Branch,
    Call,
    Condition,
    End,
    Flow,
    Goto,
    Handoff,
    Marketing,
    Say,
    SetStage,
    Step,
    TagStep,
    Wait,
)

START, STOP = "start", "stop"  # node ids besides "s<i>" (steps) and "f_<flow>" (other flows)
FLOW = "flow:"  # a target in another flow (step ids cannot hold a colon)
LABEL_CHARS = 24


class Edge(NamedTuple):
    source: str
    target: str
    label: str = ""
    dashed: bool = False


def duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def summary(step: Step) -> str:
    """`kind: what`, e.g. "say: 你好", "tag: +高意向 -低意向", "wait: 1d or reply"."""
    if isinstance(step, Say):
        return f"say: {step.text.source}"
    if isinstance(step, Ask):
        return f"ask: {step.prompt.source}"
    if isinstance(step, TagStep):
        return "tag: " + " ".join([f"+{t}" for t in step.add] + [f"-{t}" for t in step.remove])
    if isinstance(step, Wait):
        return f"wait: {duration(step.seconds)}" + (" or reply" if step.reply else "")
    if isinstance(step, SetStage):
        return f"stage: {step.stage}"
    if isinstance(step, Goto):
        return f"goto: flow {step.flow}" if step.flow else f"goto: {step.step}"
    if isinstance(step, Call):
        return f"call: {step.flow}"
    if isinstance(step, Action):
        return f"action: {step.name}"
    if isinstance(step, Marketing):
        return "marketing: " + ("resume" if step.subscribe else "stop")
    if isinstance(step, Handoff):
        return f"handoff: {step.reason or step.message.source}".rstrip(": ")
    if isinstance(step, End):
        return f"end: {step.message.source}".rstrip(": ")
    return "branch" if isinstance(step, Branch) else type(step).__name__.lower()


def condition(when: Condition) -> str:
    parts = [f"intent {'/'.join(when.intent)}" if when.intent else "",
             (f"{when.slot}={when.equals}" if when.equals is not None else f"{when.slot} filled") if when.slot else "",
             f"tag {when.tag}" if when.tag else "", f"no tag {when.not_tag}" if when.not_tag else "",
             f"stage {'/'.join(when.stage)}" if when.stage else "",
             f"content {'/'.join(when.content)}" if when.content else "", when.check]
    return ", ".join(part for part in parts if part) or "always"


def edges(flow: Flow) -> list[Edge]:
    """Every edge of the flow's picture, from the start node through each step, without repeats."""
    node = {step.id: f"s{i}" for i, step in enumerate(flow.steps)} | {END: STOP}
    found = [Edge(START, node[flow.first_step])]
    for step in flow.steps:
        for target, label in step_targets(step):
            if target.startswith(FLOW):
                found.append(Edge(node[step.id], f"f_{target[len(FLOW):]}", label, dashed=True))
            elif target in node:
                found.append(Edge(node[step.id], node[target], label))
    return list(dict.fromkeys(found))


def step_targets(step: Step) -> list[tuple[str, str]]:
    """(where, when) for each way out of the step: a step id, END, or "flow:<id>" (a goto or a call)."""
    if isinstance(step, End | Handoff):
        return [(END, "")]
    if isinstance(step, Goto):
        return [(step.step, "")] if step.step else [(FLOW + step.flow, "goto")]
    if isinstance(step, Branch):
        return [(case.goto, condition(case.when)) for case in step.cases] + [(step.otherwise, "else")]
    found = [(step.next, "")]
    if isinstance(step, Say | Ask):
        found += [(c.goto, c.text) for c in (step.menu if isinstance(step, Say) else step.choices) if c.goto]
    if isinstance(step, Ask):
        found += [(step.on_fail, "fail")] + ([(step.on_timeout, "timeout")] if step.timeout_s else [])
    if isinstance(step, Wait) and step.on_reply:
        found.append((step.on_reply, "reply"))
    if isinstance(step, Call):
        found.append((FLOW + step.flow, "call"))
    return found


def nodes(flow: Flow) -> dict[str, tuple[str, str]]:
    """node id -> (title, label): the start, each step, the flows it goes to, and END."""
    found = {START: ("", f"flow {flow.id}")}
    found |= {f"s{i}": (step.id, short(summary(step))) for i, step in enumerate(flow.steps)}
    found |= {edge.target: ("", f"flow {edge.target[2:]}") for edge in edges(flow) if edge.target.startswith("f_")}
    return found | {STOP: ("", "END")}


def short(text: str, limit: int = LABEL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kind(flow: Flow, node_id: str) -> str:
    """start, end, flow, or the step's class name in lower case."""
    if node_id in (START, STOP):
        return node_id
    return "flow" if node_id.startswith("f_") else type(flow.steps[int(node_id[1:])]).__name__.lower()


def mermaid(flow: Flow) -> str:
    """Mermaid `flowchart TD` text of the flow."""

    def quoted(text: str) -> str:
        return '"' + text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;") + '"'

    shapes = {"start": "([%s])", "stop": "((%s))", "end": "([%s])", "handoff": "([%s])", "flow": "[[%s]]",
              "branch": "{%s}"}
    lines = ["flowchart TD"]
    for node_id, (title, label) in nodes(flow).items():
        shape = shapes.get(_kind(flow, node_id), "[%s]")
        lines.append(f"    {node_id}{shape % quoted(f'{title} · {label}' if title else label)}")
    for edge in edges(flow):
        label = f"|{quoted(short(edge.label, 20))}|" if edge.label else ""
        lines.append(f"    {edge.source} {'-.->' if edge.dashed else '-->'}{label} {edge.target}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- SVG

WIDTH, HEIGHT, H_GAP, V_GAP, MARGIN = 210, 46, 36, 54, 24
FILL = {"start": "#e8f0fe", "stop": "#eeeeee", "end": "#eeeeee", "flow": "#f3e8fd", "branch": "#fff4e0",
        "ask": "#e6f4ea", "handoff": "#fde8e8", "say": "#ffffff"}


def layers(node_ids: list[str], links: list[Edge]) -> tuple[dict[str, int], set[Edge]]:
    """Each node's layer (longest path from the start without back edges), and the back edges."""
    following: dict[str, list[Edge]] = {node: [] for node in node_ids}
    for edge in links:
        following[edge.source].append(edge)
    back: set[Edge] = set()
    state: dict[str, int] = {}  # 1: on the path being explored, 2: done

    def visit(node: str) -> None:
        state[node] = 1
        for edge in following[node]:
            if state.get(edge.target) == 1:
                back.add(edge)
            elif edge.target not in state:
                visit(edge.target)
        state[node] = 2

    for node in node_ids:  # the start first; then anything unreachable from it
        if node not in state:
            visit(node)
    forward = [edge for edge in links if edge not in back]
    incoming = {node: sum(1 for e in forward if e.target == node) for node in node_ids}
    layer = dict.fromkeys(node_ids, 0)
    ready = [node for node in node_ids if incoming[node] == 0]
    while ready:
        node = ready.pop(0)
        for edge in (e for e in following[node] if e not in back):
            layer[edge.target] = max(layer[edge.target], layer[node] + 1)
            incoming[edge.target] -= 1
            if incoming[edge.target] == 0:
                ready.append(edge.target)
    return layer, back


def _fit(text: str, pixels: float) -> str:
    """Cut `text` to about `pixels` wide at 13 px (CJK about 13 px a character, others about 7.5)."""
    width = 0.0
    for i, char in enumerate(text):
        width += 13 if ord(char) > 0x2E80 else 7.5
        if width > pixels:
            return text[: max(i - 1, 0)] + "…"
    return text


def svg(flow: Flow) -> str:
    """An SVG picture of the flow (see the module docstring for the layout)."""
    labels = nodes(flow)
    links = edges(flow)
    layer, back = layers(list(labels), links)
    rows: dict[int, list[str]] = {}
    for node in labels:
        rows.setdefault(layer[node], []).append(node)
    widest = max(len(row) for row in rows.values())
    right = MARGIN + widest * (WIDTH + H_GAP) - H_GAP  # back edges curve round the right of every box
    width = right + MARGIN + (20 + 16 * min(len(back), 4) + 50 if back else 0)  # room for the curves' labels
    height = (max(rows) + 1) * (HEIGHT + V_GAP) - V_GAP + 2 * MARGIN
    box: dict[str, tuple[float, float]] = {}  # node -> top-left corner
    for level, row in rows.items():
        left = MARGIN + (widest - len(row)) * (WIDTH + H_GAP) / 2
        for i, node in enumerate(row):
            box[node] = (left + i * (WIDTH + H_GAP), MARGIN + level * (HEIGHT + V_GAP))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="PingFang SC, Microsoft YaHei, '
           'Noto Sans CJK SC, sans-serif" font-size="13">',
           f"<title>{escape(f'flow {flow.id}')}</title>",
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>']
    for n, edge in enumerate(links):
        out.append(_arrow(edge, box[edge.source], box[edge.target], right + 20 + 16 * (n % 4) if edge in back else 0))
    for node, (title, label) in labels.items():
        x, y = box[node]
        fill = FILL.get(_kind(flow, node), "#f7f7f7")
        rx = HEIGHT / 2 if node in (START, STOP) else 6
        out.append(f'<g class="node" id={quoteattr(node)}><title>{escape(title or label)}</title>'
                   f'<rect x="{x:.0f}" y="{y:.0f}" width="{WIDTH}" height="{HEIGHT}" rx="{rx:.0f}" '
                   f'fill="{fill}" stroke="#666"/>')
        text_y = y + (16 if title else HEIGHT / 2 + 5)
        if title:
            out.append(f'<text x="{x + WIDTH / 2:.0f}" y="{text_y:.0f}" text-anchor="middle" font-size="11" '
                       f'fill="#888">{escape(title)}</text>')
        out.append(f'<text x="{x + WIDTH / 2:.0f}" y="{text_y + (18 if title else 0):.0f}" '
                   f'text-anchor="middle">{escape(_fit(label, WIDTH - 14))}</text></g>')
    return "\n".join(out + ["</svg>"]) + "\n"


def _arrow(edge: Edge, source: tuple[float, float], target: tuple[float, float], bulge: float) -> str:
    """A straight arrow downwards, or for a back edge a curve out to x=`bulge`; with its label."""
    style = ' stroke-dasharray="5 4"' if edge.dashed else ""
    if bulge:
        x1, y1, x2, y2 = source[0] + WIDTH, source[1] + HEIGHT / 2, target[0] + WIDTH, target[1] + HEIGHT / 2
        control = (bulge - (x1 + x2) / 8) / 0.75  # the curve's midpoint is then at x=bulge
        path = f"M{x1:.0f},{y1:.0f} C{control:.0f},{y1:.0f} {control:.0f},{y2:.0f} {x2:.0f},{y2:.0f}"
        mid = (bulge, (y1 + y2) / 2)
    else:
        x1, y1, x2, y2 = source[0] + WIDTH / 2, source[1] + HEIGHT, target[0] + WIDTH / 2, target[1]
        path = f"M{x1:.0f},{y1:.0f} L{x2:.0f},{y2:.0f}"
        mid = ((x1 + x2) / 2, (y1 + y2) / 2)
    label = (f'<text x="{mid[0] + 4:.0f}" y="{mid[1]:.0f}" font-size="11" fill="#333" stroke="#fff" '
             f'stroke-width="3" paint-order="stroke">{escape(short(edge.label, 16))}</text>') if edge.label else ""
    return f'<path d="{path}" fill="none" stroke="#555"{style} marker-end="url(#arrow)"/>{label}'
