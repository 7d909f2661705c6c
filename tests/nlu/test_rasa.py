"""The trained Rasa model behind the real client: accuracy, the brief's messages, bad input, restarts.

Needs the Rasa virtualenv (scripts/setup_rasa.sh); trains the model once if the
data changed (about 2-5 minutes on 2 cores), then starts one server for the module.
The model is the one `scrm serve` runs: the intents with the starter FAQ (its own tests
are in test_faq_rasa.py and use the same model).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from click.testing import CliRunner

from admin_cli.main import cli
from core.shared_state import MemoryState
from nlu.client import NluClient
from nlu.evaluate import HARMFUL_INTENTS, evaluate_held_out
from nlu.server import ManagedRasa
from nlu.settings import NluSettings
from tests.nlu.conftest import started_rasa

pytestmark = [pytest.mark.rasa, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rasa() -> AsyncIterator[ManagedRasa]:
    async with started_rasa() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="module")
async def client(rasa: ManagedRasa) -> AsyncIterator[NluClient]:
    nlu = NluClient(NluSettings(mode="managed", timeout_ms=2000), MemoryState(), rasa.url, rasa.token)
    await nlu.start()
    assert await nlu.wait_ready(30)
    yield nlu
    await nlu.close()


async def test_held_out_accuracy_and_macro_f1_reach_090(rasa: ManagedRasa) -> None:
    report = await evaluate_held_out(NluSettings(mode="managed"), rasa.url, rasa.token)
    assert report.extra["answered_by_rules_instead_of_rasa"] == 0
    assert report.accuracy >= 0.90 and report.macro_f1 >= 0.90, report.to_dict()


async def test_held_out_set_has_no_harmful_misroutes(rasa: ManagedRasa) -> None:
    """The issue's goal: no held-out message read as a costly intent it did not mean (nlu.evaluate.HARMFUL_INTENTS),
    with the starter FAQ's retrieval intent in the same model."""
    report = await evaluate_held_out(NluSettings(mode="managed"), rasa.url, rasa.token)
    assert report.harmful_total == 0, report.harmful


@pytest.mark.parametrize("text", ["发错货了！！！", "给我发错颜色了", "不要再发错货了"])
async def test_a_wrong_item_complaint_is_not_read_as_a_costly_intent(client: NluClient, text: str) -> None:
    result = await client.parse(text)  # "发错货了！！！" was unsubscribe at 0.998
    assert result.source == "rasa" and result.name not in HARMFUL_INTENTS, result


@pytest.mark.parametrize("text,intent", [("在吗", "greet"), ("多少钱", "ask_price"),
                                         ("拼团还差几个人", "ask_group_buy_status"), ("转人工", "want_human"),
                                         ("别再发了", "unsubscribe"), ("TD", "unsubscribe")])
async def test_the_briefs_messages(client: NluClient, text: str, intent: str) -> None:
    result = await client.parse(text)
    assert (result.name, result.source) == (intent, "rasa")


async def test_entities_come_back(client: NluClient) -> None:
    result = await client.parse("我要参加PT8K3Q，电话13812345678")
    assert result.entity("group_code") == "PT8K3Q" and result.entity("phone") == "13812345678"


async def test_raw_rasa_obeys_slash_commands_but_our_client_does_not(rasa: ManagedRasa, client: NluClient) -> None:
    command = '/want_human{"phone":"13800000000"}'
    async with aiohttp.ClientSession() as session, session.post(
        f"{rasa.url}/model/parse", params={"token": rasa.token}, json={"text": command}
    ) as resp:
        raw = await resp.json()
    assert raw["intent"]["name"] == "want_human" and raw["intent"]["confidence"] == 1.0  # the threat
    result = await client.parse(command)
    assert result.source == "rasa" and (result.name, result.confidence) != ("want_human", 1.0)


@pytest.mark.parametrize("text", ["", "多" * 10_000, "😂😂😂", "\x00\x01\xff\xfe", "<xml><a>1</a></xml>",
                                  '{"msgtype": "text"}', "asdfghjkl"])
async def test_bad_input_gets_out_of_scope_or_fallback(client: NluClient, text: str) -> None:
    result = await client.parse(text)
    assert result.name in {"out_of_scope", "nlu_fallback", "chitchat"}, (text[:20], result)


async def test_killed_server_is_restarted_and_rules_answer_meanwhile(rasa: ManagedRasa) -> None:
    nlu = NluClient(NluSettings(mode="managed", timeout_ms=300, breaker_failures=1), MemoryState(),
                    rasa.url, rasa.token)
    await nlu.start()
    try:
        assert await nlu.wait_ready(30)
        restarts = rasa.restarts
        os.kill(rasa.status()["pid"], signal.SIGKILL)
        began = time.perf_counter()
        result = await nlu.parse("转人工")
        assert (result.name, result.source) == ("want_human", "rules")
        assert time.perf_counter() - began < 0.3 + 0.2
        deadline = time.monotonic() + 30
        while rasa.restarts == restarts and time.monotonic() < deadline:  # the supervisor notices the death
            await asyncio.sleep(0.05)
        assert rasa.restarts == restarts + 1
        assert await rasa.wait_ready(300)
        assert await nlu.wait_ready(30)
        # A restarted model's first answers can outlast the 300 ms budget (its graph warms up): those
        # are answered by the rules and the client waits for the next probe; Rasa answers again soon.
        deadline = time.monotonic() + 30
        while (source := (await nlu.parse("有优惠吗")).source) != "rasa" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert source == "rasa"
    finally:
        await nlu.close()


async def test_cli_parse_uses_the_running_server(rasa: ManagedRasa) -> None:
    assert await rasa.wait_ready(300)
    env = {"SCRM__NLU__MODE": "managed", "SCRM__REDIS__URL": ""}
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["nlu", "parse", "--json", "多少钱"], env=env)
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.splitlines()[0])
    assert (row["intent"], row["source"]) == ("ask_price", "rasa")
    assert "starting one" not in result.stderr
