"""The sandbox page as a person uses it: headless Chromium types a message and reads the bot's answer,
picks a photo, shares a place, sends an OA voice note; then the media route on its own (bad input, what it serves)."""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import Callable
from functools import partial
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from bot.sandbox.fake_kf import Sent
from bot.sandbox.simulator import SANDBOX_KF_ACCOUNT
from crm_store.models import Identity, TimelineEvent
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


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_starter_faq_question_typed_on_the_page_gets_its_answer(start_bot) -> None:  # type: ignore[no-untyped-def]
    """The shipped faq.yaml answers out of the box; without Rasa (tests run keyword rules) its questions match."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it (scripts/install_chromium.sh)")
    from playwright.async_api import async_playwright

    bot: Bot = await start_bot(run_workers=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{bot.url}/sandbox")
            await page.fill("#user", "wmPageFaq")
            await page.fill("#text", "新疆能发货吗")
            await page.click("#send")
            answer = page.locator(".msg.bot span").first
            await answer.wait_for(timeout=15_000)
            assert (await answer.inner_text()).startswith("新疆、西藏、青海")
        finally:
            await browser.close()


# --- photos, files, places and voice notes from the page -------------------------------------------------

def png_bytes(width: int = 8, height: int = 6, rgb: tuple[int, int, int] = (230, 80, 40)) -> bytes:
    """A real PNG of one colour (so the browser draws it), made without an imaging library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))  # filter 0, then the row's pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


