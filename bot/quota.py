"""Budgeting sends against the platform's quota: the ledger of one unit of work, and a turn's replies fitted to it.

A turn's replies come first. Consecutive texts are merged into one message (up to the
platform's length limit) before they are counted (an image, a file, a voice note or a video is a
message of its own, never merged, and counts as one like any other); a turn that still has more messages than
its allowance sends what matters most (answers before suggestions: menus and cards) and
records what it held back. Everything else (another customer's group filling, a friend
arriving) uses what is left, or is held for the customer's next message.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy.ext.asyncio import AsyncSession

from core import metrics
from core.allowance import MENU_HEAD_LIMIT_BYTES, QUOTA_CHANNELS, TEXT_LIMIT_BYTES, Allowance
from core.events import Reply
from crm_store import allowances

# Outbox kinds that spend the customer's allowance (send_msg_on_event and welcome messages spend their code).
SPENDS_ALLOWANCE = frozenset({"kf.send_msg", "oa.custom_send"})


@dataclass
class Ledger:
    """The allowances one transaction reads and changes: each loaded once (locked), saved once at the end."""

    session: AsyncSession
    now: float = field(default_factory=time.time)
    _loaded: dict[tuple[int, str], Allowance] = field(default_factory=dict)
    _changed: set[tuple[int, str]] = field(default_factory=set)

    async def get(self, customer_id: int, channel: str) -> Allowance:
        key = (customer_id, channel)
        if key not in self._loaded:
            self._loaded[key] = await allowances.load(self.session, customer_id, channel)
        return self._loaded[key]

    def put(self, customer_id: int, allowance: Allowance) -> None:
        key = (customer_id, allowance.channel)
        if self._loaded.get(key) != allowance:
            self._loaded[key] = allowance
            self._changed.add(key)

    async def left(self, customer_id: int, channel: str) -> int | None:
        """Messages that may go to the customer on `channel` now; None where no quota applies."""
        if channel not in QUOTA_CHANNELS:
            return None
        return (await self.get(customer_id, channel)).left(self.now)

    async def spend(self, customer_id: int, channel: str, kind: str, count: int = 1) -> None:
        if kind in SPENDS_ALLOWANCE and channel in QUOTA_CHANNELS:
            self.put(customer_id, (await self.get(customer_id, channel)).spent(count, self.now))

    async def flush(self) -> None:
        """Write the changed allowances (a statement per channel)."""
        by_channel: dict[str, dict[int, Allowance]] = {}
        for cid, channel in self._changed:
            by_channel.setdefault(channel, {})[cid] = self._loaded[(cid, channel)]
        for group in by_channel.values():
            await allowances.save_many(self.session, group)
        self._changed.clear()


def merged(replies: Sequence[Reply], channel: str) -> list[Reply]:
    """The turn's replies as the messages that carry them: consecutive texts joined (and on kf a text
    into the menu that follows it) while each message stays within the platform's limits. On the OA a
    menu is text anyway (numbered choices), so it joins the texts around it."""
    messages: list[Reply] = []
    for reply in (as_oa_text(r) for r in replies) if channel == "oa" else replies:
        last = messages[-1] if messages else None
        joined = None if last is None else _join(last, reply)
        if joined is not None:
            messages[-1] = joined
        else:
            messages.append(reply)
    return messages


def within(messages: list[Reply], budget: int | None) -> tuple[list[Reply], list[Reply]]:
    """The messages to send (in their order) and those held back: answers (texts) before suggestions."""
    if budget is None or len(messages) <= budget:
        return messages, []
    ranked = sorted(range(len(messages)), key=lambda index: (_is_suggestion(messages[index]), index))
    keep = set(ranked[:max(budget, 0)])
    return ([m for i, m in enumerate(messages) if i in keep], [m for i, m in enumerate(messages) if i not in keep])


def held_back(messages: list[Reply], reason: str) -> dict[str, object]:
    """The timeline note of what a turn could not send (media by its kind and source)."""
    metrics.QUOTA_DECISIONS.labels("reply", "held_back").inc(len(messages))
    texts = [m.text[:200] if m.media is None else f"[{m.media.kind}] {m.media.source}"[:200] for m in messages]
    return {"reason": reason, "count": len(messages), "texts": texts}


def _is_suggestion(reply: Reply) -> bool:
    return bool(reply.menu or reply.link or reply.miniprogram)


def _plain(reply: Reply) -> bool:
    """Text that may be joined to the text around it: not a menu or card, and not media (an image is not text)."""
    return not _is_suggestion(reply) and reply.media is None


def _join(first: Reply, second: Reply) -> Reply | None:
    if not _plain(first):
        return None
    joined: Reply | None = None
    if _plain(second):
        text = f"{first.text}\n\n{second.text}"
        joined = Reply(text) if _fits(text, TEXT_LIMIT_BYTES) else None
    elif second.menu and not (second.link or second.miniprogram or second.media):  # kf: the text leads the menu
        head = f"{first.text}\n\n{second.menu_head or second.text}"
        joined = replace(second, menu_head=head) if _fits(head, MENU_HEAD_LIMIT_BYTES) else None
    if joined is not None:
        metrics.QUOTA_DECISIONS.labels("reply", "merged").inc()
    return joined


def _fits(text: str, limit: int) -> bool:
    return len(text.encode()) <= limit


def as_oa_text(reply: Reply) -> Reply:
    """The OA has no kf menus: the choices become numbered lines the customer can type back."""
    if not reply.menu or reply.link or reply.miniprogram:
        return reply
    choices = "\n".join(f"{index}. {item.text}" for index, item in enumerate(reply.menu, start=1))
    return Reply(f"{reply.menu_head or reply.text}\n{choices}")
