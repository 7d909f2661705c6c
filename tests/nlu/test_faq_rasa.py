"""The starter FAQ through the real Rasa: held-out accuracy, off-topic messages, a swap while serving, publish.

The model is THE model of the real-Rasa tests (tests/nlu/conftest.py started_rasa): the intents
with the starter FAQ, trained once for the suite; this module starts its own server with it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from click.testing import CliRunner

from admin_cli.main import cli
from core.shared_state import MemoryState
from nlu.client import NluClient
from nlu.faq_evaluate import FaqReport, evaluate_faq, format_faq_report
from nlu.server import ManagedRasa, rasa_status
from nlu.settings import NluSettings
from tests.nlu.conftest import STARTER_FLOWS, started_rasa, starter_faq

pytestmark = [pytest.mark.rasa, pytest.mark.asyncio(loop_scope="module")]
ANSWER_AT = 0.7  # flows.faq_answer_at's default
ROWS = starter_faq().training_rows()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rasa() -> AsyncIterator[ManagedRasa]:
    async with started_rasa() as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def faq_report(rasa: ManagedRasa) -> FaqReport:
    return await evaluate_faq(NluSettings(mode="managed"), rasa.url, rasa.token, ROWS, ANSWER_AT)


async def test_held_out_faq_retrieval_reaches_the_goal_of_090(faq_report: FaqReport) -> None:
    """The issue's goal, on 162 held-out phrasings (0.920 measured; 0.933 on the 90 of them written from the
    entries' titles and answers alone). Retrieval is the selector's first pick; the bot answers at once only
    when it is also sure (answered accuracy), and offers the closest entries as choices when it is not."""
    assert faq_report.total == 162 and faq_report.skipped == ()
    assert faq_report.sources == {"rasa": faq_report.total + faq_report.offtopic_total}
    assert faq_report.retrieval_accuracy >= 0.9, format_faq_report(faq_report)
    assert faq_report.retrieval_accuracy >= faq_report.answered_accuracy >= 0.55, format_faq_report(faq_report)


async def test_off_topic_messages_are_not_answered_by_an_faq(faq_report: FaqReport) -> None:
    assert faq_report.offtopic_total >= 30
    assert faq_report.offtopic_answered == [], format_faq_report(faq_report)


async def _served(rasa: ManagedRasa) -> str | None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        return await rasa_status(session, rasa.url, rasa.token)


async def test_a_swap_while_serving_never_stops_the_answers(rasa: ManagedRasa, tmp_path: Path) -> None:
    assert rasa.model is not None
    copy = tmp_path / rasa.model.name.replace(".tar.gz", "-copy.tar.gz")
    await asyncio.to_thread(shutil.copyfile, rasa.model, copy)
    client = NluClient(NluSettings(mode="managed", timeout_ms=2000, cache_ttl_s=0), MemoryState(), rasa.url,
                       rasa.token, faq=ROWS)
    rasa.on_swap(client.use_server)
    await client.start()
    sources: Counter[str] = Counter()
    slowest = 0.0
    swapping = True
    texts = itertools.cycle(["下单以后大概几天能收到货呀", "多少钱", "能开发票吗", "转人工"])

    async def customer() -> None:
        nonlocal slowest
        while swapping:
            began = time.perf_counter()
            sources[(await client.parse(next(texts))).source] += 1
            slowest = max(slowest, time.perf_counter() - began)
            await asyncio.sleep(0.02)

    try:
        assert await client.wait_ready(30)
        running = asyncio.create_task(customer())
        seconds = await rasa.swap(copy)
        swapping = False
        await running
        after = await client.parse("能开发票吗")
    finally:
        swapping = False
        await client.close()
    assert await _served(rasa) == copy.name and rasa.status()["model"] == copy.name
    assert client.model == copy.name.removesuffix(".tar.gz")  # the cache follows the model
    assert sources["rasa"] >= 10 and set(sources) == {"rasa"}, (sources, seconds)
    assert slowest < 2.0 and after.source == "rasa" and after.faq is not None


def _cli(*args: str, env: dict[str, str]) -> Any:
    return CliRunner().invoke(cli, list(args), env=env)


async def test_publish_swaps_the_model_into_the_running_rasa(rasa: ManagedRasa, tmp_path: Path) -> None:
    """Another process's request (swap.json) is carried out by the server's owner: back to the trained model."""
    env = {"SCRM__NLU__MODE": "managed", "SCRM__REDIS__URL": "",
           "SCRM__STORE__URL": f"sqlite+aiosqlite:///{tmp_path / 'scrm.db'}"}
    serving = await _served(rasa)
    result = await asyncio.to_thread(_cli, "faq", "publish", "--dir", str(STARTER_FLOWS), "--json", env=env)
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["release"] == 1 and outcome["entries"] == len(ROWS)
    # the fixture's model, reused (trained again only if the NLU data changed while the tests ran)
    assert outcome["model"].startswith("nlu-") and (outcome["trained"] or outcome["train_s"] is None)
    assert outcome["swap"] == f"swapped {serving} -> {outcome['model']}" and outcome["swap_s"] > 0
    assert await _served(rasa) == outcome["model"]


async def test_publish_refuses_a_broken_faq_and_the_old_model_keeps_serving(rasa: ManagedRasa,
                                                                           tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    await asyncio.to_thread(shutil.copytree, STARTER_FLOWS, flows)
    faq = flows / "faq.yaml"
    text = faq.read_text(encoding="utf-8")
    broken = text.replace("  - id: courier", "  - id: Courier-1", 1).replace("    title: 多久发货、几天到", "    title: ", 1)
    faq.write_text(broken + "  - id: no_answer\n    title: 没有回复\n    questions: [一, 二]\n", encoding="utf-8")
    store = tmp_path / "scrm.db"
    env = {"SCRM__NLU__MODE": "managed", "SCRM__REDIS__URL": "", "SCRM__STORE__URL": f"sqlite+aiosqlite:///{store}"}
    before = await _served(rasa)
    result = await asyncio.to_thread(_cli, "faq", "publish", "--dir", str(flows), env=env)
    assert result.exit_code == 1
    errors = [line for line in result.stdout.splitlines() if "faq.yaml:" in line]
    assert len(errors) >= 3, result.output  # every error, each with its line
    assert "nothing was changed" in result.output
    assert not store.exists()  # nothing published
    assert await _served(rasa) == before
    client = NluClient(NluSettings(mode="managed", timeout_ms=2000), MemoryState(), rasa.url, rasa.token)
    await client.start()
    try:
        assert await client.wait_ready(30)
        assert (await client.parse("发什么快递")).source == "rasa"
    finally:
        await client.close()
