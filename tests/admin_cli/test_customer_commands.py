"""`scrm customers ...` and `scrm tags ...` through Click's runner, on customers made with the store's functions."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from admin_cli.main import cli
from bot.settings import load_settings
from crm_store.customers import Profile, record, resolve_customer
from crm_store.db import create_engine, session_factory
from crm_store.models import Conversation
from flows.loader import read_directory
from flows.publishing import publish_flows, validate
from tests.conftest import Backend

VALID = Path(__file__).resolve().parents[1] / "flows" / "fixtures" / "valid"


async def seed(store_url: str) -> list[int]:
    """Three customers (张三 asked the price and is in a running flow), and the valid fixture published."""
    settings = load_settings(nlu={"mode": "rules"})
    flows = validate(read_directory(VALID), settings.lifecycle, settings.nlu)
    engine = create_engine(store_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            published = await publish_flows(session, flows, note="seed")
            ids = []
            for n, name in enumerate(["张三", "李四", "Wang"]):
                customer = await resolve_customer(session, "wecom", f"wm_{n}", Profile(display_name=name))
                await session.flush()
                await record(session, customer.id, "inbound.message", {"text": "多少钱" if n == 0 else "在吗"})
                ids.append(customer.id)
            session.add(Conversation(customer_id=ids[0], flow_id="price_question", flow_version=1,
                                     release_id=published.release_id, step_id="ask_product"))
        return ids
    finally:
        await engine.dispose()


class Scrm:
    def __init__(self, store_url: str) -> None:
        self.env = {"SCRM__STORE__URL": store_url, "SCRM__NLU__MODE": "rules", "SCRM__REDIS__URL": ""}

    def __call__(self, *args: str, ok: bool = True) -> Result:
        result = CliRunner().invoke(cli, list(args), env=self.env)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def scrm(backend: Backend, clean_env: None) -> tuple[Scrm, list[int]]:
    return Scrm(backend.store_url), asyncio.run(seed(backend.store_url))


def test_find_filters_by_tag_stage_and_text(scrm: tuple[Scrm, list[int]]) -> None:
    run, (zhang, li, wang) = scrm
    assert [row["id"] for row in run.json("customers", "find")] == [wang, li, zhang]  # last seen first
    run("customers", "tag", str(zhang), "高意向", "连衣裙")
    run("customers", "tag", str(li), "高意向")
    assert [r["id"] for r in run.json("customers", "find", "--tag", "高意向", "--tag", "连衣裙")] == [zhang]
    assert [r["id"] for r in run.json("customers", "find", "--text", "多少")] == [zhang]
    assert [r["id"] for r in run.json("customers", "find", "--text", "WM_2")] == [wang]
    assert [r["id"] for r in run.json("customers", "find", "--limit", "1", "--offset", "1")] == [li]
    run("customers", "set-stage", str(li), "意向")
    assert [r["id"] for r in run.json("customers", "find", "--stage", "interested")] == [li]
    text = run("customers", "find", "--stage", "意向").stdout
    assert text.splitlines()[0].split() == ["id", "name", "stage", "tags", "last", "seen", "identities"]
    assert "李四  意向" in text and "wecom:wm_1" in text
    assert "unknown stage 'nope'" in run("customers", "find", "--stage", "nope", ok=False).output
    assert run("customers", "find", "--text", "nobody").stdout == "no customers match\n"


def test_tag_adds_and_removes_as_the_admin(scrm: tuple[Scrm, list[int]]) -> None:
    run, (zhang, *_) = scrm
    assert run("customers", "tag", str(zhang), "高意向", "VIP").stdout == f"customer {zhang}: added 高意向, VIP\n"
    assert run.json("customers", "tag", str(zhang), "高意向") == {"customer": zhang, "added": [], "unchanged": ["高意向"]}
    assert run("customers", "tag", str(zhang), "VIP", "--remove").stdout == f"customer {zhang}: removed VIP\n"
    card = run.json("customers", "show", str(zhang))
    assert card["row"]["tags"] == ["高意向"]
    assert [(e["kind"], e["data"]["tag"], e["data"]["cause"]) for e in card["timeline"][:3]] == [
        ("tag.removed", "VIP", "admin"), ("tag.added", "VIP", "admin"), ("tag.added", "高意向", "admin")]
    assert "no customer 999999" in run("customers", "tag", "999999", "x", ok=False).output


def test_set_stage_refuses_a_move_the_lifecycle_does_not_allow(scrm: tuple[Scrm, list[int]]) -> None:
    run, (zhang, *_) = scrm
    refused = run("customers", "set-stage", str(zhang), "loyal", ok=False)
    assert refused.exit_code == 1 and "'lead' -> 'loyal' is not allowed" in refused.output
    assert "interested, customer, churned" in refused.output
    forced = run("customers", "set-stage", str(zhang), "忠诚", "--force", "--reason", "VIP 老客户")
    assert forced.stdout == f"customer {zhang}: lead (潜在) → loyal (忠诚)\n"
    assert run.json("customers", "set-stage", str(zhang), "loyal")["moved"] is False
    history = run.json("customers", "show", str(zhang))["stage_history"]
    assert [(h["from_stage"], h["to_stage"], h["reason"]) for h in history] == [("lead", "loyal", "admin: VIP 老客户")]


def test_show_prints_the_card_with_the_running_flow(scrm: tuple[Scrm, list[int]]) -> None:
    run, (zhang, *_) = scrm
    run("customers", "tag", str(zhang), "高意向")
    run("customers", "set-stage", str(zhang), "interested", "--reason", "asked twice")
    text = run("customers", "show", str(zhang)).stdout
    assert f"customer {zhang} 张三  wecom:wm_0" in text
    assert "stage: interested (意向)   marketing: allowed   owner: -" in text and "tags: 高意向" in text
    assert "running: flow price_question v1 at step ask_product" in text
    assert "lead → interested  admin: asked twice" in text
    assert "inbound.message" in text and "text=多少钱" in text and "tag.added" in text
    card = run.json("customers", "show", str(zhang))
    assert card["conversation"]["flow"] == "price_question" and card["stage_label"] == "意向"
    assert "no customer 424242" in run("customers", "show", "424242", ok=False).output


def test_funnel_counts_stages_with_conversion_and_bars(scrm: tuple[Scrm, list[int]]) -> None:
    run, (zhang, li, _) = scrm
    run("customers", "set-stage", str(zhang), "interested")
    run("customers", "set-stage", str(zhang), "customer")
    run("customers", "set-stage", str(li), "interested")
    rows = {row["stage"]: row for row in run.json("customers", "funnel", "--since", "2000-01-01")}
    assert (rows["lead"]["reached"], rows["interested"]["reached"], rows["customer"]["reached"]) == (3, 2, 1)
    assert rows["interested"]["conversion_from_previous"] == pytest.approx(2 / 3)
    text = run("customers", "funnel").stdout.splitlines()
    assert text[1].startswith("lead") and text[1].endswith("█" * 30)
    assert "67%" in text[2] and "50%" in text[3]


def test_tags_list_and_sync_follow_the_published_catalog(scrm: tuple[Scrm, list[int]]) -> None:
    run, (zhang, *_) = scrm
    run("customers", "tag", str(zhang), "高意向", "临时")
    counts = {(row["group"], row["tag"]): row["customers"] for row in run.json("tags", "list")}
    assert counts == {("意向", "高意向"): 1, ("意向", "低意向"): 0, ("偏好", "连衣裙"): 0, ("偏好", "衬衫"): 0,
                      ("", "临时"): 1}
    assert "(no group)  临时" in run("tags", "list").stdout
    assert run("tags", "sync").stdout == "tag catalog of release 1: 2 groups, 4 tags\n"


def test_tags_sync_without_a_release_says_what_to_do(backend: Backend, clean_env: None, tmp_path: Path) -> None:
    shutil.copytree(VALID, tmp_path / "flows")
    result = Scrm(backend.store_url)("tags", "sync", ok=False)
    assert result.exit_code == 1 and "nothing is published yet" in result.output
