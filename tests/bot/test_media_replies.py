"""Flows send media: a say step's `image:` goes to kf and OA customers, uploaded once per credential and content.

End to end on SQLite and PostgreSQL: a flow directory with assets/logo.png, signed callbacks in, the
outbox drained to the fake API, which holds what the bot uploaded (media/upload) and refuses a media
id it does not hold (40007). Expiry is driven by one test clock shared by the fake and the uploader
(`fake.now`, `MediaUploads.clock`): no sleeping. Then the loader: a missing file, a path out of the
directory, an http URL and the like are errors with the file and line.
"""

from __future__ import annotations

import os
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select, update

from bot.delivery import MEDIA, reply_call
from bot.media_uploads import MEDIA_LIFE_S, RENEW_BEFORE_S, MediaUploads, upload_name
from bot.quota import merged
from bot.sandbox.fake_wechat import Sent
from core.events import MediaAttachment, Reply
from core.reply_address import ReplyAddress
from crm_store.lifecycle_settings import LifecycleSettings
from crm_store.models import OutboxItem, TimelineEvent, utcnow
from flows.errors import FlowLoadError
from flows.loader import load_directory, load_sources
from flows.model import Say
from tests.bot.conftest import Bot
from tests.bot.test_media_download import PNG
from tests.clock import Clock
from tests.flows.test_engine import flow_dir

LOGO_FLOW = """flow: logo
triggers: [{keywords: [看看logo]}]
steps:
  - say: 这是我们的新标志
    image: assets/logo.png
"""


@pytest.fixture
async def logo_bot(start_bot, tmp_path: Path) -> tuple[Bot, Clock]:  # type: ignore[no-untyped-def]
    directory = flow_dir(tmp_path, logo=LOGO_FLOW)
    (directory / "assets").mkdir()
    (directory / "assets" / "logo.png").write_bytes(PNG)
    bot = await start_bot(flows={"directory": str(directory)}, media={"directory": str(tmp_path / "media")})
    clock = Clock(time.time())
    bot.fake.now = clock
    uploads(bot).clock = clock
    return bot, clock


def uploads(bot: Bot) -> MediaUploads:
    assert bot.runtime.sender.media is not None
    return bot.runtime.sender.media


async def kf_asks(bot: Bot, user: str) -> list[Sent]:
    before = len(bot.replies_to(user))
    assert await bot.simulator.kf_says(bot.url, user, "看看logo") == 200
    await bot.drain()
    return bot.replies_to(user)[before:]


async def oa_asks(bot: Bot, openid: str) -> list[Sent]:
    before = len(bot.replies_to(openid))
    assert await bot.simulator.oa_says(bot.url, openid, "看看logo") == 200
    await bot.drain()
    return bot.replies_to(openid)[before:]


def image_of(bot: Bot, sent: Sent) -> bytes:
    assert sent.body["msgtype"] == "image" and MEDIA not in sent.body
    return bot.fake.media[sent.body["image"]["media_id"]].data


async def test_a_say_steps_image_reaches_kf_and_oa_customers_uploaded_once_per_credential(
        logo_bot: tuple[Bot, Clock]) -> None:
    bot, _ = logo_bot
    text, image = await kf_asks(bot, "wmLogoA")
    assert (text.path, text.text) == ("kf/send_msg", "这是我们的新标志")  # the text first, never merged with it
    assert image.path == "kf/send_msg" and image_of(bot, image) == PNG
    assert bot.fake.calls.count("media/upload") == 1

    _, again = await kf_asks(bot, "wmLogoB")
    assert again.body["image"]["media_id"] == image.body["image"]["media_id"], "the cached id"
    assert bot.fake.calls.count("media/upload") == 1, "uploaded once for two sends"

    oa_text, oa_image = await oa_asks(bot, "oLogo")
    assert (oa_text.path, oa_image.path) == ("message/custom/send", "message/custom/send")
    assert oa_image.body["touser"] == "oLogo" and image_of(bot, oa_image) == PNG
    assert oa_image.body["image"]["media_id"] != image.body["image"]["media_id"], "the OA's own upload"
    assert bot.fake.calls.count("media/upload") == 2

    async with bot.runtime.sessions() as session:
        rows = (await session.scalars(select(TimelineEvent.data).where(TimelineEvent.kind == "outbound.reply")
                                      .order_by(TimelineEvent.id))).all()
    media_notes = [row["media"] for row in rows if "media" in row]
    assert media_notes == [{"kind": "image", "source": "assets/logo.png"}] * 3
    async with bot.runtime.sessions() as session:
        stored = (await session.scalars(select(OutboxItem.payload).where(OutboxItem.kind == "kf.send_msg"))).all()
    assert {"msgtype": "image", "image": {"media_id": ""}, MEDIA: {"source": "assets/logo.png"}}.items() <= \
        next(p for p in stored if p["msgtype"] == "image").items(), "the row keeps the source, not a media id"


