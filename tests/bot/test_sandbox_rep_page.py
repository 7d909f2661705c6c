"""The sandbox's rep page as a person uses it: headless Chromium acts as a rep beside a customer.

Commands typed there reach the bot as signed, encrypted app callbacks; answers typed in
the kf workspace reach the customer's page; the bot's cards come back from the fake API.
"""

from __future__ import annotations

import re

import pytest

from bot.sandbox.fake_kf import KfMove, Sent
from bot.sandbox.simulator import SANDBOX_KF_ACCOUNT
from crm_store.reps import add_rep
from tests.bot.conftest import Bot
from tests.bot.test_sandbox_page import CHROMIUM, CHROMIUM_FLAGS, png_bytes

pytestmark = pytest.mark.browser
WAIT_MS = 15_000


def need_chromium() -> None:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it (scripts/install_chromium.sh)")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_rep_command_typed_on_the_page_reaches_the_bot_and_its_answer_shows(start_bot) -> None:  # type: ignore[no-untyped-def]
    need_chromium()
    from playwright.async_api import async_playwright

    bot: Bot = await start_bot(run_workers=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{bot.url}/sandbox")
            await page.click("text=act as a rep")  # the customer page links to the rep page
            await page.wait_for_url(f"{bot.url}/sandbox/rep")
            await page.fill("#rep", "wangwu")
            await page.fill("#command", "列表")
            await page.click("#send")
            answer = page.locator("#inbox .msg", has_text="你还不是客服代表")  # wangwu is nobody's rep yet
            await answer.wait_for(timeout=WAIT_MS)
            assert "callback answered 200" in await page.inner_text("#status")
            assert await page.get_attribute("a[href='/sandbox']", "href") == "/sandbox"  # and links back
        finally:
            await browser.close()
    [sent] = [sent for sent in bot.fake.sent if sent.path == "message/send"]
    assert sent.body["touser"] == "wangwu"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_rep_takes_a_kf_customer_answers_in_the_workspace_and_ends_the_session(start_bot) -> None:  # type: ignore[no-untyped-def]
    need_chromium()
    from playwright.async_api import async_playwright

    bot: Bot = await start_bot(run_workers=True, handoff={"office_hours": "mon-sun 00:00-24:00"})
    async with bot.runtime.sessions() as session, session.begin():
        await add_rep(session, "zhangsan", name="张三")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            customer, rep = await browser.new_page(), await browser.new_page()
            await customer.goto(f"{bot.url}/sandbox")
            await customer.fill("#user", "wmPageAnna")
            await customer.fill("#text", "转人工")
            await customer.click("#send")

            await rep.goto(f"{bot.url}/sandbox/rep")  # zhangsan is the page's default rep
            card = rep.locator("#inbox .msg.card", has_text="转人工")
            await card.wait_for(timeout=WAIT_MS)
            take = re.search(r"接 (\d+)", await card.inner_text())
            assert take is not None, await card.inner_text()
            await rep.fill("#command", take.group(0))
            await rep.click("#send")
            await rep.locator("#inbox .msg", has_text="已接待").wait_for(timeout=WAIT_MS)

            await rep.locator("#customer option[value='wmPageAnna']").wait_for(state="attached", timeout=WAIT_MS)
            await rep.select_option("#customer", "wmPageAnna")
            await rep.locator("#transcript .line", has_text="转人工").wait_for(timeout=WAIT_MS)
            await rep.fill("#kf-text", "您好，我是张三")
            await rep.click("#answer")
            await customer.locator(".msg.rep span", has_text="客服 zhangsan：您好，我是张三").wait_for(timeout=WAIT_MS)

            await rep.click("#end")
            await rep.locator("#customer option[value='wmPageAnna']").wait_for(state="detached", timeout=WAIT_MS)
        finally:
            await browser.close()
    assert bot.fake.kf_state_moves[-1] == KfMove(SANDBOX_KF_ACCOUNT, "wmPageAnna", 3, 4, "", by="servicer")
    assert [item["origin"] for item in bot.fake.kf_messages[SANDBOX_KF_ACCOUNT]][-2:] == [5, 4]  # answer, end event


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_photo_from_a_served_kf_customer_shows_in_the_reps_transcript(start_bot) -> None:  # type: ignore[no-untyped-def]
    need_chromium()
    from playwright.async_api import FilePayload, async_playwright

    bot: Bot = await start_bot(run_workers=True, handoff={"office_hours": "mon-sun 00:00-24:00"})
    async with bot.runtime.sessions() as session, session.begin():
        await add_rep(session, "zhangsan", name="张三")
    photo = png_bytes(12, 9, (40, 120, 220))
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            customer, rep = await browser.new_page(), await browser.new_page()
            await customer.goto(f"{bot.url}/sandbox")
            await customer.fill("#user", "wmPageBo")
            await customer.fill("#text", "转人工")
            await customer.click("#send")

            await rep.goto(f"{bot.url}/sandbox/rep")
            card = rep.locator("#inbox .msg.card", has_text="转人工")
            await card.wait_for(timeout=WAIT_MS)
            take = re.search(r"接 (\d+)", await card.inner_text())
            assert take is not None, await card.inner_text()
            await rep.fill("#command", take.group(0))
            await rep.click("#send")
            await rep.locator("#customer option[value='wmPageBo']").wait_for(state="attached", timeout=WAIT_MS)
            await rep.select_option("#customer", "wmPageBo")

            await customer.set_input_files("#image", files=[
                FilePayload(name="receipt.png", mimeType="image/png", buffer=photo)])
            await customer.locator(".msg.me img").wait_for(timeout=WAIT_MS)
            shown = rep.locator("#transcript .line.customer img")
            await shown.wait_for(timeout=WAIT_MS)
            await rep.wait_for_function(
                "document.querySelector('#transcript .line.customer img').naturalWidth === 12", timeout=WAIT_MS)
            src = await shown.get_attribute("src")
        finally:
            await browser.close()
    [media_id] = [media_id for media_id, item in bot.fake.media.items() if item.data == photo]
    assert src == f"/sandbox/media/{media_id}"
    assert bot.fake.kf_state(SANDBOX_KF_ACCOUNT, "wmPageBo") == (3, "zhangsan")  # the rep serves: no bot reply


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_images_the_bot_sends_show_on_both_pages(start_bot) -> None:  # type: ignore[no-untyped-def]
    """An image reply: uploaded with media/upload, then named by its media_id in kf/send_msg or message/send."""
    need_chromium()
    from playwright.async_api import async_playwright

    bot: Bot = await start_bot()
    to_customer = bot.fake.add_media("image", png_bytes(10, 10), "poster.png", "image/png")
    to_rep = bot.fake.add_media("image", png_bytes(14, 7), "chart.png", "image/png")
    bot.fake.sent += [
        Sent("kf/send_msg", {"touser": "wmPageShown", "open_kfid": SANDBOX_KF_ACCOUNT, "msgtype": "image",
                             "image": {"media_id": to_customer}}),
        Sent("message/send", {"touser": "zhangsan", "msgtype": "image", "image": {"media_id": to_rep}}),
    ]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            customer, rep = await browser.new_page(), await browser.new_page()
            await customer.goto(f"{bot.url}/sandbox")
            await customer.fill("#user", "wmPageShown")
            await customer.wait_for_function(
                "(document.querySelector('.msg.bot img') || {}).naturalWidth === 10", timeout=WAIT_MS)
            await rep.goto(f"{bot.url}/sandbox/rep")
            await rep.wait_for_function(
                "(document.querySelector('#inbox .msg img') || {}).naturalWidth === 14", timeout=WAIT_MS)
            assert await customer.get_attribute(".msg.bot img", "src") == f"/sandbox/media/{to_customer}"
            assert await rep.get_attribute("#inbox .msg img", "src") == f"/sandbox/media/{to_rep}"
        finally:
            await browser.close()
