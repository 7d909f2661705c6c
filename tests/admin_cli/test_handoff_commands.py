"""`scrm handoffs ...` through Click's runner, on a real store; handoffs are made with crm_store.handoffs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.handoff_models import Handoff
from crm_store.models import OutboxItem, TimelineEvent
from crm_store.tags import sync_catalog
from tests.admin_cli.test_rep_commands import BASE, CATALOG, Scrm, Step, hand_off
from tests.conftest import Backend


@pytest.fixture
def scrm(backend: Backend, clean_env: None) -> Scrm:
    run = Scrm(backend.store_url)
    run.run(lambda session: sync_catalog(session, CATALOG))
    run.reps("lisi", "zhangsan")
    return run


def events(run: Scrm, customer_id: int, *made: tuple[datetime, str, dict[str, Any]]) -> None:
    async def work(session: AsyncSession) -> None:
        session.add_all(TimelineEvent(customer_id=customer_id, kind=kind, data=data, created_at=at)
                        for at, kind, data in made)

    run.run(work)


def outbox(run: Scrm) -> list[tuple[str, str, dict[str, Any]]]:
    async def work(session: AsyncSession) -> list[tuple[str, str, dict[str, Any]]]:
        rows = await session.execute(select(OutboxItem.dedup_key, OutboxItem.kind, OutboxItem.payload)
                                     .order_by(OutboxItem.dedup_key))
        return [(key, kind, payload) for key, kind, payload in rows.tuples()]

    return run.run(work)


# ---------------------------------------------------------------- list


def test_list_filters_by_status_rep_and_date(scrm: Scrm) -> None:
    amy, bob, cat, dan = (scrm.customer(name, stage) for name, stage in
                          (("amy", "lead"), ("bob", "interested"), ("cat", "lead"), ("dan", "lead")))
    served = hand_off(scrm, amy, "zhangsan", step=Step(take=30, respond=45))
    offered = hand_off(scrm, bob, "lisi", reason="complain")
    closed = hand_off(scrm, cat, "zhangsan", step=Step(take=20, close_by="rep", close_stage="customer", close=600))
    old = hand_off(scrm, dan, "lisi", at=BASE - timedelta(days=40), step=Step(close_by="unanswered", close=1800))

    assert [row["id"] for row in scrm.json("handoffs", "list")] == [offered, served]
    assert [row["id"] for row in scrm.json("handoffs", "list", "--closed")] == [closed, old]
    assert [row["id"] for row in scrm.json("handoffs", "list", "--all")] == [closed, offered, served, old]
    assert [row["id"] for row in scrm.json("handoffs", "list", "--all", "--rep", "lisi")] == [offered, old]
    assert [row["id"] for row in scrm.json("handoffs", "list", "--all", "--since", "2026-11-01")] == [
        closed, offered, served]
    assert [row["id"] for row in scrm.json("handoffs", "list", "--all", "--limit", "1")] == [closed]

    rows = {row["id"]: row for row in scrm.json("handoffs", "list", "--all")}
    assert {key: rows[served][key] for key in ("customer_id", "customer", "stage", "reason", "detail", "rep",
                                               "status", "closed_by", "outcome_stage", "waiting_s")} == {
        "customer_id": amy, "customer": "amy", "stage": "lead", "reason": "want_human", "detail": "said 人工",
        "rep": "zhangsan", "status": "taken", "closed_by": "", "outcome_stage": "", "waiting_s": 45}
    assert rows[served]["created_at"].startswith("2026-11-10 02:00:00")
    assert rows[served]["first_response_at"].startswith("2026-11-10 02:00:45") and rows[served]["closed_at"] is None
    assert (rows[closed]["status"], rows[closed]["closed_by"], rows[closed]["outcome_stage"]) == (
        "closed", "rep", "customer")
    assert rows[closed]["waiting_s"] == 20 and rows[old]["waiting_s"] == 1800  # to taking it; to closing it
    assert rows[offered]["waiting_s"] > 0  # still waiting: counted to now

    lines = scrm("handoffs", "list", "--all", "--rep", "zhangsan").stdout.splitlines()
    assert lines[0].split() == ["id", "customer", "stage", "reason", "rep", "status", "opened", "waited", "closed"]
    assert lines[1].split()[:7] == [str(closed), "cat", f"#{cat}", "潜在", "want_human", "(said", "人工)"]
    assert lines[1].split()[7:9] == ["zhangsan", "closed"] and lines[1].split()[-5:] == ["20s", "by", "rep", "→", "成交"]
    assert lines[2].split()[7:9] == ["zhangsan", "taken"] and lines[2].split()[-1] == "45s"
    assert scrm("handoffs", "list", "--closed", "--rep", "lisi", "--since", "2026-11-01").stdout.strip() == (
        "no closed handoffs")
    assert "no rep wangwu (see: scrm reps list --all)" in scrm("handoffs", "list", "--rep", "wangwu", ok=False).output


# ---------------------------------------------------------------- show


def test_show_tells_the_story_of_one_handoff(scrm: Scrm) -> None:
    amy = scrm.customer("amy")
    earlier = hand_off(scrm, amy, "lisi", at=BASE - timedelta(hours=3), step=Step(close_by="timeout", close=1800))
    shown = hand_off(scrm, amy, "zhangsan", step=Step(then_owner="lisi", take=60, respond=90, close_by="rep",
                                                      close_stage="interested", close=900))
    at = BASE + timedelta(seconds=1)
    events(scrm, amy,
           (BASE - timedelta(hours=3), "handoff.opened", {"handoff": earlier, "rep": "lisi"}),
           (at, "handoff.opened", {"handoff": shown, "rep": "zhangsan", "why": "owner"}),
           (at + timedelta(seconds=30), "handoff.escalated", {"handoff": shown, "from": "zhangsan", "rep": "lisi"}),
           (at + timedelta(seconds=40), "inbound.message", {"text": "在吗"}),
           (at + timedelta(seconds=90), "rep.message", {"rep": "lisi"}),
           (at + timedelta(seconds=95), "rep.note", {"rep": "lisi", "text": "想要年卡"}),
           (at + timedelta(seconds=900), "handoff.closed", {"handoff": shown, "by": "rep", "rep": "lisi"}),
           (at + timedelta(hours=2), "rep.note", {"rep": "lisi", "text": "after it closed"}))

    detail = scrm.json("handoffs", "show", str(shown))
    assert detail["row"]["id"] == shown and detail["tried"] == ["zhangsan", "lisi"]
    assert (detail["row"]["rep"], detail["row"]["status"], detail["row"]["waiting_s"]) == ("lisi", "closed", 90)
    assert [event["kind"] for event in detail["events"]] == [
        "handoff.opened", "handoff.escalated", "rep.message", "rep.note", "handoff.closed"]
    assert detail["events"][3]["data"] == {"rep": "lisi", "text": "想要年卡"}
    assert [event["kind"] for event in scrm.json("handoffs", "show", str(earlier))["events"]] == ["handoff.opened"]

    lines = scrm("handoffs", "show", str(shown)).stdout.splitlines()
    assert lines[0] == f"handoff {shown}: amy #{amy} (潜在), closed"
    assert lines[1] == "reason: want_human (said 人工)   channel: oa"
    assert lines[2] == "rep: lisi   tried: zhangsan, lisi   waited: 1m30s"
    assert [part.split(":")[0] for part in lines[3].split("   ")] == [
        "opened", "offered", "taken", "first response", "closed"]
    assert lines[4] == "closed by: rep   stage: 潜在 → 意向"
    assert lines[5] == "events:" and lines[-1].split()[2:] == ["handoff.closed", "by=rep", f"handoff={shown}",
                                                              "rep=lisi"]
    assert "no handoff 999 (see: scrm handoffs list --all)" in scrm("handoffs", "show", "999", ok=False).output


# ---------------------------------------------------------------- release


def test_release_closes_and_queues_the_messages(scrm: Scrm) -> None:
    amy = scrm.customer("amy", reach=True)
    handoff_id = hand_off(scrm, amy, "zhangsan", at=datetime.now(UTC), step=Step(take=5), kf=True)

    released = scrm("handoffs", "release", str(amy)).stdout.splitlines()
    assert released[0] == f"released amy #{amy} from handoff {handoff_id} (taken, with zhangsan): the bot answers " \
                          "them again"
    assert released[1] == ("2 message(s) queued for the running bot to send: the kf session is ended and the "
                           "customer told; zhangsan is told")
    rows = outbox(scrm)
    assert [(key, kind) for key, kind, _ in rows] == [
        (f"admin-release:{handoff_id}:0", "kf.service_state_trans"), (f"admin-release:{handoff_id}:1", "app.message_send")]
    assert rows[0][2]["service_state"] == 4 and rows[1][2]["touser"] == "zhangsan"
    assert rows[0][2]["_farewell"] == "本次人工服务已结束，智能助手继续为您服务。"  # sent with the move's msg_code

    async def closed(session: AsyncSession) -> tuple[str, str, str]:
        handoff = await session.get(Handoff, handoff_id)
        assert handoff is not None
        return handoff.status, handoff.closed_by, handoff.outcome_stage

    assert scrm.run(closed) == ("closed", "admin", "lead")
    assert scrm.json("handoffs", "list") == []
    again = scrm("handoffs", "release", str(amy), ok=False).output
    assert f"customer {amy} is not handed off (see: scrm handoffs list)" in again
    assert len(outbox(scrm)) == 2  # nothing more


def test_release_of_a_customer_not_handed_off_writes_nothing(scrm: Scrm) -> None:
    bob = scrm.customer("bob", reach=True)
    before = scrm.count(TimelineEvent)
    result = scrm("handoffs", "release", str(bob), ok=False)
    assert result.exit_code == 1 and f"Error: customer {bob} is not handed off" in result.output
    assert "没有编号为 999 的客户" in scrm("handoffs", "release", "999", ok=False).output
    assert outbox(scrm) == [] and scrm.count(TimelineEvent) == before

    queued = hand_off(scrm, bob, "lisi", at=datetime.now(UTC))
    made = scrm.json("handoffs", "release", str(bob))
    assert (made["handoff_id"], made["rep"], made["was"], made["queued"]) == (queued, "lisi", "offered", 2)
    assert made["done"] == ["the customer is told", "lisi is told"]  # an OA-style handoff: no kf session to end
