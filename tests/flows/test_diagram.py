"""Flow pictures: Mermaid text and the hand-made SVG, on the loader's full example and on small flows."""

from __future__ import annotations

from pathlib import Path

import pytest
from defusedxml import ElementTree

from crm_store.lifecycle_settings import LifecycleSettings
from flows.diagram import edges, layers, mermaid, nodes, step_targets, summary, svg
from flows.loader import load_directory, load_sources
from flows.model import Flow

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def price_question() -> Flow:
    return load_directory(FIXTURES / "valid", LifecycleSettings()).flows["price_question"]


def one_flow(text: str) -> Flow:
    return next(iter(load_sources({"f.yaml": text}, LifecycleSettings()).flows.values()))


def test_mermaid_has_a_node_per_step_and_labelled_edges(price_question: Flow) -> None:
    text = mermaid(price_question)
    assert text.startswith("flowchart TD\n")
    for step in price_question.steps:
        assert f'"{step.id} · ' in text, step.id
    assert 's0["ask_product · ask: 您想了解哪款商品？"]' in text
    assert 's0 -->|"fail"| s12' in text and 's0 -->|"timeout"| s11' in text  # on_fail, on_timeout
    assert 's1 -->|"我要买"| s4' in text  # a menu choice
    assert 's3 -->|"intent affirm"| s4' in text and 's3 -->|"else"| s11' in text  # branch cases
    assert 's8 -->|"reply"| s3' in text  # a wait's on_reply: a back edge
    assert 's9 -.->|"call"| f_coupon' in text and 'f_coupon[["flow coupon"]]' in text
    assert 's11 --> stop' in text and 'stop(("END"))' in text
    assert "\n    end" not in text  # `end` is a Mermaid keyword: never a node id


def test_mermaid_escapes_quotes_and_truncates_long_text() -> None:
    flow = one_flow('flow: q\nsteps:\n  - say: \'他说 "你好" <b>，然后我们一起去吃了一顿很长很长很长的晚饭\'\n')
    line = mermaid(flow).splitlines()[2]
    assert "#quot;你好#quot;" in line and "#lt;b#gt;" in line and '"' not in line[line.index("[") + 2 : -2]
    assert line.endswith('…"]')


def test_goto_another_flow_and_labels_of_each_step_kind() -> None:
    flows = load_sources({
        "a.yaml": "flow: a\nsteps:\n  - {id: f_x, tag: [vip], untag: old}\n  - wait: {for: 90m}\n"
                  "  - set_stage: customer\n  - goto: {flow: b}\n",
        "b.yaml": "flow: b\nsteps:\n  - {handoff: {reason: angry}}\n",
        "tags.yaml": "groups: {g: [vip, old]}\n",
    }, LifecycleSettings())
    a = flows.flows["a"]
    assert [summary(step) for step in a.steps] == ["tag: +vip -old", "wait: 90m", "stage: customer", "goto: flow b"]
    assert step_targets(a.steps[3]) == [("flow:b", "goto")]
    assert "f_b" in nodes(a) and "f_x" not in nodes(a)  # a step called f_x is not taken for a flow
    assert summary(flows.flows["b"].steps[0]) == "handoff: angry"


def test_svg_parses_and_draws_every_step(price_question: Flow) -> None:
    root = ElementTree.fromstring(svg(price_question))
    assert root.tag == f"{SVG}svg"
    titles = [g.find(f"{SVG}title").text for g in root.iter(f"{SVG}g")]
    assert all(step.id in titles for step in price_question.steps)
    texts = "".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "ask: 您想了解哪款商品？" in texts and "END" in texts and "flow coupon" in texts
    paths = list(root.iter(f"{SVG}path"))
    assert sum(" C" in p.get("d", "") for p in paths) >= 1  # the wait's reply goes back up: a curve
    assert any(p.get("stroke-dasharray") for p in paths)  # the call of another flow: dashed


def test_layers_put_every_box_below_the_boxes_leading_to_it(price_question: Flow) -> None:
    layer, back = layers(list(nodes(price_question)), edges(price_question))
    assert layer["start"] == 0 and layer["s0"] == 1
    assert all(layer[e.target] > layer[e.source] for e in edges(price_question) if e not in back)
    assert {(e.source, e.target) for e in back} == {("s8", "s3")}


def test_svg_escapes_markup_in_text() -> None:
    flow = one_flow("flow: x\nsteps:\n  - say: '<script>alert(1)</script> & 你好'\n")
    text = svg(flow)
    assert "<script>" not in text and "&lt;script&gt;" in text
    ElementTree.fromstring(text)
