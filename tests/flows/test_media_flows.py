"""Flows see media: photos, voice notes, locations… start flows, answer asks and steer branches.

Through the running bot (kf items pulled with kf/sync_msg, OA messages as signed callbacks), on
SQLite and PostgreSQL; the shipped flows unless a test writes its own directory. The loader's
errors for media triggers, content conditions and media slots are checked on YAML text.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.sandbox.simulator import SANDBOX_KF_ACCOUNT
from core.content import Location, Media
from crm_store.lifecycle_settings import LifecycleSettings
from crm_store.media_items import MediaItem
from crm_store.models import Conversation, TimelineEvent, utcnow
from crm_store.reps import add_rep
from flows.answers import answer_to, content_answer, parse_media_reference
from flows.errors import FlowError, FlowLoadError
from flows.loader import load_sources
from flows.matching import match_message
from flows.model import Ask, MediaTrigger
from flows.settings import SHIPPED_FLOWS
from tests.bot.conftest import Bot
from tests.bot.test_message_types import post_kf_notification, post_oa
from tests.flows.test_engine import customer_of, say

KEPT = "收到了，已为您保存，稍后同事会看到。还有什么可以帮您？"
VOICE = "抱歉，语音我暂时听不清，麻烦打字告诉我，或回复「人工」为您转接同事。"
LOCATION = "收到您的位置啦～目前还不能自动查询附近门店，需要的话请回复「人工」，同事为您查询。"
SHARED = "收到您分享的内容啦，已为您记下，稍后同事会看到。还有什么可以帮您？"
NOT_UNDERSTOOD = "抱歉，我没太明白。您是想："
ASK_PRODUCT = "请问您想了解哪款商品呢？告诉我商品名称就好～"
PHONE_AGAIN = "手机号好像不太对，请发送 11 位手机号（例如 138 1234 5678）。"

ASK_PHOTO = "非常抱歉给您带来不好的体验。方便的话请拍一张问题的照片发给我，同事处理会更快。"
PHOTO_AGAIN = "请直接发送照片（点输入框旁的「+」选相册或拍摄）；不方便拍照的话，再回复一句话，我直接为您转接同事。"
WITH_PHOTO = "照片收到了，已为您转接专员，请稍候，我们会尽快回复您。"
WITHOUT_PHOTO = "已为您转接专员，请稍候，我们会尽快回复您。"
# The complaint flow asking for a photo before the handoff: the shipped file's head (its triggers), these steps.
PHOTO_STEPS = f"""steps:
  - tag: 投诉
  - id: ask_photo
    ask: {ASK_PHOTO}
    expect: image
    slot: photo
    retries: 1
    reprompt: {PHOTO_AGAIN}
    timeout: 5m
    on_timeout: hand_over
    on_fail: hand_over
  - id: with_photo
    handoff: {{reason: complaint, message: {WITH_PHOTO}}}
  - id: hand_over
    handoff: {{reason: complaint, message: {WITHOUT_PHOTO}}}
"""


async def kf_sends(bot: Bot, user: str, msgtype: str, body: dict[str, Any]) -> list[str]:
    """The kf customer sends a photo, voice note, location…: the texts of the replies it produced."""
    before = len(bot.replies_to(user))
    bot.fake.add_kf_media(SANDBOX_KF_ACCOUNT, user, msgtype, body)
    await post_kf_notification(bot, f"media-{user}-{before}")
    await bot.drain()
    return [reply.text for reply in bot.replies_to(user)[before:]]


async def oa_sends(bot: Bot, openid: str, msg_type: str, fields: dict[str, Any], msg_id: int) -> list[str]:
    """An OA follower's message of `msg_type` (a signed callback): the texts of the replies it produced."""
    before = len(bot.replies_to(openid))
    bot.fake.oa_customer_acted(openid, "message")
    await post_oa(bot, openid, msg_type, fields, msg_id)
    await bot.drain()
    return [reply.text for reply in bot.replies_to(openid)[before:]]