async def test_the_cached_id_is_uploaded_again_once_it_expires(logo_bot: tuple[Bot, Clock]) -> None:
    bot, clock = logo_bot
    [_, first] = await kf_asks(bot, "wmExpiry")
    clock.at += MEDIA_LIFE_S - RENEW_BEFORE_S - 60  # still valid for a minute: the cached id
    [_, cached] = await kf_asks(bot, "wmExpiry")
    assert cached.body["image"]["media_id"] == first.body["image"]["media_id"]
    assert bot.fake.calls.count("media/upload") == 1
    clock.at += 61  # within an hour of its 3 days: uploaded again before WeChat forgets it
    [_, renewed] = await kf_asks(bot, "wmExpiry")
    assert renewed.body["image"]["media_id"] != first.body["image"]["media_id"]
    assert image_of(bot, renewed) == PNG and bot.fake.calls.count("media/upload") == 2


async def test_an_id_wechat_forgot_early_is_dropped_and_the_row_retried_with_a_new_upload(
        logo_bot: tuple[Bot, Clock]) -> None:
    bot, clock = logo_bot
    [_, first] = await kf_asks(bot, "wmForgot")
    forgotten = first.body["image"]["media_id"]
    bot.fake.media[forgotten] = replace(bot.fake.media[forgotten], uploaded_at=clock.at - MEDIA_LIFE_S)
    assert [sent.text for sent in await kf_asks(bot, "wmForgot")] == ["这是我们的新标志"]
    assert "40007" in await last_error(bot), "WeChat no longer holds the id: the row waits to be tried again"
    async with bot.runtime.sessions() as session, session.begin():  # its back-off is over (the test's clock)
        await session.execute(update(OutboxItem).where(OutboxItem.status == "pending")
                              .values(available_at=utcnow()))
    await bot.drain()
    resent = bot.replies_to("wmForgot")[-1]
    assert resent.body["image"]["media_id"] != forgotten and image_of(bot, resent) == PNG
    assert bot.fake.calls.count("media/upload") == 2


async def last_error(bot: Bot) -> str:
    async with bot.runtime.sessions() as session:
        return str(await session.scalar(select(OutboxItem.last_error).where(OutboxItem.status == "pending")))


def test_media_is_never_merged_with_text_and_each_channel_gets_its_own_message_type() -> None:
    image = Reply("", media=MediaAttachment("image", "assets/logo.png"))
    assert merged([Reply("a"), image, Reply("b")], "kf") == [Reply("a"), image, Reply("b")]
    kf = reply_call(ReplyAddress("kf", "wmX", "wkA"), Reply("", media=MediaAttachment("voice", "a.amr")))
    assert kf is not None and kf.kind == "kf.send_msg" and kf.payload == {
        "touser": "wmX", "open_kfid": "wkA", "msgtype": "voice", "voice": {"media_id": ""}, MEDIA: {"source": "a.amr"}}
    oa = reply_call(ReplyAddress("oa", "oX", ""), Reply("", media=MediaAttachment("video", "https://cdn.example.com/v.mp4")))
    assert oa is not None and (oa.kind, oa.payload["msgtype"], oa.payload["video"]) == (
        "oa.custom_send", "video", {"media_id": ""})
    assert reply_call(ReplyAddress("oa", "oX", ""), Reply("", media=MediaAttachment("file", "a.pdf"))) is None
    assert upload_name("image", "IMG_01", "image/png") == "IMG_01.png"
    assert upload_name("voice", 'a"b.mp3', "") == "ab.amr"


