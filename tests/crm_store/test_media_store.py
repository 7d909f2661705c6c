"""One contract, two backends: the local directory and S3 (a real moto server over HTTP) behave the same."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path

import pytest

from bot.settings import SettingsError, load_settings
from crm_store.media_s3 import S3MediaStore
from crm_store.media_store import (
    InvalidMediaKey,
    LocalMediaStore,
    MediaKind,
    MediaNotFound,
    MediaStore,
    MediaStoreUnavailable,
    MediaTooLarge,
    build_media_store,
    media_key,
)

LIMITS: dict[MediaKind, int] = {"image": 300_000, "voice": 100, "video": 1_000, "file": 2_000}
PREFIX = "scrm/test"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """One moto S3 server per test process (each test uses a bucket of its own), on a free port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_store(endpoint: str, *, create_bucket: bool = True, bucket: str = "") -> S3MediaStore:
    return S3MediaStore(
        bucket or f"media-{uuid.uuid4().hex[:12]}", LIMITS, prefix=PREFIX, endpoint_url=endpoint,
        access_key_id="testing", secret_access_key="testing", create_bucket=create_bucket,
    )


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MediaStore]:
    backend: MediaStore
    if request.param == "local":
        backend = LocalMediaStore(tmp_path / "media", LIMITS)
    else:
        backend = s3_store(request.getfixturevalue("s3_endpoint"))
    async with backend:
        yield backend


