"""The sandbox page as a person uses it: headless Chromium types a message and reads the bot's answer."""

from __future__ import annotations

import shutil

import pytest

from tests.bot.conftest import Bot

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_customer_types_on_the_page_and_sees_the_answer(start_bot) -> None:  # type: ignore[no-untyped-def]
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it (scripts/install_chromium.sh)")
    from playwright.async_api import async_playwright

    bot: Bot = await start_bot(run_workers=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{bot.url}/sandbox")
            await page.fill("#user", "wmPageCustomer")
            await page.fill("#text", "你好")
            await page.click("#send")
            answer = page.locator(".msg.bot span").first
            await answer.wait_for(timeout=15_000)
            assert "请问有什么可以帮您" in await answer.inner_text()
            assert await page.locator(".msg.me span").first.inner_text() == "你好"
            await page.fill("#text", "嗯嗯嗯")  # not understood: the fallback flow offers choices
            await page.click("#send")
            await page.locator(".menu button", has_text="问价格").first.click()  # a kf menu choice
            await page.locator(".msg.bot span", has_text="哪款商品").wait_for(timeout=15_000)
            await page.select_option("#channel", "oa")
            await page.fill("#user", "oPageFollower")
            await page.click("#enter")
            welcome = page.locator(".msg.bot span", has_text="感谢关注")
            await welcome.wait_for(timeout=15_000)
            assert await page.locator(".msg.bot span").count() == 1  # only this follower's conversation
        finally:
            await browser.close()
    assert len(bot.replies_to("wmPageCustomer")) == 3  # the greeting, the choices, the choice's answer
