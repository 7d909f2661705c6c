"""What a customer's message carries besides words: one typed content part, whatever the channel.

Channels build these from the platforms' own fields (kf `kf/sync_msg` items, OA XML); the
layers above read them typed (`event.content`, `event.content_kind`). The inbox stores an event
as JSON, so each part has a tagged-dict form, `{"type": <kind>, ...fields}`: `content_to_payload`
writes it and `content_from_payload` reads back the same frozen object.

Nothing a customer sends is lost or half-read. A part this code cannot read (a type WeChat added
later, a location whose coordinates are not numbers or are out of range) is `Other`: the type
the platform named, its raw payload and a `problem` text, so the message is still stored,
answered by the flows and visible on the timeline. A file name is data, never a path:
`Media.safe_filename` is what anything that writes a file must use.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, get_args

MediaKind = Literal["image", "voice", "video", "file"]
ChannelsKind = Literal["channels", "channels_shop_product", "channels_shop_order"]
ContentKind = Literal[
    "image", "voice", "video", "file", "location", "link", "miniprogram", "business_card",
    "channels", "channels_shop_product", "channels_shop_order", "merged_msg", "other",
]
MEDIA_KINDS: frozenset[str] = frozenset(get_args(MediaKind))
CHANNELS_KINDS: frozenset[str] = frozenset(get_args(ChannelsKind))

TIMELINE_BYTES = 4096  # a content part on the timeline: enough to see what came, never a whole raw payload
TIMELINE_STRING = 300  # characters of one string value once a part is over TIMELINE_BYTES
TIMELINE_ITEMS = 20  # keys of a mapping, or items of a list, once a part is over TIMELINE_BYTES
TIMELINE_DEPTH = 4


@dataclass(frozen=True)
class Media:
    """A photo, voice note, video or file: WeChat keeps the bytes 3 days under `media_id`."""

    kind: MediaKind
    media_id: str
    filename: str = ""  # as sent: data only, never a path (see safe_filename)
    size: int = 0
    format: str = ""  # voice: amr, speex… (OA Format); kf voice is amr (sync_msg voice_format 0)
    duration_s: int = 0
    thumb_media_id: str = ""  # video: OA ThumbMediaId
    pic_url: str = ""  # OA image: PicUrl, a link WeChat made to the picture
    short: bool = False  # OA shortvideo (小视频): a video all the same

    @property
    def safe_filename(self) -> str:
        """The name without any directory part or control character: safe to join to a directory ("" if none)."""
        last = self.filename.replace("\\", "/").rsplit("/", 1)[-1]
        cleaned = "".join(char for char in last if char.isprintable()).strip()
        return "" if cleaned in ("", ".", "..") else cleaned

    @property
    def problem(self) -> str:
        if self.filename and self.safe_filename != self.filename:
            return "the file name has path separators or control characters: kept as data, never used as a path"
        return ""


@dataclass(frozen=True)
class Location:
    """A place the customer shared. Coordinates are checked here, so no invalid Location exists."""

    latitude: float
    longitude: float
    label: str = ""  # OA Label; kf location.name
    address: str = ""  # kf location.address
    scale: int = 0  # OA Scale (the map's zoom)
    kind: ClassVar[Literal["location"]] = "location"

    def __post_init__(self) -> None:
        problem = coordinates_problem(self.latitude, self.longitude)
        if problem:
            raise ValueError(problem)


@dataclass(frozen=True)
class Link:
    title: str
    description: str
    url: str
    pic_url: str = ""
    kind: ClassVar[Literal["link"]] = "link"


@dataclass(frozen=True)
class MiniProgram:
    title: str
    appid: str
    pagepath: str
    thumb_media_id: str = ""
    kind: ClassVar[Literal["miniprogram"]] = "miniprogram"


@dataclass(frozen=True)
class Card:
    """A WeChat contact's card (名片) the customer forwarded."""

    userid: str
    kind: ClassVar[Literal["business_card"]] = "business_card"


@dataclass(frozen=True)
class Channels:
    """A 视频号 (WeChat Channels) post, a Channels shop product or a Channels shop order.

    One shape for the three, with the kf fields of each kind under their own names; `title`
    is what to show (a post's or product's title, an order's product_titles).
    """

    kind: ChannelsKind
    title: str
    nickname: str = ""  # channels: the account's name
    sub_type: int = 0  # channels: which kind of post
    product_id: str = ""  # channels_shop_product
    sales_price: str = ""  # channels_shop_product: in fen, as WeCom sends it
    head_image: str = ""  # channels_shop_product
    shop_nickname: str = ""  # channels_shop_product, channels_shop_order
    shop_head_image: str = ""  # channels_shop_product
    order_id: str = ""  # channels_shop_order
    price_wording: str = ""  # channels_shop_order
    state: str = ""  # channels_shop_order
    image_url: str = ""  # channels_shop_order


@dataclass(frozen=True)
class MergedItem:
    sender_name: str
    msgtype: str  # as sent (WeCom's example has a name; some SDKs read a number): kept as text
    send_time: int = 0
    msg_content: str = ""  # the item's message as WeCom's JSON text


@dataclass(frozen=True)
class Merged:
    """A forwarded chat history (聊天记录)."""

    title: str
    items: tuple[MergedItem, ...] = ()
    kind: ClassVar[Literal["merged_msg"]] = "merged_msg"


