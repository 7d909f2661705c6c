"""`scrm report messages` and its HTML section, on SQLite and PostgreSQL, over timelines as the worker writes them:
`inbound.message` with `content` (core.content's tagged dict) when the message was not text."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from core.content import Link, Location, Media, Other, content_for_timeline
from crm_store.models import TimelineEvent, utcnow
from tests.admin_cli.test_growth_commands import Scrm
from tests.conftest import Backend

NOW = utcnow().replace(microsecond=0)
PHOTO = content_for_timeline(Media("image", "mid_1", "photo.jpg"))
VOICE = content_for_timeline(Media("voice", "mid_2", format="amr"))
PLACE = content_for_timeline(Location(31.23, 121.47, "外滩"))
LINK = content_for_timeline(Link("春茶", "上新", "https://shop.example.com/tea"))
ODD = content_for_timeline(Other("sticker", {"msgtype": "sticker"}, "not read by this version"))


@pytest.fixture
def scrm(backend: Backend, clean_env: None) -> Scrm:
    return Scrm(backend.store_url)


def message(content: dict[str, Any] | None = None, days_ago: float = 0) -> tuple[float, str, dict[str, Any]]:
    data = {"channel": "kf"} | ({"text": "在吗"} if content is None else {"content": content})
    return days_ago, "inbound.message", data


def timelines(scrm: Scrm) -> None:
    """Two customers: text ×4, image ×3 (from both), voice, location, link and an unknown type in the last
    hour; an image of 40 days ago; a media.stored event, which is not a message."""
    ids = scrm.customers("甲", "乙")
    first = [message(), message(), message(), message(PHOTO), message(PHOTO), message(VOICE), message(PLACE),
             message(LINK), message(ODD), message(PHOTO, days_ago=40), (0, "media.stored", {"content": PHOTO})]
    second = [message(), message(PHOTO)]

    async def work(session: AsyncSession) -> None:
        for customer_id, events in zip(ids, (first, second), strict=True):
            session.add_all(TimelineEvent(customer_id=customer_id, kind=kind, data=data,
                                          created_at=NOW - timedelta(days=ago, minutes=5))
                            for ago, kind, data in events)

    scrm.run(work)


def test_messages_are_counted_by_kind(scrm: Scrm) -> None:
    timelines(scrm)
    report = scrm.json("report", "messages", "--since", "30d")
    assert report["messages"] == 11
    assert [(line["kind"], line["messages"], line["customers"]) for line in report["by_kind"]] == [
        ("text", 4, 2), ("image", 3, 2), ("link", 1, 1), ("location", 1, 1), ("other", 1, 1), ("voice", 1, 1)]
    assert report["by_kind"][0]["share"] == round(4 / 11, 4)
    everything = scrm.json("report", "messages")
    assert everything["messages"] == 12 and everything["by_kind"][:2] == [  # a tie: by name
        {"kind": "image", "messages": 4, "customers": 2, "share": 0.3333},
        {"kind": "text", "messages": 4, "customers": 2, "share": 0.3333}]
    text = scrm("report", "messages", "--since", "30d").stdout
    assert "messages: 11   kinds: 6" in text and re.search(r"text\s+4\s+2\s+36\.4%", text)


def test_the_window_bounds_the_count(scrm: Scrm) -> None:
    timelines(scrm)
    old = scrm.json("report", "messages", "--until", "30d")
    assert (old["messages"], [line["kind"] for line in old["by_kind"]]) == (1, ["image"])


def test_no_messages(scrm: Scrm) -> None:
    assert scrm.json("report", "messages") == {"messages": 0, "by_kind": []}
    assert "messages: 0   kinds: 0" in scrm("report", "messages").stdout


def test_html_has_the_messages_section(scrm: Scrm, tmp_path: Path) -> None:
    timelines(scrm)
    path = tmp_path / "report.html"
    scrm("report", "html", "-o", str(path), "--since", "30d")
    page = path.read_text(encoding="utf-8")
    assert "<h2>Inbound messages by kind</h2>" in page
    assert "<td>image</td><td>3</td><td>2</td><td>27.3%</td>" in page
