"""`scrm media ...` and the media part of `scrm customers show`, through Click's runner on SQLite and PostgreSQL.

Items are made as the bot makes them: queued with media_items.add, claimed, then kept in a local media
store and marked stored, or marked failed with a reason.
"""

from __future__ import annotations

import hashlib
import socket
import uuid
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from core.content import MediaKind
from crm_store import media_items
from crm_store.customers import Profile, merge_customers, resolve_customer
from crm_store.media_store import MEDIA_KINDS, LocalMediaStore
from crm_store.models import Customer
from tests.admin_cli.harness import ScrmRunner
from tests.conftest import Backend

PHOTO = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8  # 2052 bytes
EXPIRED = "invalid or expired media id (WeChat keeps media 3 days): 40007 invalid media_id"
BUSY = "WeChat busy (-1)"


class Scrm(ScrmRunner):
    failure_exit = 1

    def __init__(self, store_url: str, media_dir: Path) -> None:
        super().__init__(store_url, SCRM__MEDIA__DIRECTORY=str(media_dir))
        self.media = LocalMediaStore(media_dir, {kind: 10_000_000 for kind in MEDIA_KINDS})

    def customer(self, name: str) -> int:
        async def work(session: AsyncSession) -> int:
            customer = await resolve_customer(session, "wecom", f"wm_{name}", Profile(display_name=name))
            await session.flush()
            return customer.id

        return self.run(work)

    def receive(self, customer_id: int, kind: MediaKind, filename: str = "", *, data: bytes | None = None,
                content_type: str = "", failed: str = "") -> int:
        """One item as the bot queues and fetches it: kept (`data`), given up (`failed`), or tried once and due
        again in an hour (neither)."""

        async def work(session: AsyncSession) -> int:
            assert await media_items.add(session, customer_id, "kf", kind, f"mid_{uuid.uuid4().hex}", filename,
                                         f"dedup_{uuid.uuid4().hex}")
            [claimed] = await media_items.claim_due(session, 1, 300)
            if data is not None:
                assert await media_items.mark_stored(session, claimed, await self.media.put(
                    data, kind, content_type, filename))
            elif failed:
                assert await media_items.mark_failed(session, claimed, failed)
            else:
                assert await media_items.retry_later(session, claimed, 3600, BUSY)
            return claimed.id

        return self.run(work)


