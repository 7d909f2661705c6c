"""Media the bot sends, uploaded just before the call: once per credential and content, the id cached until it expires.

An outbox row that carries media keeps where its bytes are (`delivery.MEDIA`: a file of the flow
directory, an https URL, or an item of the media store), never a media id: WeChat keeps an uploaded
item 3 days only, and a row may wait longer than that. The sender's `prepare` step for such a row
(bot/sender.py) calls `MediaUploads.prepare`, which fills in the message's `media_id`:

1. the content's SHA-256, known without reading when it can be (a store key is its hash; a flow file's
   hash is remembered by path, modification time and size; a URL's for an hour in the shared state);
2. a media id cached in the shared state (Redis or memory) under (credential, kind, hash): used until
   an hour before its 3 days are over, by the platform's `created_at` and this object's `clock`;
3. otherwise the bytes are read and uploaded (`media/upload` on the row's own credential, under a lock
   shared by every instance, so two rows meeting the same new file upload it once) and the id cached.

Should WeChat still answer 40007 (it forgot the id early), the sender calls `forget` and the row is
retried with a fresh upload. A source that cannot be read (a flow file removed after publishing, a
link that answers 404, a file over the platform's limit) is `SourceUnavailable`: nothing was sent,
and trying again will not help.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import mimetypes
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from bot.delivery import MEDIA
from bot.wechat_api import ApiError, NotSent, RetryableApiError, WeChatApi, disposition_filename
from core.shared_state import LockNotAcquired, SharedState
from crm_store.media_store import MediaError, MediaStore, parse_key
from flows.media_assets import FORMATS, MIN_BYTES, SEND_LIMITS, asset_path

log = logging.getLogger("scrm.media")

UPLOAD = "media/upload"  # the same path on WeCom's base and on the OA's
MEDIA_LIFE_S = 3 * 24 * 3600  # "3天后media_id失效" (OA), "仅三天内有效" (WeCom)
RENEW_BEFORE_S = 3600  # a cached id is given up this long before its 3 days end: a call must not race the expiry
URL_HASH_TTL_S = 3600  # what a URL's content hashes to is trusted this long: a changed picture goes out within it
SOURCE_UNAVAILABLE = -7  # our code: the bytes to send cannot be had
DEFAULT_EXTENSIONS = {"image": ".jpg", "voice": ".amr", "video": ".mp4", "file": ".bin"}
URL_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=10, sock_read=20)


class SourceUnavailable(ApiError):
    """The media to send cannot be read (a file gone, a link refused, too large): nothing was sent, not retried."""

    def __init__(self, errmsg: str) -> None:
        super().__init__(SOURCE_UNAVAILABLE, errmsg, UPLOAD)

    @property
    def refused(self) -> bool:
        return True  # nothing left this process: the outcome is known


@dataclass(frozen=True)
class Content:
    data: bytes
    filename: str
    content_type: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class MediaUploads:
    def __init__(self, apis: Mapping[str, WeChatApi], state: SharedState, store: MediaStore, directory: Path,
                 http: aiohttp.ClientSession, clock: Callable[[], float] = time.time) -> None:
        self.apis = apis
        self.state = state
        self.store = store
        self.directory = directory  # the flow directory (flows.directory): files say steps send
        self.http = http
        self.clock = clock  # the platform's time, as `created_at` tells it: tests put in the fake's clock
        self.uploaded = 0
        self._file_hashes: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> sha256

    def preparer(self, credential: str) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]:
        """The sender's prepare step for the outbox kinds of `credential` (rows without media pass unchanged)."""

        async def prepare(payload: dict[str, Any]) -> dict[str, Any] | None:
            return await self.prepare(credential, payload)

        return prepare

    async def prepare(self, credential: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The API body: the media part's `media_id` filled in, the source left out."""
        spec = payload.get(MEDIA)
        if not isinstance(spec, dict):
            return payload
        kind = str(payload["msgtype"])
        media_id = await self.media_id(credential, kind, spec)
        body = {key: value for key, value in payload.items() if key != MEDIA}
        body[kind] = {**(body.get(kind) or {}), "media_id": media_id}
        return body

    async def media_id(self, credential: str, kind: str, spec: Mapping[str, str]) -> str:
        known = await self._known_hash(spec)
        if known and (cached := await self._cached(credential, kind, known)):
            return cached
        content = await self._read(kind, spec)
        key = _cache_key(credential, kind, content.sha256)
        try:
            async with self.state.lock(key, ttl_s=60, wait_s=30):
                return await self._cached(credential, kind, content.sha256) or await self._upload(
                    credential, kind, content, key)
        except LockNotAcquired:
            raise RetryableApiError(-1, "another instance is uploading the same media", UPLOAD) from None

    async def forget(self, credential: str, payload: Mapping[str, Any]) -> bool:
        """WeChat no longer knows the cached id of this row's media (40007): the next attempt uploads again."""
        spec, kind = payload.get(MEDIA), str(payload.get("msgtype", ""))
        known = await self._known_hash(spec) if isinstance(spec, dict) else ""
        return bool(known) and await self.state.delete(_cache_key(credential, kind, known))

    async def _upload(self, credential: str, kind: str, content: Content, key: str) -> str:
        try:
            answer = await self.apis[credential].upload(UPLOAD, {"type": kind}, content.data, content.filename,
                                                        content.content_type)
        except ApiError as exc:
            raise _before_the_message(exc) from None
        media_id = str(answer["media_id"])
        expires_at = float(answer.get("created_at") or self.clock()) + MEDIA_LIFE_S - RENEW_BEFORE_S
        entry = json.dumps({"media_id": media_id, "expires_at": expires_at})
        await self.state.set(key, entry, ttl_s=max(1.0, expires_at - self.clock()))
        self.uploaded += 1
        log.info("media.upload.done credential=%s kind=%s size=%s sha256=%s", credential, kind, len(content.data),
                 content.sha256[:12])
        return media_id

    async def _cached(self, credential: str, kind: str, sha256: str) -> str:
        raw = await self.state.get(_cache_key(credential, kind, sha256))
        entry = json.loads(raw) if raw else {}
        return str(entry["media_id"]) if entry and self.clock() < float(entry["expires_at"]) else ""

    async def _known_hash(self, spec: Mapping[str, str]) -> str:
        """The content's hash when it is known without reading the content ("" otherwise)."""
        if spec.get("key"):
            try:
                return parse_key(spec["key"])[1]
            except ValueError:
                return ""
        source = str(spec.get("source", ""))
        if source.startswith("https://"):
            return await self.state.get(_url_key(source)) or ""
        try:
            _, stamp = await asyncio.to_thread(_locate, self.directory, source)
        except (ValueError, OSError):
            return ""
        return self._file_hashes.get(stamp, "")

    async def _read(self, kind: str, spec: Mapping[str, str]) -> Content:
        if spec.get("key"):
            return await self._from_store(kind, spec["key"], spec.get("filename", ""))
        source = str(spec.get("source", ""))
        if "://" in source:
            content = await self._from_url(kind, source)
            await self.state.set(_url_key(source), content.sha256, ttl_s=URL_HASH_TTL_S)
            return content
        return await self._from_directory(kind, source)

    async def _from_directory(self, kind: str, source: str) -> Content:
        try:
            path, stamp = await asyncio.to_thread(_locate, self.directory, source)
            if stamp[2] > SEND_LIMITS[kind]:
                raise SourceUnavailable(f"{source} is {stamp[2]} bytes; a {kind} may be at most {SEND_LIMITS[kind]}")
            data = await asyncio.to_thread(path.read_bytes)
        except (ValueError, OSError) as exc:
            raise SourceUnavailable(f"flow media {source!r} in {self.directory}: {exc}") from None
        content = _checked(kind, data, path.name, mimetypes.guess_type(path.name)[0] or "", source)
        self._file_hashes[stamp] = content.sha256
        return content

    async def _from_url(self, kind: str, url: str) -> Content:
        if not url.startswith("https://"):
            raise SourceUnavailable(f"not an https URL: {url!r}")
        try:
            async with self.http.get(url, timeout=URL_TIMEOUT) as response:
                if response.status >= 500:
                    raise NotSent(-response.status, f"{url} answered HTTP {response.status}", UPLOAD)
                if response.status != 200:
                    raise SourceUnavailable(f"{url} answered HTTP {response.status}")
                data = await response.content.read(SEND_LIMITS[kind] + 1)
                name = disposition_filename(response.headers.get("Content-Disposition", ""))
                content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise NotSent(-2, f"{url}: {type(exc).__name__}: {exc}", UPLOAD) from None
        name = name or unquote(PurePosixPath(urlsplit(url).path).name)
        return _checked(kind, data, name, content_type, url)

    async def _from_store(self, kind: str, key: str, filename: str) -> Content:
        try:
            info = await self.store.info(key)
            data = await self.store.get(key)
        except (MediaError, ValueError) as exc:
            raise SourceUnavailable(f"stored media {key}: {exc}") from None
        return _checked(kind, data, filename or info.filename, info.content_type, key)


def _before_the_message(exc: ApiError) -> ApiError:
    """An upload that failed: whatever became of it, the message itself was certainly not sent, so the row is
    never taken for "sent, outcome unknown" (an OA message is not resent then): retried if that can help."""
    if exc.refused:
        return exc
    if exc.retryable:
        return NotSent(exc.errcode, f"media/upload: {exc.errmsg}", UPLOAD)
    return SourceUnavailable(f"media/upload failed: {exc.errmsg}")


def _checked(kind: str, data: bytes, filename: str, content_type: str, source: str) -> Content:
    """The content, named as the platforms want it (an extension they take), if its size is one they take."""
    if len(data) > SEND_LIMITS[kind]:
        raise SourceUnavailable(f"{source} is larger than {SEND_LIMITS[kind]} bytes, the most WeChat takes for a {kind}")
    if len(data) <= MIN_BYTES:
        raise SourceUnavailable(f"{source} is {len(data)} bytes: WeChat takes only files larger than {MIN_BYTES}")
    return Content(data, upload_name(kind, filename, content_type), content_type)


def upload_name(kind: str, filename: str, content_type: str) -> str:
    """A file name for media/upload: the platforms judge the format by its extension, so one that fits the kind."""
    last = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(char for char in last if char.isprintable() and char != '"').strip() or kind
    formats = FORMATS[kind]
    if formats is None or PurePosixPath(name).suffix.lower().lstrip(".") in formats:
        return name
    guessed = mimetypes.guess_extension(content_type) if content_type else None
    extension = guessed if guessed and guessed.lstrip(".") in formats else DEFAULT_EXTENSIONS[kind]
    return PurePosixPath(name).stem + extension


def _locate(directory: Path, source: str) -> tuple[Path, tuple[str, int, int]]:
    """The flow file (inside the directory, links followed) and what identifies its content: path, time, size.
    Runs in a thread: resolving and stat are file-system calls."""
    path = asset_path(directory, source)
    if not path.is_file():
        raise OSError(f"{source} is not a file")
    stat = path.stat()
    return path, (str(path), stat.st_mtime_ns, stat.st_size)


def _cache_key(credential: str, kind: str, sha256: str) -> str:
    return f"media-upload:{credential}:{kind}:{sha256}"


def _url_key(url: str) -> str:
    return f"media-url:{hashlib.sha256(url.encode()).hexdigest()}"
