"""Clustering what nothing answered: phrasings of one shop question group, other questions do not."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

from crm_store.faq_queries import TURN_UNANSWERED
from crm_store.faq_reports import Unanswered
from flows.faq_suggest import key_of, suggest
from nlu.text import clean

# What customers of a tea and snacks shop wrote that the bot could not answer, by the question meant.
ASKED = {
    "invoice": ["能开发票吗", "能开发票吗", "能开发票吗", "怎么开发票", "可以开发票吗？", "请问能开发票吗", "我要开发票",
                "开发票"],
    "xinjiang": ["新疆发货吗", "新疆发货吗", "新疆能发吗", "新疆能发货吗", "亲，新疆发货吗"],
    "shelf_life": ["保质期多久", "保质期多久啊", "保质期多长时间", "这个保质期多久", "保质期是多久"],
    "wholesale": ["可以批发吗", "批发价多少", "有批发价吗", "批发多少钱"],
    "coupon": ["有没有优惠券", "优惠券怎么用", "优惠券在哪领"],
    "address": ["怎么改地址", "能改地址吗"],
    "late_order": ["订单2026031512345怎么还没到", "订单2026031600001怎么还没到"],
}
UNRELATED = ["你们老板是谁", "今天天气怎么样", "退货运费谁出", "有赠品吗"]
NOISE = ["😀😀😀", "123456", "？？？", "Ã©Ã¨Ã¢Ã§Ã¹"]
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def asked(texts: list[str], handed_off: frozenset[int] = frozenset()) -> list[Unanswered]:
    return [Unanswered(text, n % 5, NOW, TURN_UNANSWERED, n in handed_off) for n, text in enumerate(texts)]


def every_text() -> list[str]:
    return [text for texts in ASKED.values() for text in texts] + UNRELATED + NOISE


def test_phrasings_of_one_question_cluster_and_other_questions_do_not() -> None:
    found = suggest(asked(every_text()), limit=50)
    meant = {clean(text, 200): question for question, texts in ASKED.items() for text in texts}  # as shown
    groups = [{meant.get(text, text) for text in suggestion.questions} for suggestion in found]
    for question in ASKED:
        assert {question} in groups, f"{question} is split or mixed: {groups}"
    for text in UNRELATED:
        assert {text} in groups  # each alone
    assert len(found) == len(ASKED) + len(UNRELATED)  # the noise is dropped


def test_the_most_asked_come_first_with_their_most_frequent_texts() -> None:
    found = suggest(asked(every_text()), limit=4)
    assert [(s.id, s.title, s.count) for s in found] == [
        ("new_01", "能开发票吗", 8), ("new_02", "保质期多久", 5), ("new_03", "新疆发货吗", 5), ("new_04", "可以批发吗", 4)]
    invoice = found[0]
    assert invoice.examples == ("能开发票吗", "可以开发票吗?", "开发票")  # most frequent, then in text order
    assert len(invoice.questions) == 6  # distinct phrasings: the rows of a CSV


def test_texts_equal_once_normalised_are_one_phrasing() -> None:
    [only] = suggest(asked(["iphone15有货吗", "iPhone 15 有货吗", "IPHONE 15 有货吗 ", "iPhone 15 有货吗"]))
    assert (only.count, only.questions) == (4, ("iPhone 15 有货吗",))  # its most frequent spelling


def test_handoffs_and_customers_are_counted_per_cluster() -> None:
    [only] = suggest(asked(["能开发票吗"] * 7, handed_off=frozenset({0, 3})))
    assert (only.count, only.customers, only.handed_off) == (7, 5, 2)


def test_the_result_does_not_depend_on_the_order_of_the_texts() -> None:
    items = asked(every_text() + ["iphone15有货吗", "iPhone 15 有货吗"], handed_off=frozenset({1, 9}))
    first = suggest(items, limit=50)
    random.Random(3).shuffle(items)
    assert suggest(items, limit=50) == first


def test_keys_keep_the_topic_and_drop_how_it_is_asked() -> None:
    assert key_of("请问能开发票吗？") == key_of("怎么开发票") == "开发票"
    assert key_of("订单123怎么还没到") == key_of("订单98765还没到吗") == "订单#还没到"
    assert key_of("在吗") == "在吗"  # nothing but fillers: kept as it is


def test_five_thousand_texts_cluster_in_well_under_a_second() -> None:
    rng = random.Random(7)
    common = "的一是在不了有和人这中大为上个我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面"
    texts = [rng.choice(every_text()) if rng.random() < 0.5
             else "".join(rng.choice(common) for _ in range(rng.randint(4, 15))) for _ in range(5000)]
    started = time.perf_counter()
    found = suggest(asked(texts), limit=20)
    took = time.perf_counter() - started
    assert len(found) == 20 and found[0].count > 100
    assert took < 1.0, f"{took:.2f}s for 5,000 texts"
