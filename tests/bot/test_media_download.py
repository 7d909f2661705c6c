"""What customers send is kept: photos, voice notes, videos and files copied from WeChat into the media store.

End to end on SQLite and PostgreSQL: a signed callback (the sandbox's WeChat side) → the turn,
answered without waiting → the media fetcher (called directly, as the scheduler would) → media/get
on the fake API → the media store in the test's directory, and `media.stored` / `media.failed` on
the customer's timeline. Then the fake's own media/upload and media/get, each error with its code
(bot/sandbox/fake_media.py cites the pages), and `WeChatApi.download` on its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select, update

from bot.media_fetch import LEASE_S, MediaFetcher, queue_media
from bot.sandbox import wechat_side
from bot.sandbox.fake_media import MEDIA_LIFE_S, MIB
from bot.sandbox.fake_wechat import FakeWeChat
from bot.sandbox.simulator import SANDBOX_KF_ACCOUNT
from bot.wechat_api import ApiError, RetryableApiError, WeChatApi, wecom_credential
from core.events import InboundEvent
from core.shared_state import open_shared_state
from crm_store import media_items
from crm_store.media_items import MediaItem
from crm_store.media_store import MediaTooLarge
from crm_store.models import TimelineEvent, utcnow
from tests.bot.conftest import Bot
from tests.clock import Clock

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 12
JPEG = b"\xff\xd8\xff\xe0" + hashlib.sha256(b"jpeg").digest() * 100
AMR = b"#!AMR\n" + hashlib.sha256(b"amr").digest() * 60


# --- the bot: a kf or OA message with media, answered, then kept ---------------------------------

@pytest.fixture
async def media_bot(start_bot, tmp_path: Path) -> Bot:  # type: ignore[no-untyped-def]
    return await start_bot(media={"directory": str(tmp_path / "media")})


def fetcher(bot: Bot) -> MediaFetcher:
    assert bot.runtime.media_fetcher is not None
    return bot.runtime.media_fetcher


async def kf_sends(bot: Bot, user: str, kind: str, media_id: str, token: str) -> None:
    """The kf customer sends what WeChat holds under `media_id`; WeCom's notification reaches the bot."""
    bot.fake.add_kf_media(SANDBOX_KF_ACCOUNT, user, kind, {"media_id": media_id})
    keys, corp = bot.settings.wecom.kf, bot.settings.wecom.corp_id
    signed = wechat_side.sign_wecom(keys.token.get_secret_value(), keys.encoding_aes_key.get_secret_value(), corp,
                                    wechat_side.kf_notification_xml(corp, SANDBOX_KF_ACCOUNT, token))
    response = await bot.client.post("/wecom/kf/callback", params=signed.query, data=signed.body)
    assert (response.status, await response.text()) == (200, "success")


async def oa_sends(bot: Bot, openid: str, msg_type: str, fields: dict[str, Any], msg_id: int, times: int = 1) -> None:
    """An OA follower sends a photo or voice note; WeChat retries the callback `times` over."""
    bot.fake.oa_customer_acted(openid, "message")
    oa = bot.settings.oa
    xml = wechat_side.oa_message_xml(oa.app_id, openid, msg_type, fields, msg_id=msg_id)
    signed = wechat_side.sign_oa(oa.token.get_secret_value(), oa.encoding_aes_key.get_secret_value(), oa.app_id,
                                 xml, oa.mode)
    for _ in range(times):
        response = await bot.client.post("/oa/callback", params=signed.query, data=signed.body)
        assert (response.status, await response.text()) == (200, "success")


async def media_rows(bot: Bot) -> list[MediaItem]:
    async with bot.runtime.sessions() as session:
        return list((await session.scalars(select(MediaItem).order_by(MediaItem.id))).all())


async def media_timeline(bot: Bot) -> list[tuple[str, dict[str, Any]]]:
    async with bot.runtime.sessions() as session:
        rows = await session.execute(select(TimelineEvent.kind, TimelineEvent.data)
                                     .where(TimelineEvent.kind.in_(("media.stored", "media.failed")))
                                     .order_by(TimelineEvent.id))
        return [(kind, data) for kind, data in rows.tuples().all()]


