"""What a customer sends from the sandbox page besides words, and the media both pages show.

POST /sandbox/media takes one of

* multipart/form-data: `user`, `channel` (kf or oa), `kind` (image, voice, video or file) and the
  `file`; an OA voice note may carry `recognition` (the words WeChat's speech recognition heard) and no
  file, and then a second of silent AMR stands in for the recording;
* JSON: {"user", "channel", "kind": "location", "lat", "lng", "label", "address"} or, on the OA,
  {"kind": "voice", "recognition"} (the silent recording again).

`read_page_send` checks all of it and raises `BadMediaRequest`, whose text is the page's 400: nothing a
page sends makes a 5xx. Sizes are the platforms' upload limits (fake_media.UPLOAD_LIMITS: image and
video 10 MB, voice 2 MB, file 20 MB); a voice note is AMR or MP3 and a video MP4, as media/upload
takes them; the OA takes only images, voice notes and videos from followers (接收普通消息: no files).

GET /sandbox/media/{media_id} (`media_response`) serves what the fake holds under a media_id: what a
customer sent, or what the bot uploaded with media/upload to send as a reply. Old media are served too
(the pages show a conversation's history; media/get is the one that answers 40007 after 3 days). A
customer's file is data from outside, so only raster images are served inline, the rest as an
attachment, never sniffed and in a CSP sandbox.

`shown` is what a page shows of a message besides its words: its kind and media id, or the place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import BodyPartReader, web

from bot.sandbox.fake_media import FORMATS, MIB, UPLOAD_LIMITS, FakeMedia, content_disposition
from core.content import MediaKind, coordinates_problem

MEDIA_PATH = "/sandbox/media"
PageChannel = Literal["kf", "oa"]
PAGE_KINDS: dict[str, MediaKind] = {"image": "image", "voice": "voice", "video": "video", "file": "file"}
MAX_FILE = max(UPLOAD_LIMITS[kind] for kind in PAGE_KINDS)
MAX_BODY = MAX_FILE + 64 * 1024  # the largest file and its form fields
FIELD_BYTES = 4096  # one form field besides the file
USER_CHARS, LABEL_CHARS, FILENAME_CHARS, RECOGNITION_CHARS = 64, 200, 200, 2000
CHUNK = 64 * 1024
VOICE_FORMATS = frozenset({"amr", "mp3", "speex"})  # OA Format values; the page uploads amr or mp3
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"})
CONTENT_TYPE = re.compile(r"[\w.+-]+/[\w.+-]+")
# 50 NO_DATA frames (header 0x7C: frame type 15, RFC 4867 §5.3) after the AMR magic: a second of nothing
PLACEHOLDER_AMR = b"#!AMR\n" + b"\x7c" * 50
# a JPEG with a comment and no picture: the OA video's ThumbMediaId points at something
PLACEHOLDER_THUMB = b"\xff\xd8\xff\xfe\x00\x0fsandbox thumb\xff\xd9"


class BadMediaRequest(Exception):
    """What a page sent cannot go to WeChat as a customer's message; the text says what to fix (a 400)."""


@dataclass(frozen=True)
class Upload:
    data: bytes  # at most MAX_FILE + 1 bytes are kept
    size: int  # the whole file's
    filename: str
    content_type: str


@dataclass(frozen=True)
class PageFile:
    """A photo, voice note, video or file a customer sends from the page, checked."""

    user: str
    channel: PageChannel
    kind: MediaKind
    data: bytes
    filename: str
    content_type: str
    recognition: str = ""  # an OA voice note's words


@dataclass(frozen=True)
class PagePlace:
    """A location a customer shares from the page, its coordinates checked."""

    user: str
    channel: PageChannel
    latitude: float
    longitude: float
    label: str
    address: str = ""


PageSend = PageFile | PagePlace


@dataclass(frozen=True)
class MediaSent:
    """A customer's media, sent: the bot's answer to the callback, and the media_id WeChat holds it under."""

    callback_status: int
    media_id: str


