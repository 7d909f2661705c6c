"""What the quota ledger says of one customer, for an admin: what may still be sent on each channel, and
how many notifications wait for the customer's next message.

A channel is shown when the customer has an allowance there, or when it is where they last chatted
(where notifications go): a customer who has done nothing there since the ledger began has none
left, and notifications to them are held, which is worth seeing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from sqlalchemy.ext.asyncio import AsyncSession

from core.allowance import KF_WRITABLE, QUOTA_CHANNELS, Allowance, QuotaChannel
from crm_store.allowances import held_count, load_many
from crm_store.models import Customer

# kf/service_state states (developer.work.weixin.qq.com/document/path/94669), as the card says them.
KF_SESSIONS = {0: "new", 1: "with the bot", 2: "queued for a rep", 3: "with a rep", 4: "ended"}


@dataclass(frozen=True)
class ChannelQuota:
    channel: str  # kf | oa
    left: int  # messages that may go now
    allowed: int  # what the grants still running allow in all (0: none is running)
    resets_at: datetime | None  # when what is left runs out by time (None: nothing is left)
    earned_by: str | None  # the customer's latest action that earned a grant: message, menu_click, subscribe, scan
    earned_at: datetime | None
    session: str | None  # kf: the session's state (KF_SESSIONS); None on the OA or when the bot heard of none

    @property
    def session_blocks(self) -> bool:
        """A kf session the bot may not write in (a rep serves it, it waits for one, it ended)."""
        return self.session is not None and self.session not in (KF_SESSIONS[state] for state in KF_WRITABLE)


@dataclass(frozen=True)
class QuotaCard:
    channels: tuple[ChannelQuota, ...]  # kf before oa
    held_messages: int  # notifications waiting for the customer's next message


async def quota_card(session: AsyncSession, customer_id: int, now: float | None = None) -> QuotaCard:
    """The customer's allowance on each channel it applies to, and the messages held for them."""
    at = time.time() if now is None else now
    ledger = {channel: allowance for (_, channel), allowance in (await load_many(session, [customer_id])).items()}
    customer = await session.get(Customer, customer_id)
    reached = str((customer.reach or {}).get("channel", "")) if customer is not None else ""
    if reached in QUOTA_CHANNELS:
        ledger.setdefault(reached, Allowance(cast(QuotaChannel, reached)))
    channels = tuple(channel_quota(ledger[channel], at) for channel in sorted(ledger))
    return QuotaCard(channels, await held_count(session, customer_id))


def channel_quota(allowance: Allowance, now: float) -> ChannelQuota:
    """One channel's allowance at `now`, in words and datetimes."""
    grants = [grant for grant in (allowance.event, allowance.message) if grant is not None]
    running = [grant for grant in grants if now < grant.until]
    latest = max(running or grants, key=lambda grant: grant.at, default=None)
    resets = allowance.resets_at(now)
    return ChannelQuota(
        channel=allowance.channel,
        left=allowance.left(now),
        allowed=sum(grant.allowed for grant in running),
        resets_at=_utc(resets),
        earned_by=latest.action if latest else None,
        earned_at=_utc(latest.at) if latest else None,
        session=None if allowance.session is None else KF_SESSIONS.get(allowance.session, str(allowance.session)),
    )


def _utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)

