"""Where to reach a customer: one frozen type for inbound events, the customer's last chat,
a waiting conversation and every notification."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

Channel = Literal["kf", "contacts", "app", "oa", "api"]  # api: another system (POST /api/v1/events)
CHANNELS: frozenset[str] = frozenset({"kf", "contacts", "app", "oa", "api"})


@dataclass(frozen=True)
class ReplyAddress:
    """The channel, the person's id on it (external_userid, openid, rep userid) and the account that speaks
    (open_kfid, the rep's userid for a contact, the OA's original id)."""

    channel: Channel
    user: str
    account: str = ""

    def to_data(self) -> dict[str, str]:
        """As stored in JSON columns (`customers.reach`, `conversations.reply_to`); the key names are the store's."""
        return {"channel": self.channel, "sender": self.user, "account": self.account}

    @classmethod
    def from_data(cls, data: Mapping[str, Any] | None) -> ReplyAddress | None:
        """The address a stored mapping holds; None when it holds none (never chatted, or an unknown channel)."""
        channel = str((data or {}).get("channel", ""))
        if channel not in CHANNELS or data is None:
            return None
        return cls(cast(Channel, channel), str(data.get("sender", "")), str(data.get("account", "")))
