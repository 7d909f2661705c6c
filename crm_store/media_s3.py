"""The media store on an S3-compatible object store (AWS S3, MinIO, Ceph, COS, OSS), through aiobotocore.

aiobotocore is botocore (AWS's own request signing, retries, error parsing) on aiohttp, which
the bot already runs on; the event loop is never blocked on the network. Settings keep
S3-compatible servers working: path-style addressing by default (`http://host/bucket/key`,
needing no wildcard DNS) and checksums only where the API requires them (botocore's newer
default trailing checksums are refused by several S3-compatible servers).

A put is held in memory up to the kind's limit (20 MiB for files by default) before it is
sent: the key is the content's hash, known only once the last byte has been read, and the
alternative (a multipart upload to a temporary key, then a server-side copy and a delete)
costs three round trips for media that are mostly under a megabyte.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import quote, unquote

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from crm_store.media_settings import S3MediaSettings
from crm_store.media_store import (
    CHUNK_BYTES,
    DEFAULT_CONTENT_TYPE,
    MediaKind,
    MediaNotFound,
    MediaStore,
    MediaStoreUnavailable,
    StoredMedia,
    media_key,
    parse_key,
)

log = logging.getLogger("scrm.media")

# HEAD answers a bare 404 (no body, so no code); GET names it. A missing bucket is not a missing item.
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class S3MediaStore(MediaStore):
    """Items as objects `<prefix>/<key>` in one bucket; metadata as the object's own headers."""

    def __init__(
        self,
        bucket: str,
        limits: Mapping[MediaKind, int],
        *,
        prefix: str = "",
        endpoint_url: str = "",
        region: str = "us-east-1",
        access_key_id: str = "",
        secret_access_key: str = "",
        addressing_style: str = "path",
        create_bucket: bool = False,
    ) -> None:
        super().__init__(limits)
        self.bucket, self.prefix, self.endpoint_url, self.region = bucket, prefix.strip("/"), endpoint_url, region
        self.create_bucket = create_bucket
        # Empty keys: None, so botocore asks its usual chain (AWS_* variables, an instance role).
        self._credentials = (access_key_id or None, secret_access_key or None)
        self._config = AioConfig(
            s3={"addressing_style": addressing_style},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            warm_up_loader_caches=True,  # botocore reads its JSON service models in a thread, not on the loop
        )
        self._exit = AsyncExitStack()
        self._client: Any = None
        self._starting = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: S3MediaSettings, limits: Mapping[MediaKind, int]) -> S3MediaStore:
        return cls(
            settings.bucket,
            limits,
            prefix=settings.prefix,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
            access_key_id=settings.access_key_id.get_secret_value(),
            secret_access_key=settings.secret_access_key.get_secret_value(),
            addressing_style=settings.addressing_style,
            create_bucket=settings.create_bucket,
        )

    def describe(self) -> str:
        where = f"s3 {self.bucket}/{self.prefix}" if self.prefix else f"s3 {self.bucket}"
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    def _object(self, key: str) -> str:
        parse_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def start(self) -> None:
        """Connect and check the bucket (creating it when media.s3.create_bucket says so)."""
        await self._s3()

    async def _s3(self) -> Any:
        """The client, made on first use: a store built from settings costs nothing until used."""
        if self._client is not None:
            return self._client
        async with self._starting:
            if self._client is None:
                session = await _shared_session()
                client = await self._exit.enter_async_context(session.create_client(
                    "s3", region_name=self.region, endpoint_url=self.endpoint_url or None,
                    aws_access_key_id=self._credentials[0], aws_secret_access_key=self._credentials[1],
                    config=self._config,
                ))
                try:
                    await self._check_bucket(client)
                except BaseException:
                    await self._exit.aclose()
                    raise
                self._client = client
        return self._client

    async def _check_bucket(self, client: Any) -> None:
        try:
            await client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND | {"NoSuchBucket"}:
                raise self._unavailable(exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable(exc) from exc
        if not self.create_bucket:
            raise MediaStoreUnavailable(
                f"bucket {self.bucket!r} does not exist ({self.describe()}): create it, "
                "or set media.s3.create_bucket: true"
            )
        try:
            await client.create_bucket(Bucket=self.bucket, **self._location())
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou",):
                raise self._unavailable(exc) from exc
        log.info("media.bucket.created bucket=%s", self.bucket)

    def _location(self) -> dict[str, Any]:
        # us-east-1 is the one region that refuses an explicit LocationConstraint.
        if self.region == "us-east-1":
            return {}
        return {"CreateBucketConfiguration": {"LocationConstraint": self.region}}

    def _unavailable(self, exc: Exception) -> MediaStoreUnavailable:
        return MediaStoreUnavailable(f"media store {self.describe()} cannot be used: {exc}")

    async def close(self) -> None:
        self._client = None
        await self._exit.aclose()

    async def _store(
        self, chunks: AsyncIterator[bytes], kind: MediaKind, content_type: str, filename: str
    ) -> tuple[str, int, bool]:
        body, hasher = bytearray(), hashlib.sha256()
        async for chunk in chunks:
            body += chunk
            await asyncio.to_thread(hasher.update, chunk)  # hashlib releases the GIL: the loop stays free
        sha256 = hasher.hexdigest()
        key = media_key(kind, sha256)
        if await self.exists(key):
            return sha256, len(body), False
        metadata = {"kind": kind, "sha256": sha256, "filename": quote(filename, safe="")}
        await self._call(
            "put_object", key, Bucket=self.bucket, Key=self._object(key), Body=body,
            ContentType=content_type, Metadata=metadata,
        )
        return sha256, len(body), True

    async def _call(self, operation: str, key: str, **params: Any) -> Any:
        """One S3 call: a missing object becomes MediaNotFound, any other failure MediaStoreUnavailable."""
        client = await self._s3()
        try:
            return await getattr(client, operation)(**params)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise MediaNotFound(key) from None
            raise self._unavailable(exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable(exc) from exc

    async def open(self, key: str) -> AsyncGenerator[bytes, None]:
        response = await self._call("get_object", key, Bucket=self.bucket, Key=self._object(key))
        async with response["Body"] as stream:
            try:
                async for chunk in stream.iter_chunks(CHUNK_BYTES):
                    yield chunk
            except BotoCoreError as exc:
                raise self._unavailable(exc) from exc

    async def info(self, key: str) -> StoredMedia:
        kind, sha256 = parse_key(key)
        head = await self._call("head_object", key, Bucket=self.bucket, Key=self._object(key))
        metadata = head.get("Metadata", {})
        return StoredMedia(
            key, kind, int(head["ContentLength"]), sha256, head.get("ContentType") or DEFAULT_CONTENT_TYPE,
            unquote(metadata.get("filename", "")), self.describe(),
        )

    async def exists(self, key: str) -> bool:
        try:
            await self._call("head_object", key, Bucket=self.bucket, Key=self._object(key))
        except MediaNotFound:
            return False
        return True

    async def size(self, key: str) -> int:
        head = await self._call("head_object", key, Bucket=self.bucket, Key=self._object(key))
        return int(head["ContentLength"])

    async def delete(self, key: str) -> bool:
        # S3 deletes whatever is there without saying whether anything was: ask first.
        if not await self.exists(key):
            return False
        await self._call("delete_object", key, Bucket=self.bucket, Key=self._object(key))
        return True


_session: AioSession | None = None


async def _shared_session() -> AioSession:
    """One botocore session per process, as botocore advises: it caches the service models, so a
    second client costs milliseconds instead of a few hundred (tests make one store per test)."""
    global _session
    if _session is None:
        # Reading ~/.aws/config and the environment is file I/O: done off the loop.
        _session = await asyncio.to_thread(_new_session)
    return _session


def _new_session() -> AioSession:
    session = get_session()
    session.get_scoped_config()  # reads the config files now, in this worker thread
    return session


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""
