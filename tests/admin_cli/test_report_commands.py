"""`scrm report ...` through Click's runner, on SQLite and PostgreSQL, on data made with the store's functions."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.channels import ChannelSpec, add_channel, record_arrival
from crm_store.customers import record
from crm_store.handoff_models import Handoff
from crm_store.lifecycle import Lifecycle, set_stage
from crm_store.models import Conversation, Customer, FlowRelease, utcnow
from crm_store.referrals import attribute, mark_converted
from crm_store.tags import sync_catalog
from tests.admin_cli.test_growth_commands import CATALOG, SETTINGS, Scrm, groups_of_every_kind
from tests.conftest import Backend

LIFECYCLE = Lifecycle(SETTINGS.lifecycle)
REPORTS = ("funnel", "channels", "groups", "referrals", "nurture", "handoffs", "bots", "nlu")


@pytest.fixture
def scrm(backend: Backend, clean_env: None) -> Scrm:
    run = Scrm(backend.store_url)
    run.run(lambda session: sync_catalog(session, CATALOG))
    return run


def people_and_channel(scrm: Scrm) -> list[int]:
    """Four customers: two through channel 海报 (one of them bought), one interested, one lead; one referral."""
    ids = scrm.customers("甲", "乙", "丙", "丁")

    async def work(session: AsyncSession) -> None:
        a, b, c, d = [await session.get_one(Customer, customer_id) for customer_id in ids]
        channel = await add_channel(session, ChannelSpec("海报", "oa_qr", cost_cents=1000), "ch_POSTER", "", "", [])
        for customer in (a, b):
            await record_arrival(session, channel, customer, "", "2026-01-01")
        await set_stage(session, a, "interested", "asked", LIFECYCLE)
        await set_stage(session, a, "customer", "paid", LIFECYCLE)
        await set_stage(session, c, "interested", "asked", LIFECYCLE)
        await attribute(session, b, a.id, "inv_TEST", "kf", 86_400)
        await attribute(session, d, a.id, "inv_TEST", "oa", 86_400)
        await mark_converted(session, b.id)

    scrm.run(work)
    return ids


def bot_activity(scrm: Scrm, ids: list[int]) -> None:
    """Five messages (two not understood, one of them twice; one low-confidence), four conversations, a handoff."""
    messages = [("多少钱", "ask_price", 0.9), ("asdf", "nlu_fallback", 0.2), ("asdf", "nlu_fallback", 0.3),
                ("天气", "out_of_scope", 0.8), ("你好", "greet", 0.95)]
    conversations = [("welcome", "ended", "completed"), ("welcome", "ended", "handoff"),
                     ("fallback", "ended", "interrupted:welcome"), ("welcome", "active", "")]

    async def work(session: AsyncSession) -> None:
        for text, intent, confidence in messages:
            await record(session, ids[0], "inbound.message", {"channel": "kf", "text": text, "intent": intent,
                                                              "confidence": confidence, "intent_source": "rules"})
        await record(session, ids[0], "inbound.event", {"channel": "kf"})
        release = FlowRelease(sources={}, versions={})
        session.add(release)
        await session.flush()
        for n, (flow, status, reason) in enumerate(conversations):
            session.add(Conversation(customer_id=ids[n], flow_id=flow, flow_version=1, release_id=release.id,
                                     step_id="s", status=status, end_reason=reason))
        session.add(Handoff(customer_id=ids[1], status="closed", reason="flow", closed_by="rep", tried=[]))
        await session.flush()

    scrm.run(work)


def test_reports_count_known_data_exactly(scrm: Scrm) -> None:
    ids = people_and_channel(scrm)
    bot_activity(scrm, ids)

    funnel = scrm.json("report", "funnel")
    assert funnel["new_customers"] == 4 and len(funnel["weeks"]) == 1
    stages = {row["stage"]: (row["current"], row["reached"], row["conversion_from_previous"])
              for row in funnel["stages"]}
    assert stages["lead"] == (2, 4, None)
    assert stages["interested"] == (1, 2, 0.5) and stages["customer"] == (1, 1, 0.5)
    assert stages["repeat"] == (0, 0, 0.0) and stages["churned"] == (0, 0, None)
    assert funnel["weeks"][0]["reached"]["interested"] == 2

    [channel] = scrm.json("report", "channels")
    assert (channel["code"], channel["adds"], channel["conversions"], channel["conversion_rate"],
            channel["cost_per_add"], channel["cost_per_conversion"]) == ("ch_POSTER", 2, 1, 0.5, 5.0, 10.0)

    referrals = scrm.json("report", "referrals")
    assert (referrals["friends"], referrals["converted"], referrals["conversion_rate"]) == (2, 1, 0.5)
    assert referrals["by_channel"] == {"kf": 1, "oa": 1}
    assert referrals["top_inviters"] == [{"customer_id": ids[0], "name": "甲", "friends": 2, "converted": 1}]

    bots = scrm.json("report", "bots")
    assert (bots["messages"], bots["conversations"], bots["ended"], bots["handoffs"], bots["handoffs_opened"]) == (
        5, 4, 3, 1, 1)
    assert (bots["containment"], bots["handoff_rate"], bots["fallback_starts"], bots["fallback_rate"]) == (
        0.6667, 0.25, 1, 0.2)
    welcome = bots["flows"][0]
    assert (welcome["flow"], welcome["started"], welcome["active"], welcome["ended_by"]) == (
        "welcome", 3, 1, {"completed": 1, "handoff": 1})
    assert bots["flows"][1]["ended_by"] == {"interrupted": 1}

    nlu = scrm.json("report", "nlu")
    assert (nlu["messages"], nlu["parsed"], nlu["fallback"], nlu["out_of_scope"], nlu["unknown_rate"]) == (
        5, 5, 2, 1, 0.6)
    assert (nlu["low_confidence"], nlu["low_confidence_rate"], nlu["by_source"]) == (2, 0.4, {"rules": 5})
    assert nlu["top_unknown"] == [{"text": "asdf", "count": 2}, {"text": "天气", "count": 1}]

    handoffs = scrm.json("report", "handoffs")
    assert (handoffs["opened"], handoffs["by_reason"], handoffs["closed_by"]) == (1, {"flow": 1}, {"rep": 1})

    text = scrm("report", "bots").stdout
    assert "containment: 66.7%" in text and re.search(r"welcome\s+3\s+1\s+2\s+1", text)


def test_groups_report(scrm: Scrm) -> None:
    groups_of_every_kind(scrm)
    [campaign] = scrm.json("report", "groups")
    assert (campaign["code"], campaign["groups_opened"], campaign["filled"], campaign["expired"],
            campaign["still_open"], campaign["fill_rate"]) == ("tea", 3, 1, 1, 1, 0.5)
    assert (campaign["members"], campaign["seats_sold"], campaign["revenue_yuan"], campaign["sold"]) == (
        6, 3, 179.7, 5)


def test_the_window_bounds_every_report(scrm: Scrm) -> None:
    ids = people_and_channel(scrm)
    bot_activity(scrm, ids)
    tomorrow = (utcnow() + timedelta(days=2)).date().isoformat()
    yesterday = (utcnow() - timedelta(days=2)).date().isoformat()
    assert scrm.json("report", "funnel", "--since", tomorrow)["new_customers"] == 0
    assert scrm.json("report", "nlu", "--until", yesterday)["messages"] == 0
    assert scrm.json("report", "bots", "--since", yesterday, "--until", tomorrow)["conversations"] == 4
    assert scrm.json("report", "channels", "--since", tomorrow)[0]["adds"] == 0


def test_an_empty_store_reports_zeros(scrm: Scrm) -> None:
    for name in REPORTS:
        scrm("report", name)
    assert scrm.json("report", "funnel")["new_customers"] == 0
    assert scrm.json("report", "channels") == [] and scrm.json("report", "groups") == []
    bots = scrm.json("report", "bots")
    assert (bots["messages"], bots["containment"], bots["flows"]) == (0, None, [])
    nlu = scrm.json("report", "nlu")
    assert (nlu["messages"], nlu["unknown_rate"], nlu["top_unknown"]) == (0, None, [])
    assert scrm.json("report", "nurture") == {"sequences": [], "pushes": []}
    assert scrm.json("report", "referrals")["friends"] == 0


def test_html_is_one_self_contained_file(scrm: Scrm, tmp_path: Path) -> None:
    ids = people_and_channel(scrm)
    bot_activity(scrm, ids)
    path = tmp_path / "report.html"
    assert "wrote" in scrm("report", "html", "-o", str(path), "--since", "2020-01-01").stdout
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "<style>" in page
    assert not re.search(r"<(script|link)\b", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page
    for title in ("Lifecycle funnel", "Entry channels", "Group-buys", "Referrals", "Nurture and pushes",
                  "Handoffs", "Bot flows", "NLU health"):
        assert f"<h2>{title}</h2>" in page
    assert "<td>asdf</td><td>2</td>" in page


def test_html_of_an_empty_store(scrm: Scrm, tmp_path: Path) -> None:
    path = tmp_path / "empty.html"
    scrm("report", "html", "-o", str(path))
    assert "<svg" in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("args", [("--since", "last tuesday"), ("--until", "2026-13-01"),
                                  ("--since", "2026-03-02", "--until", "2026-03-01")])
def test_a_bad_date_is_a_clear_error(scrm: Scrm, args: tuple[str, ...]) -> None:
    result = scrm("report", "nlu", *args, ok=False)
    assert result.exit_code == 1
    assert "--since" in result.output or "--until" in result.output
    assert scrm("report", "html", "-o", "x.html", *args, ok=False).exit_code == 1