async def read_page_send(request: web.Request) -> PageSend:
    """What the page asks a customer to send, checked (BadMediaRequest: what is wrong)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadMediaRequest(f"the request is {request.content_length} bytes: the largest file WeChat takes "
                              f"is {MAX_FILE // MIB} MB")
    if request.content_type == "multipart/form-data":
        form, upload = await _read_form(request)
        return _checked(form, upload)
    if request.content_type == "application/json":
        return _checked(await _read_json(request), None)
    raise BadMediaRequest("send multipart/form-data (user, channel, kind, file) or JSON (a location)")


def voice_format(filename: str) -> str:
    """The OA's Format of a voice note, from its file name (amr when it names none)."""
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return extension if extension in VOICE_FORMATS else "amr"


def media_response(media: Mapping[str, FakeMedia], media_id: str) -> web.Response:
    """The bytes WeChat holds under `media_id`, typed as they were uploaded; 404 for an id it never gave out."""
    item = media.get(media_id)
    if item is None:
        return web.json_response({"error": f"no media {media_id!r}: not sent by a customer or uploaded by the bot"},
                                 status=404)
    inline = item.content_type in INLINE_TYPES
    typed = CONTENT_TYPE.fullmatch(item.content_type)
    return web.Response(body=item.data, headers={
        "Content-Type": item.content_type if typed else "application/octet-stream",
        "Content-Disposition": content_disposition(item.filename, "inline" if inline else "attachment"),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
        "Cache-Control": "private, max-age=3600",  # a media_id's bytes never change
    })


def shown(message: Mapping[str, Any], media: Mapping[str, FakeMedia]) -> dict[str, Any]:
    """What a page shows of a message besides its words: its kind, and a media's id and file name or a place's
    label and coordinates. `message` is a kf/sync_msg item or a body the bot sent: {"msgtype": k, k: {...}}."""
    kind = str(message.get("msgtype") or "text")
    part = message.get(kind)
    if not isinstance(part, dict):
        return {"kind": kind}
    if kind == "location":
        return {"kind": kind, "latitude": part.get("latitude"), "longitude": part.get("longitude"),
                "label": str(part.get("name") or ""), "address": str(part.get("address") or "")}
    media_id = str(part.get("media_id") or "")
    if not media_id:
        return {"kind": kind}
    item = media.get(media_id)
    return {"kind": kind, "media_id": media_id, "filename": item.filename if item else ""}


# --- reading and checking ------------------------------------------------------------------------
async def _read_form(request: web.Request) -> tuple[dict[str, str], Upload | None]:
    """The form's short fields, and its `file` part (None when there is none, or an empty one with no name)."""
    fields: dict[str, str] = {}
    upload: Upload | None = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadMediaRequest("a nested multipart is not read: send flat form fields")
            if part.name == "file":
                data, size = await _read_part(part, MAX_FILE + 1)
                if size or part.filename:
                    upload = Upload(data, size, part.filename or "", part.headers.get("Content-Type", ""))
            elif part.name:
                data, size = await _read_part(part, FIELD_BYTES)
                if size > FIELD_BYTES:
                    raise BadMediaRequest(f"the field {part.name!r} is over {FIELD_BYTES} bytes")
                fields[part.name] = data.decode("utf-8", "replace")
            else:
                await part.release()
    # aiohttp's words for a form it cannot parse (KeyError: a multipart type without a boundary)
    except (ValueError, KeyError) as exc:
        raise BadMediaRequest(f"the form could not be read: {exc!s}") from None
    return fields, upload


async def _read_part(part: BodyPartReader, keep: int) -> tuple[bytes, int]:
    """The part's first `keep` bytes and its whole size (the rest is read, so the client can finish, not kept);
    a part past MAX_BODY (sent chunked, with no Content-Length to refuse early) is not read to its end."""
    kept, size = bytearray(), 0
    while chunk := await part.read_chunk(CHUNK):
        size += len(chunk)
        if size > MAX_BODY:
            raise BadMediaRequest(f"the {part.name or 'form'} part is over {MAX_BODY} bytes: the largest file "
                                  f"WeChat takes is {MAX_FILE // MIB} MB")
        if len(kept) < keep:
            kept += chunk[: keep - len(kept)]
    return bytes(kept), size


