"""Keep each contact way's rota to the reps still under their daily add cap.

A scheduled job (it takes the session factory and the API client, nothing pickled):
for every active contact-way channel with a cap, the reps under the cap today (the
brand's date) are what WeCom should offer. When that differs from the stored rota,
WeCom is told first (`update_contact_way`) and the rota saved after, so the store never
claims a rota WeCom does not have. When every rep is capped, the one with the fewest
adds today stays on (WeCom refuses an empty list) and a warning says so. One channel's
API error is logged and the others go on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channel_api import update_rota
from bot.wechat_api import ApiError, WeChatApi
from crm_store.channels import brand_day, rep_adds, reps_under_cap
from crm_store.growth_models import EntryChannel

log = logging.getLogger("scrm.channels")


@dataclass(frozen=True)
class RotaChange:
    channel_id: int
    code: str
    config_id: str
    rota: list[str]


async def refresh_rotas(
    sessions: async_sessionmaker[AsyncSession], api: WeChatApi, timezone: str, now: datetime | None = None
) -> int:
    """Bring every capped contact way's rota up to date; returns how many channels changed."""
    day = brand_day(timezone, now)
    async with sessions() as session:
        changes = await _changes(session, day)
    changed = 0
    for change in changes:
        try:
            await update_rota(api, change.config_id, change.rota)
        except ApiError as exc:
            log.error("channels.rota.failed code=%s config_id=%s error=%s", change.code, change.config_id, exc)
            continue
        async with sessions() as session, session.begin():
            await session.execute(
                update(EntryChannel).where(EntryChannel.id == change.channel_id).values(rota=change.rota)
            )
        changed += 1
        log.info("channels.rota.changed code=%s day=%s rota=%s", change.code, day, ",".join(change.rota))
    return changed


async def _changes(session: AsyncSession, day: str) -> list[RotaChange]:
    """The channels whose rota should differ from the stored one, with the rota they should have."""
    channels = await session.scalars(
        select(EntryChannel)
        .where(EntryChannel.active.is_(True), EntryChannel.kind == "contact_way", EntryChannel.daily_cap > 0)
        .order_by(EntryChannel.id)
    )
    changes = []
    for channel in channels.all():
        if not channel.reps or not channel.config_id:
            continue
        rota = await _rota(session, channel, day)
        if rota != list(channel.rota):
            changes.append(RotaChange(channel.id, channel.code, channel.config_id, rota))
    return changes


async def _rota(session: AsyncSession, channel: EntryChannel, day: str) -> list[str]:
    under = await reps_under_cap(session, channel, day)
    if under:
        return under
    adds = await rep_adds(session, channel, day)
    fewest = min(channel.reps, key=lambda rep: adds.get(rep, 0))  # the first of equals, in rota order
    log.warning(
        "channels.rota.all_capped code=%s day=%s cap=%s kept=%s", channel.code, day, channel.daily_cap, fewest
    )
    return [fewest]