# --- the loader: say steps' media -------------------------------------------------------------------

LIFECYCLE = LifecycleSettings()


def media_flow(key: str, value: str) -> str:
    return textwrap.dedent(f"""\
        flow: pics
        steps:
          - say: 看图
            {key}: {value}
        """)


def loader_errors(directory: Path, text: str) -> list[str]:
    (directory / "pics.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(FlowLoadError) as caught:
        load_directory(directory, LIFECYCLE)
    return [str(error) for error in caught.value.errors]


@pytest.fixture
def assets_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "flows"
    (directory / "assets").mkdir(parents=True)
    (directory / "assets" / "logo.png").write_bytes(PNG)
    return directory


def test_a_say_steps_image_in_the_directory_loads_to_a_media_attachment(assets_dir: Path) -> None:
    (assets_dir / "pics.yaml").write_text(media_flow("image", "assets/logo.png"), encoding="utf-8")
    flow = load_directory(assets_dir, LIFECYCLE).flows["pics"]
    step = flow.steps[0]
    assert isinstance(step, Say) and step.media == MediaAttachment("image", "assets/logo.png")
    url = media_flow("video", "https://cdn.example.com/intro.mp4")
    step = load_sources({"pics.yaml": url}, LIFECYCLE).flows["pics"].steps[0]
    assert isinstance(step, Say) and step.media == MediaAttachment("video", "https://cdn.example.com/intro.mp4")
    missing = media_flow("image", "assets/gone.png")
    assert load_sources({"pics.yaml": missing}, LIFECYCLE).flows["pics"], "a stored release: files not looked at"


@pytest.mark.parametrize(("key", "value", "message"), [
    ("image", "assets/gone.png", "image 'assets/gone.png' does not exist in the flow directory"),
    ("image", "../secret.png", "image '../secret.png' leaves the flow directory (..)"),
    ("image", "/etc/logo.png", "must be a path relative to the flow directory"),
    ("image", "http://cdn.example.com/a.png", "is not an https URL"),
    ("image", "assets/logo.gif", "a image must be jpeg or jpg or png"),
    ("voice", "assets/hello.mp3", "a voice must be amr"),
    ("file", "assets", "file 'assets' is not a file in the flow directory"),
])
def test_a_bad_media_path_is_an_error_with_file_and_line(assets_dir: Path, key: str, value: str,
                                                         message: str) -> None:
    [error] = loader_errors(assets_dir, media_flow(key, value))
    assert error.startswith("pics.yaml:4: flow pics, step step1: ") and message in error, error


def test_a_link_out_of_the_directory_a_file_too_large_and_two_media_in_one_step(assets_dir: Path,
                                                                               tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(PNG)
    os.symlink(outside, assets_dir / "assets" / "link.png")
    [error] = loader_errors(assets_dir, media_flow("image", "assets/link.png"))
    assert error.startswith("pics.yaml:4:") and "leads outside the flow directory" in error
    with (assets_dir / "assets" / "long.amr").open("wb") as handle:
        handle.truncate(2 * 1024 * 1024 + 1)
    [error] = loader_errors(assets_dir, media_flow("voice", "assets/long.amr"))
    assert error.startswith("pics.yaml:4:") and "WeChat takes at most 2.0 MB" in error
    both = media_flow("image", "assets/logo.png") + "    file: assets/logo.png\n"
    [error] = loader_errors(assets_dir, both)
    assert error.startswith("pics.yaml:5:") and "one of image, file, voice, video per step" in error
