"""The step graph of a flow and the call graph of a flow set, for the loader's step 3.

Edges of a step: its next, ask's on_fail (and on_timeout with a timeout), choice and
menu gotos, every branch case and the otherwise, a wait's on_reply, a goto's step.
A step *exits* the flow when it is an end or a handoff, goes to another flow, or
has an edge to END. A step *waits* when it is an ask, a wait, or a call of a flow
that waits: a loop through no waiting step would run again and again in one turn.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from flows.errors import Reporter
from flows.model import END, Ask, Branch, Call, End, Flow, Goto, Handoff, Say, Step, Wait


def targets(step: Step) -> list[str]:
    """Where the step may go next, END included."""
    if isinstance(step, End):
        return []
    if isinstance(step, Goto):
        return [step.step] if step.step else []
    if isinstance(step, Branch):
        return [case.goto for case in step.cases] + [step.otherwise]
    found = [step.next]
    if isinstance(step, Say):
        found += [choice.goto for choice in step.menu if choice.goto]
    if isinstance(step, Ask):
        found += [step.on_fail] + ([step.on_timeout] if step.timeout_s else [])
        found += [choice.goto for choice in step.choices if choice.goto]
    if isinstance(step, Wait) and step.on_reply:
        found.append(step.on_reply)
    return found


def exits(step: Step) -> bool:
    return (
        isinstance(step, End | Handoff)
        or (isinstance(step, Goto) and bool(step.flow))
        or END in targets(step)
    )


def waits(step: Step, waiting: frozenset[str]) -> bool:
    return isinstance(step, Ask | Wait) or (isinstance(step, Call) and step.flow in waiting)


def waiting_flows(flows: dict[str, Flow]) -> frozenset[str]:
    """Flows that wait for the customer somewhere, themselves or in a flow they call."""
    waiting = {
        flow_id for flow_id, flow in flows.items() if any(isinstance(s, Ask | Wait) for s in flow.steps)
    }
    changed = True
    while changed:
        changed = False
        for flow_id, flow in flows.items():
            if flow_id not in waiting and any(isinstance(s, Call) and s.flow in waiting for s in flow.steps):
                waiting.add(flow_id)
                changed = True
    return frozenset(waiting)


def _reach(start: str, edges: dict[str, list[str]]) -> set[str]:
    """Steps reachable from `start` in one or more edges."""
    seen: set[str] = set()
    queue = deque(edges.get(start, []))
    while queue:
        node = queue.popleft()
        if node not in seen:
            seen.add(node)
            queue.extend(edges.get(node, []))
    return seen


def check_steps(flow: Flow, waiting: frozenset[str], report: Reporter) -> None:
    """Unreachable steps, loops that never wait, and steps from which the flow cannot end."""
    ids = {step.id for step in flow.steps}
    edges = {step.id: [target for target in targets(step) if target in ids] for step in flow.steps}
    reached = _reach(flow.first_step, edges) | {flow.first_step}
    for step in flow.steps:
        if step.id not in reached:
            report.at(step=step.id).error(
                step.line,
                f"step {step.id} is never reached from the first step ({flow.first_step}): "
                "nothing leads to it",
            )
    live = [step for step in flow.steps if step.id in reached]
    _check_spin(live, edges, waiting, report)
    # A step with an unknown target (reported already) is not also reported as stuck.
    broken = {step.id for step in flow.steps if any(t != END and t not in ids for t in targets(step))}
    _check_exit(live, edges, broken, report)


def _check_spin(
    steps: list[Step], edges: dict[str, list[str]], waiting: frozenset[str], report: Reporter
) -> None:
    busy = {step.id for step in steps if not waits(step, waiting)}
    busy_edges = {node: [t for t in edges[node] if t in busy] for node in busy}
    reach = {node: _reach(node, busy_edges) for node in busy}
    reported: set[str] = set()
    for step in steps:
        if step.id not in busy or step.id in reported or step.id not in reach[step.id]:
            continue
        loop = [s.id for s in steps if s.id in reach[step.id] and step.id in reach[s.id]]
        reported.update(loop)
        report.at(step=step.id).error(
            step.line,
            f"steps {' → '.join(loop + [loop[0]])} loop without an ask or a wait: "
            "they would run again and again "
            "in one turn; add an ask or a wait to the loop, or leave it",
        )


def _check_exit(steps: list[Step], edges: dict[str, list[str]], broken: set[str], report: Reporter) -> None:
    backwards: dict[str, list[str]] = {}
    for node, following in edges.items():
        for target in following:
            backwards.setdefault(target, []).append(node)
    finishing = {step.id for step in steps if exits(step)} | broken
    for node in list(finishing):
        finishing |= _reach(node, backwards)
    stuck = [step for step in steps if step.id not in finishing]
    if stuck:
        report.at(step=stuck[0].id).error(
            stuck[0].line,
            f"once the flow reaches {' or '.join(s.id for s in stuck)} it can never end: no end, handoff, "
            "goto to another flow or end of the steps is reachable from there; give the loop a way out",
        )


def call_cycles(flows: dict[str, Flow]) -> Iterator[tuple[str, Call, list[str]]]:
    """(flow, its first call step on the cycle, the cycle) for each flow that calls itself, once per cycle."""
    calls = {
        fid: [s for s in flow.steps if isinstance(s, Call) and s.flow in flows] for fid, flow in flows.items()
    }
    for flow_id in sorted(flows):
        path = _call_path(flow_id, calls)
        if path and min(path) == flow_id:
            callee = path[1] if len(path) > 1 else flow_id
            first = next(step for step in calls[flow_id] if step.flow == callee)
            yield flow_id, first, path + [flow_id]


def _call_path(start: str, calls: dict[str, list[Call]]) -> list[str]:
    """The shortest chain of calls from `start` back to itself (without the final return), or []."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        for step in calls[current]:
            if step.flow == start:
                chain = [current]
                while chain[-1] != start:
                    chain.append(parent[chain[-1]])
                return chain[::-1]
            if step.flow not in parent:
                parent[step.flow] = current
                queue.append(step.flow)
    return []