async def timeline(bot: Bot, user: str, kind: str) -> list[dict[str, Any]]:
    customer = await customer_of(bot, user)
    async with bot.runtime.sessions() as session:
        rows = await session.scalars(select(TimelineEvent.data).where(
            TimelineEvent.customer_id == customer.id, TimelineEvent.kind == kind).order_by(TimelineEvent.id))
        return list(rows)


async def media_item(bot: Bot, channel: str, media_id: str) -> MediaItem | None:
    async with bot.runtime.sessions() as session:
        return await session.scalar(select(MediaItem).where(MediaItem.channel == channel,
                                                            MediaItem.media_id == media_id))


# ---------------------------------------------------------------- the shipped media flow


async def test_a_photo_out_of_context_is_acknowledged_and_kept_not_the_fallback(bot: Bot) -> None:
    assert await kf_sends(bot, "wmPhoto", "image", {"media_id": "M_PHOTO"}) == [KEPT]
    [started] = await timeline(bot, "wmPhoto", "flow.started")
    assert (started["flow"], started["trigger"]) == ("media", "media:image,video,file")
    assert await timeline(bot, "wmPhoto", "turn.unanswered") == []
    item = await media_item(bot, "kf", "M_PHOTO")
    assert item is not None and item.kind == "image"  # kept: its download is queued in the media store
    assert await kf_sends(bot, "wmPhoto", "file", {"media_id": "M_FILE", "filename": "发票.pdf"}) == [KEPT]


async def test_a_voice_note_nobody_could_read_asks_the_customer_to_type(bot: Bot) -> None:
    assert await kf_sends(bot, "wmVoice", "voice", {"media_id": "M_VOICE"}) == [VOICE]
    assert await oa_sends(bot, "oVoiceRaw", "voice", {"MediaId": "OA_V", "Format": "amr"}, msg_id=9_101) == [VOICE]


async def test_an_oa_voice_note_with_recognition_is_read_as_its_words(bot: Bot) -> None:
    fields = {"MediaId": "OA_V2", "Format": "amr", "Recognition": "这个多少钱"}
    assert await oa_sends(bot, "oVoiceWords", "voice", fields, msg_id=9_102) == [ASK_PRODUCT]


async def test_a_location_is_acknowledged_with_a_next_step(bot: Bot) -> None:
    place = {"latitude": 23.10647, "longitude": 113.32446, "name": "广州国际媒体港", "address": "广州市海珠区滨江东路"}
    assert await kf_sends(bot, "wmPlace", "location", place) == [LOCATION]
    fields = {"Location_X": 23.134521, "Location_Y": 113.358803, "Scale": 20, "Label": "位置信息"}
    assert await oa_sends(bot, "oPlace", "location", fields, msg_id=9_103) == [LOCATION]


async def test_links_cards_and_shared_posts_are_acknowledged_and_unreadable_parts_fall_back(bot: Bot) -> None:
    shared: dict[str, dict[str, Any]] = {
        "link": {"title": "新品", "desc": "春季", "url": "https://shop.example.com/new"},
        "miniprogram": {"title": "会员中心", "appid": "wxAPPID", "pagepath": "pages/member/index"},
        "business_card": {"userid": "wmFriend"},
        "channels": {"sub_type": 1, "nickname": "品牌视频号", "title": "新品发布会"},
        "merged_msg": {"title": "聊天记录", "item": []},
    }
    for msgtype, body in shared.items():
        assert await kf_sends(bot, f"wmShare_{msgtype}", msgtype, body) == [SHARED], msgtype
    [unreadable] = await kf_sends(bot, "wmHologram", "hologram", {})
    assert unreadable.startswith(NOT_UNDERSTOOD)


async def test_a_photo_at_a_step_that_asks_for_words_keeps_the_customers_place(bot: Bot) -> None:
    await say(bot, "wmOrder", "查订单")
    assert await kf_sends(bot, "wmOrder", "image", {"media_id": "M_ORDER"}) == [PHONE_AGAIN]  # not "收到了"
    handed = await say(bot, "wmOrder", "13812345678")
    assert "13812345678" in handed[0]


async def test_the_shipped_complaint_hands_over_at_once_and_invites_a_photo(bot: Bot) -> None:
    [reply] = await say(bot, "wmBroken", "东西坏了")
    assert "已为您转接专员" in reply and "照片" in reply


