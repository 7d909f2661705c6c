"""Signed, expiring links to stored media, for people without an account: /media/{item_id}?exp=…&sig=….

A rep reads a customer's photo on a phone, from a handoff card or a forwarded message: the link
must work without logging in, and must not let anyone walk the store. So each link names one item
and the moment it stops working, and carries an HMAC-SHA256 of both under `media.link_secret`;
the route (bot/media_routes.py) recomputes it. Links are made from `server.public_url`.

Without a secret no link is made (`signed_media_url` answers "") and every link is refused: start-up
and /healthz say so.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

from bot.settings import Settings


def sign(secret: str, item_id: int, expires_at: int) -> str:
    """The signature of one item's link until `expires_at` (Unix seconds): hex HMAC-SHA256 of "id.exp"."""
    return hmac.new(secret.encode(), f"{item_id}.{expires_at}".encode(), hashlib.sha256).hexdigest()


def signed_media_url(settings: Settings, item_id: int, now: float) -> str:
    """A link to stored item `item_id` that works for media.link_ttl_s from `now`; "" without a link secret."""
    secret = settings.media.link_secret.get_secret_value()
    if not secret:
        return ""
    expires_at = int(now) + settings.media.link_ttl_s
    query = urlencode({"exp": expires_at, "sig": sign(secret, item_id, expires_at)})
    return f"{settings.public_base}/media/{item_id}?{query}"


def valid_signature(secret: str, item_id: int, exp: str, sig: str, now: float) -> bool:
    """The link was made with `secret` for this item and has not expired (compared in constant time)."""
    if not secret or not (exp.isascii() and exp.isdigit() and len(exp) <= 12) or int(exp) <= now:
        return False
    return sig.isascii() and hmac.compare_digest(sign(secret, item_id, int(exp)), sig)


def links_problem(settings: Settings) -> str:
    """Why reps get no usable links to stored media ("" when they do): said at start-up and by /healthz."""
    if not settings.media.link_secret.get_secret_value():
        return "media links: off, media.link_secret is empty (set SCRM__MEDIA__LINK_SECRET)"
    if not settings.server.public_url and not settings.sandbox.enabled:
        return f"media links: made for {settings.public_base}, set server.public_url so reps' phones can open them"
    return ""