async def _read_json(request: web.Request) -> dict[str, object]:
    try:
        data = await request.json()
    except ValueError:
        raise BadMediaRequest("the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadMediaRequest("the JSON body must be an object: {user, channel, kind, …}")
    return data


def _checked(form: Mapping[str, object], upload: Upload | None) -> PageSend:
    user = str(form.get("user") or "").strip()[:USER_CHARS]
    raw_channel, raw_kind = form.get("channel") or "kf", str(form.get("kind") or "")
    if not user:
        raise BadMediaRequest("need user: the customer's external_userid (kf) or openid (oa)")
    if raw_channel not in ("kf", "oa"):
        raise BadMediaRequest(f"channel must be kf or oa, not {raw_channel!r}")
    channel: PageChannel = "oa" if raw_channel == "oa" else "kf"
    if raw_kind == "location":
        latitude, longitude = _coordinates(form)
        return PagePlace(user, channel, latitude, longitude, _text(form, "label", LABEL_CHARS),
                         _text(form, "address", LABEL_CHARS))
    kind = PAGE_KINDS.get(raw_kind)
    if kind is None:
        raise BadMediaRequest(f"kind must be image, voice, video, file or location, not {raw_kind!r}")
    if channel == "oa" and kind == "file":
        raise BadMediaRequest("the OA takes no files from followers: send an image, a voice note or a video")
    recognition = _text(form, "recognition", RECOGNITION_CHARS)
    if recognition and (channel, kind) != ("oa", "voice"):
        raise BadMediaRequest("recognition is an OA voice note's words: kf voice notes and other kinds have none")
    if upload is None and recognition:
        upload = Upload(PLACEHOLDER_AMR, len(PLACEHOLDER_AMR), "voice.amr", "audio/amr")
    if upload is None:
        also = " (or, for an OA voice note, its recognition text)" if kind == "voice" else ""
        raise BadMediaRequest(f"need a file: the {kind} to send{also}")
    _check_file(kind, upload)
    return PageFile(user, channel, kind, upload.data, upload.filename[-FILENAME_CHARS:],
                    upload.content_type if CONTENT_TYPE.fullmatch(upload.content_type) else "", recognition)


def _check_file(kind: MediaKind, upload: Upload) -> None:
    limit = UPLOAD_LIMITS[kind]
    if upload.size == 0:
        raise BadMediaRequest(f"the file {upload.filename!r} is empty")
    if upload.size > limit:
        raise BadMediaRequest(f"the {kind} is {upload.size} bytes: WeChat takes at most {limit // MIB} MB "
                              f"({limit} bytes) for a {kind}")
    extension = upload.filename.rsplit(".", 1)[-1].lower() if "." in upload.filename else ""
    if kind == "image" and not upload.content_type.startswith("image/"):
        raise BadMediaRequest(f"an image must be a picture (image/png, image/jpeg…), not "
                              f"{upload.content_type or 'untyped'}: send it as a file")
    formats = FORMATS[kind]
    if kind != "image" and formats is not None and extension not in formats:
        raise BadMediaRequest(f"a {kind} must be {' or '.join(sorted(formats))}, not {upload.filename!r}")


def _coordinates(form: Mapping[str, object]) -> tuple[float, float]:
    latitude, longitude = _number(form.get("lat")), _number(form.get("lng"))
    problem = coordinates_problem(latitude, longitude)
    if problem or not isinstance(latitude, float) or not isinstance(longitude, float):
        raise BadMediaRequest(f"bad coordinates: {problem or 'need lat and lng'}")
    return latitude, longitude


def _number(value: object) -> object:
    """A coordinate from JSON or a form's text as a float; anything else as it came, for coordinates_problem
    to name."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


def _text(form: Mapping[str, object], key: str, chars: int) -> str:
    value = form.get(key)
    return str(value).strip()[:chars] if isinstance(value, str | int | float) else ""
