"""`scrm reps ...` through Click's runner, on a real store; handoffs are made with crm_store.handoffs.

`leave` also asks WeCom for the rep's unassigned customers: the sandbox's fake API answers,
served on a local port in a thread of its own (the CLI runs `asyncio.run` itself).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from admin_cli.main import cli
from bot.sandbox.fake_wechat import FakeWeChat
from bot.sandbox.simulator import fake_for
from bot.settings import load_settings
from core.allowance import Allowance
from crm_store import allowances, handoffs
from crm_store.customers import Profile, resolve_customer
from crm_store.handoff_models import Handoff, Rep
from crm_store.models import Customer, OutboxItem, TimelineEvent
from crm_store.office_hours import ALWAYS
from crm_store.reps import add_rep, mark_left
from crm_store.tags import sync_catalog
from tests.admin_cli.harness import ScrmRunner, served
from tests.conftest import Backend

T = TypeVar("T")
SETTINGS = load_settings(nlu={"mode": "rules"})
CATALOG = {"意向": ("高意向", "低意向")}
OFFICE = "(office) " + SETTINGS.handoff.office_hours
BASE = datetime(2026, 11, 10, 2, 0, tzinfo=UTC)  # 10:00 on a Tuesday in Shanghai


class Scrm(ScrmRunner):
    """`scrm` against one store (and, when given, an API base), and that store for making data."""

    failure_exit = 1

    def __init__(self, store_url: str, api_url: str = "") -> None:
        super().__init__(store_url, **({"SCRM__WECOM__API_BASE": api_url, "SCRM__OA__API_BASE": api_url}
                                       if api_url else {}))

    def customer(self, name: str, stage: str = "lead", reach: bool = False) -> int:
        async def work(session: AsyncSession) -> int:
            customer = await resolve_customer(session, "wecom", f"wm_{name}", Profile(display_name=name))
            customer.stage = stage
            if reach:  # chatted in kf a moment ago: the bot may write to them (five messages, 48 h)
                now = datetime.now(UTC).timestamp()
                customer.reach = {"channel": "kf", "sender": f"wm_{name}", "account": "wk_shop", "at": int(now)}
                await session.flush()
                await allowances.save(session, customer.id, Allowance("kf").earned("message", now))
            await session.flush()
            return customer.id

        return self.run(work)

    def reps(self, *userids: str) -> None:
        async def work(session: AsyncSession) -> None:
            for userid in userids:
                await add_rep(session, userid, hours=ALWAYS, capacity=10)

        self.run(work)


@dataclass(frozen=True)
class Step:
    """What happens to a handoff after it is offered, in seconds after it was opened."""

    then_owner: str = ""  # re-routed to this rep (the first did not answer)
    take: float | None = None
    respond: float | None = None
    close_by: str = ""
    close_stage: str = ""  # the customer's stage when it closed (default: unchanged)
    close: float = 3600


def hand_off(run: Scrm, customer_id: int, owner: str, at: datetime = BASE, step: Step = Step(),
             reason: str = "want_human", kf: bool = False) -> int:
    """A handoff routed to `owner` (the customer's owner is preferred), then taken, answered, closed as told."""

    async def work(session: AsyncSession) -> int:
        customer = await session.get(Customer, customer_id)
        assert customer is not None
        customer.owner_userid = owner
        handoff = await handoffs.start(
            session, customer, reason, at, detail="said 人工", channel="kf" if kf else "oa",
            kf_account="wk_shop" if kf else "", kf_customer=f"wm_{customer.display_name}" if kf else "")
        assert handoff is not None
        await handoffs.route(session, handoff, customer, SETTINGS.handoff, at)
        assert handoff.rep_userid == owner, handoff.rep_userid
        if step.then_owner:
            customer.owner_userid = step.then_owner
            await handoffs.route(session, handoff, customer, SETTINGS.handoff, at + timedelta(seconds=30))
        if step.take is not None:
            handoffs.take(handoff, handoff.rep_userid or "", at + timedelta(seconds=step.take), SETTINGS.handoff)
        if step.respond is not None:
            handoffs.touch(handoff, at + timedelta(seconds=step.respond), SETTINGS.handoff, rep_spoke=True)
        if step.close_by:
            customer.stage = step.close_stage or customer.stage
            handoffs.close(handoff, step.close_by, customer.stage, at + timedelta(seconds=step.close))
        await session.flush()
        return handoff.id

    return run.run(work)


@pytest.fixture
def scrm(backend: Backend, clean_env: None) -> Scrm:
    run = Scrm(backend.store_url)
    run.run(lambda session: sync_catalog(session, CATALOG))
    return run


# ---------------------------------------------------------------- add, list, set, on, off


def test_add_list_set_and_duty(scrm: Scrm) -> None:
    added = scrm("reps", "add", "zhangsan", "--name", "张三", "--capacity", "8", "--hours", "mon-fri  09:00-18:00").stdout
    assert added.startswith("added rep zhangsan (张三): capacity 8, hours mon-fri 09:00-18:00, on duty: yes")
    scrm("reps", "add", "lisi", "--off-duty")
    listed = scrm("reps", "list").stdout.splitlines()
    assert listed[0].split() == ["userid", "name", "on", "duty", "on", "now", "hours", "capacity", "load", "teams"]
    assert listed[1].split()[:4] == ["lisi", "no", "no", "(office)"] and listed[1].split()[-2:] == ["5", "0"]
    assert listed[2].split()[:3] == ["zhangsan", "张三", "yes"]
    assert listed[2].split()[-4:] == ["mon-fri", "09:00-18:00", "8", "0"]
    reps = {rep["userid"]: rep for rep in scrm.json("reps", "list")}
    assert reps["lisi"] == {"userid": "lisi", "name": "", "active": True, "on_duty": False, "on_now": False,
                            "hours": OFFICE, "capacity": 5, "load": 0, "teams": []}
    assert (reps["zhangsan"]["capacity"], reps["zhangsan"]["hours"]) == (8, "mon-fri 09:00-18:00")

    changed = scrm.json("reps", "set", "zhangsan", "--capacity", "12", "--hours", "", "--name", "张三丰")
    assert (changed["capacity"], changed["hours"], changed["name"]) == (12, OFFICE, "张三丰")
    assert scrm.json("reps", "on", "lisi")["on_duty"] is True
    off = scrm("reps", "off", "zhangsan").stdout
    assert "rep zhangsan (张三丰): capacity 12" in off and "on duty: no, on now: no" in off
    scrm("reps", "set", "lisi", "--hours", ALWAYS)
    assert scrm.json("reps", "list")[0]["on_now"] is True  # on duty, and always inside their hours

    scrm.run(lambda session: mark_left(session, "lisi"))
    assert [rep["userid"] for rep in scrm.json("reps", "list")] == ["zhangsan"]
    assert "lisi (left)" in scrm("reps", "list", "--all").stdout


def test_bad_input_is_refused_and_nothing_is_stored(scrm: Scrm) -> None:
    hours = scrm("reps", "add", "zhangsan", "--hours", "mon-fri 18:00-09:00", ok=False).output
    assert "'mon-fri 18:00-09:00': the end must be after the start" in hours
    assert "days are mon/tue" in scrm("reps", "add", "zhangsan", "--hours", "weekdays 09:00-18:00", ok=False).output
    assert "capacity 0: a rep takes 1 to 500 customers at once" in scrm(
        "reps", "add", "zhangsan", "--capacity", "0", ok=False).output
    assert scrm.count(Rep) == 0 and "no reps yet" in scrm("reps", "list").stdout

    scrm("reps", "add", "zhangsan")
    assert "rep zhangsan already exists" in scrm("reps", "add", "zhangsan", ok=False).output
    for args in (("set", "wangwu", "--capacity", "3"), ("on", "wangwu"), ("off", "wangwu")):
        assert "no rep wangwu (see: scrm reps list)" in scrm("reps", *args, ok=False).output
    assert "capacity 501" in scrm("reps", "set", "zhangsan", "--capacity", "501", ok=False).output
    assert "times are HH:MM-HH:MM" in scrm("reps", "set", "zhangsan", "--hours", "mon 9-18", ok=False).output
    nothing = CliRunner().invoke(cli, ["reps", "set", "zhangsan"], env=scrm.env)
    assert nothing.exit_code == 2 and "nothing to change" in nothing.output
    (rep,) = scrm.json("reps", "list")
    assert (rep["userid"], rep["capacity"], rep["hours"], rep["on_duty"]) == ("zhangsan", 5, OFFICE, True)


# ---------------------------------------------------------------- teams


def test_teams_are_made_replaced_listed_and_deleted(scrm: Scrm) -> None:
    scrm.reps("zhangsan", "lisi")
    made = scrm("reps", "team", "大客户", "--tag", "高意向", "--product", "年卡", "--product", "礼盒",
                "--member", "zhangsan", "--member", "lisi").stdout
    assert made.strip() == "team 大客户: tags 高意向; products 年卡, 礼盒; members zhangsan, lisi"
    scrm("reps", "team", "售后", "--member", "lisi")
    assert scrm.json("reps", "teams") == [
        {"name": "售后", "tags": [], "products": [], "members": ["lisi"]},
        {"name": "大客户", "tags": ["高意向"], "products": ["年卡", "礼盒"], "members": ["lisi", "zhangsan"]},
    ]
    teams = scrm("reps", "teams").stdout.splitlines()
    assert teams[0].split() == ["team", "tags", "products", "members"]
    assert teams[2].split() == ["大客户", "高意向", "年卡,", "礼盒", "lisi,", "zhangsan"]
    assert {rep["userid"]: rep["teams"] for rep in scrm.json("reps", "list")} == {
        "lisi": ["售后", "大客户"], "zhangsan": ["大客户"]}

    replaced = scrm.json("reps", "team", "大客户", "--tag", "低意向", "--member", "zhangsan")
    assert replaced == {"name": "大客户", "tags": ["低意向"], "products": [], "members": ["zhangsan"]}
    unknown = scrm("reps", "team", "大客户", "--tag", "不存在", "--member", "lisi", ok=False).output
    assert "tags not in the catalog (tags.yaml): 不存在" in unknown
    assert "no rep wangwu" in scrm("reps", "team", "大客户", "--member", "wangwu", ok=False).output
    assert scrm.json("reps", "teams")[1]["members"] == ["zhangsan"]  # the refused changes stored nothing

    assert scrm("reps", "team-delete", "售后").stdout.strip() == "deleted team 售后"
    assert "no team '售后' (see: scrm reps teams)" in scrm("reps", "team-delete", "售后", ok=False).output
    assert [team["name"] for team in scrm.json("reps", "teams")] == ["大客户"]
    scrm("reps", "team-delete", "大客户")
    assert "no teams" in scrm("reps", "teams").stdout


# ---------------------------------------------------------------- stats


def test_stats_count_offers_takes_response_times_and_outcomes(scrm: Scrm) -> None:
    scrm.reps("lisi", "wangwu", "zhangsan")
    ids = [scrm.customer(f"c{n}") for n in range(6)]
    # zhangsan: offered 4 (one went on to lisi), took 3 answering after 60s, 120s and 600s; lisi took the fourth
    hand_off(scrm, ids[0], "zhangsan", step=Step(take=50, respond=60, close_by="rep", close_stage="customer"))
    hand_off(scrm, ids[1], "zhangsan", step=Step(take=120, close_by="timeout"))
    hand_off(scrm, ids[2], "zhangsan", step=Step(take=300, respond=600))  # still taken: open now
    hand_off(scrm, ids[3], "zhangsan", step=Step(then_owner="lisi", take=90, respond=100, close_by="admin"))
    hand_off(scrm, ids[4], "wangwu")  # offered, not taken yet
    hand_off(scrm, ids[5], "wangwu", at=BASE - timedelta(days=30), step=Step(take=10, close_by="rep"))

    figures = {row["userid"]: row for row in scrm.json("reps", "stats")}
    zhang = figures["zhangsan"]
    assert (zhang["offered"], zhang["taken"], zhang["open_now"], zhang["median_first_response_s"],
            zhang["p90_first_response_s"]) == (4, 3, 1, 120.0, 600.0)
    assert zhang["closed_by"] == {"rep": 1, "timeout": 1}
    assert (zhang["outcomes"], zhang["advanced"]) == ({"customer": 1, "lead": 1}, 1)
    lisi = figures["lisi"]  # offered 30s after opening, answered 70s later
    assert (lisi["offered"], lisi["taken"], lisi["open_now"], lisi["median_first_response_s"]) == (1, 1, 0, 70.0)
    assert (lisi["closed_by"], lisi["outcomes"], lisi["advanced"]) == ({"admin": 1}, {"lead": 1}, 0)
    assert (figures["wangwu"]["offered"], figures["wangwu"]["taken"], figures["wangwu"]["open_now"]) == (2, 1, 1)

    recent = {row["userid"]: row for row in scrm.json("reps", "stats", "--since", "2026-11-01")}
    assert (recent["wangwu"]["offered"], recent["wangwu"]["taken"], recent["wangwu"]["open_now"]) == (1, 0, 1)
    assert recent["wangwu"]["median_first_response_s"] is None and recent["zhangsan"] == zhang

    lines = scrm("reps", "stats").stdout.splitlines()
    assert lines[0].split() == ["rep", "name", "offered", "taken", "open", "1st", "resp", "p50", "p90", "closed", "by",
                                "outcomes", "advanced"]
    zhang_line = next(line for line in lines if line.startswith("zhangsan"))
    assert zhang_line.split() == ["zhangsan", "4", "3", "1", "2m00s", "10m00s", "rep", "1,", "timeout", "1",
                                  "成交", "1,", "潜在", "1", "1"]
    assert next(line for line in lines if line.startswith("wangwu")).split()[1:6] == ["2", "1", "1", "10s", "10s"]


# ---------------------------------------------------------------- leave


@pytest.fixture
def wecom_api(clean_env: None) -> Iterator[tuple[FakeWeChat, str]]:
    """The sandbox's fake API on a free port, in its own thread, also listing one unassigned customer of zhangsan."""
    fake = fake_for(SETTINGS)
    fake.add_unassigned("zhangsan", "wm_stranger")
    with served(fake.app()) as (url,):
        yield fake, f"{url}/cgi-bin"


def test_leave_moves_customers_and_open_handoffs(backend: Backend, wecom_api: tuple[FakeWeChat, str]) -> None:
    scrm = Scrm(backend.store_url, wecom_api[1])
    scrm.reps("zhangsan", "lisi", "wangwu")
    first, second = scrm.customer("amy"), scrm.customer("bob")
    hand_off(scrm, first, "zhangsan", at=datetime.now(UTC), step=Step(take=5))
    hand_off(scrm, second, "zhangsan", at=datetime.now(UTC))

    assert "no active rep nobody" in scrm("reps", "leave", "nobody", ok=False).output
    assert "--to zhangsan: not an active rep other than zhangsan" in scrm(
        "reps", "leave", "zhangsan", "--to", "zhangsan", ok=False).output
    assert scrm.count(OutboxItem) == 0

    fake = wecom_api[0]
    fake.add_group_chat("zhangsan", "老客群", ["wm_amy"])
    fake.resign_owner("zhangsan")
    serving = fake.add_group_chat("zhangsan", "新群", ["wm_bob"])  # WeCom still has its owner serving: 90500
    left = scrm("reps", "leave", "zhangsan", "--to", "lisi").stdout.splitlines()
    assert left[0] == "zhangsan has left: 3 customer(s) transferred (lisi 2)"
    assert left[1].startswith("open handoffs: 2 passed to other reps, 0 back in the queue")
    assert left[1].endswith("unassigned customers seen on WeCom: 1")
    assert left[2:] == ["customer groups: 1 moved (lisi 1), 1 not moved",
                        f"  {serving}: not moved, its owner has not left the company on WeCom (群主并未离职): "
                        "move it with an on-the-job transfer"]

    async def state(session: AsyncSession) -> tuple[bool, list[str | None], list[str | None]]:
        rep = await session.get(Rep, "zhangsan")
        owners = list(await session.scalars(select(Customer.owner_userid).order_by(Customer.id)))
        holders = list(await session.scalars(select(Handoff.rep_userid).order_by(Handoff.id)))
        return bool(rep and rep.active), owners, holders

    active, owners, holders = scrm.run(state)
    assert not active and owners == ["lisi", "lisi"] and set(holders) <= {"lisi", "wangwu"}
    assert scrm.count(TimelineEvent) > 0

    async def transfers(session: AsyncSession) -> list[dict[str, Any]]:
        return list(await session.scalars(
            select(OutboxItem.payload).where(OutboxItem.kind == "contacts.transfer_resigned")))

    (transfer,) = scrm.run(transfers)  # queued for the running bot's sender, not sent from the command line
    assert (transfer["takeover_userid"], sorted(transfer["external_userid"])) == (
        "lisi", ["wm_amy", "wm_bob", "wm_stranger"])
    assert wecom_api[0].transfers == []
    wangwus = fake.add_group_chat("wangwu", "王五的群", ["wm_amy"])
    fake.resign_owner("wangwu")
    gone = scrm.json("reps", "leave", "wangwu")
    assert gone["userid"] == "wangwu" and set(gone) == {
        "userid", "takeovers", "handoffs_moved", "handoffs_queued", "customers_transferred", "unassigned_seen",
        "groups_moved", "groups_failed"}
    assert (gone["groups_moved"], gone["groups_failed"]) == ([{"chat_id": wangwus, "to": "lisi"}], [])
    assert [rep["userid"] for rep in scrm.json("reps", "list")] == ["lisi"]
    assert "no active rep zhangsan" in scrm("reps", "leave", "zhangsan", ok=False).output
