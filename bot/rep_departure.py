"""A rep leaves the company (离职继承): their customers and open handoffs move to other reps.

WeCom keeps a departed member's customers as "unassigned" (`externalcontact/get_unassigned_list`)
until they are handed to someone (`externalcontact/resigned/transfer_customer`, at most 100 per
call). The store is changed in one transaction: the rep is marked as left (never routed to
again; their history stays), each open handoff is offered to another rep or queued, each
customer gets a new owner with an `owner.transferred` entry on their timeline, and the
transfer calls are queued in the outbox, so a crash cannot lose or repeat them.

Their customer groups go first (bot.rep_departure_groups: WeCom moves a group at once or
refuses it, so those calls are made there, one transaction per call): should WeCom stop
answering half-way, the rep is still active and the same departure run again finishes the job,
leaving the groups already moved alone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.delivery import OutboundCall, queue_call
from bot.effects_writer import write_side_effect
from bot.rep_departure_groups import GroupFailed, GroupMoved, GroupsInterrupted, move_groups
from bot.runtime import build_apis
from bot.settings import Settings
from bot.wechat_api import WeChatApi
from core.shared_state import open_shared_state
from crm_store.customers import record
from crm_store.db import create_engine, session_factory
from crm_store.handoff_models import Rep
from crm_store.handoffs import handoffs_of_rep
from crm_store.lifecycle import Lifecycle
from crm_store.models import Customer, Identity, Lane, utcnow
from crm_store.reps import LOADED, mark_left
from flows.handoff_desk import HandoffDesk

TRANSFER_BATCH = 100  # WeCom's limit per transfer_customer call
TRANSFER_KIND = "contacts.transfer_resigned"
UNASSIGNED_PAGE = 1000
NO_HEIRS = "no active rep is left to take the customers over: add one first (scrm reps add)"


class DepartureError(ValueError):
    """The departure cannot be done as asked (unknown rep, no one to take over…)."""


@dataclass(frozen=True)
class Departure:
    userid: str
    takeovers: dict[str, int]  # new owner -> customers moved to them
    handoffs_moved: int  # offered to another rep
    handoffs_queued: int  # nobody on duty: queued until someone is
    customers_transferred: int  # WeCom transfers queued (known customers and WeCom's unassigned list)
    unassigned_seen: int  # the rep's customers WeCom listed as unassigned
    groups_moved: tuple[GroupMoved, ...] = ()  # customer groups now owned by an heir
    groups_failed: tuple[GroupFailed, ...] = ()  # groups WeCom would not move, and why


async def depart(settings: Settings, userid: str, takeover: str | None) -> Departure:
    """Mark `userid` as left and move everything they had; `takeover` gets all customers, else spread."""
    engine = create_engine(settings.store.url)
    state = open_shared_state(settings.redis.url or None)
    try:
        async with aiohttp.ClientSession() as http:
            api = build_apis(settings, http, state)["wecom.contacts"]
            desk = HandoffDesk(settings.handoff, Lifecycle(settings.lifecycle))
            return await depart_with(session_factory(engine), api, desk, userid, takeover, settings.wecom.app.agent_id)
    finally:
        await state.close()
        await engine.dispose()


async def depart_with(sessions: async_sessionmaker[AsyncSession], contacts_api: WeChatApi, desk: HandoffDesk,
                      userid: str, takeover: str | None, agent_id: int = 0) -> Departure:
    async with sessions() as session:
        await _check(session, userid, takeover)
        heirs = await _heirs(session, takeover, userid)
    if not heirs:
        raise DepartureError(NO_HEIRS)
    unassigned = await unassigned_of(contacts_api, userid)
    try:
        groups = await move_groups(sessions, contacts_api, userid, heirs)
    except GroupsInterrupted as exc:
        raise DepartureError(
            f"WeCom stopped the group transfers ({exc.cause}): {len(exc.done.moved)} group(s) moved and recorded, "
            f"{userid} and their customers not changed yet; run the same departure again to finish") from exc
    async with sessions() as session, session.begin():
        departure = await _move(session, desk, userid, takeover, unassigned, agent_id)
    return replace(departure, groups_moved=groups.moved, groups_failed=groups.failed)


async def unassigned_of(api: WeChatApi, userid: str) -> list[str]:
    """The departed rep's customers in WeCom's unassigned list (every page)."""
    found: list[str] = []
    cursor = ""
    while True:
        page = await api.post("externalcontact/get_unassigned_list", {"cursor": cursor, "page_size": UNASSIGNED_PAGE})
        found.extend(str(item.get("external_userid", "")) for item in page.get("info") or []
                     if item.get("handover_userid") == userid and item.get("external_userid"))
        cursor = str(page.get("next_cursor") or "")
        if page.get("is_last", True) or not cursor:
            return list(dict.fromkeys(found))


async def _check(session: AsyncSession, userid: str, takeover: str | None) -> None:
    rep = await session.get(Rep, userid)
    if rep is None or not rep.active:
        raise DepartureError(f"no active rep {userid} (see: scrm reps list --all)")
    if takeover is not None:
        other = await session.get(Rep, takeover)
        if other is None or not other.active or takeover == userid:
            raise DepartureError(f"--to {takeover}: not an active rep other than {userid}")


async def _move(session: AsyncSession, desk: HandoffDesk, userid: str, takeover: str | None,
                unassigned: list[str], agent_id: int) -> Departure:
    now = utcnow()
    open_handoffs = await handoffs_of_rep(session, userid, (*LOADED, "queued"))
    await mark_left(session, userid, now)
    moved = queued = 0
    for handoff in open_handoffs:
        effects = await desk.reassign(session, handoff, userid, now)
        moved, queued = (moved + 1, queued) if handoff.rep_userid else (moved, queued + 1)
        for index, effect in enumerate(effects):
            await write_side_effect(session, f"depart:{userid}:handoff:{handoff.id}#{index}", effect, agent_id)
    heirs = await _heirs(session, takeover, userid)
    if not heirs:
        raise DepartureError(NO_HEIRS)
    owned = list(await session.scalars(select(Customer).where(Customer.owner_userid == userid)))
    external = await _wecom_ids(session, [customer.id for customer in owned])
    known = {external_id for ids in external.values() for external_id in ids}
    takeovers: dict[str, int] = defaultdict(int)
    batches: dict[str, list[str]] = defaultdict(list)
    for index, customer in enumerate(owned):
        heir = heirs[index % len(heirs)]
        customer.owner_userid = heir
        takeovers[heir] += 1
        await record(session, customer.id, "owner.transferred", {"from": userid, "to": heir, "why": "rep_left"})
        batches[heir].extend(external.get(customer.id, []))
    for index, external_id in enumerate(e for e in unassigned if e not in known):
        batches[heirs[index % len(heirs)]].append(external_id)
    transferred = 0
    for heir, ids in batches.items():
        for start in range(0, len(ids), TRANSFER_BATCH):
            chunk = ids[start:start + TRANSFER_BATCH]
            payload: dict[str, Any] = {"handover_userid": userid, "takeover_userid": heir, "external_userid": chunk}
            queue_call(session, f"depart:{userid}:{heir}:{start}", OutboundCall(TRANSFER_KIND, payload),
                       queue_key=f"rep:{userid}", lane=Lane.TRANSACTIONAL)
            transferred += len(chunk)
    await session.flush()
    return Departure(userid, dict(takeovers), moved, queued, transferred, len(unassigned))


async def _heirs(session: AsyncSession, takeover: str | None, leaving: str) -> list[str]:
    """Everyone on duty, or, when nobody is, every active rep: customers must have an owner."""
    if takeover is not None:
        return [takeover]
    active = list(await session.scalars(
        select(Rep).where(Rep.active.is_(True), Rep.userid != leaving).order_by(Rep.userid)))
    return [rep.userid for rep in active if rep.on_duty] or [rep.userid for rep in active]


async def _wecom_ids(session: AsyncSession, customer_ids: list[int]) -> dict[int, list[str]]:
    rows = await session.execute(
        select(Identity.customer_id, Identity.external_id)
        .where(Identity.customer_id.in_(customer_ids), Identity.kind == "wecom")
    )
    found: dict[int, list[str]] = defaultdict(list)
    for customer_id, external_id in rows:
        found[customer_id].append(external_id)
    return found