async def inbound_contents(bot: Bot, user: str) -> list[dict[str, Any]]:
    """The `content` of each `inbound.message` on the timeline of the customer with this channel id."""
    async with bot.runtime.sessions() as session:
        rows = await session.scalars(
            select(TimelineEvent.data).join(Identity, Identity.customer_id == TimelineEvent.customer_id)
            .where(Identity.external_id == user, TimelineEvent.kind == "inbound.message")
            .order_by(TimelineEvent.id))
        return [row.get("content") or {} for row in rows.all()]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_photo_picked_on_the_page_reaches_the_bot_and_shows(start_bot) -> None:  # type: ignore[no-untyped-def]
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it (scripts/install_chromium.sh)")
    from playwright.async_api import FilePayload, async_playwright

    bot: Bot = await start_bot(run_workers=True)
    photo = png_bytes()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{bot.url}/sandbox")
            await page.fill("#user", "wmPagePhoto")
            picked = FilePayload(name="photo.png", mimeType="image/png", buffer=photo)
            await page.set_input_files("#image", files=[picked])
            shown = page.locator(".msg.me img")
            await shown.wait_for(timeout=15_000)
            await page.wait_for_function("document.querySelector('.msg.me img').naturalWidth === 8", timeout=15_000)
            await page.locator(".msg.bot span").first.wait_for(timeout=15_000)  # the turn is answered
            assert "callback answered 200" in await page.inner_text("#status")
            src = await shown.get_attribute("src")
        finally:
            await browser.close()
    [media_id] = [media_id for media_id, item in bot.fake.media.items() if item.data == photo]
    assert src == f"/sandbox/media/{media_id}"
    assert (bot.fake.media[media_id].filename, bot.fake.media[media_id].content_type) == ("photo.png", "image/png")
    [item] = [item for item in bot.fake.kf_messages[SANDBOX_KF_ACCOUNT] if item["external_userid"] == "wmPagePhoto"]
    assert (item["origin"], item["msgtype"], item["image"]) == (3, "image", {"media_id": media_id})
    [content] = await inbound_contents(bot, "wmPagePhoto")
    assert (content["type"], content["media_id"]) == ("image", media_id)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_location_sent_from_the_page_reaches_the_bot_as_a_place(start_bot) -> None:  # type: ignore[no-untyped-def]
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it (scripts/install_chromium.sh)")
    from playwright.async_api import async_playwright

    bot: Bot = await start_bot(run_workers=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{bot.url}/sandbox")
            await page.fill("#user", "wmPagePlace")
            await page.fill("#lat", "23.1066")
            await page.fill("#lng", "113.3245")
            await page.fill("#place", "广州塔")
            await page.click("#send-location")
            await page.locator(".msg.me span", has_text="📍 广州塔 (23.1066, 113.3245)").wait_for(timeout=15_000)
            await page.locator(".msg.bot span").first.wait_for(timeout=15_000)  # the turn is answered
        finally:
            await browser.close()
    # A shipped flow that acknowledges a location is being written; until it lands the bot answers with the
    # fallback's choices, so this asserts what the bot read rather than the words of its reply.
    [content] = await inbound_contents(bot, "wmPagePlace")
    assert content == {"type": "location", "latitude": 23.1066, "longitude": 113.3245, "label": "广州塔",
                       "address": "", "scale": 0}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_an_oa_voice_note_from_the_page_is_answered_by_its_recognised_words(start_bot) -> None:  # type: ignore[no-untyped-def]
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it (scripts/install_chromium.sh)")
    from playwright.async_api import async_playwright

    bot: Bot = await start_bot(run_workers=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{bot.url}/sandbox")
            assert not await page.locator("#send-voice").is_visible()  # an OA control only
            await page.select_option("#channel", "oa")
            await page.fill("#user", "oPageVoice")
            await page.fill("#recognition", "新疆能发货吗")
            await page.click("#send-voice")  # no recording picked: a silent AMR stands in
            await page.locator(".msg.me a", has_text="🎤 voice.amr").wait_for(timeout=15_000)
            answer = page.locator(".msg.bot span").first
            await answer.wait_for(timeout=15_000)
            assert (await answer.inner_text()).startswith("新疆、西藏、青海")
        finally:
            await browser.close()
    [content] = await inbound_contents(bot, "oPageVoice")
    assert (content["type"], content["format"]) == ("voice", "amr")
    assert bot.fake.media[content["media_id"]].data.startswith(b"#!AMR\n")


# --- POST /sandbox/media and GET /sandbox/media/{id} without a browser (the module's mark is only a label) --

def media_form(fields: dict[str, str], file: tuple[str, bytes, str] | None = None) -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=True)  # as the page's FormData, with a file or without
    for key, value in fields.items():
        form.add_field(key, value)
    if file is not None:
        name, data, content_type = file
        form.add_field("file", data, filename=name, content_type=content_type)
    return form


KF_PHOTO = {"user": "wmForm", "channel": "kf", "kind": "image"}
A_PNG, TEN_BYTES = ("a.png", b"x" * 10, "image/png"), b"x" * 10
LONG_AMR = b"#!AMR\n" + bytes(2 * 1024 * 1024)  # 6 bytes over voice's 2 MB


def photo_form(file: tuple[str, bytes, str] | None = None, **fields: str) -> Callable[[], aiohttp.FormData]:
    """A kf photo's form with `fields` changed, made afresh for each request (aiohttp sends a FormData once)."""
    return partial(media_form, {**KF_PHOTO, **fields}, file)


BAD_MEDIA_REQUESTS: dict[str, tuple[dict[str, Any] | list[int] | Callable[[], aiohttp.FormData], str]] = {
    "no file": (photo_form(), "need a file: the image to send"),
    "an empty file": (photo_form(("photo.png", b"", "image/png")), "is empty"),
    "an unknown kind": (photo_form(A_PNG, kind="sticker"),
                        "kind must be image, voice, video, file or location, not 'sticker'"),
    "no user": (photo_form(A_PNG, user=" "), "need user"),
    "an unknown channel": (photo_form(A_PNG, channel="sms"), "channel must be kf or oa"),
    "a voice note over 2 MB": (photo_form(("long.amr", LONG_AMR, "audio/amr"), kind="voice"),
                               "the voice is 2097158 bytes: WeChat takes at most 2 MB (2097152 bytes) for a voice"),
    "a text file as an image": (photo_form(("notes.txt", b"hello world", "text/plain")),
                                "an image must be a picture"),
    "a voice note that is not AMR or MP3": (photo_form(("memo.m4a", TEN_BYTES, "audio/mp4"), kind="voice"),
                                            "a voice must be amr or mp3"),
    "a file on the OA": (photo_form(("a.pdf", b"%PDF-1.7", "application/pdf"), channel="oa", kind="file"),
                         "the OA takes no files from followers"),
    "recognition on kf": (photo_form(kind="voice", recognition="你好"), "recognition is an OA voice note's words"),
    "a latitude past the pole": ({"user": "wmForm", "kind": "location", "lat": 91, "lng": 113.3},
                                 "latitude 91.0 is outside -90..90"),
    "a longitude that is not a number": ({"user": "wmForm", "kind": "location", "lat": 23.1, "lng": "east"},
                                         "longitude 'east' is not a number"),
    "no coordinates": ({"user": "wmForm", "kind": "location", "label": "somewhere"},
                       "latitude None is not a number"),
    "JSON that is not an object": ([1, 2], "the JSON body must be an object"),
}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case", list(BAD_MEDIA_REQUESTS))
async def test_bad_input_to_the_media_route_is_a_400_that_says_what_is_wrong(start_bot, case: str) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot()
    body, expected = BAD_MEDIA_REQUESTS[case]
    if callable(body):  # a form, made afresh: aiohttp's FormData is sent once
        response = await bot.client.post("/sandbox/media", data=body())
    else:
        response = await bot.client.post("/sandbox/media", json=body)
    assert response.status == 400
    assert expected in (await response.json())["error"]
    assert not bot.fake.kf_messages.get(SANDBOX_KF_ACCOUNT) and not bot.fake.media  # nothing was sent


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_body_that_is_neither_a_form_nor_json_is_a_400(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot()
    for headers, data in (({"Content-Type": "text/plain"}, b"hello"),
                          ({"Content-Type": "application/json"}, b"{not json"),
                          ({"Content-Type": "multipart/form-data"}, b"no boundary")):
        response = await bot.client.post("/sandbox/media", data=data, headers=headers)
        assert response.status == 400, (headers, await response.text())
        assert (await response.json())["error"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_the_media_route_serves_what_customers_sent_and_the_bot_uploaded(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot()
    photo = png_bytes()
    response = await bot.client.post("/sandbox/media", data=media_form(
        {"user": "wmServe", "channel": "kf", "kind": "image"}, ("photo.png", photo, "image/png")))
    assert response.status == 200
    sent = await response.json()
    assert (sent["kind"], sent["filename"]) == ("image", "photo.png")
    served = await bot.client.get(f"/sandbox/media/{sent['media_id']}")
    assert (served.status, served.content_type, await served.read()) == (200, "image/png", photo)
    assert served.headers["X-Content-Type-Options"] == "nosniff"

    page = bot.fake.add_media("file", b"<script>alert(1)</script>", "page.html", "text/html")  # a customer's file
    served = await bot.client.get(f"/sandbox/media/{page}")
    assert served.headers["Content-Disposition"].startswith("attachment")  # never rendered on the sandbox's origin
    assert (await bot.client.get("/sandbox/media/nope")).status == 404

    # what the bot sends as an image reply: uploaded with media/upload, then kf/send_msg names the media_id
    reply = bot.fake.add_media("image", photo, "reply.png", "image/png")
    bot.fake.sent.append(Sent("kf/send_msg", {"touser": "wmServe", "open_kfid": SANDBOX_KF_ACCOUNT,
                                              "msgtype": "image", "image": {"media_id": reply}}))
    [message] = (await (await bot.client.get("/sandbox/messages", params={"user": "wmServe"})).json())["messages"]
    assert (message["kind"], message["media_id"], message["filename"]) == ("image", reply, "reply.png")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_location_and_an_oa_voice_note_go_out_as_wechat_sends_them(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot: Bot = await start_bot()
    response = await bot.client.post("/sandbox/media", json={
        "user": "wmWhere", "channel": "kf", "kind": "location", "lat": "23.1066", "lng": 113.3245, "label": "广州塔"})
    assert (response.status, (await response.json())["callback_status"]) == (200, 200)
    [item] = bot.fake.kf_messages[SANDBOX_KF_ACCOUNT]
    assert item["location"] == {"latitude": 23.1066, "longitude": 113.3245, "name": "广州塔", "address": ""}

    recording = b"#!AMR\n" + bytes(range(64))
    response = await bot.client.post("/sandbox/media", data=media_form(
        {"user": "oVoice", "channel": "oa", "kind": "voice", "recognition": "你好"},
        ("memo.mp3", recording, "audio/mpeg")))
    assert response.status == 200
    media_id = (await response.json())["media_id"]
    assert bot.fake.media[media_id].data == recording
    await bot.drain()
    [content] = await inbound_contents(bot, "oVoice")
    assert (content["type"], content["media_id"], content["format"]) == ("voice", media_id, "mp3")