async def back_off_passes(bot: Bot) -> None:
    """The pending rows' back-off is over (the test's clock, not a sleep)."""
    async with bot.runtime.sessions() as session, session.begin():
        await session.execute(update(MediaItem).where(MediaItem.status == "pending")
                              .values(due_at=utcnow() - timedelta(seconds=1)))


def kept_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file() and ".tmp" not in path.parts)


async def test_a_kf_image_is_kept_with_the_bytes_wechat_holds_after_the_reply(media_bot: Bot, tmp_path: Path) -> None:
    bot = media_bot
    media_id = bot.fake.add_media("image", PNG, "photo.png", "image/png")
    await kf_sends(bot, "wmPhoto", "image", media_id, "photo")
    await bot.drain()
    assert bot.replies_to("wmPhoto"), "the turn is answered"
    assert "media/get" not in bot.fake.calls, "…without waiting for the download"
    [queued] = await media_rows(bot)
    assert (queued.channel, queued.kind, queued.media_id, queued.status, queued.attempts) == (
        "kf", "image", media_id, "pending", 0)

    assert await fetcher(bot).run_due() == 1
    [item] = await media_rows(bot)
    assert (item.status, item.size, item.sha256, item.content_type) == (
        "stored", len(PNG), hashlib.sha256(PNG).hexdigest(), "image/png")
    store = fetcher(bot).store
    assert item.key is not None and await store.get(item.key) == PNG
    assert (await store.info(item.key)).filename == "photo.png"  # the name WeChat gave, as metadata
    assert await media_timeline(bot) == [("media.stored", {
        "item_id": item.id, "media_id": media_id, "kind": "image", "key": item.key, "size": len(PNG),
        "where": f"local {tmp_path / 'media'}"})]
    assert kept_files(tmp_path / "media") == sorted([tmp_path / "media" / item.key,
                                                     (tmp_path / "media" / item.key).with_suffix(".json")])
    assert await fetcher(bot).run_due() == 0 and bot.fake.calls.count("media/get") == 1


async def test_oa_image_and_voice_are_kept_through_the_oas_own_credential(media_bot: Bot) -> None:
    bot = media_bot
    image_id = bot.fake.add_media("image", JPEG, content_type="image/jpeg")
    voice_id = bot.fake.add_media("voice", AMR, content_type="audio/amr")
    await oa_sends(bot, "oImage", "image", {"PicUrl": "http://mmbiz.qpic.cn/pic", "MediaId": image_id}, 9_001)
    await oa_sends(bot, "oVoice", "voice", {"MediaId": voice_id, "Format": "amr"}, 9_002)
    await bot.drain()
    assert bot.replies_to("oImage") and bot.replies_to("oVoice")
    assert await fetcher(bot).run_due() == 2
    image, voice = sorted(await media_rows(bot), key=lambda row: row.kind)  # two customers: any order
    assert [(row.channel, row.kind, row.status) for row in (image, voice)] == [
        ("oa", "image", "stored"), ("oa", "voice", "stored")]
    assert image.key and voice.key
    assert await fetcher(bot).store.get(image.key) == JPEG and await fetcher(bot).store.get(voice.key) == AMR
    assert voice.content_type == "audio/amr" and voice.key.startswith("voice/")
    kf_secret = bot.settings.wecom.kf.secret.get_secret_value()
    assert bot.fake.token_requests_by[bot.settings.oa.app_secret.get_secret_value()] >= 1
    assert kf_secret not in bot.fake.token_requests_by, "the OA's media come with the OA's token"
    assert [kind for kind, _ in await media_timeline(bot)] == ["media.stored", "media.stored"]


async def test_an_expired_media_id_fails_at_once_and_the_turn_is_answered(media_bot: Bot, tmp_path: Path) -> None:
    bot = media_bot
    media_id = bot.fake.add_media("image", PNG, uploaded_at=bot.fake.now() - MEDIA_LIFE_S - 60)
    await kf_sends(bot, "wmLate", "image", media_id, "late")
    await bot.drain()
    assert bot.replies_to("wmLate")
    assert await fetcher(bot).run_due() == 1
    [item] = await media_rows(bot)
    assert (item.status, item.attempts, item.key) == ("failed", 1, None)
    assert item.last_error and "40007" in item.last_error
    [(kind, data)] = await media_timeline(bot)
    assert (kind, data["item_id"], data["kind"], data["retry"]) == ("media.failed", item.id, "image", False)
    assert data["reason"].startswith("invalid or expired media id")
    await back_off_passes(bot)
    assert await fetcher(bot).run_due() == 0 and bot.fake.calls.count("media/get") == 1, "not retried"
    assert kept_files(tmp_path / "media") == []


