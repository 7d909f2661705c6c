"""Temporary media (临时素材) for the fake API: `media/upload` and `media/get`, with the platforms' limits and codes.

What a customer sends (a photo, a voice note, a video, a file) WeChat keeps 3 days under a
`media_id`; the bot copies it with `media/get`, the same path on WeCom (qyapi.weixin.qq.com) and
on the OA (api.weixin.qq.com), each on its own base. This fake holds such media in `media`
(`add_media`: what the customer's upload is on WeChat's side), answers `media/get` as both
platforms do, and takes `media/upload` with their rules. Its clock is `self.now()`
(fake_quotas.FakeQuotas), so a test ages media without sleeping.

The rules, from the pages as they read when this was written:

* WeCom 上传临时素材, https://developer.work.weixin.qq.com/document/path/90253: multipart/form-data,
  field "media"; `type` image, voice, video or file; "所有文件size必须大于5个字节"; image 10MB (JPG, PNG),
  voice 2MB (AMR), video 10MB (MP4), file 20MB; the media_id "仅三天内有效".
* OA 新增临时素材, https://developers.weixin.qq.com/doc/offiaccount/Asset_Management/New_temporary_materials.html:
  `type` image, voice, video or thumb; image 10M (PNG, JPEG, JPG, GIF), voice 2M (AMR, MP3), video 10MB
  (MP4), thumb 64KB (JPG); kept 3 days; its error example is {"errcode":40004,"errmsg":"invalid media type"}.
* 获取临时素材, WeCom https://developer.work.weixin.qq.com/document/path/90254 and the OA's getMedia: the
  file "和普通的http下载相同" (Content-Type, `Content-disposition: attachment; filename="MEDIA_ID.jpg"`), or
  {"errcode": 40007, "errmsg": "invalid media_id"}; the OA answers a video with {"video_url": …} instead
  (`add_media(..., video_url=True)`; the fake serves that link at /fake-media/<media_id>, no token).
  An expired id is not told apart: 40007 as for an unknown one.
* Sending one (kf/send_msg, the OA's message/custom/send, the app's message/send with msgtype image,
  voice, video or file) needs a media_id the platform still holds: 40007 otherwise (`check_sent_media`).
* The OA's global return codes (WeCom's, document 90313, use the same numbers for 40004–40011):
  40004 不合法的媒体文件类型, 40005 不合法的文件类型, 40006 不合法的文件大小, 40007 不合法的媒体文件id,
  40009 不合法的图片文件大小, 40010 不合法的语音文件大小, 40011 不合法的视频文件大小, 40012 不合法的缩略图文件大小,
  41005 缺少多媒体文件数据 ("media data missing"), 41006 缺少media_id参数.

One fake serves both platforms at one path, so it takes the union of their formats (an image may be
a GIF, as the OA allows; a voice note an MP3) and their agreed sizes; `file` is WeCom's, `thumb` the OA's.
Formats are judged by the uploaded file name's extension.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web

from bot.sandbox.fake_quotas import ApiRefusal, FakeQuotas

MIB = 1024 * 1024
MEDIA_LIFE_S = 3 * 24 * 3600  # "3天后media_id失效" (OA), "仅三天内有效" (WeCom)
MIN_BYTES = 5  # WeCom: "所有文件size必须大于5个字节"
UPLOAD_LIMITS: dict[str, int] = {"image": 10 * MIB, "voice": 2 * MIB, "video": 10 * MIB, "file": 20 * MIB,
                                 "thumb": 64 * 1024}
TOO_LARGE: dict[str, int] = {"image": 40009, "voice": 40010, "video": 40011, "file": 40006, "thumb": 40012}
FORMATS: dict[str, frozenset[str] | None] = {  # None: any format
    "image": frozenset({"jpg", "jpeg", "png", "gif"}),
    "voice": frozenset({"amr", "mp3"}),
    "video": frozenset({"mp4"}),
    "thumb": frozenset({"jpg", "jpeg"}),
    "file": None,
}
CONTENT_TYPES = {"image": "image/jpeg", "voice": "audio/amr", "video": "video/mp4", "thumb": "image/jpeg",
                 "file": "application/octet-stream"}
EXTENSIONS = {"image": "jpg", "voice": "amr", "video": "mp4", "thumb": "jpg", "file": "bin"}
INVALID_TYPE, INVALID_FORMAT, INVALID_SIZE, INVALID_MEDIA_ID = 40004, 40005, 40006, 40007
NO_MEDIA_DATA, NO_MEDIA_ID = 41005, 41006
VIDEO_LINK_PATH = "/fake-media"  # where an OA video's `video_url` points (outside /cgi-bin: no token)
CHUNK = 64 * 1024
SENDABLE = frozenset({"image", "voice", "video", "file"})  # message types that carry a media_id


@dataclass(frozen=True)
class FakeMedia:
    """One item WeChat holds: what was uploaded (by the bot, or by a customer sending it) and when."""

    kind: str
    data: bytes
    filename: str
    content_type: str
    uploaded_at: float  # self.now() time: it answers 40007 from MEDIA_LIFE_S later
    video_url: bool = False  # media/get answers {"video_url": …} (the OA, for a video), not the bytes


class FakeMediaStore(FakeQuotas):
    """Mixin of FakeWeChat: the temporary media WeChat holds, and the two endpoints that reach them."""

    def init_media(self) -> None:
        self.media: dict[str, FakeMedia] = {}  # media_id -> the item, while WeChat has it (and after: 40007)

    # --- what a test or the sandbox does ---------------------------------------------------------
    def add_media(self, kind: str, data: bytes, filename: str = "", content_type: str = "",
                  uploaded_at: float | None = None, video_url: bool = False) -> str:
        """What a customer's photo, voice note, video or file is on WeChat's side: its new media_id.

        No limit is checked (WeChat took it from the customer); `uploaded_at` (self.now() time, now by
        default) ages it, `video_url` makes media/get answer with a link as the OA does for a video."""
        if kind not in UPLOAD_LIMITS:
            raise ValueError(f"unknown media kind {kind!r}; one of {', '.join(UPLOAD_LIMITS)}")
        media_id = secrets.token_urlsafe(30)
        self.media[media_id] = FakeMedia(
            kind, bytes(data), filename or f"{media_id}.{EXTENSIONS[kind]}", content_type or CONTENT_TYPES[kind],
            self.now() if uploaded_at is None else uploaded_at, video_url)
        return media_id

    # --- the HTTP side ---------------------------------------------------------------------------
    def media_routes(self) -> dict[str, Any]:
        return {"media/upload": self.media_upload, "media/get": self.media_get}

    def add_media_link_route(self, app: web.Application) -> None:
        """The download link an OA video's media/get answers with (a CDN link on WeChat: no access token)."""
        app.router.add_get(VIDEO_LINK_PATH + "/{media_id}", self.media_link)

    async def media_upload(self, request: web.Request, _body: dict[str, Any]) -> dict[str, Any]:
        """The `type` first (40004), then the form's "media" part (41005), its format (40005), its size."""
        kind = request.query.get("type", "")
        if kind not in UPLOAD_LIMITS:
            raise ApiRefusal(INVALID_TYPE, "invalid media type")
        part = await _media_part(request)
        filename, content_type = part.filename or "", part.headers.get("Content-Type", "")
        formats = FORMATS[kind]
        if formats is not None and filename.rsplit(".", 1)[-1].lower() not in formats:
            raise ApiRefusal(INVALID_FORMAT, "invalid file type")
        data, size = await _read_up_to(part, UPLOAD_LIMITS[kind] + 1)
        if size <= MIN_BYTES:
            raise ApiRefusal(INVALID_SIZE, "invalid file size")
        if size > UPLOAD_LIMITS[kind]:
            raise ApiRefusal(TOO_LARGE[kind], f"invalid {kind} size")
        media_id = self.add_media(kind, data, filename, content_type)
        return {"type": kind, "media_id": media_id, "created_at": int(self.media[media_id].uploaded_at)}

    async def media_get(self, request: web.Request, _body: dict[str, Any]) -> web.StreamResponse:
        """The bytes, as a plain HTTP download; 40007 for an id unknown or past its 3 days."""
        media_id = request.query.get("media_id", "")
        if not media_id:
            raise ApiRefusal(NO_MEDIA_ID, "media_id missing")
        item = self._live_media(media_id)
        if item.video_url:
            return web.json_response({"video_url": f"{request.url.origin()}{VIDEO_LINK_PATH}/{quote(media_id)}"})
        return _file_response(item)

    async def media_link(self, request: web.Request) -> web.StreamResponse:
        try:
            return _file_response(self._live_media(request.match_info["media_id"]))
        except ApiRefusal:
            raise web.HTTPNotFound() from None

    def check_sent_media(self, body: dict[str, Any]) -> None:
        """A message of an image, voice note, video or file names a media_id WeChat still holds: 41006 without
        one, 40007 for an id unknown or past its 3 days (kf/send_msg, message/custom/send, message/send)."""
        msgtype = str(body.get("msgtype", ""))
        if msgtype not in SENDABLE:
            return
        part = body.get(msgtype)
        media_id = str(part.get("media_id") or "") if isinstance(part, dict) else ""
        if not media_id:
            raise ApiRefusal(NO_MEDIA_ID, "media_id missing")
        self._live_media(media_id)

    def _live_media(self, media_id: str) -> FakeMedia:
        item = self.media.get(media_id)
        if item is None or self.now() >= item.uploaded_at + MEDIA_LIFE_S:
            raise ApiRefusal(INVALID_MEDIA_ID, "invalid media_id")  # expired or unknown: WeChat says the same
        return item