@dataclass(frozen=True)
class Other:
    """A part this code does not read: the platform's type name, its raw payload, and why."""

    type: str
    raw: dict[str, Any]
    problem: str = ""
    kind: ClassVar[Literal["other"]] = "other"


Content = Media | Location | Link | MiniProgram | Card | Channels | Merged | Other
_FIXED: dict[str, type[Location | Link | MiniProgram | Card]] = {
    "location": Location, "link": Link, "miniprogram": MiniProgram, "business_card": Card,
}


def coordinates_problem(latitude: object, longitude: object) -> str:
    """Why these are not a point on Earth ("" when they are): numbers, finite, within -90..90 / -180..180."""
    for name, value, bound in (("latitude", latitude, 90.0), ("longitude", longitude, 180.0)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{name} {value!r} is not a number"
        if not math.isfinite(value) or not -bound <= value <= bound:
            return f"{name} {value!r} is outside -{bound:g}..{bound:g}"
    return ""


def location_or_other(msgtype: str, raw: dict[str, Any], latitude: object, longitude: object, label: str = "",
                      address: str = "", scale: int = 0) -> Location | Other:
    """A Location from the platform's values (numbers or numeric text), or Other saying what is wrong."""
    lat, lon = _number(latitude), _number(longitude)
    problem = coordinates_problem(lat, lon)
    if problem:
        return Other(msgtype, raw, f"malformed location: {problem}")
    return Location(float(lat), float(lon), label, address, scale)  # type: ignore[arg-type]


def _number(value: object) -> object:
    """Numeric text as a float; anything else as it came (coordinates_problem names it)."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


def content_to_payload(content: Content) -> dict[str, Any]:
    """The tagged dict stored in the inbox: {"type": kind, ...fields}; Other's own type goes as "msgtype"."""
    data: dict[str, Any] = {"type": content.kind}
    for item in fields(content):
        if item.name == "kind":
            continue
        value = getattr(content, item.name)
        if isinstance(value, tuple):
            value = [{part.name: getattr(entry, part.name) for part in fields(entry)} for entry in value]
        data["msgtype" if isinstance(content, Other) and item.name == "type" else item.name] = value
    return data


def content_from_payload(data: dict[str, Any]) -> Content:
    """The object `content_to_payload` wrote. A tag or a shape this version cannot read (written by a
    newer one, say) becomes Other rather than an exception: the worker must never crash on a stored event."""
    tag = str(data.get("type", ""))
    rest = {key: value for key, value in data.items() if key != "type"}
    try:
        if tag in MEDIA_KINDS:
            return Media(kind=tag, **_known(Media, rest))  # type: ignore[arg-type]
        if tag in CHANNELS_KINDS:
            return Channels(kind=tag, **_known(Channels, rest))  # type: ignore[arg-type]
        if tag == "merged_msg":
            items = tuple(MergedItem(**_known(MergedItem, item)) for item in rest.get("items") or ())
            return Merged(str(rest.get("title", "")), items)
        if tag == "other":
            return Other(str(rest.get("msgtype", "")), dict(rest.get("raw") or {}), str(rest.get("problem", "")))
        if tag in _FIXED:
            return _FIXED[tag](**_known(_FIXED[tag], rest))
    except (TypeError, ValueError) as exc:
        return Other(tag, rest, f"stored content could not be read: {exc}")
    return Other(tag, rest, f"stored content of an unknown type {tag!r}")


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {item.name for item in fields(cls) if item.init and item.name != "kind"}
    return {key: value for key, value in values.items() if key in names}


def content_for_timeline(content: Content, limit: int = TIMELINE_BYTES) -> dict[str, Any]:
    """The part as the timeline shows it: the tagged dict, its problem if any, never more than `limit` bytes.

    A part over the limit (a large unknown payload, a long chat history) keeps its shape with
    strings, mappings and lists cut short; if even that is too large, a text preview stands in."""
    data = content_to_payload(content)
    if isinstance(content, Media) and content.problem:
        data["problem"] = content.problem
    if _size(data) <= limit:
        return data
    trimmed = {**_trimmed(data, 0), "truncated": True}
    if _size(trimmed) <= limit:
        return trimmed
    kept = {key: trimmed[key] for key in ("type", "msgtype", "problem") if key in trimmed}
    preview = json.dumps(data, ensure_ascii=False, default=str)[: limit // 4]
    return {**kept, "truncated": True, "preview": preview}


def _size(data: dict[str, Any]) -> int:
    return len(json.dumps(data, ensure_ascii=False, default=str).encode())


def _trimmed(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= TIMELINE_STRING else value[:TIMELINE_STRING] + "…"
    if isinstance(value, dict):
        if depth >= TIMELINE_DEPTH:
            return f"{{{len(value)} keys}}"
        entries = list(value.items())
        out = {str(key)[:TIMELINE_STRING]: _trimmed(item, depth + 1) for key, item in entries[:TIMELINE_ITEMS]}
        if len(entries) > TIMELINE_ITEMS:
            out["…"] = f"{len(entries) - TIMELINE_ITEMS} more keys"
        return out
    if isinstance(value, list | tuple):
        if depth >= TIMELINE_DEPTH:
            return f"[{len(value)} items]"
        out_list = [_trimmed(item, depth + 1) for item in value[:TIMELINE_ITEMS]]
        if len(value) > TIMELINE_ITEMS:
            out_list.append(f"… {len(value) - TIMELINE_ITEMS} more items")
        return out_list
    return value
