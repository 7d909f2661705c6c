"""The media store: what customers send (images, voice, video, files) kept past WeChat's 3 days.

WeChat keeps temporary media for 3 days (`media/get` on WeCom and on the OA); the bot copies
them here. One interface, two backends, both run through one contract test
(tests/crm_store/test_media_store.py):

* `LocalMediaStore`: a directory (`var/media` by default), the first-run default;
* `S3MediaStore` (crm_store/media_s3.py): any S3-compatible object store, for several machines.

Items are **content-addressed**: the key is `<kind>/<ab>/<cd>/<sha256>`, so the same content is
stored once, and nothing a customer controls (a file name) ever becomes part of a path or an
object key: the original name is metadata only. Keys are checked against that exact shape on
every read, so a key taken from a URL or a command line cannot walk out of the store either.

Sizes are limited per kind (settings `media.max_bytes`); a stream is read only up to its limit
and refused with `MediaTooLarge` before anything is kept.

Errors, all raised by every backend alike::

    MediaError
    ├── MediaTooLarge          larger than media.max_bytes.<kind>; nothing was stored
    ├── MediaNotFound          no item under that key
    ├── InvalidMediaKey        (also a ValueError) not a key this store could have made
    └── MediaStoreUnavailable  the backend cannot be used: missing bucket, refused credentials, no server
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, get_args

from core.content import MediaKind
from crm_store.media_settings import MediaSettings

log = logging.getLogger("scrm.media")

MEDIA_KINDS: tuple[MediaKind, ...] = get_args(MediaKind)  # the kinds of core.content.Media
DEFAULT_CONTENT_TYPE = "application/octet-stream"
CHUNK_BYTES = 64 * 1024
FILENAME_MAX_BYTES = 255  # what common file systems allow; keeps S3's 2 KB of metadata within reach

_KEY = re.compile(r"^(image|voice|video|file)/([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})$")
# type/subtype with optional parameters, printable ASCII only: it travels in HTTP headers.
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[\x20-\x7e]*)?$")


class MediaError(Exception):
    """Base of every media store error."""


class MediaTooLarge(MediaError):
    """The item is larger than its kind allows; nothing was stored and the rest was not read."""

    def __init__(self, kind: MediaKind, limit: int, received: int) -> None:
        super().__init__(
            f"{kind} larger than its limit of {limit} bytes (read {received} before stopping; "
            f"the limit is media.max_bytes.{kind})"
        )
        self.kind, self.limit, self.received = kind, limit, received


class MediaNotFound(MediaError):
    def __init__(self, key: str) -> None:
        super().__init__(f"no media under {key}")
        self.key = key


class InvalidMediaKey(MediaError, ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(f"not a media key: {key!r} (expected <kind>/<ab>/<cd>/<sha256>)")
        self.key = key


class MediaStoreUnavailable(MediaError):
    """The backend cannot be used as configured; the message says what to change."""


@dataclass(frozen=True)
class StoredMedia:
    """One kept item. `filename` and `content_type` are metadata: never part of the key."""

    key: str
    kind: MediaKind
    size: int
    sha256: str
    content_type: str
    filename: str
    where: str  # the backend, as describe() says it


def media_key(kind: MediaKind, sha256: str) -> str:
    """The key of content with this hash: `image/ab/cd/abcd…`, two fan-out levels of 256."""
    return f"{kind}/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def parse_key(key: str) -> tuple[MediaKind, str]:
    """(kind, sha256) of a well-formed key; InvalidMediaKey for anything else (`..`, `/`, upper case)."""
    match = _KEY.fullmatch(key) if isinstance(key, str) else None
    if not match or match[4][:2] != match[2] or match[4][2:4] != match[3]:
        raise InvalidMediaKey(key)
    kind: MediaKind = match[1]  # type: ignore[assignment]  # the pattern admits only the four kinds
    return kind, match[4]


def clean_filename(filename: str) -> str:
    """The original name cut to FILENAME_MAX_BYTES of UTF-8 (at a character boundary)."""
    return filename.encode("utf-8")[:FILENAME_MAX_BYTES].decode("utf-8", errors="ignore")


def clean_content_type(content_type: str) -> str:
    if not content_type:
        return DEFAULT_CONTENT_TYPE
    if len(content_type) > 255 or not _CONTENT_TYPE.fullmatch(content_type):
        raise ValueError(f"not a media type: {content_type!r} (expected e.g. image/jpeg)")
    return content_type


class MediaStore(ABC):
    """Content-addressed media with per-kind size limits. Use as `async with store:` or start()/close()."""

    def __init__(self, limits: Mapping[MediaKind, int]) -> None:
        missing = [kind for kind in MEDIA_KINDS if kind not in limits]
        if missing:
            raise ValueError(f"no size limit for {missing}")
        self.limits: dict[MediaKind, int] = {kind: limits[kind] for kind in MEDIA_KINDS}

    async def put(
        self,
        data: bytes | AsyncIterator[bytes],
        kind: MediaKind,
        content_type: str = "",
        filename: str = "",
    ) -> StoredMedia:
        """Keep `data` (bytes, or chunks as they are downloaded) and return where it went.

        The same content twice is stored once (the stored copy keeps the first metadata; the
        returned record echoes this call's). MediaTooLarge past media.max_bytes.<kind>, before
        anything is kept; a stream is not read further than its limit.
        """
        if kind not in MEDIA_KINDS:
            raise ValueError(f"unknown media kind {kind!r}; one of {', '.join(MEDIA_KINDS)}")
        content_type, filename = clean_content_type(content_type), clean_filename(filename)
        if isinstance(data, bytes | bytearray | memoryview) and len(data) > self.limits[kind]:
            log.info("media.put.too_large kind=%s limit=%d", kind, self.limits[kind])
            raise MediaTooLarge(kind, self.limits[kind], len(data))
        sha256, size, stored = await self._store(self._limited(data, kind), kind, content_type, filename)
        key = media_key(kind, sha256)
        log.debug("media.put.%s key=%s size=%d", "stored" if stored else "deduplicated", key, size)
        return StoredMedia(key, kind, size, sha256, content_type, filename, self.describe())

    async def _limited(self, data: bytes | AsyncIterator[bytes], kind: MediaKind) -> AsyncIterator[bytes]:
        """The chunks of `data`, raising MediaTooLarge as soon as they pass the kind's limit."""
        if isinstance(data, bytes | bytearray | memoryview):
            if data:
                yield bytes(data)
            return
        limit, received = self.limits[kind], 0
        async for chunk in data:
            received += len(chunk)
            if received > limit:
                log.info("media.put.too_large kind=%s limit=%d", kind, limit)
                raise MediaTooLarge(kind, limit, received)
            if chunk:
                yield chunk

    @abstractmethod
    async def _store(
        self, chunks: AsyncIterator[bytes], kind: MediaKind, content_type: str, filename: str
    ) -> tuple[str, int, bool]:
        """Read `chunks` to the end and keep them under their hash, or keep nothing when reading
        fails (MediaTooLarge included): (sha256, size, whether this call stored it)."""

    @abstractmethod
    def open(self, key: str) -> AsyncGenerator[bytes, None]:
        """The item's bytes in chunks; MediaNotFound at the first iteration when it is missing.

        Close it when stopping early (`contextlib.aclosing`), so the file or connection is released.
        """

    async def get(self, key: str) -> bytes:
        """The whole item at once (for small items; stream large ones with open())."""
        return b"".join([chunk async for chunk in self.open(key)])

    @abstractmethod
    async def info(self, key: str) -> StoredMedia:
        """The stored record (metadata of the first put); MediaNotFound when missing."""

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    async def size(self, key: str) -> int:
        """Bytes stored under `key`; MediaNotFound when missing."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove the item; True when there was one."""

    @abstractmethod
    def describe(self) -> str:
        """Where items go, for people: `local var/media`, `s3 bucket/prefix`."""

    async def start(self) -> None:
        """Check the backend can be used (create what it may); MediaStoreUnavailable otherwise."""
        return None

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> MediaStore:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class LocalMediaStore(MediaStore):
    """Items as files under one directory; writes go to `<dir>/.tmp` and are renamed into place.

    A rename within one file system is atomic, so a reader sees a whole file or none, and a crash
    leaves at most a stray temporary file. Metadata sits beside each item as `<sha256>.json`,
    written before the item itself: an item never exists without it. All file I/O runs in
    worker threads (asyncio.to_thread), never on the event loop.
    """

    def __init__(self, directory: str | Path, limits: Mapping[MediaKind, int]) -> None:
        super().__init__(limits)
        self.directory = str(directory)
        self.root = Path(directory).absolute()  # fixed now: a later chdir must not move the store
        self._tmp = self.root / ".tmp"

    def describe(self) -> str:
        return f"local {self.directory}"

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._tmp.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise MediaStoreUnavailable(f"media directory {self.root} cannot be created: {exc}") from exc

    def _path(self, key: str) -> Path:
        parse_key(key)
        return self.root.joinpath(*key.split("/"))

    async def _store(
        self, chunks: AsyncIterator[bytes], kind: MediaKind, content_type: str, filename: str
    ) -> tuple[str, int, bool]:
        await self.start()
        handle = await asyncio.to_thread(_new_temporary, self._tmp)
        hasher, size = hashlib.sha256(), 0
        try:
            async for chunk in chunks:
                await asyncio.to_thread(_write_and_hash, handle, hasher, chunk)
                size += len(chunk)
            await asyncio.to_thread(_flush_and_close, handle)
            sha256 = hasher.hexdigest()
            meta = {"kind": kind, "sha256": sha256, "content_type": content_type, "filename": filename}
            stored = await asyncio.to_thread(self._commit, Path(handle.name), media_key(kind, sha256), meta)
        finally:
            await asyncio.to_thread(_discard, handle)
        return sha256, size, stored

    def _commit(self, temp: Path, key: str, meta: dict[str, str]) -> bool:
        """Rename the finished temporary file into place, unless the same content is already there."""
        target = self._path(key)
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        meta_temp = temp.with_suffix(".json")
        meta_temp.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        os.replace(meta_temp, target.with_suffix(".json"))
        os.replace(temp, target)
        return True

    async def open(self, key: str) -> AsyncGenerator[bytes, None]:
        path = self._path(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise MediaNotFound(key) from None
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise MediaNotFound(key) from None

    async def info(self, key: str) -> StoredMedia:
        kind, sha256 = parse_key(key)
        size = await self.size(key)
        meta: dict[str, Any] = {}
        with suppress(FileNotFoundError, ValueError):  # an item copied in by hand has no metadata
            meta = json.loads(await asyncio.to_thread(self._path(key).with_suffix(".json").read_text, "utf-8"))
        return StoredMedia(
            key, kind, size, sha256, str(meta.get("content_type") or DEFAULT_CONTENT_TYPE),
            str(meta.get("filename") or ""), self.describe(),
        )

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def size(self, key: str) -> int:
        path = self._path(key)
        try:
            return (await asyncio.to_thread(path.stat)).st_size
        except FileNotFoundError:
            raise MediaNotFound(key) from None

    async def delete(self, key: str) -> bool:
        return await asyncio.to_thread(self._delete, self._path(key))

    @staticmethod
    def _delete(path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        path.with_suffix(".json").unlink(missing_ok=True)
        return True


def _new_temporary(directory: Path) -> IO[bytes]:
    return tempfile.NamedTemporaryFile(mode="wb", dir=directory, prefix="put-", delete=False)


def _write_and_hash(handle: IO[bytes], hasher: hashlib._Hash, chunk: bytes) -> None:
    # hashlib releases the GIL on large buffers, so hashing here leaves the loop free too.
    hasher.update(chunk)
    handle.write(chunk)


def _flush_and_close(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())  # the content is on disk before the rename makes it visible
    handle.close()


def _discard(handle: IO[bytes]) -> None:
    """Close and remove a temporary file that was not renamed into place (refused, failed, a duplicate)."""
    handle.close()
    Path(handle.name).unlink(missing_ok=True)
    Path(handle.name).with_suffix(".json").unlink(missing_ok=True)


def build_media_store(settings: MediaSettings) -> MediaStore:
    """The store `media:` describes. Call start() (or `async with`) to check it before use."""
    limits: dict[MediaKind, int] = {kind: getattr(settings.max_bytes, kind) for kind in MEDIA_KINDS}
    if settings.backend == "local":
        return LocalMediaStore(settings.directory, limits)
    # Imported here: botocore takes about half a second to import, paid only when S3 is configured.
    from crm_store.media_s3 import S3MediaStore

    return S3MediaStore.from_settings(settings.s3, limits)
