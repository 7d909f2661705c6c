"""The route behind links to stored media: GET /media/{item_id}?exp=…&sig=… (links: bot/media_links.py).

The signature is recomputed (`valid_signature`): a wrong or expired one is 403, an item that
is not (or no longer) stored is 404. The bytes are streamed from the media store with their type;
the customer's file name is sent as data (RFC 6266 `filename*`), never trusted: only safe image
types are shown inline, anything else is an attachment, and the browser is told not to guess.
"""

from __future__ import annotations

import logging
import mimetypes
import time
from contextlib import aclosing
from urllib.parse import quote

from aiohttp import web

from bot.media_links import valid_signature
from bot.runtime import RUNTIME
from crm_store.media_items import MediaItem
from crm_store.media_store import DEFAULT_CONTENT_TYPE, MediaNotFound

log = logging.getLogger("scrm.media")

ROUTE = "/media/{item_id:[0-9]{1,18}}"
INLINE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})  # shown in the browser, not scripts


async def media_link(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    item_id = int(request.match_info["item_id"])
    secret = runtime.settings.media.link_secret.get_secret_value()
    if not valid_signature(secret, item_id, request.query.get("exp", ""), request.query.get("sig", ""), time.time()):
        log.info("media.link.refused item=%s", item_id)
        raise web.HTTPForbidden(text="this link is not valid or has expired: ask for a new one")
    async with runtime.sessions() as session:
        item = await session.get(MediaItem, item_id)
    if item is None or item.status != "stored" or not item.key or runtime.media_store is None:
        raise web.HTTPNotFound(text="no stored media under this link")
    store = runtime.media_store
    chunks = store.open(item.key)
    async with aclosing(chunks):
        try:
            first = await anext(chunks, b"")
            filename = item.filename or (await store.info(item.key)).filename  # an OA photo's name is the store's
        except MediaNotFound:
            log.warning("media.link.missing item=%s key=%s", item_id, item.key)
            raise web.HTTPNotFound(text="no stored media under this link") from None
        response = web.StreamResponse(headers=_headers(item, filename))
        if item.size is not None:
            response.content_length = item.size
        await response.prepare(request)
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
    await response.write_eof()
    return response


def _headers(item: MediaItem, filename: str) -> dict[str, str]:
    content_type = item.content_type or DEFAULT_CONTENT_TYPE
    mime = content_type.split(";", 1)[0].strip().lower()
    fallback = f"{item.kind}-{item.id}{mimetypes.guess_extension(mime) or ''}"
    return {
        "Content-Type": content_type,
        "Content-Disposition": content_disposition("inline" if mime in INLINE_TYPES else "attachment", filename,
                                                   fallback),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "Cache-Control": "private, max-age=3600",
        "Referrer-Policy": "no-referrer",
    }


def content_disposition(disposition: str, filename: str, fallback: str) -> str:
    """The header with the name as data: an ASCII `filename` (quotes, slashes and controls replaced) and
    the exact name as RFC 5987 `filename*`."""
    name = "".join(char for char in filename.replace("\\", "/").rsplit("/", 1)[-1] if char.isprintable()).strip()
    name = name or fallback
    ascii_name = "".join(char if char.isascii() and char not in '"\\;' else "_" for char in name)
    header = f'{disposition}; filename="{ascii_name}"'
    if ascii_name != name:
        header += f"; filename*=UTF-8''{quote(name, safe='')}"
    return header


def add_media_routes(app: web.Application) -> None:
    app.router.add_get(ROUTE, media_link)