async def test_wechat_busy_twice_is_retried_with_back_off_then_stored(media_bot: Bot) -> None:
    bot = media_bot
    media_id = bot.fake.add_media("image", PNG, "busy.png", "image/png")
    bot.fake.fail_next("media/get", errcode=-1, times=2)
    await kf_sends(bot, "wmBusy", "image", media_id, "busy")
    await bot.drain()
    assert bot.replies_to("wmBusy")
    assert await fetcher(bot).run_due() == 1
    [item] = await media_rows(bot)
    assert (item.status, item.attempts) == ("pending", 1) and item.last_error and "errcode -1" in item.last_error
    assert await fetcher(bot).run_due() == 0, "due again only after its back-off"
    await back_off_passes(bot)
    assert await fetcher(bot).run_due() == 1
    await back_off_passes(bot)
    assert await fetcher(bot).run_due() == 1
    [item] = await media_rows(bot)
    assert (item.status, item.attempts, item.last_error) == ("stored", 3, None)
    assert item.key and await fetcher(bot).store.get(item.key) == PNG
    assert [(kind, data.get("retry")) for kind, data in await media_timeline(bot)] == [
        ("media.failed", True), ("media.failed", True), ("media.stored", None)]


async def test_an_item_over_the_limit_fails_with_the_reason_and_nothing_is_stored(start_bot, tmp_path: Path
                                                                                  ) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot(media={"directory": str(tmp_path / "media"), "max_bytes": {"image": 1024}})
    media_id = bot.fake.add_media("image", PNG)  # 3 KB
    await kf_sends(bot, "wmHuge", "image", media_id, "huge")
    await bot.drain()
    assert bot.replies_to("wmHuge")
    assert await fetcher(bot).run_due() == 1
    [item] = await media_rows(bot)
    assert (item.status, item.key) == ("failed", None)
    [(kind, data)] = await media_timeline(bot)
    assert kind == "media.failed" and data["retry"] is False
    assert "image larger than its limit of 1024 bytes" in data["reason"] and "media.max_bytes.image" in data["reason"]
    assert kept_files(tmp_path / "media") == []


async def test_a_retried_callback_or_a_turn_run_again_queues_one_media_item(media_bot: Bot) -> None:
    bot = media_bot
    media_id = bot.fake.add_media("image", JPEG)
    await oa_sends(bot, "oAgain", "image", {"PicUrl": "http://p", "MediaId": media_id}, 9_003, times=3)
    await bot.drain()
    [item] = await media_rows(bot)
    event = InboundEvent.from_payload({"channel": "oa", "kind": "message", "dedup_key": item.dedup_key,
                                       "sender": "oAgain", "content": {"type": "image", "media_id": media_id}})
    async with bot.runtime.sessions() as session, session.begin():
        assert await queue_media(session, item.customer_id, event) is False
    assert len(await media_rows(bot)) == 1


async def test_a_fetcher_that_died_mid_download_leaves_the_item_to_be_claimed_after_its_lease(media_bot: Bot) -> None:
    bot = media_bot
    media_id = bot.fake.add_media("image", PNG)
    await kf_sends(bot, "wmCrash", "image", media_id, "crash")
    await bot.drain()
    async with bot.runtime.sessions() as session, session.begin():  # a fetcher claims the row, then dies
        [dead] = await media_items.claim_due(session, 10, LEASE_S)
    assert await fetcher(bot).run_due() == 0, "leased: no second download while the first may still run"
    await back_off_passes(bot)  # the lease is over
    assert await fetcher(bot).run_due() == 1
    [item] = await media_rows(bot)
    assert (item.status, item.attempts) == ("stored", 2)
    async with bot.runtime.sessions() as session, session.begin():  # the first one's late result is refused
        assert await media_items.mark_failed(session, dead, "late") is False
    assert [kind for kind, _ in await media_timeline(bot)] == ["media.stored"]


# --- the fake's media/upload and media/get --------------------------------------------------------

CORP, SECRET, OA_ID, OA_SECRET = "wwFakeCorp", "kf-secret", "wxOa", "oa-secret"


