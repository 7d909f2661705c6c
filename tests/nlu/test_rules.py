"""The keyword rules that answer while Rasa is down."""

from __future__ import annotations

import pytest

from nlu.intent import FALLBACK_INTENT, OUT_OF_SCOPE_INTENT
from nlu.rules import load_rules
from nlu.settings import NluSettings
from nlu.text import clean

RULES = load_rules(NluSettings().project_path() / "rules.yml")


@pytest.mark.parametrize(
    "text,intent",
    [("在吗", "greet"), ("多少钱", "ask_price"), ("拼团还差几个人", "ask_group_buy_status"), ("转人工", "want_human"),
     ("别再发了", "unsubscribe"), ("TD", "unsubscribe"), ("td", "unsubscribe"), ("我要退款", "refund"),
     ("谢谢", "thanks"), ("好的", "affirm"), ("不用了", "deny"), ("包邮吗", "ask_shipping"),
     ("我的快递到哪了", "ask_order_status"), ("有优惠券吗", "ask_discount"), ("恢复推送", "resubscribe"),
     ("邀请码怎么用", "invite_friend"), ("我要拼团", "join_group_buy"), ("质量太差了", "complain")],
)
def test_common_messages(text: str, intent: str) -> None:
    result = RULES.classify(clean(text, 300))
    assert (result.name, result.source) == (intent, "rules")
    assert result.confidence > 0.5


def test_no_match_is_the_fallback_intent() -> None:
    result = RULES.classify("qwertyuiop")
    assert (result.name, result.confidence) == (FALLBACK_INTENT, 0.0)


def test_empty_text_is_out_of_scope() -> None:
    assert RULES.classify("").name == OUT_OF_SCOPE_INTENT


def test_entities_by_pattern_and_product_list() -> None:
    found = {(e.name, e.value) for e in RULES.classify("买3盒面膜，电话13812345678，团号pt8k3q，邀请码YQ7H2K").entities}
    assert found == {("quantity", "3"), ("product", "面膜"), ("phone", "13812345678"), ("group_code", "PT8K3Q"),
                     ("invite_code", "YQ7H2K")}


def test_stop_requests_win_over_other_keywords() -> None:
    # "别再发优惠了" mentions a discount, but the customer is asking us to stop.
    assert RULES.classify("别再发优惠了").name == "unsubscribe"


def test_implausible_entity_values_are_refused() -> None:
    assert not RULES.plausible("invite_code", "XXXXXXXXXXXXXXXXXXXX")
    assert not RULES.plausible("phone", "12")
    assert RULES.plausible("phone", "13812345678")
    assert RULES.plausible("quantity", "两")
