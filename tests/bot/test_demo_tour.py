"""The quick start's tour, taken in headless Chromium the way a person takes it after `scrm demo`.

A group opened (开团) and filled by a second customer (参团 <code>), a friend invited (邀请好友,
邀请码 <code>) and the inviter rewarded, a complaint handed to a rep who answers on the rep page,
and `scrm report html` showing it all. The office is closed while it runs: the demo's reps, on
duty around the clock, are what makes the handoff immediate at any hour. Each step is
photographed (900×700) into the test's directory, or, with DOCS_TOUR_IMAGES set (`make
screenshots`), into that directory: docs/images/, where the quick start shows them. They are
committed with the documentation; an ordinary test run leaves them as they are.
"""

from __future__ import annotations

import asyncio
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result

from admin_cli.main import cli
from crm_store.office_hours import DAYS
from tests.bot.conftest import Bot
from tests.bot.test_sandbox_page import CHROMIUM, CHROMIUM_FLAGS
from tests.conftest import Backend

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = pytest.mark.browser
WIDTH, HEIGHT = 900, 700  # the screenshots' size
WAIT_MS = 15_000
SETTLE_MS = 800  # the pages poll every 500 and 700 ms: one more poll, so each picture is the settled page
A, B, C = "wmSandboxCustomer1", "wmSandboxCustomer2", "wmSandboxCustomer3"  # A is the page's default


async def scrm(backend: Backend, *args: str) -> Result:
    """`scrm ARGS` on the test's store, in a thread (the CLI runs `asyncio.run` itself)."""
    env = {"SCRM__STORE__URL": backend.store_url, "SCRM__NLU__MODE": "rules", "SCRM__REDIS__URL": ""}
    result = await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result


def office_closed_now() -> str:
    """Office hours that are certainly closed now: one minute on a day three days away."""
    today = datetime.now(ZoneInfo("Asia/Shanghai")).weekday()
    return f"{DAYS[(today + 3) % 7]} 09:00-09:01"


class Tour:
    """The customer page and the rep page, as the person taking the tour uses them."""

    def __init__(self, customer: Page, rep: Page, url: str, images: Path) -> None:
        self.customer, self.rep, self.url, self.images = customer, rep, url, images

    async def snap(self, page: Page, name: str) -> None:
        await page.wait_for_timeout(SETTLE_MS)  # for the picture only: every assertion waits for its text
        await page.screenshot(path=str(self.images / name))

    async def as_customer(self, user: str) -> None:
        await self.customer.fill("#user", user)  # the page shows this customer's chat

    async def say(self, text: str, answer: str) -> str:
        """Type `text` as the current customer; the bot's message containing `answer`."""
        await self.customer.fill("#text", text)
        await self.customer.click("#send")
        return await self.sees(answer)

    async def sees(self, text: str, selector: str = ".msg.bot span") -> str:
        message = self.customer.locator(selector, has_text=text).first
        await message.wait_for(timeout=WAIT_MS)
        return await message.inner_text()

    async def rep_types(self, command: str, answer: str) -> None:
        await self.rep.fill("#command", command)
        await self.rep.click("#send")
        await self.rep.locator("#inbox .msg", has_text=answer).first.wait_for(timeout=WAIT_MS)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_the_quick_start_tour_after_scrm_demo(  # type: ignore[no-untyped-def]
    backend: Backend, start_bot, tmp_path: Path
) -> None:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it (scripts/install_chromium.sh)")
    from playwright.async_api import async_playwright

    await scrm(backend, "demo")
    bot: Bot = await start_bot(run_workers=True, handoff={"office_hours": office_closed_now()})
    office = bot.settings.handoff
    assert not office.hours.is_open(datetime.now(UTC), ZoneInfo(office.timezone))  # only the reps' hours are
    images = Path(os.environ.get("DOCS_TOUR_IMAGES") or tmp_path)
    images.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            context = await browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
            tour = Tour(await context.new_page(), await context.new_page(), bot.url, images)
            await tour.customer.goto(f"{bot.url}/sandbox")
            await group_buy(tour)
            await invite(tour)
            await handoff(tour)
            await report(tour, backend, tmp_path / "report.html")
        finally:
            await browser.close()
    queued = bot.settings.handoff.messages.queued.split("{")[0]  # "现在是非工作时间，我们的同事将在 …"
    assert not [sent.text for sent in bot.fake.sent if sent.text.startswith(queued)]


async def group_buy(tour: Tour) -> None:
    opened = await tour.say("开团", "开团成功")  # A, the page's default customer
    assert "坚果礼盒双人团" in opened
    found = re.search(r"团号 ([0-9A-Z]{6})", opened)
    assert found is not None, opened
    await tour.snap(tour.customer, "tour-1-group-open.png")
    await tour.as_customer(B)
    await tour.say(f"参团 {found.group(1)}", "拼团成功")
    await tour.snap(tour.customer, "tour-2-group-filled.png")


async def invite(tour: Tour) -> None:
    await tour.as_customer(A)
    shown = await tour.say("邀请好友", "专属邀请码")
    found = re.search(r"专属邀请码：([0-9A-Z]{8})", shown)
    assert found is not None, shown
    await tour.as_customer(C)
    await tour.say(f"邀请码 {found.group(1)}", "邀请来的好友")
    await tour.sees("新人券5元")  # the newcomer's reward
    await tour.snap(tour.customer, "tour-3-invite.png")
    await tour.as_customer(A)
    await tour.sees("积分10")  # the inviter's, on the chat they last used
    await tour.snap(tour.customer, "tour-4-reward.png")


async def handoff(tour: Tour) -> None:
    await tour.as_customer(C)
    await tour.say("投诉", "已为您转接专员")  # at once, though the office is closed: 张三 is on
    await tour.snap(tour.customer, "tour-5-handoff.png")
    await tour.rep.goto(f"{tour.url}/sandbox/rep")  # opens as zhangsan (张三)
    card = tour.rep.locator("#inbox .msg.card", has_text="投诉").first
    await card.wait_for(timeout=WAIT_MS)
    take = re.search(r"接 \d+", await card.inner_text())
    assert take is not None, await card.inner_text()
    await tour.rep_types(take.group(0), "已接待")
    await tour.rep.locator(f"#customer option[value='{C}']").wait_for(state="attached", timeout=WAIT_MS)
    await tour.rep.select_option("#customer", C)
    await tour.rep.fill("#kf-text", "您好，我是张三，请问坚果有什么问题？")
    await tour.rep.click("#answer")
    await tour.rep.locator("#transcript .line.rep", has_text="我是张三").wait_for(timeout=WAIT_MS)
    await tour.snap(tour.rep, "tour-6-rep-page.png")
    await tour.sees("客服 zhangsan：您好，我是张三", ".msg.rep span")
    await tour.snap(tour.customer, "tour-7-rep-answer.png")
    await tour.rep.click("#end")
    await tour.rep.locator(f"#customer option[value='{C}']").wait_for(state="detached", timeout=WAIT_MS)


async def report(tour: Tour, backend: Backend, path: Path) -> None:
    await scrm(backend, "report", "html", "-o", str(path))
    page = tour.customer
    await page.goto(path.as_uri())
    text = await page.inner_text("body")
    for expected in ("坚果礼盒双人团", "演示海报", "小美", "new_lead", "zhangsan", "lisi"):
        assert expected in text, expected
    await page.locator("h2", has_text="Group-buys").evaluate("heading => heading.scrollIntoView()")
    await tour.snap(page, "tour-8-report.png")