@pytest.fixture
async def fake_api(aiohttp_client) -> AsyncIterator[tuple[FakeWeChat, TestClient, Clock, str]]:  # type: ignore[no-untyped-def]
    fake = FakeWeChat(CORP, [SECRET], OA_ID, OA_SECRET)
    clock = Clock()
    fake.now = clock
    client = await aiohttp_client(fake.app())
    async with client.get("/cgi-bin/gettoken", params={"corpid": CORP, "corpsecret": SECRET}) as response:
        token = (await response.json())["access_token"]
    yield fake, client, clock, token


async def upload(client: TestClient, token: str, kind: str, data: bytes | None, filename: str = "x.bin",
                 content_type: str = "application/octet-stream") -> dict[str, Any]:
    form = aiohttp.FormData()
    if data is not None:
        form.add_field("media", data, filename=filename, content_type=content_type)
    else:
        form.add_field("other", b"not the media field", filename="x.png")
    async with client.post("/cgi-bin/media/upload", params={"access_token": token, "type": kind}, data=form) as got:
        answer: dict[str, Any] = await got.json()
        return answer


async def test_fake_upload_then_get_gives_the_bytes_their_type_and_name(fake_api: Any) -> None:
    fake, client, clock, token = fake_api
    answer = await upload(client, token, "image", PNG, "photo.png", "image/png")
    assert (answer["errcode"], answer["type"], answer["created_at"]) == (0, "image", int(clock.at))
    async with client.get("/cgi-bin/media/get", params={"access_token": token, "media_id": answer["media_id"]}) as got:
        assert (got.status, got.headers["Content-Type"], await got.read()) == (200, "image/png", PNG)
        assert got.headers["Content-disposition"] == 'attachment; filename="photo.png"'
    assert fake.media[answer["media_id"]].data == PNG


@pytest.mark.parametrize(("kind", "filename", "size", "errcode"), [
    ("thumbnail", "a.jpg", 100, 40004),  # not a media type
    ("image", "a.bmp", 100, 40005),  # neither WeCom's JPG/PNG nor the OA's GIF
    ("voice", "a.wav", 100, 40005),
    ("video", "a.avi", 100, 40005),
    ("image", "a.png", 5, 40006),  # "所有文件size必须大于5个字节"
    ("image", "a.png", 10 * MIB + 1, 40009),
    ("voice", "a.amr", 2 * MIB + 1, 40010),
    ("video", "a.mp4", 10 * MIB + 1, 40011),
    ("file", "a.pdf", 20 * MIB + 1, 40006),
    ("thumb", "a.jpg", 64 * 1024 + 1, 40012),
    ("voice", "a.mp3", 2 * MIB, 0),  # the limit itself is allowed
    ("image", "a.GIF", 6, 0),
    ("file", "报价单", 6, 0),  # a file may be anything
])
async def test_fake_upload_refuses_with_the_platforms_codes(fake_api: Any, kind: str, filename: str, size: int,
                                                            errcode: int) -> None:
    _, client, _, token = fake_api
    assert (await upload(client, token, kind, b"\x01" * size, filename))["errcode"] == errcode


async def test_fake_upload_without_a_media_part_is_41005(fake_api: Any) -> None:
    _, client, _, token = fake_api
    assert (await upload(client, token, "image", None))["errcode"] == 41005


async def test_fake_get_unknown_missing_and_expired_ids(fake_api: Any) -> None:
    fake, client, clock, token = fake_api
    media_id = fake.add_media("voice", AMR)

    async def get(params: dict[str, str]) -> Any:
        async with client.get("/cgi-bin/media/get", params={"access_token": token, **params}) as got:
            assert got.status == 200  # WeChat's errors are 200s too
            return await got.json() if got.content_type == "application/json" else await got.read()

    assert await get({"media_id": "nope"}) == {"errcode": 40007, "errmsg": "invalid media_id"}
    assert (await get({}))["errcode"] == 41006
    clock.at += MEDIA_LIFE_S - 1
    assert await get({"media_id": media_id}) == AMR
    clock.at += 1  # its 3 days are over: WeChat answers as for an unknown id
    assert await get({"media_id": media_id}) == {"errcode": 40007, "errmsg": "invalid media_id"}


# --- WeChatApi.download on its own ----------------------------------------------------------------