async def _media_part(request: web.Request) -> BodyPartReader:
    """The form-data part named "media"; 41005 when the request has none."""
    if not request.content_type.startswith("multipart/"):
        raise ApiRefusal(NO_MEDIA_DATA, "media data missing")
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if isinstance(part, BodyPartReader) and part.name == "media":
            return part
        await part.release()
    raise ApiRefusal(NO_MEDIA_DATA, "media data missing")


async def _read_up_to(part: BodyPartReader, keep: int) -> tuple[bytes, int]:
    """The part's first `keep` bytes and its whole size: the rest is read (so the client can finish
    sending) but not kept."""
    kept, size = bytearray(), 0
    while chunk := await part.read_chunk(CHUNK):
        size += len(chunk)
        if len(kept) < keep:
            kept += chunk[: keep - len(kept)]
    return bytes(kept), size


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """The Content-Disposition of a download named `filename` (RFC 6266, with the UTF-8 form for a name that
    is not ASCII)."""
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_")
    header = f'{disposition}; filename="{ascii_name}"'
    if ascii_name != filename:
        header += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return header


def _file_response(item: FakeMedia) -> web.Response:
    """As WeChat answers a download: the type, and the name as an attachment."""
    return web.Response(body=item.data, headers={"Content-Type": item.content_type,
                                                 "Content-disposition": content_disposition(item.filename)})