async def stored_objects(store: MediaStore) -> list[str]:
    """Everything the backend holds (metadata sidecars aside), temporary files included."""
    if isinstance(store, LocalMediaStore):
        files = [path for path in store.root.rglob("*") if path.is_file() and path.suffix != ".json"]
        return sorted(str(path.relative_to(store.root)) for path in files)
    assert isinstance(store, S3MediaStore)
    client = await store._s3()
    listing = await client.list_objects_v2(Bucket=store.bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def stored_name(store: MediaStore, key: str) -> str:
    return f"{PREFIX}/{key}" if isinstance(store, S3MediaStore) else key


async def chunks_of(data: bytes, size: int, pulled: list[int] | None = None) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        if pulled is not None:
            pulled.append(start)
        yield data[start:start + size]


async def test_put_then_get_returns_the_same_bytes(store: MediaStore) -> None:
    data = b"\x89PNG fake image bytes"
    sha256 = hashlib.sha256(data).hexdigest()
    stored = await store.put(data, "image", content_type="image/png", filename="photo.png")
    assert stored.key == f"image/{sha256[:2]}/{sha256[2:4]}/{sha256}" == media_key("image", sha256)
    assert (stored.kind, stored.size, stored.sha256) == ("image", len(data), sha256)
    assert (stored.content_type, stored.filename, stored.where) == ("image/png", "photo.png", store.describe())
    assert await store.get(stored.key) == data
    assert await store.exists(stored.key)
    assert await store.size(stored.key) == len(data)
    assert await store.info(stored.key) == stored
    assert await stored_objects(store) == [stored_name(store, stored.key)]


async def test_open_streams_in_chunks(store: MediaStore) -> None:
    data = os.urandom(200_000)
    stored = await store.put(data, "image")
    async with aclosing(store.open(stored.key)) as stream:
        chunks = [chunk async for chunk in stream]
    assert len(chunks) > 1 and b"".join(chunks) == data


async def test_put_reads_a_stream(store: MediaStore) -> None:
    data = os.urandom(1_500)
    stored = await store.put(chunks_of(data, 100), "file", content_type="application/pdf")
    assert stored.size == 1_500 and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert await store.get(stored.key) == data
    assert (await store.info(stored.key)).content_type == "application/pdf"


async def test_same_content_is_stored_once(store: MediaStore) -> None:
    first = await store.put(b"same voice", "voice", filename="first.amr")
    again = await store.put(chunks_of(b"same voice", 3), "voice", filename="second.amr")
    together = await asyncio.gather(*(store.put(b"same voice", "voice") for _ in range(5)))
    assert {first.key, again.key} | {item.key for item in together} == {first.key}
    assert again.filename == "second.amr"  # the record echoes this call…
    assert (await store.info(first.key)).filename == "first.amr"  # …the stored copy keeps the first
    assert await stored_objects(store) == [stored_name(store, first.key)]


async def test_same_content_of_another_kind_is_another_item(store: MediaStore) -> None:
    as_image = await store.put(b"bytes", "image")
    as_file = await store.put(b"bytes", "file")
    assert as_image.key != as_file.key and as_image.sha256 == as_file.sha256
    assert len(await stored_objects(store)) == 2


async def test_too_large_is_refused_with_nothing_stored(store: MediaStore) -> None:
    with pytest.raises(MediaTooLarge, match=r"media\.max_bytes\.voice") as refused:
        await store.put(b"x" * 101, "voice")
    assert (refused.value.kind, refused.value.limit) == ("voice", 100)
    assert await store.put(b"x" * 100, "voice")  # the limit itself is allowed
    await store.delete(media_key("voice", hashlib.sha256(b"x" * 100).hexdigest()))
    assert await stored_objects(store) == []


async def test_too_large_stream_is_not_read_past_its_limit(store: MediaStore) -> None:
    pulled: list[int] = []
    with pytest.raises(MediaTooLarge):
        await store.put(chunks_of(b"y" * 10_000, 60, pulled), "voice")
    assert len(pulled) == 2  # 60 bytes, then 120 > 100: the other 9,880 bytes were never asked for
    assert await stored_objects(store) == []


async def test_hostile_filename_is_metadata_only(store: MediaStore, tmp_path: Path) -> None:
    names = ["../../../etc/passwd", "/abs/path.txt", "a\\b/../c", "报价单 2026.pdf", "x\r\nX-Injected: 1", "."]
    for index, name in enumerate(names):
        stored = await store.put(f"content {index}".encode(), "file", filename=name)
        assert stored.key == media_key("file", stored.sha256)
        assert (await store.info(stored.key)).filename == name
    assert all(name.split("/")[-1] not in ("passwd", "path.txt") for name in await stored_objects(store))
    assert sorted(path.name for path in tmp_path.iterdir()) == (["media"] if isinstance(store, LocalMediaStore) else [])
    long_name = "名" * 200 + ".pdf"  # 604 bytes of UTF-8: cut to 255 at a character boundary
    stored = await store.put(b"long name", "file", filename=long_name)
    assert stored.filename == "名" * 85 and (await store.info(stored.key)).filename == "名" * 85


@pytest.mark.parametrize("key", [
    "../../etc/passwd",
    "image/../../../etc/passwd",
    "image/ab/cd/" + "ab" * 32,  # fan-out that does not match the hash
    "image/AB/AB/" + "AB" * 32,
    "secret/ab/ab/" + "ab" * 32,
    "image/ab/ab/" + "ab" * 32 + "/../x",
    "",
])
async def test_keys_it_could_not_have_made_are_refused(store: MediaStore, key: str) -> None:
    with pytest.raises(InvalidMediaKey):
        await store.get(key)
    with pytest.raises(InvalidMediaKey):
        await store.exists(key)
    with pytest.raises(InvalidMediaKey):
        await store.delete(key)
    with pytest.raises(InvalidMediaKey):
        async with aclosing(store.open(key)) as stream:
            await anext(stream)


async def test_missing_item(store: MediaStore) -> None:
    key = media_key("video", hashlib.sha256(b"never stored").hexdigest())
    assert not await store.exists(key)
    assert not await store.delete(key)
    for read in (store.get, store.size, store.info):
        with pytest.raises(MediaNotFound):
            await read(key)
    with pytest.raises(MediaNotFound):
        async with aclosing(store.open(key)) as stream:
            await anext(stream)


async def test_delete_removes_the_item(store: MediaStore) -> None:
    stored = await store.put(b"to be forgotten", "video", content_type="video/mp4")
    assert await store.delete(stored.key)
    assert not await store.exists(stored.key)
    assert not await store.delete(stored.key)
    assert await stored_objects(store) == []
    assert await store.put(b"to be forgotten", "video") == await store.put(b"to be forgotten", "video")


async def test_wrong_kind_or_content_type_is_a_caller_error(store: MediaStore) -> None:
    with pytest.raises(ValueError, match="unknown media kind"):
        await store.put(b"data", "sticker")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a media type"):
        await store.put(b"data", "image", content_type="image/png\r\nX-Injected: 1")
    assert (await store.put(b"data", "image")).content_type == "application/octet-stream"


async def test_describe_says_where(store: MediaStore, tmp_path: Path) -> None:
    if isinstance(store, LocalMediaStore):
        assert store.describe() == f"local {tmp_path / 'media'}"
    else:
        assert isinstance(store, S3MediaStore)
        assert store.describe() == f"s3 {store.bucket}/{PREFIX} at {store.endpoint_url}"


async def test_missing_bucket_is_a_clear_error(s3_endpoint: str) -> None:
    store = s3_store(s3_endpoint, create_bucket=False)
    with pytest.raises(MediaStoreUnavailable, match=r"does not exist.*media\.s3\.create_bucket"):
        await store.start()
    await store.close()


async def test_local_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    async with LocalMediaStore(tmp_path / "media", LIMITS) as store:
        await store.put(b"kept", "image")
        await store.put(b"kept", "image")
        with pytest.raises(MediaTooLarge):
            await store.put(chunks_of(b"z" * 500, 50), "voice")
    assert list((tmp_path / "media" / ".tmp").iterdir()) == []


@pytest.mark.usefixtures("clean_env")
async def test_store_built_from_settings(tmp_path: Path, s3_endpoint: str) -> None:
    os.environ["SCRM__MEDIA__DIRECTORY"] = str(tmp_path / "from-env")
    local = build_media_store(load_settings().media)
    assert isinstance(local, LocalMediaStore) and local.describe() == f"local {tmp_path / 'from-env'}"
    assert local.limits == {"image": 10 * 2**20, "voice": 2 * 2**20, "video": 10 * 2**20, "file": 20 * 2**20}

    bucket = f"media-{uuid.uuid4().hex[:12]}"
    os.environ.update({
        "SCRM__MEDIA__BACKEND": "s3", "SCRM__MEDIA__S3__ENDPOINT_URL": s3_endpoint,
        "SCRM__MEDIA__S3__BUCKET": bucket, "SCRM__MEDIA__S3__PREFIX": "/brand/media/",
        "SCRM__MEDIA__S3__CREATE_BUCKET": "true", "SCRM__MEDIA__MAX_BYTES__VOICE": "10",
        "SCRM__MEDIA__S3__ACCESS_KEY_ID": "testing", "SCRM__MEDIA__S3__SECRET_ACCESS_KEY": "testing",
    })
    settings = load_settings()
    assert settings.masked()["media"]["s3"]["secret_access_key"] == "**********"
    async with build_media_store(settings.media) as remote:
        assert remote.describe() == f"s3 {bucket}/brand/media at {s3_endpoint}"
        with pytest.raises(MediaTooLarge):
            await remote.put(b"longer than ten", "voice")
        stored = await remote.put(b"short", "voice")
        assert await remote.get(stored.key) == b"short"


@pytest.mark.usefixtures("clean_env")
def test_s3_without_a_bucket_is_refused_at_start_up() -> None:
    os.environ["SCRM__MEDIA__BACKEND"] = "s3"
    with pytest.raises(SettingsError, match=r"media\.s3\.bucket"):
        load_settings()
    os.environ["SCRM__MEDIA__S3__BUCKET"] = "Not_A_Bucket"
    with pytest.raises(SettingsError, match=r"media\.s3\.bucket.*SCRM__MEDIA__S3__BUCKET"):
        load_settings()
