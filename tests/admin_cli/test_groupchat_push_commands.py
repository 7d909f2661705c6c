"""`scrm groupchats push …` and `scrm groupchats sops …` through Click's runner, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.sandbox.fake_wechat import FakeWeChat
from bot.sandbox.simulator import fake_for
from bot.settings import load_settings
from crm_store.group_chat_models import GroupChat, GroupChatTag, GroupPush, GroupPushTarget
from tests.admin_cli.harness import ScrmRunner, served
from tests.conftest import Backend

SOP = """\
id: new_arrivals
name: 新品群每日上新
groups: {tags: [新品群]}
steps:
  - {id: morning, at: "09:00", every: day, text: 早上好}
  - {id: eve, at: "20:00", every: "2026-12-24", text: 平安夜快乐}
"""


class Scrm(ScrmRunner):
    command = ("groupchats",)
    failure_exit = 1

    def groups(self, *rows: tuple[str, str, tuple[str, ...]]) -> None:
        """Groups (chat_id, owner, tags) in the store."""
        async def work(session: AsyncSession) -> None:
            for chat_id, owner, tags in rows:
                group = GroupChat(chat_id=chat_id, owner_userid=owner, name=f"群 {chat_id}")
                session.add(group)
                await session.flush()
                session.add_all(GroupChatTag(group_id=group.id, tag=tag) for tag in tags)

        self.run(work)


@pytest.fixture
def scrm(backend: Backend, clean_env: None, tmp_path: Path) -> Scrm:
    flows = tmp_path / "flows"
    (flows / "group_sops").mkdir(parents=True)
    (flows / "group_sops" / "new_arrivals.yaml").write_text(SOP, encoding="utf-8")
    return Scrm(backend.store_url, SCRM__FLOWS__DIRECTORY=str(flows), SCRM__FLOWS__PUBLISH_ON_START="false")


def test_push_create_list_show_cancel(scrm: Scrm) -> None:
    scrm.groups(("c1", "rep_a", ("新品群",)), ("c2", "rep_b", ("新品群", "VIP")), ("c3", "rep_b", ()))
    created = scrm.json("push", "create", "圣诞上新", "--text", "圣诞新品到了", "--tag", "新品群", "--link-title", "新品",
                        "--link-url", "https://shop.example.com/x", "--at", "2099-12-24 09:00")
    assert created["audience"] == 2 and created["status"] == "scheduled"
    assert created["message"]["link"] == {"title": "新品", "url": "https://shop.example.com/x"}
    assert created["scheduled_at"].startswith("2099-12-24 01:00")  # 09:00 in Asia/Shanghai
    [listed] = scrm.json("push", "list")
    assert listed["id"] == created["id"] and listed["groups"] == {"pending": 2}
    shown = scrm.json("push", "show", str(created["id"]))
    assert shown["groups"] == {"pending": 2} and shown["tasks"] == 0 and shown["limited"] == {}
    text = scrm("push", "show", str(created["id"])).output
    assert "2 group(s): pending 2" in text and "results read not yet" in text
    assert "2 group(s) will not be sent" in scrm("push", "cancel", str(created["id"])).output
    assert "already cancelled" in scrm("push", "cancel", str(created["id"]), ok=False).output


def test_bad_push_lists_every_problem_and_writes_nothing(scrm: Scrm) -> None:
    scrm.groups(("c1", "rep_a", ("新品群",)))
    output = scrm("push", "create", "x", "--link-url", "ftp://nope", ok=False).output
    assert "groups: give at least one of" in output and "link.title: required" in output
    assert "link.url: 'ftp://nope' is not an http(s) address" in output
    assert "no group matches" in scrm("push", "create", "x", "--text", "hi", "--tag", "无", ok=False).output
    assert "is in the past" in scrm("push", "create", "x", "--text", "hi", "--tag", "新品群", "--at", "2020-01-01 09:00",
                                    ok=False).output
    assert "no group push 42" in scrm("push", "show", "42", ok=False).output
    assert scrm.count(GroupPush) == 0 and scrm.count(GroupPushTarget) == 0


def test_push_remind_reminds_owners_who_have_not_sent(scrm: Scrm, fake_api: tuple[FakeWeChat, str]) -> None:
    fake, url = fake_api
    chat_id = fake.add_group_chat("rep_a", "新品群")
    msgid = fake.add_group_chat_task({"sender": "rep_a", "chat_id_list": [chat_id], "text": {"content": "hi"}},
                                     "msg9")["msgid"]
    scrm.groups((chat_id, "rep_a", ("新品群",)))
    push_id = scrm.json("push", "create", "x", "--text", "hi", "--tag", "新品群")["id"]

    async def tasked(session: AsyncSession) -> None:  # as the dispatcher leaves it
        await session.execute(update(GroupPushTarget).values(status="created", msgid=msgid))
        await session.execute(update(GroupPush).values(status="sent"))

    scrm.run(tasked)
    env = {"SCRM__WECOM__API_BASE": url}
    assert "1 owner task(s) reminded" in scrm("push", "remind", str(push_id), env=env).output
    assert fake.reminders == [msgid]
    assert scrm.json("push", "show", str(push_id))["reminders"] == 1


@pytest.fixture
def fake_api(clean_env: None) -> Iterator[tuple[FakeWeChat, str]]:
    fake = fake_for(load_settings(nlu={"mode": "rules"}))
    with served(fake.app()) as (url,):
        yield fake, f"{url}/cgi-bin"


def test_sops_list_validate_show(scrm: Scrm, tmp_path: Path) -> None:
    scrm.groups(("c1", "rep_a", ("新品群",)), ("c2", "rep_b", ()))
    [listed] = scrm.json("sops", "list")
    assert listed["id"] == "new_arrivals" and listed["steps"][1]["every"] == "2026-12-24"
    assert "1 group SOP(s) OK: new_arrivals" in scrm("sops", "validate").output
    shown = scrm.json("sops", "show", "new_arrivals", "--next", "3")
    assert shown["groups_now"] == 1 and len(shown["next"]) == 3
    assert "1 group(s) now" in scrm("sops", "show", "new_arrivals").output
    assert "no group SOP 'nope'" in scrm("sops", "show", "nope", ok=False).output
    (tmp_path / "flows" / "group_sops" / "bad.yaml").write_text(SOP.replace("new_arrivals", "bad").replace(
        '"09:00"', '"25:00"'), encoding="utf-8")
    output = scrm("sops", "validate", ok=False).output
    assert "group_sops/bad.yaml:5" in output and "'25:00'" in output