@pytest.fixture
def scrm(backend: Backend, clean_env: None, tmp_path: Path) -> Scrm:
    return Scrm(backend.store_url, tmp_path / "media")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory of `scrm media get`, empty, in a directory of its own (nothing may land beside it)."""
    directory = tmp_path / "out" / "work"
    directory.mkdir(parents=True)
    monkeypatch.chdir(directory)
    return directory


def three_items(scrm: Scrm, customer_id: int) -> tuple[int, int, int]:
    """A photo kept, a file given up, a voice note waiting: in that order."""
    photo = scrm.receive(customer_id, "image", "photo.jpg", data=PHOTO, content_type="image/jpeg")
    contract = scrm.receive(customer_id, "file", "合同.pdf", failed=EXPIRED)
    voice = scrm.receive(customer_id, "voice")
    return photo, contract, voice


# ---------------------------------------------------------------- customers show


def test_customers_show_lists_received_media_newest_first(scrm: Scrm) -> None:
    customer = scrm.customer("张三")
    photo, contract, voice = three_items(scrm, customer)
    text = scrm("customers", "show", str(customer)).stdout
    part = text[text.index("media (newest first"):]
    assert "kept in local " in part and "scrm media get ID" in part
    rows = [line.split() for line in part.splitlines()[2:5]]
    assert [row[0] for row in rows] == [f"#{voice}", f"#{contract}", f"#{photo}"]
    assert rows[0][1:3] == ["voice", "-"] and "pending" in rows[0] and f"attempt 1: {BUSY}" in part
    assert rows[1][1:3] == ["file", "-"] and "failed" in rows[1] and EXPIRED in part
    key = f"image/{hashlib.sha256(PHOTO).hexdigest()[:2]}/"
    assert rows[2][1:4] == ["image", "2.0", "KB"] and "photo.jpg" in rows[2] and rows[2][-1].startswith(key)


def test_customers_show_json_has_the_media_list(scrm: Scrm, tmp_path: Path) -> None:
    customer = scrm.customer("张三")
    photo, contract, voice = three_items(scrm, customer)
    media = scrm.json("customers", "show", str(customer))["media"]
    assert [item["id"] for item in media] == [voice, contract, photo]
    kept = media[2]
    assert (kept["kind"], kept["status"], kept["size"], kept["content_type"], kept["filename"]) == (
        "image", "stored", len(PHOTO), "image/jpeg", "photo.jpg")
    assert kept["sha256"] == hashlib.sha256(PHOTO).hexdigest() and kept["where"] == f"local {tmp_path / 'media'}"
    assert (media[1]["status"], media[1]["last_error"], media[1]["where"]) == ("failed", EXPIRED, None)
    assert (media[0]["status"], media[0]["key"], media[0]["size"]) == ("pending", None, None)


def test_customers_show_without_media_says_so(scrm: Scrm) -> None:
    customer = scrm.customer("李四")
    assert "media: none received" in scrm("customers", "show", str(customer)).stdout
    assert scrm.json("customers", "show", str(customer))["media"] == []


def test_customers_show_lists_at_most_20(scrm: Scrm) -> None:
    customer = scrm.customer("王五")
    ids = [scrm.receive(customer, "image") for _ in range(21)]
    assert [item["id"] for item in scrm.json("customers", "show", str(customer))["media"]] == ids[:0:-1]
    assert f"the last 20; all: scrm media list --customer {customer}" in scrm("customers", "show", str(customer)).stdout


def test_media_of_a_merged_customer_shows_on_the_card_they_became(scrm: Scrm) -> None:
    keep, absorb = scrm.customer("张三"), scrm.customer("张三 (OA)")
    sent = scrm.receive(absorb, "image", "before.jpg", data=PHOTO, content_type="image/jpeg")

    async def merge(session: AsyncSession) -> None:
        await merge_customers(session, await session.get_one(Customer, keep), await session.get_one(Customer, absorb))

    scrm.run(merge)
    assert [item["id"] for item in scrm.json("customers", "show", str(keep))["media"]] == [sent]
    assert [item["id"] for item in scrm.json("media", "list", "--customer", str(keep))] == [sent]


# ---------------------------------------------------------------- media get


def test_get_writes_the_stored_bytes(scrm: Scrm, workdir: Path) -> None:
    photo = scrm.receive(scrm.customer("张三"), "image", "photo.jpg", data=PHOTO, content_type="image/jpeg")
    result = scrm("media", "get", str(photo), "-o", "copy.jpg")
    assert (workdir / "copy.jpg").read_bytes() == PHOTO
    assert result.stdout.startswith("wrote copy.jpg (2.0 KB, image/jpeg, a image customer")


def test_get_names_the_file_by_its_last_component_only(scrm: Scrm, workdir: Path) -> None:
    customer = scrm.customer("张三")
    sneaky = scrm.receive(customer, "file", "..\\../x/../../escape.txt", data=b"hello", content_type="text/plain")
    nameless = scrm.receive(customer, "voice", data=b"#!AMR\n", content_type="audio/amr")
    scrm("media", "get", str(sneaky))
    scrm("media", "get", str(nameless))
    written = sorted(str(path.relative_to(workdir.parent)) for path in workdir.parent.rglob("*") if path.is_file())
    assert written == [f"work/{nameless}.amr", "work/escape.txt"]
    assert (workdir / "escape.txt").read_bytes() == b"hello"


def test_get_refuses_to_overwrite_without_force(scrm: Scrm, workdir: Path) -> None:
    photo = scrm.receive(scrm.customer("张三"), "image", "photo.jpg", data=PHOTO, content_type="image/jpeg")
    (workdir / "photo.jpg").write_bytes(b"mine")
    refused = scrm("media", "get", str(photo), ok=False)
    assert "photo.jpg exists: add --force to overwrite it" in refused.output
    assert (workdir / "photo.jpg").read_bytes() == b"mine"
    scrm("media", "get", str(photo), "--force")
    assert (workdir / "photo.jpg").read_bytes() == PHOTO


def test_get_to_standard_output(scrm: Scrm) -> None:
    photo = scrm.receive(scrm.customer("张三"), "image", data=PHOTO, content_type="image/jpeg")
    result = scrm("media", "get", str(photo), "-o", "-")
    assert result.stdout_bytes == PHOTO and "wrote standard output" in result.stderr


def test_get_of_an_unknown_id_is_a_clear_error(scrm: Scrm, workdir: Path) -> None:
    result = scrm("media", "get", "999", ok=False)
    assert "no media item 999 (list them with: scrm media list)" in result.output
    assert list(workdir.iterdir()) == []


def test_get_of_a_failed_item_gives_its_reason(scrm: Scrm, workdir: Path) -> None:
    customer = scrm.customer("张三")
    _, contract, voice = three_items(scrm, customer)
    assert f"media item {contract} was not kept: {EXPIRED}" in scrm("media", "get", str(contract), ok=False).output
    assert f"media item {voice} is not stored yet (attempt 1: {BUSY})" in scrm("media", "get", str(voice),
                                                                             ok=False).output
    assert list(workdir.iterdir()) == []


def test_get_when_the_store_lost_or_damaged_the_item(scrm: Scrm, workdir: Path) -> None:
    photo = scrm.receive(scrm.customer("张三"), "image", data=PHOTO, content_type="image/jpeg")
    [line] = scrm.json("media", "list")
    stored = scrm.media.root.joinpath(*line["key"].split("/"))
    stored.write_bytes(b"bit rot")
    assert "the stored copy is damaged" in scrm("media", "get", str(photo), ok=False).output
    stored.unlink()
    assert "has no such item" in scrm("media", "get", str(photo), ok=False).output
    assert list(workdir.iterdir()) == []


def test_get_when_the_store_is_unreachable(scrm: Scrm, workdir: Path) -> None:
    photo = scrm.receive(scrm.customer("张三"), "image", data=PHOTO, content_type="image/jpeg")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    s3 = {"SCRM__MEDIA__BACKEND": "s3", "SCRM__MEDIA__S3__BUCKET": "media",
          "SCRM__MEDIA__S3__ENDPOINT_URL": f"http://127.0.0.1:{port}",
          "SCRM__MEDIA__S3__ACCESS_KEY_ID": "testing", "SCRM__MEDIA__S3__SECRET_ACCESS_KEY": "testing"}
    result = scrm("media", "get", str(photo), ok=False, env=s3)
    assert f"media store s3 media at http://127.0.0.1:{port} cannot be used" in result.output
    assert list(workdir.iterdir()) == []


# ---------------------------------------------------------------- media list


def test_list_filters_and_json(scrm: Scrm) -> None:
    zhang, li = scrm.customer("张三"), scrm.customer("李四")
    photo, contract, voice = three_items(scrm, zhang)
    other = scrm.receive(li, "video", "clip.mp4", data=b"\x00\x00\x00\x18ftypmp42", content_type="video/mp4")
    assert [item["id"] for item in scrm.json("media", "list")] == [other, voice, contract, photo]
    assert [item["id"] for item in scrm.json("media", "list", "--customer", str(zhang))] == [voice, contract, photo]
    assert [item["id"] for item in scrm.json("media", "list", "--status", "failed")] == [contract]
    assert [item["id"] for item in scrm.json("media", "list", "--kind", "video")] == [other]
    assert [item["id"] for item in scrm.json("media", "list", "--limit", "2")] == [other, voice]
    text = scrm("media", "list").stdout
    assert text.splitlines()[1].split() == ["id", "customer", "kind", "size", "received", "status", "name", "stored",
                                            "as", "/", "why", "not"]
    assert f"#{other}" in text and "clip.mp4" in text and EXPIRED in text


def test_list_of_nothing(scrm: Scrm) -> None:
    assert scrm("media", "list").stdout.strip() == "no media received yet"
    assert scrm("media", "list", "--status", "stored").stdout.strip() == "no media match"
    assert scrm.json("media", "list") == []
