"""`scrm push ...` through Click's runner on SQLite and PostgreSQL: segments, scheduling, results, refusals."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.customers import Profile, resolve_customer
from crm_store.models import Customer, as_utc
from crm_store.nurture_models import NurtureSend, Push
from crm_store.tags import add_tags, sync_catalog
from tests.admin_cli.harness import ScrmRunner
from tests.conftest import Backend

T = TypeVar("T")
CATALOG = {"意向": ("高意向", "询价"), "营销": ("已退订",)}


class Scrm(ScrmRunner):
    """`scrm push` against one store, and that store for making data with the library functions."""

    command = ("push",)
    failure_exit = -1

    def customer(self, name: str, tags: tuple[str, ...] = (), stage: str = "lead", opted_out: bool = False,
                 reach: str = "") -> int:
        async def work(session: AsyncSession) -> int:
            customer = await resolve_customer(session, "wecom", f"wm_{name}", Profile(display_name=name))
            customer.stage, customer.marketing_opt_out = stage, opted_out
            if reach:
                customer.reach = {"channel": reach, "sender": f"s_{name}", "at": int(time.time())}
            await add_tags(session, customer, tags, "test")
            await session.flush()
            return customer.id

        return self.run(work)

    def rows(self) -> tuple[int, int]:
        """(pushes, nurture sends) in the store."""
        async def work(session: AsyncSession) -> tuple[int, int]:
            pushes = await session.scalar(select(func.count()).select_from(Push))
            sends = await session.scalar(select(func.count()).select_from(NurtureSend))
            return int(pushes or 0), int(sends or 0)

        return self.run(work)

    def sends(self, push_id: int) -> list[NurtureSend]:
        async def work(session: AsyncSession) -> list[NurtureSend]:
            return list(await session.scalars(select(NurtureSend).where(NurtureSend.push_id == push_id)
                                              .order_by(NurtureSend.customer_id)))

        return self.run(work)


@pytest.fixture
def scrm(backend: Backend, clean_env: None) -> Scrm:
    run = Scrm(backend.store_url)
    run.run(lambda session: sync_catalog(session, CATALOG))
    return run


@pytest.fixture
def people(scrm: Scrm) -> dict[str, int]:
    return {
        "may": scrm.customer("阿May", ("高意向", "询价"), "interested", reach="kf"),
        "li": scrm.customer("小李", ("高意向",), "interested"),
        "wang": scrm.customer("王姐", ("询价",), "lead"),
        "out": scrm.customer("退订者", ("高意向",), "interested", opted_out=True),
    }


def test_preview_counts_and_samples_the_segment(scrm: Scrm, people: dict[str, int]) -> None:
    shown = scrm("preview", "--tag", "高意向", "--stage", "意向").stdout
    assert shown.splitlines()[0] == "2 customer(s): tags 高意向, stage interested"
    assert "小李" in shown and "阿May" in shown and "退订者" not in shown  # opted out of marketing: left out
    data = scrm.json("preview", "--any-tag", "询价", "--not-tag", "高意向")
    assert data["count"] == 1 and [c["name"] for c in data["sample"]] == ["王姐"]
    assert data["segment"] == {"any_tags": ["询价"], "not_tags": ["高意向"]}
    assert scrm.json("preview", "--reachable")["count"] == 1


def test_preview_names_an_unknown_tag_or_stage(scrm: Scrm, people: dict[str, int]) -> None:
    result = scrm("preview", "--tag", "高意象", "--stage", "大客户", ok=False)
    assert result.exit_code == 1
    assert "tag '高意象' is not in the tag catalog (did you mean 高意向?)" in result.output
    assert "unknown stage '大客户'" in result.output
    assert scrm("preview", ok=False).exit_code == 2  # say who


def test_create_schedules_one_pending_send_per_customer_at_the_brand_time(scrm: Scrm, people: dict[str, int]) -> None:
    made = scrm("create", "--name", "双十二预热", "--text", "{{ customer.name }}，双十二全场 8 折", "--tag", "高意向",
                "--at", "2099-12-01T20:00").stdout
    assert "scheduled for 2099-12-01 20:00 (Asia/Shanghai): 2 customer(s) (tags 高意向)" in made
    [push] = scrm.json("list")
    assert (push["name"], push["status"], push["audience"]) == ("双十二预热", "scheduled", 2)
    assert push["sends"] == {"pending": 2, "sent": 0, "replied": 0, "skipped": 0, "failed": 0}
    sends = scrm.sends(push["id"])
    assert [send.customer_id for send in sends] == sorted([people["may"], people["li"]])
    assert {(send.status, send.step, send.enrolment_id) for send in sends} == {("pending", "", None)}
    assert {as_utc(send.due_at) for send in sends} == {datetime(2099, 12, 1, 12, 0, tzinfo=UTC)}  # 20:00 +08:00


def test_create_without_a_time_is_due_now(scrm: Scrm, people: dict[str, int]) -> None:
    before = datetime.now(UTC)
    scrm("create", "--name", "now", "--text", "在吗", "--any-tag", "询价")
    [send, _] = scrm.sends(scrm.json("list")[0]["id"])
    assert before - timedelta(seconds=1) <= as_utc(send.due_at) <= datetime.now(UTC)


def test_dry_run_shows_audience_and_message_and_writes_nothing(scrm: Scrm, people: dict[str, int]) -> None:
    shown = scrm("create", "--name", "试", "--text", "{{ customer.name }}（{{ customer.stage_label }}）您好",
                 "--stage", "interested", "--dry-run").stdout
    assert shown.startswith("dry run, nothing written: 2 customer(s)")
    assert f"customer {people['li']} would read:\n  小李（意向）您好" in shown
    data = scrm.json("create", "--name", "试", "--text", "hi {{ customer.id }}", "--tag", "询价", "--dry-run")
    assert data["count"] == 2 and data["first_message"] == f"hi {people['wang']}"
    assert scrm.rows() == (0, 0)


@pytest.mark.parametrize(("args", "error"), [
    (["--tag", "已退订"], "nobody matches: nothing scheduled"),
    (["--tag", "高意向", "--at", "2020-01-01T10:00"], "is in the past"),
    (["--tag", "高意向", "--text", "{% if vip %}贵宾{% endif %}"], "is not allowed"),
    (["--tag", "高意向", "--text", "{{ secrets }}"], "unknown field(s) secrets"),
    (["--tag", "高意向", "--text", "{{ customer.__class__ }}"], "is not allowed"),
    (["--tag", "高意向", "--text", "x" * 2001], "2001 characters; at most 2000"),
    (["--tag", "高意向", "--text", "  "], "the message is empty"),
    (["--tag", "不存在"], "tag '不存在' is not in the tag catalog"),
], ids=["empty-segment", "past", "statement", "secret-field", "dunder", "too-long", "empty-text", "unknown-tag"])
def test_create_refuses_with_a_clear_error_and_writes_nothing(scrm: Scrm, people: dict[str, int], args: list[str],
                                                              error: str) -> None:
    text = [] if "--text" in args else ["--text", "你好"]
    for dry_run in ([], ["--dry-run"]):
        result = scrm("create", "--name", "bad", *text, *args, *dry_run, ok=False)
        assert result.exit_code == 1 and error in result.output, result.output
    assert scrm.rows() == (0, 0)


def test_a_malformed_time_is_a_usage_error(scrm: Scrm, people: dict[str, int]) -> None:
    result = scrm("create", "--name", "x", "--text", "hi", "--tag", "高意向", "--at", "next friday", ok=False)
    assert result.exit_code == 2 and "a time like 2026-12-01T20:00" in result.output
    assert scrm.rows() == (0, 0)


def test_show_reports_results_and_cancel_skips_what_is_pending(scrm: Scrm, people: dict[str, int]) -> None:
    scrm("create", "--name", "回访", "--text", "最近好吗", "--any-tag", "询价", "--any-tag", "高意向")
    push_id = scrm.json("list")[0]["id"]
    may, li, wang = people["may"], people["li"], people["wang"]
    now = datetime.now(UTC)

    async def dispatched(session: AsyncSession) -> None:  # what the dispatcher would have done
        sent = NurtureSend.push_id == push_id
        await session.execute(update(NurtureSend).where(sent, NurtureSend.customer_id == may)
                              .values(status="sent", via="kf", sent_at=now, replied_at=now))
        await session.execute(update(NurtureSend).where(sent, NurtureSend.customer_id == li)
                              .values(status="skipped", reason="no channel: window closed"))

    scrm.run(dispatched)
    shown = scrm("show", str(push_id)).stdout
    assert f"push {push_id} '回访' (scheduled)" in shown
    assert "segment: any of 询价 | 高意向" in shown
    assert "audience 3: sent 1 (kf 1), replied 1 (100%), pending 1" in shown
    assert "skipped 1 (no channel: window closed 1), failed 0" in shown
    cancelled = scrm("cancel", str(push_id)).stdout
    assert cancelled == f"push {push_id} cancelled: 1 pending message(s) will not be sent\n"
    data = scrm.json("show", str(push_id))
    assert (data["status"], data["pending"], data["sent"], data["skipped"]) == (
        "cancelled", 0, 1, {"cancelled": 1, "no channel: window closed": 1})
    assert [s.status for s in scrm.sends(push_id) if s.customer_id == wang] == ["skipped"]
    again = scrm("cancel", str(push_id), ok=False)
    assert again.exit_code == 1 and "already cancelled" in again.output


def test_show_counts_the_pending_by_what_they_wait_for(scrm: Scrm, people: dict[str, int]) -> None:
    scrm("create", "--name", "回访", "--text", "最近好吗", "--any-tag", "询价", "--any-tag", "高意向")
    push_id = scrm.json("list")[0]["id"]

    async def deferred(session: AsyncSession) -> None:  # what the dispatcher would have done
        mine = NurtureSend.push_id == push_id
        await session.execute(update(NurtureSend).where(mine, NurtureSend.customer_id.in_([people["may"], people["li"]]))
                              .values(reason="waiting: no quota", deferrals=1))
        await session.execute(update(NurtureSend).where(mine, NurtureSend.customer_id == people["wang"])
                              .values(reason="waiting: quiet hours", deferrals=1))

    assert scrm.json("show", str(push_id))["waiting"] == {}  # due, not put off
    scrm.run(deferred)
    assert "replied 0, pending 3 (no quota 2, quiet hours 1)" in scrm("show", str(push_id)).stdout
    data = scrm.json("show", str(push_id))
    assert (data["pending"], data["waiting"]) == (3, {"no quota": 2, "quiet hours": 1})


def test_unknown_push_and_empty_list(scrm: Scrm) -> None:
    assert "no pushes yet" in scrm("list").stdout
    for command in ("show", "cancel"):
        result = scrm(command, "99", ok=False)
        assert result.exit_code == 1 and "no push 99" in result.output


def test_merged_customers_are_not_in_the_audience(scrm: Scrm, people: dict[str, int]) -> None:
    async def merge(session: AsyncSession) -> None:
        (await session.get_one(Customer, people["li"])).merged_into_id = people["may"]

    scrm.run(merge)
    assert scrm.json("preview", "--tag", "高意向")["count"] == 1