# ---------------------------------------------------------------- an ask that expects a photo


@pytest.fixture
async def photo_bot(start_bot, tmp_path: Path) -> Bot:  # type: ignore[no-untyped-def]
    """The shipped flows, with the complaint flow asking for a photo before the handoff; one rep on duty."""
    directory = tmp_path / "flows"
    directory.mkdir()
    for source in SHIPPED_FLOWS.glob("*.yaml"):
        shutil.copyfile(source, directory / source.name)
    shipped = (SHIPPED_FLOWS / "complaint.yaml").read_text(encoding="utf-8")
    (directory / "complaint.yaml").write_text(shipped[: shipped.index("\nsteps:\n") + 1] + PHOTO_STEPS,
                                              encoding="utf-8")
    bot: Bot = await start_bot(flows={"directory": str(directory)})
    async with bot.runtime.sessions() as session, session.begin():
        await add_rep(session, "zhangsan", name="张三", capacity=5)
    return bot


async def complaint_slots(bot: Bot, user: str) -> tuple[str | None, dict[str, str]]:
    customer = await customer_of(bot, user)
    async with bot.runtime.sessions() as session:
        row = await session.scalar(select(Conversation).where(
            Conversation.customer_id == customer.id, Conversation.flow_id == "complaint"))
        assert row is not None
        return row.end_reason, dict(row.slots)


async def test_the_complaint_asks_for_a_photo_and_hands_it_to_the_rep(photo_bot: Bot) -> None:
    assert await say(photo_bot, "wmProof", "东西坏了") == [ASK_PHOTO]
    assert await kf_sends(photo_bot, "wmProof", "image", {"media_id": "M_PROOF"}) == [WITH_PHOTO]
    end_reason, slots = await complaint_slots(photo_bot, "wmProof")
    assert end_reason == "handoff" and slots["photo"] == "media:kf:M_PROOF"
    reference = parse_media_reference(slots["photo"])
    assert reference == ("kf", "M_PROOF")
    item = await media_item(photo_bot, *reference)  # what the rep side opens
    assert item is not None and item.kind == "image"
    [opened] = await timeline(photo_bot, "wmProof", "handoff.opened")
    assert (opened["reason"], opened["rep"]) == ("complain", "zhangsan")


async def test_a_text_answer_to_the_photo_ask_reprompts_then_hands_over_anyway(photo_bot: Bot) -> None:
    await say(photo_bot, "wmWords", "东西坏了")
    assert await say(photo_bot, "wmWords", "就是坏了啊") == [PHOTO_AGAIN]
    assert await kf_sends(photo_bot, "wmWords", "voice", {"media_id": "M_V"}) == [WITHOUT_PHOTO]  # not a photo
    end_reason, slots = await complaint_slots(photo_bot, "wmWords")
    assert end_reason == "handoff" and "photo" not in slots
    assert [data["step"] for data in await timeline(photo_bot, "wmWords", "flow.ask_failed")] == ["ask_photo"]


async def test_no_photo_within_the_timeout_hands_over_anyway(photo_bot: Bot) -> None:
    await say(photo_bot, "wmSilent", "我要投诉")
    waker = photo_bot.runtime.waker
    assert waker is not None
    assert await waker.wake_due(utcnow() + timedelta(minutes=4)) == 0
    assert await waker.wake_due(utcnow() + timedelta(minutes=6)) == 1
    await photo_bot.drain()
    assert photo_bot.replies_to("wmSilent")[-1].text == WITHOUT_PHOTO
    assert len(await timeline(photo_bot, "wmSilent", "handoff.opened")) == 1


# ---------------------------------------------------------------- matching and answers on their own

FLOWS = load_sources({"media.yaml": (SHIPPED_FLOWS / "media.yaml").read_text(encoding="utf-8"),
                      "price.yaml": "flow: price\ntriggers: [{keywords: [多少钱]}]\nsteps: [{say: 99 元}]\n"},
                     LifecycleSettings())


