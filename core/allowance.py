"""How many messages the platform lets the bot send one customer now: the quota ledger's rules.

WeChat lets a business write to a customer only after the customer did something, and only
so often (each rule checked against the official pages, 2026-12):

    微信客服 kf/send_msg          a customer message → 5 messages within 48 h; a new message
                                  starts a new count; only while the session is new or with
                                  the bot (states 0/1)         developer.work.weixin.qq.com/document/path/94677
                                  (an enter_session grants no send_msg, only its welcome code:
                                  one kf/send_msg_on_event within 20 s)
    OA message/custom/send        a message → 5 within 48 h; a menu click, a follow or a scan
                                  → 3 within 1 minute (rule of 2023-06-12; a click does not
                                  earn the message quota)     developers.weixin.qq.com/doc/offiaccount/
                                                              Message_Management/Service_Center_messages.html

So an allowance holds two grants: the one the customer's last message earned and (OA) the
one their last click, follow or scan earned. A send takes from the event grant while it
lasts (it ends first), then from the message grant, as the platform counts. The ledger is
derived from what the customer did and what the bot queued, never guessed from errors; a
refusal from the real API (another system may write to the same customer) corrects it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

QuotaChannel = Literal["kf", "oa"]
QUOTA_CHANNELS: frozenset[str] = frozenset({"kf", "oa"})

MESSAGE_WINDOW_S = 48 * 3600
EVENT_WINDOW_S = 60
# (channel, what the customer did) -> (messages allowed, for how long); the event kinds are InboundEvent's.
EARNED_BY: dict[tuple[str, str], tuple[int, int]] = {
    ("kf", "message"): (5, MESSAGE_WINDOW_S),  # a kf menu click is a customer message too
    ("oa", "message"): (5, MESSAGE_WINDOW_S),
    ("oa", "menu_click"): (3, EVENT_WINDOW_S),
    ("oa", "subscribe"): (3, EVENT_WINDOW_S),
    ("oa", "scan"): (3, EVENT_WINDOW_S),
}
KF_WRITABLE = frozenset({0, 1})  # kf session states in which kf/send_msg may write: new, with the bot
KF_NEW, KF_SERVED, KF_ENDED = 0, 3, 4
TEXT_LIMIT_BYTES = 2048  # kf/send_msg and message/send text.content; the OA is held to the same
MENU_HEAD_LIMIT_BYTES = 1024  # kf msgmenu head_content


@dataclass(frozen=True)
class Grant:
    """`allowed` messages until `until` (epoch seconds), earned by `action` at `at`; `used` so far."""

    action: str
    at: float
    allowed: int
    until: float
    used: int = 0

    def left(self, now: float) -> int:
        return max(0, self.allowed - self.used) if now < self.until else 0


@dataclass(frozen=True)
class Allowance:
    """What may be sent to one customer on one channel, and (kf) the session's state when known."""

    channel: QuotaChannel
    message: Grant | None = None
    event: Grant | None = None
    session: int | None = None  # kf: the last state the bot set or heard of (None: not known, the bot's)

    def left(self, now: float) -> int:
        """Messages that may go now: 0 past the windows, after the count, or while a rep serves (kf)."""
        if self.session is not None and self.session not in KF_WRITABLE:
            return 0
        return sum(grant.left(now) for grant in (self.event, self.message) if grant is not None)

    def earned(self, action: str, at: float) -> Allowance:
        """After the customer did `action` at `at`: a fresh grant of its kind (a kf message opens a new
        session when the last one ended). Actions that earn nothing leave the allowance as it was."""
        rule = EARNED_BY.get((self.channel, action))
        if rule is None:
            return self
        allowed, window = rule
        grant = Grant(action, at, allowed, at + window)
        if action == "message":
            session = KF_NEW if self.session == KF_ENDED else self.session
            return replace(self, message=grant, session=session if self.channel == "kf" else None)
        return replace(self, event=grant)

    def spent(self, count: int, now: float) -> Allowance:
        """After `count` messages were queued: taken from the event grant first, then the message grant."""
        event, message = self.event, self.message
        if event is not None and count:
            take = min(count, event.left(now))
            event, count = replace(event, used=event.used + take), count - take
        if message is not None and count:
            message = replace(message, used=message.used + min(count, message.left(now)))
        return replace(self, event=event, message=message)

    def refused(self, errcode: int, now: float) -> Allowance:
        """The platform refused a send: believe it (count used up, window closed, session not ours)."""
        if errcode in COUNT_REFUSALS:
            return replace(self, event=_used_up(self.event), message=_used_up(self.message))
        if errcode in WINDOW_REFUSALS:
            return replace(self, event=_ended(self.event, now), message=_ended(self.message, now))
        if errcode in SESSION_REFUSALS:
            return replace(self, session=KF_ENDED)
        return self

    def in_session(self, state: int) -> Allowance:
        return replace(self, session=state) if self.channel == "kf" else self

    def resets_at(self, now: float) -> float | None:
        """When what is left now runs out by time (None: nothing is left)."""
        ends = [grant.until for grant in (self.event, self.message) if grant is not None and grant.left(now)]
        return min(ends) if ends and self.left(now) else None


def _used_up(grant: Grant | None) -> Grant | None:
    return None if grant is None else replace(grant, used=grant.allowed)


def _ended(grant: Grant | None, now: float) -> Grant | None:
    return None if grant is None else replace(grant, until=min(grant.until, now))


# The platforms' refusals that mean "no quota", each corrects the ledger (WeCom global error codes,
# developer.work.weixin.qq.com/document/path/90313; OA global return codes).
COUNT_REFUSALS = frozenset({95001, 45047})  # kf: the 5 messages are used; OA: out of response count limit
WINDOW_REFUSALS = frozenset({95002, 45015})  # kf: past 48 h; OA: response out of time limit
SESSION_REFUSALS = frozenset({95018})  # kf: the session is not new or with the bot (a rep, queued, ended)
QUOTA_REFUSALS = COUNT_REFUSALS | WINDOW_REFUSALS | SESSION_REFUSALS


def refusal_reason(errcode: int) -> str:
    """A word for metrics and the outbox: why the platform would not take the message."""
    if errcode in COUNT_REFUSALS:
        return "count"
    if errcode in WINDOW_REFUSALS:
        return "window"
    return "session" if errcode in SESSION_REFUSALS else ""
