"""`scrm channels ...` through Click's runner, against the fake WeCom/OA API served on a local port.

The fake runs in a thread with its own event loop (the CLI runs `asyncio.run` itself), so
the commands talk HTTP to it exactly as they would to WeChat; the tests read what WeChat's
side holds (`fake.contact_ways`, `kf_links`, `qr_codes`) and what the store holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from admin_cli.main import cli
from bot.channel_rota import refresh_rotas
from bot.runtime import build_apis
from bot.sandbox.fake_wechat import FakeWeChat
from bot.sandbox.simulator import fake_for
from bot.settings import Settings, load_settings
from core.shared_state import open_shared_state
from crm_store.channels import brand_day, channel_by_code, record_arrival
from crm_store.customers import Profile, resolve_customer
from crm_store.db import create_engine, session_factory
from flows.loader import read_directory
from flows.publishing import publish_flows, validate
from tests.admin_cli.harness import served
from tests.conftest import Backend

VALID = Path(__file__).resolve().parents[1] / "flows" / "fixtures" / "valid"  # flows coupon, price_question


@dataclass
class FakeServer:
    fake: FakeWeChat
    url: str


@pytest.fixture
def fake_api(clean_env: None) -> Iterator[FakeServer]:
    """The sandbox's fake API, with config.yaml's sandbox credentials, on a free port in its own thread."""
    fake = fake_for(load_settings(nlu={"mode": "rules"}))
    with served(fake.app()) as (url,):
        yield FakeServer(fake, f"{url}/cgi-bin")


class Scrm:
    """`scrm` against one store and the fake API."""

    def __init__(self, backend: Backend, api_url: str) -> None:
        self.env = {"SCRM__STORE__URL": backend.store_url, "SCRM__REDIS__URL": backend.redis_url,
                    "SCRM__NLU__MODE": "rules", "SCRM__WECOM__API_BASE": api_url, "SCRM__OA__API_BASE": api_url}
        self.settings = load_settings(store={"url": backend.store_url}, redis={"url": backend.redis_url},
                                      nlu={"mode": "rules"}, wecom={"api_base": api_url}, oa={"api_base": api_url})

    def __call__(self, *args: str, ok: bool = True) -> Result:
        result = CliRunner().invoke(cli, ["channels", *args], env=self.env)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)

    def sql(self, statement: str) -> None:
        async def run() -> None:
            engine = create_engine(self.settings.store.url)
            try:
                async with engine.begin() as connection:
                    await connection.execute(text(statement))
            finally:
                await engine.dispose()

        asyncio.run(run())

    def arrivals(self, code: str, *arrivals: tuple[str, str, str], day: str | None = None) -> None:
        """Customers (external id, stage, rep) arrive through the channel, on `day` (default: the brand's today)."""
        async def run() -> None:
            engine = create_engine(self.settings.store.url)
            try:
                async with session_factory(engine)() as session, session.begin():
                    channel = await channel_by_code(session, code)
                    assert channel is not None
                    for external_id, stage, rep in arrivals:
                        customer = await resolve_customer(session, "wecom", external_id, Profile(external_id))
                        customer.stage = stage
                        await session.flush()
                        await record_arrival(session, channel, customer, rep,
                                             day or brand_day(self.settings.growth.timezone))
            finally:
                await engine.dispose()

        asyncio.run(run())

    def refresh(self, now: datetime | None = None) -> int:
        """The scheduled job, once, with the CLI's settings and API clients."""
        async def run() -> int:
            engine = create_engine(self.settings.store.url)
            state = open_shared_state(self.settings.redis.url or None)
            try:
                async with aiohttp.ClientSession() as http:
                    api = build_apis(self.settings, http, state)["wecom.contacts"]
                    return await refresh_rotas(session_factory(engine), api, self.settings.growth.timezone, now)
            finally:
                await state.close()
                await engine.dispose()

        return asyncio.run(run())


async def publish_fixture(settings: Settings) -> None:
    flows = validate(read_directory(VALID), settings.lifecycle, settings.nlu)
    engine = create_engine(settings.store.url)
    try:
        async with session_factory(engine)() as session, session.begin():
            await publish_flows(session, flows, note="seed")  # tags 高意向 低意向 连衣裙 衬衫 in the catalog
    finally:
        await engine.dispose()


@pytest.fixture
def scrm(backend: Backend, fake_api: FakeServer) -> Scrm:
    run = Scrm(backend, fake_api.url)
    asyncio.run(publish_fixture(run.settings))
    return run


POSTER = ("门店海报", "--kind", "contact_way", "--rep", "zhang", "--rep", "li", "--rep", "wang", "--daily-cap", "2")


def test_create_a_contact_way_then_list_and_show_its_numbers(scrm: Scrm, fake_api: FakeServer) -> None:
    made = scrm.json("create", *POSTER, "--welcome-flow", "coupon", "--tag", "高意向", "--cost", "300")
    code = made["code"]
    assert code.startswith("ch_") and len(code) == 11 and made["url"].startswith("https://wework.qpic.cn/")
    way = fake_api.fake.contact_ways[made["config_id"]]
    assert (way["type"], way["scene"], way["state"], way["user"], way["skip_verify"]) == (
        2, 2, code, ["zhang", "li", "wang"], True)
    assert (made["welcome_flow"], made["tags"], made["rota"], made["cost_yuan"]) == (
        "coupon", ["高意向"], ["zhang", "li", "wang"], 300.0)

    printed = scrm("create", "单人码", "--kind", "contact_way", "--rep", "zhao").stdout
    assert printed.startswith("channel ch_") and "url: https://wework.qpic.cn/" in printed and "reps: zhao\n" in printed
    assert [way["type"] for way in fake_api.fake.contact_ways.values()] == [2, 1]  # one rep: a single contact way

    scrm.arrivals(code, ("wmA", "lead", "zhang"), ("wmB", "customer", "zhang"), ("wmC", "loyal", "li"))
    listed = {row["code"]: row for row in scrm.json("list")}
    assert (listed[code]["adds"], listed[code]["conversions"], listed[code]["cost_per_add"],
            listed[code]["cost_per_conversion"]) == (3, 2, 100.0, 150.0)
    table = scrm("list").stdout
    assert table.splitlines()[0].split() == ["code", "name", "kind", "adds", "conversions", "rate", "cost/add",
                                             "cost/conversion"]
    assert f"{code}  门店海报  contact_way  3     2            67%   ¥100.00   ¥150.00" in table

    shown = scrm.json("show", code)
    assert [(rep["userid"], rep["adds"], rep["cap"]) for rep in shown["rep_adds"]] == [
        ("zhang", 2, 2), ("li", 1, 2), ("wang", 0, 2)]
    text = scrm("show", code.lower()).stdout  # typed in any case
    assert "adds: 3   conversions: 2 (67%)   cost: ¥300.00   per add: ¥100.00" in text
    assert "zhang  2/2         offered" in text and "welcome flow: coupon   tags: 高意向" in text


def test_kf_links_and_oa_codes_carry_the_code(scrm: Scrm, fake_api: FakeServer) -> None:
    link = scrm.json("create", "推文链接", "--kind", "kf_link", "--kf-account", "wkShop", "--cost", "12.5")
    assert link["url"].startswith("https://work.weixin.qq.com/kfid/wkShop?enc_scene=")
    assert link["url"].endswith(f"&scene_param={link['code']}") and link["config_id"] == ""
    assert fake_api.fake.kf_links == [{"open_kfid": "wkShop", "scene": link["code"], "url": link["url"].split("&")[0]}]

    qr = scrm.json("create", "公众号二维码", "--kind", "oa_qr", "--tag", "连衣裙")
    prefix = "https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket="
    assert qr["url"].startswith(prefix)
    (ticket, body), = fake_api.fake.qr_codes.items()
    assert qr["url"] == prefix + quote(ticket, safe="")
    assert body == {"action_name": "QR_LIMIT_STR_SCENE", "action_info": {"scene": {"scene_str": qr["code"]}}}
    assert [row["kind"] for row in scrm.json("list")] == ["kf_link", "oa_qr"]


def test_bad_input_is_refused_before_wechat_is_asked(scrm: Scrm, fake_api: FakeServer) -> None:
    result = scrm("create", " ", "--kind", "contact_way", "--daily-cap", "-1", "--kf-account", "wk", ok=False)
    assert result.exit_code == 1
    for problem in ("name is empty", "at least one rep", "daily cap is negative", "kf account is for kf_link"):
        assert problem in result.stderr
    assert "a kf_link channel needs the kf account" in scrm("create", "链接", "--kind", "kf_link", ok=False).stderr
    assert scrm("create", "x", "--kind", "poster", ok=False).exit_code == 2
    flow = scrm("create", *POSTER, "--welcome-flow", "nope", ok=False)
    assert "no flow 'nope' in release 1; flows: coupon, price_question" in flow.stderr
    tag = scrm("create", *POSTER, "--tag", "高意向", "--tag", "不存在", ok=False)
    assert "unknown tag(s) 不存在; the catalog has: 低意向, 衬衫, 连衣裙, 高意向" in tag.stderr
    missing = scrm("show", "ch_NOPE2222", ok=False)
    assert missing.exit_code == 1 and "no channel 'ch_NOPE2222'" in missing.stderr
    assert not [call for call in fake_api.fake.calls if call.endswith("add_contact_way") or call == "qrcode/create"]
    assert scrm("list").stdout.startswith("no channels yet")


def test_a_refusal_by_wecom_stores_nothing(scrm: Scrm, fake_api: FakeServer) -> None:
    fake_api.fake.fail_next("externalcontact/add_contact_way", errcode=41041)
    result = scrm("create", *POSTER, ok=False)
    assert result.exit_code == 1
    assert "WeChat refused: externalcontact/add_contact_way: errcode 41041" in result.stderr
    assert scrm.json("list") == []


def test_the_contact_way_is_deleted_again_when_storing_fails(scrm: Scrm, fake_api: FakeServer) -> None:
    scrm.sql("ALTER TABLE entry_channels RENAME TO entry_channels_away")  # the store cannot take the row
    result = scrm("create", *POSTER, ok=False)
    assert result.exit_code == 1 and "scrm migrate" in result.stderr
    assert fake_api.fake.calls.count("externalcontact/add_contact_way") == 1
    assert "externalcontact/del_contact_way" in fake_api.fake.calls and fake_api.fake.contact_ways == {}

    fake_api.fake.fail_next("externalcontact/del_contact_way", errcode=-1)
    stuck = scrm("create", *POSTER, ok=False)
    (config_id,) = fake_api.fake.contact_ways
    assert f"contact way {config_id} is left on WeCom" in stuck.stderr and "scrm migrate" in stuck.stderr


def test_rota_refresh_takes_capped_reps_off_until_the_next_day(
    scrm: Scrm, fake_api: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime.now(UTC)
    today, tomorrow = brand_day(scrm.settings.growth.timezone, now), now + timedelta(days=1)
    poster, other = scrm.json("create", *POSTER), scrm.json("create", *POSTER)
    uncapped = scrm.json("create", "无上限", "--kind", "contact_way", "--rep", "zhang", "--rep", "li")
    ways = fake_api.fake.contact_ways
    assert scrm.refresh(now) == 0 and "externalcontact/update_contact_way" not in fake_api.fake.calls

    scrm.arrivals(poster["code"], ("wm1", "lead", "zhang"), ("wm2", "lead", "zhang"), day=today)
    scrm.arrivals(uncapped["code"], *[(f"wmU{n}", "lead", "zhang") for n in range(5)], day=today)
    assert scrm.refresh(now) == 1
    assert ways[poster["config_id"]]["user"] == ["li", "wang"] and ways[other["config_id"]]["user"] == [
        "zhang", "li", "wang"]
    assert ways[uncapped["config_id"]]["user"] == ["zhang", "li"]  # no cap: never changed
    assert scrm.json("show", poster["code"])["rota"] == ["li", "wang"]
    assert scrm.refresh(now) == 0  # nothing new: WeCom is not asked again

    scrm.arrivals(poster["code"], ("wm3", "lead", "li"), ("wm4", "lead", "wang"), ("wm5", "lead", "li"),
                  ("wm6", "lead", "wang"), ("wm7", "lead", "wang"), day=today)
    with caplog.at_level(logging.WARNING, logger="scrm.channels"):
        assert scrm.refresh(now) == 1
    assert ways[poster["config_id"]]["user"] == ["zhang"]  # all capped: the first of the fewest (2) stays
    assert any("channels.rota.all_capped" in record.getMessage() for record in caplog.records)

    third = scrm.json("create", *POSTER)
    scrm.arrivals(other["code"], ("wm8", "lead", "li"), ("wm9", "lead", "li"), day=today)
    scrm.arrivals(third["code"], ("wm10", "lead", "wang"), ("wm11", "lead", "wang"), day=today)
    fake_api.fake.fail_next("externalcontact/update_contact_way", errcode=41044)
    with caplog.at_level(logging.ERROR, logger="scrm.channels"):
        assert scrm.refresh(now) == 1  # `other` failed and is left as it was; `third` changed all the same
    assert any("channels.rota.failed" in record.getMessage() for record in caplog.records)
    assert ways[other["config_id"]]["user"] == ["zhang", "li", "wang"]
    assert scrm.json("show", other["code"])["rota"] == ["zhang", "li", "wang"]
    assert ways[third["config_id"]]["user"] == ["zhang", "li"]

    assert scrm.refresh(tomorrow) == 2  # a new day: poster and third offer everyone again
    assert [ways[made["config_id"]]["user"] for made in (poster, other, third)] == [["zhang", "li", "wang"]] * 3
