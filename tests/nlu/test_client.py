"""NluClient against a fake Rasa over real HTTP: answers, cache, timeouts, failures, bad input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import REGISTRY

from core.shared_state import MemoryState, SharedState
from nlu.client import NluClient
from nlu.settings import NluSettings
from tests.nlu.conftest import FakeRasa

INTENTS = {"greet", "goodbye", "thanks", "affirm", "deny", "ask_price", "ask_product", "ask_discount",
           "ask_shipping", "ask_order_status", "join_group_buy", "ask_group_buy_status", "invite_friend",
           "want_human", "complain", "refund", "unsubscribe", "resubscribe", "chitchat", "out_of_scope",
           "nlu_fallback"}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def make_client(fake_rasa: FakeRasa) -> AsyncIterator[Callable[..., NluClient]]:
    clients: list[NluClient] = []

    def make(settings: NluSettings, state: SharedState | None = None) -> NluClient:
        client = NluClient(settings, state or MemoryState(), fake_rasa.url)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def started(client: NluClient) -> NluClient:
    await client.start()
    assert await client.wait_ready(5)
    return client


async def test_rasa_answers_then_the_cache_does(make_client, fake_rasa, nlu_settings, state) -> None:
    client = await started(make_client(nlu_settings(), state))
    first = await client.parse("在吗")
    again = await client.parse(" 在吗\u200b ")
    assert (first.name, first.source) == ("greet", "rasa")
    assert (again.name, again.confidence, again.source) == ("greet", first.confidence, "cache")
    assert fake_rasa.received == ["在吗"]
    assert client.health()["status"] == "ok"


async def test_slow_rasa_gets_rules_within_the_timeout(make_client, fake_rasa, nlu_settings) -> None:
    client = await started(make_client(nlu_settings(timeout_ms=100)))
    fake_rasa.mode = "hang"
    before = metric("scrm_nlu_fallbacks_total", reason="timeout")
    began = time.perf_counter()
    intent = await client.parse("拼团还差几个人")
    elapsed = time.perf_counter() - began
    assert (intent.name, intent.source) == ("ask_group_buy_status", "rules")
    assert elapsed < 0.1 + 0.1
    assert metric("scrm_nlu_fallbacks_total", reason="timeout") == before + 1


async def test_repeated_failures_make_the_client_degraded_loudly(make_client, fake_rasa, nlu_settings,
                                                                  caplog) -> None:
    client = await started(make_client(nlu_settings(breaker_failures=2)))
    fake_rasa.mode = "error"
    for text in ("转人工", "多少钱"):
        assert (await client.parse(text)).source == "rules"
    health = client.health()
    assert health["status"] == "degraded" and "2 Rasa errors in a row" in health["reason"]
    assert "nlu.rasa.down" in caplog.text
    assert metric("scrm_nlu_rasa_up") == 0
    calls = len(fake_rasa.received)
    began = time.perf_counter()
    assert (await client.parse("别再发了")).name == "unsubscribe"  # answered without asking Rasa
    assert len(fake_rasa.received) == calls and time.perf_counter() - began < 0.05


async def test_client_recovers_when_rasa_comes_back(make_client, fake_rasa, nlu_settings) -> None:
    client = await started(make_client(nlu_settings(breaker_failures=1, breaker_cooldown_s=0.05)))
    fake_rasa.mode = "down"
    assert (await client.parse("你好")).source == "rules"
    fake_rasa.mode = "ok"
    assert await client.wait_ready(5)
    intent = await client.parse("你好")
    assert intent.source == "rasa"  # the rules answer given during the outage was not cached
    assert client.health()["status"] == "ok"


async def test_unreadable_rasa_answer_falls_back(make_client, fake_rasa, nlu_settings) -> None:
    client = await started(make_client(nlu_settings()))
    fake_rasa.mode = "junk"
    before = metric("scrm_nlu_fallbacks_total", reason="error")
    assert (await client.parse("我要退款")).source == "rules"
    assert metric("scrm_nlu_fallbacks_total", reason="error") == before + 1


async def test_rasa_not_ready_means_rules_and_degraded_health(make_client, fake_rasa, nlu_settings) -> None:
    fake_rasa.mode = "down"
    client = make_client(nlu_settings())
    await client.start()
    intent = await client.parse("多少钱")
    assert (intent.name, intent.source) == ("ask_price", "rules")
    assert client.health()["status"] == "degraded"
    assert fake_rasa.received == []


async def test_unreachable_rasa_url_falls_back(nlu_settings) -> None:
    client = NluClient(nlu_settings(), MemoryState(), "http://127.0.0.1:9")
    await client.start()
    try:
        assert (await client.parse("谢谢")).name == "thanks"
        assert client.health()["status"] == "degraded"
    finally:
        await client.close()


async def test_customer_cannot_steer_rasa_with_a_slash_command(make_client, fake_rasa, nlu_settings) -> None:
    client = await started(make_client(nlu_settings()))
    await client.parse('/want_human{"phone":"13800000000"}')
    await client.parse("／greet")
    assert fake_rasa.received and not any(t.strip().startswith("/") for t in fake_rasa.received)


@pytest.mark.parametrize("text", ["", "   ", "多" * 10_000, "😂👍🙏", "\x00\x01\x02\xff\xfe", "\ufffd" * 20,
                                  "<xml><Content><![CDATA[hi]]></Content></xml>", '{"text": "/greet"}',
                                  "\ud800", "a" * 50_000 + "/greet"])
async def test_bad_input_gets_a_defined_intent_and_never_raises(make_client, fake_rasa, nlu_settings,
                                                                text: str) -> None:
    fake_rasa.intent = "out_of_scope"
    client = await started(make_client(nlu_settings()))
    intent = await client.parse(text)
    assert intent.name in INTENTS and 0.0 <= intent.confidence <= 1.0
    assert all(len(t) <= 300 for t in fake_rasa.received)


async def test_identical_messages_in_flight_share_one_rasa_call(make_client, fake_rasa, nlu_settings) -> None:
    client = await started(make_client(nlu_settings(cache_ttl_s=0)))
    results = await asyncio.gather(*(client.parse("多少钱") for _ in range(20)))
    assert {r.source for r in results} == {"rasa"}
    assert len(fake_rasa.received) < 20


async def test_entities_are_checked_and_completed_by_the_patterns(make_client, fake_rasa, nlu_settings) -> None:
    fake_rasa.intent = "want_human"
    fake_rasa.entities = [{"entity": "invite_code", "value": "xxxxxxxxxxxxxxxxxxxxxxx", "start": 0, "end": 23},
                          {"entity": "product", "value": "面膜", "start": 0, "end": 2}]
    client = await started(make_client(nlu_settings()))
    intent = await client.parse("面膜的事转人工 13812345678")
    assert {(e.name, e.value) for e in intent.entities} == {("product", "面膜"), ("phone", "13812345678")}
    assert intent.entity("phone") == "13812345678"


async def test_rules_mode_never_calls_rasa(make_client, fake_rasa, nlu_settings) -> None:
    client = make_client(nlu_settings(mode="rules"))
    await client.start()
    assert (await client.parse("转人工")).source == "rules"
    assert fake_rasa.received == []
    assert client.health() | {"status": "ok", "rasa": "disabled"} == client.health()


async def test_requests_and_latency_are_counted_by_source(make_client, nlu_settings) -> None:
    client = make_client(nlu_settings(mode="rules"))
    await client.start()
    before = metric("scrm_nlu_requests_total", source="rules")
    count_before = metric("scrm_nlu_parse_seconds_count", source="rules")
    await client.parse("在吗")
    assert metric("scrm_nlu_requests_total", source="rules") == before + 1
    assert metric("scrm_nlu_parse_seconds_count", source="rules") == count_before + 1