@pytest.mark.parametrize(("text", "content_kind", "flow"), [
    ("", "image", "media"), ("", "voice", "media"), ("", "business_card", "media"), ("", "channels_shop_order", "media"),
    ("这个多少钱", "voice", "price"),  # a transcribed voice note is its words
    ("嗯嗯", "voice", None),  # words nothing wants: the fallback's, not "语音听不清"
    ("", "other", None), ("", "text", None),
])
def test_a_media_trigger_takes_a_message_by_its_kind_only_without_words(text: str, content_kind: str,
                                                                          flow: str | None) -> None:
    match = match_message(FLOWS, text, "", None, content_kind)
    assert (match.flow.id if match else None) == flow
    if flow == "media":
        assert match is not None and isinstance(match.trigger, MediaTrigger)
        assert match.describe().startswith("media:")


def test_media_and_location_asks_take_their_part_and_nothing_else() -> None:
    photo, somewhere = Media("image", "M1"), Location(23.10647, 113.32446, "", "广州市海珠区")
    image_ask, any_media, where = (Ask(id="a", expect=expect) for expect in ("image", "media", "location"))
    assert answer_to(image_ask, "", "", "", 0.0, photo, "oa") is not None
    answer = content_answer("image", photo, "oa")
    assert answer is not None and answer.value == "media:oa:M1" and answer == content_answer("media", photo, "oa")
    assert answer_to(image_ask, "这是照片", "", "", 0.0) is None  # words are not a photo
    assert answer_to(image_ask, "", "", "", 0.0, Media("voice", "V1"), "kf") is None
    assert answer_to(any_media, "", "", "", 0.0, Media("voice", "V1"), "kf") is not None
    located = answer_to(where, "", "", "", 0.0, somewhere, "kf")
    assert located is not None and located.value == "23.10647,113.32446 广州市海珠区"
    assert parse_media_reference("media:kf:A:B") == ("kf", "A:B") and parse_media_reference("23.1,113.3") is None


# ---------------------------------------------------------------- the loader's errors

TAGS = "groups: {意向: [高意向]}\n"


def errors_of(text: str) -> list[FlowError]:
    with pytest.raises(FlowLoadError) as caught:
        load_sources({"tags.yaml": TAGS, "f.yaml": text}, LifecycleSettings())
    return caught.value.errors


def test_an_unknown_media_kind_is_named_with_its_line_and_the_closest_kind() -> None:
    [error] = errors_of("flow: f\ntriggers:\n  - {media: [image, imgae]}\nsteps: [{say: 好}]\n")
    assert (error.file, error.line, error.flow) == ("f.yaml", 3, "f")
    assert error.message.startswith("unknown media kind 'imgae' (did you mean image?); expected one of: image, voice")


def test_an_unknown_content_kind_in_a_branch_is_named() -> None:
    [error] = errors_of("flow: f\nsteps:\n  - branch:\n      - {when: {content: photo}, goto: done}\n"
                        "  - {id: done, end: 好}\n")
    assert (error.line, error.step) == (4, "step1")
    assert error.message.startswith("unknown content kind 'photo'") and "text" in error.message


def test_a_slot_filled_with_a_photo_and_with_text_is_refused() -> None:
    [error] = errors_of("flow: f\nslots: [photo]\nsteps:\n  - {id: snap, ask: 照片？, expect: image, slot: photo}\n"
                        "  - {end: 好}\n")
    assert (error.file, error.line, error.flow, error.step) == ("f.yaml", 4, "f", "snap")
    assert error.message == ("slot 'photo' gets a media reference here but text from the flow's slots: (NLU "
                             "entities): a slot holds one sort of value; give one of them another slot name")


def test_a_media_reference_shown_to_the_customer_is_refused() -> None:
    [error] = errors_of("flow: f\nsteps:\n  - {ask: 照片？, expect: media, slot: photo}\n"
                        "  - {end: \"收到 {{ slots.photo }}\"}\n")
    assert (error.line, error.step) == (4, "step2")
    assert "slots.photo in end is a media reference" in error.message


def test_media_expects_take_no_choices() -> None:
    [error] = errors_of("flow: f\nsteps:\n  - ask: 照片？\n    expect: image\n    choices: [{id: a, text: 好}]\n")
    assert error.line == 5 and error.message == "'choices' only goes with expect: choice"
