"""The integration API through the real app: keys and scopes, errors, customers, idempotent orders, enrolments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bot.api import API_LIMITS
from crm_store import referrals
from crm_store.api_keys import create_key, revoke_key
from crm_store.api_models import Order
from crm_store.customers import resolve_customer
from crm_store.models import Customer, StageChange
from crm_store.rewards import ledger
from tests.bot.conftest import Bot
from tests.bot.test_nurture import published

API = "/api/v1"


async def key_for(bot: Bot, scope: str = "write", name: str = "shop") -> dict[str, str]:
    async with bot.runtime.sessions.begin() as session:
        made = await create_key(session, name, scope)
    return {"Authorization": f"Bearer {made.key}"}


async def customer(bot: Bot, external_id: str, name: str = "") -> Customer:
    async with bot.runtime.sessions.begin() as session:
        found = await resolve_customer(session, "wecom", external_id)
        found.display_name = name or external_id
    return found


async def call(bot: Bot, method: str, path: str, headers: dict[str, str], body: Any = None,
               **options: Any) -> tuple[int, Any]:
    if body is not None:
        options["json"] = body
    response = await bot.client.request(method, f"{API}{path}", headers=headers, **options)
    return response.status, await response.json()


def order(order_id: str, external_userid: str, amount: Any = "199.00", **more: Any) -> dict[str, Any]:
    return {"order_id": order_id, "customer": {"external_userid": external_userid}, "amount": amount,
            "currency": "CNY", **more}


async def test_the_openapi_document_is_served_without_a_key(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot()
    response = await bot.client.get(f"{API}/openapi.json")
    document = await response.json()
    assert response.status == 200 and document["openapi"].startswith("3.1")
    assert {"/customers", "/orders", "/campaigns", "/sequences/{name}/enrolments"} <= set(document["paths"])
    assert "OrderIn" in document["components"]["schemas"]


async def test_missing_wrong_and_revoked_keys_are_401_and_a_read_key_on_a_write_route_is_403(start_bot
                                                                                              ) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot()
    for headers in ({}, {"Authorization": "Bearer scrm_nope_nope"}, {"Authorization": "Basic abc"}):
        status, body = await call(bot, "GET", "/customers", headers)
        assert status == 401 and body["error"]["code"] == "unauthorized"
    read = await key_for(bot, "read", "bi")
    assert (await call(bot, "GET", "/customers", read))[0] == 200
    status, body = await call(bot, "POST", "/orders", read, order("A1", "wm1"))
    assert status == 403 and body["error"]["code"] == "forbidden"
    async with bot.runtime.sessions.begin() as session:
        await revoke_key(session, 1)
    status, body = await call(bot, "GET", "/customers", read)
    assert status == 401 and body["error"]["message"] == "unknown or revoked API key"


async def test_requests_over_the_rate_limit_of_a_key_get_429_with_retry_after(start_bot
                                                                              ) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot()
    bot.client.app[API_LIMITS].requests = 3
    first, second = await key_for(bot, "read", "a"), await key_for(bot, "read", "b")
    statuses = [(await bot.client.get(f"{API}/campaigns", headers=first)).status for _ in range(3)]
    over = await bot.client.get(f"{API}/campaigns", headers=first)
    assert statuses == [200, 200, 200] and over.status == 429
    assert int(over.headers["Retry-After"]) >= 1 and (await over.json())["error"]["code"] == "rate_limited"
    assert (await bot.client.get(f"{API}/campaigns", headers=second)).status == 200  # per key


async def test_customers_are_found_page_by_page_and_read_with_their_timeline(start_bot
                                                                             ) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot()
    headers = await key_for(bot)
    for index in range(5):
        await customer(bot, f"wm_page_{index}", f"客户{index}")
    status, page = await call(bot, "GET", "/customers?limit=2", headers)
    assert status == 200 and len(page["items"]) == 2 and page["next_offset"] == 2
    seen = [item["id"] for item in page["items"]]
    while page["next_offset"] is not None:
        page = (await call(bot, "GET", f"/customers?limit=2&offset={page['next_offset']}", headers))[1]
        seen += [item["id"] for item in page["items"]]
    assert len(seen) == len(set(seen)) == 5
    target = seen[0]
    status, result = await call(bot, "POST", f"/customers/{target}/tags", headers, {"add": ["高意向", "VIP"]})
    assert status == 200 and result["added"] == ["高意向", "VIP"]
    status, found = await call(bot, "GET", "/customers?tags=高意向,VIP&stage=潜在", headers)
    assert [item["id"] for item in found["items"]] == [target]
    status, moved = await call(bot, "PUT", f"/customers/{target}/stage", headers, {"stage": "interested"})
    assert status == 200 and moved["changed"] and moved["stage_label"] == "意向"
    status, card = await call(bot, "GET", f"/customers/{target}", headers)
    assert status == 200 and card["stage"] == "interested" and sorted(card["tags"]) == ["VIP", "高意向"]
    assert {"tag.added", "stage.changed"} <= {entry["kind"] for entry in card["timeline"]}
    status, refused = await call(bot, "PUT", f"/customers/{target}/stage", headers, {"stage": "loyal"})
    assert status == 409 and refused["error"]["code"] == "stage_not_allowed"
    status, unknown = await call(bot, "PUT", f"/customers/{target}/stage", headers, {"stage": "vip"})
    assert status == 422 and unknown["error"]["code"] == "unknown_stage"
    for path in ("/customers/999999", "/customers/abc", "/customers/99999999999999999999999"):
        assert (await call(bot, "GET", path, headers))[0] == 404


async def test_bad_requests_get_a_clear_4xx_and_write_nothing(start_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot()
    headers = await key_for(bot)
    await customer(bot, "wm_bad")
    raw = {**headers, "Content-Type": "application/json"}
    cases: list[tuple[int, str, dict[str, Any]]] = [
        (400, "bad_json", {"data": b'{"order_id": "A1", '}),
        (400, "bad_json", {"data": b'{"amount": NaN}'}),
        (413, "too_large", {"data": json.dumps({**order("A1", "wm_bad"), "pad": "x" * 70_000})}),
        (415, "unsupported_media_type", {"data": b"order_id=A1", "headers": {**headers,
                                                                            "Content-Type": "text/plain"}}),
        (422, "invalid", {"data": json.dumps({**order("A1", "wm_bad"), "discount": 5})}),
        (422, "invalid", {"data": json.dumps(order("A1", "wm_bad", amount="-1"))}),
        (422, "invalid", {"data": json.dumps(order("A1", "wm_bad", amount="1.005"))}),
        (422, "invalid", {"data": json.dumps(order("A1\u0000", "wm_bad"))}),
        (422, "invalid", {"data": json.dumps(order("1; DROP TABLE orders;--", "wm_bad"))}),
        (422, "invalid", {"data": json.dumps({**order("A1", "wm_bad"), "customer": {"id": 1, "openid": "o"}})}),
        (422, "invalid", {"data": json.dumps([order("A1", "wm_bad")])}),
        (404, "customer_not_found", {"data": json.dumps(order("A1", "wm_nobody"))}),
    ]
    for status, code, options in cases:
        response = await bot.client.post(f"{API}/orders", **{"headers": raw, **options})
        body = await response.json()
        assert (response.status, body["error"]["code"]) == (status, code), options
    injection = "' OR 1=1; DROP TABLE customers; --"
    status, page = await call(bot, "GET", "/customers", headers, params={"q": injection})
    assert status == 200 and page["items"] == []
    status, body = await call(bot, "GET", "/customers", headers, params={"sort": "id; DROP TABLE x", "colour": "red"})
    assert status == 422 and body["error"]["details"]
    async with bot.runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Order)) == 0
        assert await session.scalar(select(func.count()).select_from(Customer)) == 1


async def test_an_order_is_idempotent_by_its_id_and_a_reused_id_with_another_body_is_409(start_bot
                                                                                         ) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot()
    headers = await key_for(bot)
    buyer = await customer(bot, "wm_buyer")
    status, first = await call(bot, "POST", "/orders", headers, order("SO-1", "wm_buyer", amount=199.5))
    assert status == 201 and first["purchase"] == "first" and first["stage"] == "customer" and first["stage_changed"]
    status, again = await call(bot, "POST", "/orders", headers, order("SO-1", "wm_buyer", amount="199.50"))
    assert status == 200 and again == first
    status, clash = await call(bot, "POST", "/orders", headers, order("SO-1", "wm_buyer", amount="10"))
    assert status == 409 and clash["error"]["code"] == "order_conflict"
    erp = await key_for(bot, "write", "erp")  # another source may use the same order id
    status, repeat = await call(bot, "POST", "/orders", erp, {**order("SO-1", "wm_buyer"), "customer": {"id": buyer.id}})
    assert status == 201 and repeat["purchase"] == "repeat" and repeat["stage"] == "repeat"
    async with bot.runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Order)) == 2
        moves = (await session.scalars(select(StageChange.to_stage).where(StageChange.customer_id == buyer.id))).all()
    assert list(moves) == ["customer", "repeat"]


async def test_a_referral_reward_is_granted_once_when_the_invited_friends_order_arrives_twice(start_bot
                                                                                              ) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot()
    headers = await key_for(bot)
    inviter = await customer(bot, "wm_inviter", "小王")
    friend = await customer(bot, "wm_friend", "小李")
    async with bot.runtime.sessions.begin() as session:
        friend_row = await session.get(Customer, friend.id)
        assert friend_row is not None
        await referrals.attribute(session, friend_row, inviter.id, "inv_TEST", "kf", 3600)
    body = order("SO-9", "wm_friend")
    statuses = [(await call(bot, "POST", "/orders", headers, body))[0] for _ in range(2)]
    assert statuses == [201, 200]
    async with bot.runtime.sessions() as session:
        rewards = [entry.rule_id for entry in await ledger(session, inviter.id)]
    assert rewards == ["friend_bought"]


async def test_campaigns_and_sequences_are_listed_and_a_customer_is_enrolled_once(start_bot, tmp_path: Path
                                                                                  ) -> None:  # type: ignore[no-untyped-def]
    bot = await start_bot()
    headers = await key_for(bot)
    target = await customer(bot, "wm_enrol")
    await published(bot, tmp_path)
    status, campaigns = await call(bot, "GET", "/campaigns", headers)
    assert status == 200 and campaigns["items"] == [] and campaigns["next_offset"] is None
    status, sequences = await call(bot, "GET", "/sequences", headers)
    assert status == 200 and [item["name"] for item in sequences["items"]] == ["new_lead"]
    status, made = await call(bot, "POST", "/sequences/new_lead/enrolments", headers, {"customer_id": target.id})
    assert status == 201 and made["sequence"] == "new_lead" and made["customer_id"] == target.id
    status, again = await call(bot, "POST", "/sequences/new_lead/enrolments", headers, {"customer_id": target.id})
    assert status == 409 and again["error"]["code"] == "already_enrolled"
    status, missing = await call(bot, "POST", "/sequences/nope/enrolments", headers, {"customer_id": target.id})
    assert status == 404