@pytest.fixture
async def api_and_fake(aiohttp_server) -> AsyncIterator[tuple[WeChatApi, FakeWeChat]]:  # type: ignore[no-untyped-def]
    fake = FakeWeChat(CORP, [SECRET], OA_ID, OA_SECRET)
    server = await aiohttp_server(fake.app())
    state = open_shared_state(None)
    async with aiohttp.ClientSession() as http:
        yield WeChatApi(http, state, wecom_credential("wecom.kf", str(server.make_url("/cgi-bin")), CORP, SECRET)), fake
    await state.close()


async def test_download_gives_type_name_and_bytes_and_refreshes_a_rejected_token(api_and_fake: Any) -> None:
    api, fake = api_and_fake
    media_id = fake.add_media("file", b"%PDF-1.7 quote", "报价单 2026.pdf", "application/pdf")
    async with api.download("media/get", {"media_id": media_id}, 1000, "file") as got:
        assert (got.content_type, got.filename, got.size) == ("application/pdf", "报价单 2026.pdf", 14)
        assert await got.read() == b"%PDF-1.7 quote"
    fake.expire_tokens()
    async with api.download("media/get", {"media_id": media_id}) as got:
        assert await got.read() == b"%PDF-1.7 quote"
    assert fake.token_requests == 2


@pytest.mark.parametrize(("failure", "errcode", "error"), [
    ({}, 40007, ApiError),  # an unknown (or expired) id: permanent
    ({"errcode": -1}, -1, RetryableApiError),
    ({"errcode": 45009}, 45009, RetryableApiError),
    ({"http_status": 502}, -502, RetryableApiError),
])
async def test_download_raises_wechats_errors_as_post_does(api_and_fake: Any, failure: dict[str, int], errcode: int,
                                                           error: type[ApiError]) -> None:
    api, fake = api_and_fake
    media_id = fake.add_media("image", PNG) if failure else "gone"
    if failure:
        fake.fail_next("media/get", **failure)
    with pytest.raises(ApiError) as raised:
        async with api.download("media/get", {"media_id": media_id}):
            pass
    assert type(raised.value) is error and raised.value.errcode == errcode


async def test_download_follows_the_oas_video_url(api_and_fake: Any) -> None:
    """The OA answers media/get for a video with {"video_url": …} (the fake serves the link, without a token)."""
    api, fake = api_and_fake
    media_id = fake.add_media("video", b"\x00\x00\x00\x18ftypmp42" * 4, video_url=True)
    async with api.download("media/get", {"media_id": media_id}, 1000, "video") as got:
        assert got.content_type == "video/mp4" and await got.read() == fake.media[media_id].data


async def test_download_refuses_a_declared_length_over_the_limit_without_reading(api_and_fake: Any) -> None:
    api, fake = api_and_fake
    media_id = fake.add_media("image", PNG)
    with pytest.raises(MediaTooLarge) as refused:
        async with api.download("media/get", {"media_id": media_id}, 1024, "image"):
            pass
    assert (refused.value.limit, refused.value.received) == (1024, 0)


async def test_download_stops_at_the_limit_without_reading_the_rest(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    """A body of unknown length (chunked): the count stops it just past the limit, not at its end."""
    total = 100 * 64 * 1024

    async def token(_request: web.Request) -> web.Response:
        return web.json_response({"errcode": 0, "access_token": "t", "expires_in": 7200})

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "video/mp4",
                                               "Content-Disposition": 'attachment; filename="big.mp4"'})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for _ in range(total // (64 * 1024)):
                await response.write(b"\x00" * 64 * 1024)
        except (ConnectionError, RuntimeError):
            pass  # the client stopped reading and went away
        return response

    app = web.Application()
    app.router.add_get("/cgi-bin/gettoken", token)
    app.router.add_get("/cgi-bin/media/get", endless)
    server: TestServer = await aiohttp_server(app)
    state = open_shared_state(None)
    async with aiohttp.ClientSession() as http:
        api = WeChatApi(http, state, wecom_credential("wecom.kf", str(server.make_url("/cgi-bin")), CORP, SECRET))
        with pytest.raises(MediaTooLarge) as refused:
            async with api.download("media/get", {"media_id": "m"}, 100_000, "video") as got:
                assert got.size is None
                await got.read()
    await state.close()
    assert 100_000 < refused.value.received <= 100_000 + 64 * 1024 < total
