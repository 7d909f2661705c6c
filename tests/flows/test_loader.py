"""The flow loader on real YAML: a full valid set, and each kind of bad input with its file, line and text."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

import flows.loader
from core.templates import TemplateError, parse_template, render
from crm_store.lifecycle_settings import LifecycleSettings
from flows.errors import FlowError, FlowLoadError
from flows.loader import intents_of_domain, load_directory, load_sources, read_directory, read_paths
from flows.model import (
    END,
    Action,
    Ask,
    Branch,
    Call,
    End,
    EventTrigger,
    Goto,
    Handoff,
    Marketing,
    Say,
    SetStage,
    StageTrigger,
    TagStep,
    TextTrigger,
    Wait,
)
from flows.patterns import compile_pattern

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
LIFECYCLE = LifecycleSettings()
INTENTS = intents_of_domain(ROOT / "nlu" / "project" / "domain.yml")
TAGS = "groups: {意向: [高意向, 低意向], 偏好: [连衣裙, 衬衫]}\n"


def errors_of(files: dict[str, str], intents: frozenset[str] | None = None) -> list[FlowError]:
    with pytest.raises(FlowLoadError) as caught:
        load_sources({"tags.yaml": TAGS, **files}, LIFECYCLE, intents)
    return caught.value.errors


def only_error(files: dict[str, str], intents: frozenset[str] | None = None) -> FlowError:
    errors = errors_of(files, intents)
    assert len(errors) == 1, "\n".join(map(str, errors))
    return errors[0]


def flow_file(steps: str, head: str = "flow: f\n") -> str:
    """A flow file: `head`, then `steps:` and the (dedented) step list; the first step is on line head+2."""
    return head + "steps:\n" + textwrap.indent(textwrap.dedent(steps), "  ")


# ---------------------------------------------------------------- valid flows


def test_full_example_loads_to_expected_objects() -> None:
    flow_set = load_directory(FIXTURES / "valid", LIFECYCLE, INTENTS)
    assert set(flow_set.flows) == {"price_question", "coupon"}
    flow = flow_set.flows["price_question"]
    assert (flow.priority, flow.interruptible, flow.timeout_s) == (60, False, 7200.0)
    assert flow.source_path == "price_question.yaml"
    assert flow.triggers[1] == TextTrigger(
        keywords=("多少钱", "vip价格"), line=10
    )  # NFKC, casefold, no spaces
    assert flow.triggers[2] == TextTrigger(regex="报价|价目表", line=11)
    assert flow.triggers[3] == EventTrigger("enter_session", "kf", "inv_", line=12)
    assert flow.triggers[4] == StageTrigger("interested", line=13)  # label 意向 -> id
    ask = flow.step("ask_product")
    assert isinstance(ask, Ask)
    assert (ask.next, ask.on_fail, ask.on_timeout, ask.timeout_s, ask.retries) == (
        "step2",
        "human",
        "bye",
        600.0,
        1,
    )
    assert ask.reprompt == ask.prompt
    say = flow.step("step2")
    assert isinstance(say, Say) and say.text.fields == ("slots.product", "customer.name")
    assert say.menu[0].goto == "hot" and say.links[0].url == "https://example.com/p"
    decide = flow.step("decide")
    assert isinstance(decide, Ask) and decide.on_fail == END and decide.intents == ("affirm", "deny")
    branch = flow.step("route")
    assert isinstance(branch, Branch) and branch.otherwise == "bye" and branch.next == "hot"
    assert branch.cases[1].when.stage == ("interested", "customer")
    assert flow.step("hot") == TagStep(id="hot", next="step6", line=35, add=("高意向",), remove=("低意向",))
    assert flow.step("step6") == SetStage(id="step6", next="step7", line=36, stage="interested")
    action = flow.step("step7")
    assert isinstance(action, Action) and action.params == {"size": 3}
    wait = flow.step("later")
    assert isinstance(wait, Wait) and (wait.seconds, wait.reply, wait.on_reply) == (86400.0, True, "route")
    assert isinstance(flow.step("step10"), Call) and isinstance(flow.step("step11"), Marketing)
    assert flow.step("bye") == End(id="bye", next=END, line=44, message=parse_template("感谢咨询"))
    handoff = flow.step("human")
    assert isinstance(handoff, Handoff) and handoff.next == END and handoff.reason == "price"
    assert flow_set.tags.group_of("衬衫") == "偏好"
    assert flow_set.rules[0].stage == "interested" and flow_set.rules[0].count == 3
    assert set(flow_set.sources) == {"price_question.yaml", "coupon.yaml", "tags.yaml", "rules.yaml"}


def test_loader_docstring_example_is_valid() -> None:
    doc = flows.loader.__doc__ or ""
    example = textwrap.dedent(doc[doc.index("    flow: price_question") : doc.index("\nTemplates")])
    coupon = "flow: coupon\nsteps: [{say: 送您一张优惠券}]\n"
    flow_set = load_sources({"p.yaml": example, "coupon.yaml": coupon, "tags.yaml": TAGS}, LIFECYCLE, INTENTS)
    assert flow_set.flows["price_question"].steps[-1].id == "human"


def test_goto_step_and_flow_and_end_have_no_next() -> None:
    files = {
        "f.yaml": flow_file("- {ask: 好吗, next: again}\n- {id: again, goto: step1}\n"),
        "g.yaml": flow_file("- goto: {flow: f}\n", "flow: g\n"),
    }
    flow_set = load_sources({"tags.yaml": TAGS, **files}, LIFECYCLE)
    assert flow_set.flows["f"].steps[1] == Goto(id="again", next=END, line=4, step="step1")
    assert flow_set.flows["g"].steps[0] == Goto(id="step1", next=END, line=3, flow="f")


# ---------------------------------------------------------------- step 1: safety and schema


def test_missing_step_is_reported_with_file_line_flow_and_step() -> None:
    error = only_error(
        {"welcome.yaml": flow_file("- say: 你好\n- {id: ask_phone, ask: 电话？, next: quote}\n")}
    )
    assert (error.file, error.line, error.flow, error.step) == ("welcome.yaml", 4, "f", "ask_phone")
    assert (
        str(error)
        == "welcome.yaml:4: flow f, step ask_phone: unknown step 'quote' in next (steps are: step1, ask_phone)"
    )


def test_unknown_step_type_suggests_the_closest_one() -> None:
    error = only_error({"f.yaml": flow_file("- say: 你好\n- sya: 再见\n")})
    assert (error.line, error.step) == (4, "step2")
    assert error.message.startswith("unknown step type 'sya' (did you mean say?); step types are: say, ask")


def test_step_with_two_types_is_refused() -> None:
    error = only_error({"f.yaml": flow_file("- {say: 你好, ask: 电话？}\n")})
    assert error.line == 3 and "say, ask" in error.message and "split it" in error.message


def test_unknown_key_suggests_the_closest_one() -> None:
    error = only_error({"f.yaml": flow_file("- ask: 电话？\n  slto: phone\n")})
    assert error.line == 4 and error.message.startswith("unknown key 'slto' (did you mean slot?)")


def test_wrong_types_and_out_of_range_numbers() -> None:
    errors = errors_of(
        {"f.yaml": flow_file("- {ask: 电话？, retries: 9}\n- {wait: soon}\n", "flow: f\npriority: high\n")}
    )
    assert [(e.line, e.message) for e in errors] == [
        (2, "expected a whole number, got the text 'high'"),
        (4, "9 is out of range: expected 0 to 5"),
        (5, 'expected a duration (seconds, or "90s", "30m", "2h", "1d"), got the text \'soon\''),
    ]


def test_anchor_bomb_is_refused_before_it_expands() -> None:
    laughs = ['lol: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    laughs += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, 10)]
    started = time.perf_counter()
    error = only_error({"bomb.yaml": "flow: bomb\n" + "\n".join(laughs) + "\n"})
    assert time.perf_counter() - started < 0.5
    assert (error.file, error.line) == ("bomb.yaml", 2)
    assert "anchors and aliases" in error.message


def test_merge_keys_and_custom_tags_are_refused() -> None:
    merge = only_error({"m.yaml": flow_file("- say: hi\n  <<: {next: step1}\n")})
    assert merge.line == 4 and "merge keys (<<) are not allowed" in merge.message
    tagged = only_error({"t.yaml": "flow: t\nsteps: !!python/object/apply:os.system [echo owned]\n"})
    assert tagged.line == 2 and "custom tag '!!python/object/apply:os.system'" in tagged.message


def test_duplicate_key_is_reported_not_silently_overwritten() -> None:
    error = only_error({"f.yaml": flow_file("- say: 你好\n  say: 再见\n")})
    assert (error.line, error.message) == (4, "duplicate key 'say' (first at line 3): keep one")


def test_several_documents_and_non_mapping_files_are_refused() -> None:
    errors = errors_of({"two.yaml": "flow: a\n---\nflow: b\n", "list.yaml": "- say: hi\n", "empty.yaml": ""})
    assert [(e.file, e.line) for e in errors] == [("empty.yaml", 0), ("list.yaml", 1), ("two.yaml", 2)]
    assert "one document per file" in errors[2].message


def test_ten_megabyte_file_is_rejected_without_reading_it(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as handle:
        handle.truncate(10 * 1024 * 1024)  # sparse: stat() says 10 MB, nothing was written
    (tmp_path / "ok.yaml").write_text(flow_file("- say: hi\n"), encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(FlowLoadError) as caught:
        read_directory(tmp_path)
    assert time.perf_counter() - started < 0.2
    assert [str(e) for e in caught.value.errors] == ["huge.yaml: file is 10.0 MB; the limit is 256 KB"]
    too_big = only_error({"big.yaml": "flow: big\n" + "#" * (300 * 1024)})
    assert (too_big.line, too_big.message) == (0, "file is 300 KB; the limit is 256 KB")


def test_file_that_is_not_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "latin.yaml").write_bytes(b"flow: latin\nsteps:\n  - say: caf\xe9\n")
    with pytest.raises(FlowLoadError) as caught:
        read_directory(tmp_path)
    assert str(caught.value) == "latin.yaml:3: not UTF-8 text (byte 0xe9): save the file as UTF-8"


def test_empty_steps_list_is_refused() -> None:
    error = only_error({"f.yaml": "flow: f\nsteps: []\n"})
    assert (error.line, error.message) == (2, "expected at least 1 steps, got 0")


# ---------------------------------------------------------------- templates and patterns


@pytest.mark.parametrize(
    "source",
    [
        "{{ customer.__class__ }}",
        "{{ x() }}",
        "{% for x in y %}{% endfor %}",
        "{{ a | upper }}",
        "{{ a[0] }}",
        "{# note #}",
        "价格 {{ slots.product",
        "}} 价格",
        "{{ a + b }}",
    ],
)
def test_template_allows_only_dotted_names(source: str) -> None:
    with pytest.raises(TemplateError, match="only shows fields"):
        parse_template(source)
    error = only_error({"f.yaml": flow_file(f"- say: '{source}'\n")})
    assert (error.line, error.step) == (3, "step1") and "only shows fields" in error.message


def test_render_substitutes_and_never_evaluates() -> None:
    template = parse_template("{{customer.name}}，{{ slots.product }} 只要 {{ slots.price }} 元")
    assert template.fields == ("customer.name", "slots.product", "slots.price")
    values = {"customer.name": "{{ customer.id }}", "slots.product": "__import__('os')", "customer.id": "42"}
    assert render(template, values) == "{{ customer.id }}，__import__('os') 只要  元"


def test_unknown_template_fields_are_named() -> None:
    errors = errors_of({"f.yaml": flow_file("- say: '{{ slots.phone }} {{ customer.nmae }}'\n")})
    assert [e.line for e in errors] == [3, 3]
    assert errors[0].message.startswith(
        "template field slots.phone in say is never filled in this flow (filled: none)"
    )
    assert errors[1].message.startswith(
        "unknown template field 'customer.nmae' in say (did you mean customer.name?)"
    )


def test_slots_filled_by_ask_action_or_flow_declaration_are_allowed() -> None:
    steps = """\
        - {ask: 哪款？, slot: product}
        - action: invite.show
        - say: '{{ slots.product }}{{ slots.invite_link }}{{ slots.phone }}'
        """
    load_sources({"f.yaml": flow_file(steps, "flow: f\nslots: [phone]\n")}, LIFECYCLE)


def test_catastrophic_regex_is_bounded() -> None:
    pattern = compile_pattern("(a+)+$")
    started = time.perf_counter()
    assert pattern.search("a" * 100_000 + "!") is False
    assert time.perf_counter() - started < 0.1
    load_sources({"f.yaml": flow_file("- say: hi\n", "flow: f\ntriggers: [{regex: '(a+)+$'}]\n")}, LIFECYCLE)


def test_regex_re2_cannot_run_or_that_matches_everything_is_refused() -> None:
    errors = errors_of(
        {"f.yaml": flow_file("- say: hi\n", "flow: f\ntriggers:\n  - regex: '(a)\\1'\n  - regex: '.*'\n")}
    )
    assert [e.line for e in errors] == [3, 4]
    assert errors[0].message.startswith("regex '(a)\\1' is not valid: invalid escape sequence")
    assert errors[1].message == "regex '.*' matches empty text, so it would match every message"


# ---------------------------------------------------------------- step 3: semantic checks


def test_unreachable_step_is_reported() -> None:
    error = only_error(
        {"f.yaml": flow_file("- {say: hi, next: bye}\n- {id: lost, say: 迷路}\n- {id: bye, end: 再见}\n")}
    )
    assert (error.line, error.step) == (4, "lost")
    assert error.message == "step lost is never reached from the first step (step1): nothing leads to it"


def test_branch_targets_and_choice_gotos_count_as_edges() -> None:
    steps = """\
        - ask: 选一个
          expect: choice
          choices: [{id: a, text: A, goto: picked}]
        - branch: [{when: {tag: 高意向}, goto: hot}, {else: cold}]
        - {id: hot, end: 热}
        - {id: cold, end: 冷}
        - {id: picked, end: 选了}
        """
    load_sources({"tags.yaml": TAGS, "f.yaml": flow_file(steps)}, LIFECYCLE)


def test_loop_without_ask_or_wait_is_reported() -> None:
    steps = "- {id: a, say: 一, next: b}\n- {id: b, branch: [{when: {tag: 高意向}, goto: a}]}\n- end: 完\n"
    error = only_error({"f.yaml": flow_file(steps)})
    assert (error.line, error.step) == (3, "a")
    assert error.message.startswith("steps a → b → a loop without an ask or a wait")


def test_loop_that_can_never_end_is_reported() -> None:
    steps = "- {id: a, wait: 1d}\n- {say: 又一天, next: a}\n"
    error = only_error({"f.yaml": flow_file(steps)})
    assert (error.line, error.step) == (3, "a")
    assert error.message.startswith("once the flow reaches a or step2 it can never end")


def test_unknown_tag_stage_intent_and_action_are_named_with_suggestions() -> None:
    steps = """\
        - tag: 高意像
        - set_stage: 意像
        - {ask: 好吗？, expect: intent, intents: [afirm]}
        - action: invite.shw
        """
    errors = errors_of({"f.yaml": flow_file(steps)}, INTENTS)
    assert [(e.line, e.step) for e in errors] == [(3, "step1"), (4, "step2"), (5, "step3"), (6, "step4")]
    assert errors[0].message.startswith(
        "unknown tag '高意像' in tag (did you mean 高意向?); tags.yaml defines:"
    )
    assert errors[1].message.startswith(
        "unknown stage '意像' in set_stage (did you mean 意向?); stages are: lead (潜在)"
    )
    assert errors[2].message.startswith("unknown intent 'afirm' in intents (did you mean affirm?)")
    assert errors[3].message.startswith("unknown action 'invite.shw' (did you mean invite.show?)")


def test_unknown_tag_in_trigger_and_condition() -> None:
    head = "flow: f\ntriggers: [{tag: 不存在}]\n"
    errors = errors_of(
        {"f.yaml": flow_file("- branch: [{when: {not_tag: 也不存在}, goto: step2}]\n- end: x\n", head)}
    )
    assert [(e.line, e.message.split(";")[0]) for e in errors] == [
        (2, "unknown tag '不存在' in trigger"),
        (4, "unknown tag '也不存在' in when"),
    ]


def test_unknown_flow_in_call_is_reported() -> None:
    error = only_error(
        {"f.yaml": flow_file("- call: coupn\n"), "coupon.yaml": flow_file("- say: hi\n", "flow: coupon\n")}
    )
    assert (error.file, error.line, error.step) == ("f.yaml", 3, "step1")
    assert error.message == "unknown flow 'coupn' in call (did you mean coupon?) (flows are: coupon, f)"


def test_call_cycle_is_reported_once() -> None:
    error = only_error(
        {"a.yaml": flow_file("- call: b\n", "flow: a\n"), "b.yaml": flow_file("- call: a\n", "flow: b\n")}
    )
    assert (error.file, error.line, error.flow) == ("a.yaml", 3, "a")
    assert error.message.startswith("flow a calls itself through call: a → b → a")


def test_duplicate_flow_and_step_ids() -> None:
    errors = errors_of(
        {
            "a.yaml": flow_file("- say: hi\n", "flow: a\n"),
            "b.yaml": flow_file("- {id: x, say: hi}\n- {id: x, say: ho}\n", "flow: a\n"),
        }
    )
    assert [(e.file, e.line, e.message) for e in errors] == [
        ("b.yaml", 1, "flow id 'a' is already used by a.yaml"),
        ("b.yaml", 4, "duplicate step id 'x' (first at line 3)"),
    ]


def test_rules_referring_to_unknown_names_are_reported() -> None:
    rules = "rules:\n  - {id: r, when: {intent: ask_prise, count: 3}, tag: 高意像, set_stage: vip}\n"
    errors = errors_of({"rules.yaml": rules}, INTENTS)
    assert [e.message.split(" (")[0].split(";")[0] for e in errors] == [
        "rule r: unknown intent 'ask_prise' in when",
        "rule r: unknown tag '高意像' in tag",
        "rule r: unknown stage 'vip' in set_stage",
    ]


def test_several_errors_across_files_are_reported_at_once() -> None:
    with pytest.raises(FlowLoadError) as caught:
        load_sources(
            {
                "tags.yaml": TAGS,
                "a.yaml": flow_file("- sya: hi\n", "flow: a\n"),
                "b.yaml": flow_file("- {say: hi, next: nope}\n", "flow: b\n"),
                "c.yaml": "flow: c\nsteps: &x []\n",
            },
            LIFECYCLE,
        )
    lines = str(caught.value).splitlines()
    assert [line.split(":")[0] for line in lines] == ["a.yaml", "b.yaml", "c.yaml"]
    assert lines[1] == "b.yaml:3: flow b, step step1: unknown step 'nope' in next (steps are: step1)"


# ---------------------------------------------------------------- files and folders


def test_read_paths_overrides_configured_files_by_name(tmp_path: Path) -> None:
    base = {"f.yaml": "flow: f\nsteps: [{say: 旧}]\n", "tags.yaml": TAGS}
    new = tmp_path / "f.yaml"
    new.write_text("flow: f\nsteps: [{say: 新}]\n", encoding="utf-8")
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "g.yml").write_text("flow: g\nsteps: [{say: g}]\n", encoding="utf-8")
    sources = read_paths([new, tmp_path / "more"], base)
    assert set(sources) == {"f.yaml", "g.yml", "tags.yaml"} and "新" in sources["f.yaml"]
    with pytest.raises(FlowLoadError, match="missing.yaml: no such file or directory"):
        read_paths([tmp_path / "missing.yaml"], base)


def test_intents_of_domain_lists_the_nlu_intents() -> None:
    assert {"ask_price", "affirm", "want_human"} <= INTENTS


def test_a_negative_social_value_in_a_branch_is_refused() -> None:
    steps = "- branch:\n    - {when: {social_min: -5}, goto: b}\n    - else: b\n- {id: b, end: 好}\n"
    error = only_error({"f.yaml": flow_file(steps)})
    assert (error.file, error.message) == ("f.yaml", "-5 is out of range: expected 0 to 1000000000")
